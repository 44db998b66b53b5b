"""Benchmarks (scripts/bench): what the program costs, against baselines measured in the same run."""

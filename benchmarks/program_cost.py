"""P1: program evaluation under mocks, against the baseline program, for growing stacks."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sample:
    seconds: float
    peak_mib: float
    types: dict[str, int]
    """How many resources of each type the program registered."""


def evaluate(program: str, target: str, runners: int, hosts: int = 1) -> Sample:
    request = json.dumps({"program": program, "target": target, "runners": runners, "hosts": hosts})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mocked_program", request],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{program} {target} {runners}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Sample(result["seconds"], result["peak_mib"], result["types"])


def median_pair(target: str, runners: int, hosts: int, repeats: int) -> tuple[Sample, Sample]:
    """Program and baseline, alternated so that machine noise falls on both alike."""
    program: list[Sample] = []
    baseline: list[Sample] = []
    for _ in range(repeats):
        program.append(evaluate("project", target, runners, hosts))
        baseline.append(evaluate("baseline", target, runners, hosts))

    def median(samples: list[Sample]) -> Sample:
        return Sample(
            statistics.median(s.seconds for s in samples),
            statistics.median(s.peak_mib for s in samples),
            samples[0].types,
        )

    return median(program), median(baseline)


def run(sizes: list[int], repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cases = [(target, n, 1) for target in ("docker", "kubernetes") for n in sizes]
    cases.append(("docker", 100, 10))  # a fleet: 10 hosts x 10 runners
    for target, runners, hosts in cases:
        program, baseline = median_pair(target, runners, hosts, repeats)
        rows.append(
            {
                "benchmark": "P1 program evaluation (mocks)",
                "case": f"{target}, {runners} runner(s)" + (f" on {hosts} hosts" if hosts > 1 else ""),
                "target": target,
                "runners": runners,
                "hosts": hosts,
                "program_s": program.seconds,
                "baseline_s": baseline.seconds,
                "ratio": program.seconds / baseline.seconds,
                "program_peak_mib": program.peak_mib,
                "baseline_peak_mib": baseline.peak_mib,
                "memory_ratio": program.peak_mib / baseline.peak_mib,
                "ms_per_runner": 1000 * program.seconds / runners,
                "goal": "<= 1.3x",
                "met": program.seconds / baseline.seconds <= 1.3,
            }
        )
    for target in ("docker", "kubernetes"):
        by_size = {r["runners"]: r for r in rows if r.get("target") == target and r.get("hosts") == 1}
        if 100 in by_size and 1000 in by_size:
            growth = float(by_size[1000]["ms_per_runner"]) / float(by_size[100]["ms_per_runner"])  # type: ignore[arg-type]
            rows.append(
                {
                    "benchmark": "P1 linear growth",
                    "case": f"{target}: cost per runner at 1000 / at 100",
                    "ratio": growth,
                    "goal": "<= 1.2x",
                    "met": growth <= 1.2,
                }
            )
    return rows

"""P1: program evaluation under mocks, for growing stacks, against two programs measured in the same run.

- the baseline (benchmarks/baseline): the resources the project registers, registered directly, so the
  ratio is the price of the project's structure (settings model, components);
- the hand-written program (benchmarks/handwritten): what someone would write without the project
  (a UserRunner per runner; per Docker host the image, a volume and one container with config.toml
  uploaded; per Kubernetes runner a Secret and a release), importing only the SDKs of its target, so
  the ratio is everything the project costs a `pulumi preview` or `up` more.

Each figure is the median of several runs, the three programs alternated so that machine noise falls
on all alike. The project's time is split into its imports, its settings and the registration.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("project", "baseline", "handwritten")
PHASES = ("import", "settings", "registration")
# Compiled modules are cached as a user's runs cache them (here outside the repository, even where
# PYTHONDONTWRITEBYTECODE is set); each case starts with one run of each program, not counted, to fill it.
BYTECODE = Path(tempfile.gettempdir()) / "gitlab-runners-bench-bytecode"
ENVIRONMENT = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYTHONPYCACHEPREFIX": str(BYTECODE),
}


@dataclass(frozen=True)
class Sample:
    seconds: float
    """The program's evaluation, from its first line to its last registration (the process is ready)."""
    peak_mib: float
    types: dict[str, int]
    """How many resources of each type the program registered."""
    process_seconds: float = 0.0
    """The whole process: interpreter, the Pulumi SDK's import, the mocks and the program."""
    phases: dict[str, float] = field(default_factory=dict)
    """The project's evaluation by phase (mocked_program.SettingsClock)."""


def evaluate(program: str, target: str, runners: int, hosts: int = 1) -> Sample:
    request = json.dumps({"program": program, "target": target, "runners": runners, "hosts": hosts})
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mocked_program", request],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        env=ENVIRONMENT,
    )
    process_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{program} {target} {runners}: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return Sample(result["seconds"], result["peak_mib"], result["types"], process_seconds, result.get("phases", {}))


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.seconds for s in samples),
        statistics.median(s.peak_mib for s in samples),
        samples[0].types,
        statistics.median(s.process_seconds for s in samples),
        {p: statistics.median(s.phases[p] for s in samples) for p in PHASES if all(p in s.phases for s in samples)},
    )


def median_samples(target: str, runners: int, hosts: int, repeats: int) -> dict[str, Sample]:
    """Each program's median; the programs alternated so that machine noise falls on all alike."""
    samples: dict[str, list[Sample]] = {program: [] for program in PROGRAMS}
    for program in PROGRAMS:
        evaluate(program, target, min(runners, 10), hosts)
    for _ in range(repeats):
        for program in PROGRAMS:
            samples[program].append(evaluate(program, target, runners, hosts))
    return {program: median(found) for program, found in samples.items()}


def run(sizes: list[int], repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cases = [(target, n, 1) for target in ("docker", "kubernetes") for n in sizes]
    cases.append(("docker", 100, 10))  # a fleet: 10 hosts x 10 runners
    for target, runners, hosts in cases:
        found = median_samples(target, runners, hosts, repeats)
        program, baseline, handwritten = found["project"], found["baseline"], found["handwritten"]
        case = f"{target}, {runners} runner(s)" + (f" on {hosts} hosts" if hosts > 1 else "")
        common = {"case": case, "target": target, "runners": runners, "hosts": hosts, "program_s": program.seconds}
        rows.append(
            {
                "benchmark": "P1 program evaluation (mocks)",
                **common,
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
        goal = 1.3 if runners >= 1000 else 1.2
        ratio = program.seconds / handwritten.seconds
        phases = ", ".join(f"{p} {program.phases[p]:.3f} s" for p in PHASES if p in program.phases)
        rows.append(
            {
                "benchmark": "P1 against the hand-written program (mocks)",
                **common,
                "baseline_s": handwritten.seconds,
                "ratio": ratio,
                "program_peak_mib": program.peak_mib,
                "baseline_peak_mib": handwritten.peak_mib,
                "memory_ratio": program.peak_mib / handwritten.peak_mib,
                "program_process_s": program.process_seconds,
                "baseline_process_s": handwritten.process_seconds,
                "process_ratio": program.process_seconds / handwritten.process_seconds,
                "phases": program.phases,
                "ms_per_runner_over": 1000 * (program.seconds - handwritten.seconds) / runners,
                "note": f"project: {phases}; whole processes {program.process_seconds:.3f} s / "
                f"{handwritten.process_seconds:.3f} s",
                "goal": f"<= {goal}x",
                "met": ratio <= goal,
            }
        )
    for target in ("docker", "kubernetes"):
        by_size = {
            r["runners"]: r
            for r in rows
            if r.get("target") == target and r.get("hosts") == 1 and r["benchmark"] == "P1 program evaluation (mocks)"
        }
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

"""P1: program evaluation under mocks, for growing stacks, against two programs measured in the same run.

- the baseline (benchmarks/baseline): the resources the project registers, registered directly, so the
  ratio is the price of the project's structure (settings model, components);
- the hand-written program (benchmarks/handwritten): what someone would write without the project
  (a UserRunner per runner; per Docker host the image, a volume and one container with config.toml
  uploaded; per Kubernetes runner a Secret and a release), importing only the SDKs of its target, so
  the ratio is everything the project costs a `pulumi preview` or `up` more.

Each figure is the median of several runs, the three programs alternated so that machine noise falls
on all alike. The ratios are of CPU time: on a machine shared with other work the wall time of the same
run varies by a factor of two, its CPU time by a few percent (both are in the results; on an idle
machine they agree, the program being one thread). The time is split into the modules the program
imports, the project's settings, and the registration.
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
    """The program's evaluation (wall time), from its first line to its last registration."""
    peak_mib: float
    types: dict[str, int]
    """How many resources of each type the program registered."""
    cpu_seconds: float = 0.0
    """The same evaluation's CPU time."""
    process_seconds: float = 0.0
    """The whole process (wall time): interpreter, the Pulumi SDK's import, the mocks and the program."""
    phases: dict[str, float] = field(default_factory=dict)
    """The evaluation's CPU time by phase (mocked_program.Clock)."""


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
    return Sample(
        result["seconds"],
        result["peak_mib"],
        result["types"],
        result["cpu_seconds"],
        process_seconds,
        result.get("phases", {}),
    )


def median(samples: list[Sample]) -> Sample:
    return Sample(
        statistics.median(s.seconds for s in samples),
        statistics.median(s.peak_mib for s in samples),
        samples[0].types,
        statistics.median(s.cpu_seconds for s in samples),
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


def phases(sample: Sample) -> str:
    return ", ".join(f"{p} {sample.phases[p]:.3f}" for p in PHASES if p in sample.phases)


def compared(
    benchmark: str, common: dict[str, object], runners: int, program: Sample, other: Sample, goal: float
) -> dict[str, object]:
    ratio = program.cpu_seconds / other.cpu_seconds
    wall = program.seconds / other.seconds
    return {
        "benchmark": benchmark,
        **common,
        "program_s": program.cpu_seconds,
        "baseline_s": other.cpu_seconds,
        "ratio": ratio,
        "program_wall_s": program.seconds,
        "baseline_wall_s": other.seconds,
        "wall_ratio": wall,
        "program_process_s": program.process_seconds,
        "baseline_process_s": other.process_seconds,
        "program_phases": program.phases,
        "baseline_phases": other.phases,
        "program_peak_mib": program.peak_mib,
        "baseline_peak_mib": other.peak_mib,
        "memory_ratio": program.peak_mib / other.peak_mib,
        "ms_per_runner": 1000 * program.cpu_seconds / runners,
        "note": f"wall {program.seconds:.3f} / {other.seconds:.3f} s ({wall:.2f}x); CPU s by phase, "
        f"project: {phases(program)}; other: {phases(other)}",
        "goal": f"<= {goal}x",
        "met": ratio <= goal,
    }


def run(sizes: list[int], repeats: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cases = [(target, n, 1) for target in ("docker", "kubernetes") for n in sizes]
    cases.append(("docker", 100, 10))  # a fleet: 10 hosts x 10 runners
    for target, runners, hosts in cases:
        found = median_samples(target, runners, hosts, repeats)
        case = f"{target}, {runners} runner(s)" + (f" on {hosts} hosts" if hosts > 1 else "")
        common: dict[str, object] = {"case": case, "target": target, "runners": runners, "hosts": hosts}
        project = found["project"]
        rows.append(compared("P1 program evaluation (mocks, CPU)", common, runners, project, found["baseline"], 1.3))
        rows.append(
            compared(
                "P1 against the hand-written program (mocks, CPU)",
                common,
                runners,
                project,
                found["handwritten"],
                1.3 if runners >= 1000 else 1.2,
            )
        )
    for target in ("docker", "kubernetes"):
        by_size = {
            r["runners"]: r
            for r in rows
            if r.get("target") == target
            and r.get("hosts") == 1
            and r["benchmark"] == "P1 program evaluation (mocks, CPU)"
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

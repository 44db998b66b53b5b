"""The benchmarks' baseline program registers what the project registers, so P1 compares like with like."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def registered(program: str, target: str, runners: int, hosts: int) -> dict[str, int]:
    request = json.dumps({"program": program, "target": target, "runners": runners, "hosts": hosts})
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.mocked_program", request],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    types: dict[str, int] = json.loads(done.stdout)["types"]
    # The project's own components are its structure, which the baseline leaves out on purpose.
    return {typ: count for typ, count in types.items() if not typ.startswith("gitlab-runners:index:")}


@pytest.mark.parametrize(("target", "runners", "hosts"), [("docker", 5, 2), ("kubernetes", 3, 1)])
def test_the_baseline_registers_the_same_resources(target: str, runners: int, hosts: int) -> None:
    project = registered("project", target, runners, hosts)
    assert project, "the project registered nothing"
    assert registered("baseline", target, runners, hosts) == project

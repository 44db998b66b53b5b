"""The benchmarks' baseline program registers what the project registers, so P1 compares like with like."""

from __future__ import annotations

import pytest

from benchmarks.program_cost import evaluate


def registered(program: str, target: str, runners: int, hosts: int) -> dict[str, int]:
    types = evaluate(program, target, runners, hosts).types
    # The project's own components are its structure, which the baseline leaves out on purpose.
    return {typ: count for typ, count in types.items() if not typ.startswith("gitlab-runners:index:")}


@pytest.mark.parametrize(("target", "runners", "hosts"), [("docker", 5, 2), ("kubernetes", 3, 1)])
def test_the_baseline_registers_the_same_resources(target: str, runners: int, hosts: int) -> None:
    project = registered("project", target, runners, hosts)
    assert project, "the project registered nothing"
    assert registered("baseline", target, runners, hosts) == project

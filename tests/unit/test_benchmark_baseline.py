"""The benchmarks' baseline program registers what the project registers, so P1 compares like with like;
the hand-written program registers what someone would write by hand."""

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


@pytest.mark.parametrize(
    ("target", "runners", "hosts", "expected"),
    [
        (
            "docker",
            5,
            2,
            {
                "pulumi:providers:gitlab": 1,
                "gitlab:index/userRunner:UserRunner": 5,
                "pulumi:providers:docker": 2,
                "docker:index/image:Image": 2,
                "docker:index/volume:Volume": 2,
                "docker:index/container:Container": 2,
            },
        ),
        (
            "kubernetes",
            3,
            1,
            {
                "pulumi:providers:gitlab": 1,
                "gitlab:index/userRunner:UserRunner": 3,
                "pulumi:providers:kubernetes": 1,
                "kubernetes:core/v1:Secret": 3,
                "kubernetes:helm.sh/v3:Release": 3,
            },
        ),
    ],
)
def test_the_hand_written_program_registers_what_one_would_by_hand(
    target: str, runners: int, hosts: int, expected: dict[str, int]
) -> None:
    # A runner per UserRunner; per Docker host the image, one volume and one container; per Kubernetes
    # runner a Secret and a release.
    assert registered("handwritten", target, runners, hosts) == expected

"""What replaces a Docker runner container (issue 18 item 5), under mocks: the container's inputs carry
only what Docker fixes at creation, the privileged allowance travels on the sync container, the plan
marks a runner container's replacement with its causes, and the README names the same settings.
tests/integration/test_docker_replacement.py checks the list against a real preview."""

from __future__ import annotations

import re
from typing import Any

import pulumi
from plan_table import replacements, steps, table_and_replacements

from components.docker_host import DockerHost, DockerHostArgs
from components.replacement import REPLACING_SETTINGS, settings_replacing
from components.settings import ManagerSettings, parse_settings
from components.settings.schema import README_PATH, REPLACES, render_reference
from tests.unit.helpers import run
from tests.unit.mocks import RecordingMocks

ALLOW = "io.gitlab-runners.allow-privileged"


def deploy(mocks: RecordingMocks, **values: Any) -> dict[str, Any]:
    s = parse_settings(
        {"target": "docker", "runners": [{"name": "d", "executor": "docker"}], **values},
        stack="unit",
        has_gitlab_token=True,
    )
    assert s.docker is not None
    target = s.docker
    run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=target.hosts[0],
                target=target,
                runners=s.runners,
                manager=ManagerSettings(
                    gitlab_url="https://gl.example", global_=s.global_, allow_privileged=s.allow_privileged
                ),
                tokens={"d": pulumi.Output.secret("glrt-d")},
            ),
        )
    )
    found = {c.name: c for c in mocks.by_type("docker:index/container:Container")}
    found.update({v.name: v for v in mocks.by_type("docker:index/volume:Volume")})
    return found


def labels(resource: Any) -> dict[str, str]:
    return {label["label"]: label["value"] for label in resource.inputs.get("labels") or []}


def test_the_allowance_is_a_label_of_the_sync_container_only(mocks: RecordingMocks) -> None:
    found = deploy(mocks, allowPrivileged=True)
    assert labels(found["host-docker-sync"])[ALLOW] == "true"
    assert ALLOW not in labels(found["host-docker-runner"]) and ALLOW not in labels(found["host-docker-config"])
    # Stacks of earlier versions carry it on both: their labels stay as Docker has them, nothing replaced.
    assert found["host-docker-runner"].options["ignoreChanges"] == ["labels"]
    assert found["host-docker-config"].options["ignoreChanges"] == ["labels"]


def test_the_runner_container_is_replaced_when_its_metrics_address_moves(mocks: RecordingMocks) -> None:
    runner = deploy(mocks)["host-docker-runner"]
    assert runner.options["replacementTrigger"] == "127.0.0.1:9252"
    assert runner.options["replaceOnChanges"] == ["healthcheck"]
    assert runner.options["deleteBeforeReplace"] is True  # the new one takes the old one's name
    mocks.resources.clear()
    runner = deploy(mocks, metrics={"enabled": True, "port": 9400})["host-docker-runner"]
    assert runner.options["replacementTrigger"] == "0.0.0.0:9400"


def step(op: str, name: str, kind: str = "docker:index/container:Container", **extra: Any) -> dict[str, Any]:
    parent = "gitlab-runners:index:DockerHost$gitlab-runners:index:DockerRunner"
    return {"op": op, "urn": f"urn:pulumi:dev::gitlab-runners::{parent}${kind}::{name}", **extra}


def test_the_plan_names_what_replaces_a_runner_container() -> None:
    plan = {
        "steps": [
            step("replace", "docker-local-shell-runner", replaceReasons=["stopTimeout"]),
            step("create-replacement", "docker-local-shell-runner"),
            step("replace", "docker-local-shell-sync", replaceReasons=["uploads"]),  # every settings change
            step("replace", "docker-b-docker-runner"),  # no reason: its trigger, the metrics or terminal address
            step("replace", "docker-b-docker-config", kind="docker:index/volume:Volume", replaceReasons=["name"]),
            step("update", "docker-b-shell-runner", diffReasons=["waitTimeout"]),
        ]
    }
    notes = replacements(plan)
    assert len(notes) == 3
    assert notes[0].startswith("replaces runner container docker-local-shell-runner: it stops taking jobs")
    assert notes[0].endswith("a change of docker.stopTimeout does this")
    assert notes[1].endswith(
        "a change of metrics.enabled, metrics.port, metrics.hostAddress, docker.hosts[*].metricsPort, "
        "sessionServer.enabled, sessionServer.port, sessionServer.hostAddress, docker.hosts[*].sessionAddress "
        "does this"
    )
    assert notes[2].startswith("replaces config volume docker-b-docker-config: the runners start again")
    assert "note: " + notes[0] in steps(plan).splitlines()
    assert notes[0] in table_and_replacements(plan)


def test_the_settings_of_a_replacement_come_from_its_reasons() -> None:
    assert settings_replacing(["image"]) == [
        "docker.image",
        "docker.prebuiltImage",
        "docker.hosts[*].platform",
        "runners[*].autoscaler.plugin",
    ]
    assert settings_replacing(["volumes[1].hostPath", "ports"])[:2] == [
        "docker.hosts[*].socketPath",
        "docker.containerName",
    ]
    # A reason the list does not know is named as it is, never hidden.
    assert settings_replacing(["labels"]) == ["the container's labels"]
    # Every setting the plan can name is one the README lists.
    from components.replacement import INPUT_SETTINGS, TRIGGER_SETTINGS

    named = {s for settings in INPUT_SETTINGS.values() for s in settings} | set(TRIGGER_SETTINGS)
    assert named == set(REPLACING_SETTINGS)


def test_the_readme_marks_every_setting_that_replaces_and_no_other() -> None:
    reference = render_reference()
    assert reference in README_PATH.read_text()
    marked = [line for line in reference.splitlines() if line.endswith(REPLACES + " |")]
    assert len(marked) == len(REPLACING_SETTINGS)  # each key has its row: no key of the list is misspelt
    rows = {re.match(r"^\| `([^`]+)`", line).group(1) for line in marked}  # type: ignore[union-attr]
    short = {k.split(".", 1)[1] if k.startswith(("docker.", "runners[*].")) else k for k in REPLACING_SETTINGS}
    assert rows == short
    for key in REPLACING_SETTINGS:
        assert f"| `{key}` |" in reference  # the closing table, with why

"""Docker host housekeeping: the container each host gets when asked, and the script's rules, run
against a docker CLI double that answers as the engine would (the real engine: tests/integration)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.docker_host import DockerHost, DockerHostArgs
from components.docker_housekeeping import SCRIPT
from components.settings import ManagerSettings, Settings, SettingsError, parse_settings
from tests.unit.helpers import run
from tests.unit.mocks import RecordingMocks

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = "docker:index/container:Container"
MANAGED = "com.gitlab.gitlab-runner.managed"
SHELLS = [shell for shell in ("dash", "busybox", "bash") if shutil.which(shell)]


def parse(**docker: Any) -> Settings:
    return parse_settings({"target": "docker", "docker": docker}, stack="unit", has_gitlab_token=True)


def deploy(settings: Settings) -> None:
    target = settings.docker
    assert target is not None
    run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=target.hosts[0],
                target=target,
                runners=settings.runners,
                manager=ManagerSettings(gitlab_url="https://gl.example", global_=settings.global_),
                tokens={r.name: pulumi.Output.secret("glrt-unit") for r in settings.runners},
            ),
        )
    )


def housekeeping_container(mocks: RecordingMocks) -> dict[str, Any] | None:
    found = [c.inputs for c in mocks.by_type(CONTAINER) if c.inputs["name"].endswith("-housekeeping")]
    return found[0] if found else None


# ---- the container ------------------------------------------------------------------------------


def test_off_by_default(mocks: RecordingMocks) -> None:
    deploy(parse())
    assert housekeeping_container(mocks) is None


def test_one_container_per_host_with_the_socket_and_nothing_else(mocks: RecordingMocks) -> None:
    deploy(
        parse(
            hosts=[{"host": "unix:///run/user/1000/docker.sock"}],
            housekeeping={"enabled": True, "every": "6h", "maxAge": "7d"},
        )
    )
    container = housekeeping_container(mocks)
    assert container is not None
    assert container["name"] == "gitlab-runner-unit-housekeeping"
    assert container["image"] == "docker:29.7.2-cli"
    assert container["volumes"] == [{"hostPath": "/run/user/1000/docker.sock", "containerPath": "/var/run/docker.sock"}]
    assert container["networkMode"] == "none" and container["readOnly"] is True
    assert container["capabilities"] == {"drops": ["ALL"]} and container["privileged"] is False
    assert container["restart"] == "unless-stopped"
    assert sorted(container["envs"]) == [
        "DOCKER_HOST=unix:///var/run/docker.sock",
        "HOUSEKEEPING_EVERY_SECONDS=21600",
        "HOUSEKEEPING_MAX_AGE_SECONDS=604800",
    ]
    assert container["entrypoints"][:2] == ["/bin/sh", "-c"] and container["entrypoints"][3:] == ["housekeeping", "run"]
    assert container["entrypoints"][2] == SCRIPT.read_text()
    assert {"label": "io.gitlab-runners.role", "value": "housekeeping"} in container["labels"]
    # The runner containers are as they were: housekeeping is a container of its own.
    runner = next(c.inputs for c in mocks.by_type(CONTAINER) if c.inputs["name"] == "gitlab-runner-unit-docker")
    assert "envs" not in runner


@pytest.mark.parametrize(
    ("housekeeping", "expected"),
    [
        (
            {"enabled": True, "every": "0s"},
            "gitlab-runners:docker.housekeeping.every is 0s: a pass runs every 1s to 30d",
        ),
        ({"enabled": True, "every": "31d"}, "gitlab-runners:docker.housekeeping.every is 31d"),
        (
            {"enabled": True, "maxAge": "1 day"},
            'gitlab-runners:docker.housekeeping.maxAge must be a duration such as 7d, 24h or 1h30m, got "1 day"',
        ),
        (
            {"enabled": True, "maxAge": "4000d"},
            "gitlab-runners:docker.housekeeping.maxAge is 4000d, more than ten years",
        ),
        (
            {"enabled": True, "image": "docker:latest"},
            "gitlab-runners:docker.housekeeping.image must be pinned with a tag (not latest) or a digest, "
            'got "docker:latest"',
        ),
    ],
)
def test_housekeeping_settings_are_checked(housekeeping: dict[str, Any], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse(housekeeping=housekeeping)
    assert any(str(p).startswith(expected) for p in caught.value.problems), caught.value.problems


# ---- the script's times ---------------------------------------------------------------------------


@pytest.mark.parametrize("shell", SHELLS)
def test_rfc3339_times_as_docker_writes_them(shell: str) -> None:
    moments = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2000, 2, 29, 23, 59, 59, tzinfo=UTC),
        datetime(2025, 11, 30, 8, 9, 10, 123456, tzinfo=UTC),
        datetime(2026, 3, 1, 0, 0, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(2031, 12, 31, 22, 0, 0, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
        datetime(1, 1, 1, tzinfo=UTC),  # FinishedAt of a container that never ran
    ]
    for moment in moments:
        for text in (moment.isoformat().replace("+00:00", "Z"), moment.strftime("%Y-%m-%dT%H:%M:%S.%f123%z")):
            text = text[:-2] + ":" + text[-2:] if text[-5] in "+-" and ":" not in text[-5:] else text
            command = (
                [shell, "sh", str(SCRIPT), "epoch", text] if shell == "busybox" else [shell, str(SCRIPT), "epoch", text]
            )
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            assert int(done.stdout) == int(moment.timestamp()), (shell, text)


# ---- the script's rules, against a docker CLI double ------------------------------------------------

# A docker CLI double: answers the commands the script runs from a JSON state, as dockerd would, and
# records what it was asked to remove.
FAKE_DOCKER = r"""#!PYTHON
import json, os, sys
state_path = os.environ["FAKE_DOCKER_STATE"]
state = json.load(open(state_path))
args = sys.argv[1:]

def filters(args):
    found = []
    for i, a in enumerate(args):
        if a == "--filter":
            found.append(args[i + 1])
    return found

def labelled(labels, wanted):
    for f in wanted:
        if f.startswith("label="):
            key, _, value = f[6:].partition("=")
            if labels.get(key) != value:
                return False
    return True

def save():
    json.dump(state, open(state_path, "w"))

if args[0] == "version":
    print("29.7.2")
elif args[0] == "ps":
    wanted = filters(args)
    statuses = [f[7:] for f in wanted if f.startswith("status=")]
    for c in state["containers"]:
        running = c["status"] in ("running", "paused", "restarting")
        if not labelled(c["labels"], wanted):
            continue
        if statuses and c["status"] not in statuses:
            continue
        if "--all" not in args and not running:
            continue
        if "--quiet" in args:
            print(c["id"])
        else:
            print(c["labels"].get("com.gitlab.gitlab-runner.job.id", ""))
elif args[0] == "inspect":
    c = next(c for c in state["containers"] if c["id"] == args[-1])
    labels = c["labels"]
    print(c["status"], c["created"], c["finished"], "/" + c["name"],
          labels.get("com.gitlab.gitlab-runner.managed", ""), labels.get("com.gitlab.gitlab-runner.job.id", ""))
elif args[0] == "rm":
    c = next(c for c in state["containers"] if c["id"] == args[-1])
    if c["status"] == "running":
        sys.exit("You cannot remove a running container")
    state["containers"].remove(c)
    state.setdefault("removed", []).append(("container", c["name"], "--volumes" in args))
    save()
elif args[:2] == ["volume", "ls"]:
    wanted = filters(args)
    for v in state["volumes"]:
        if labelled(v["labels"], wanted) and ("dangling=true" not in wanted or not v["in_use"]):
            print(v["name"])
elif args[:2] == ["volume", "inspect"]:
    v = next(v for v in state["volumes"] if v["name"] == args[-1])
    print(v["created"], v["labels"].get("com.gitlab.gitlab-runner.managed", ""),
          v["labels"].get("com.gitlab.gitlab-runner.type", ""))
elif args[:2] == ["volume", "rm"]:
    v = next(v for v in state["volumes"] if v["name"] == args[-1])
    if v["in_use"]:
        sys.exit("volume is in use")
    state["volumes"].remove(v)
    state.setdefault("removed", []).append(("volume", v["name"], False))
    save()
elif args[:2] == ["network", "prune"]:
    state.setdefault("network_prune", []).append(filters(args))
    save()
    print("Deleted Networks:")
    print("runner-abc-job-1-network")
else:
    sys.exit("fake docker: unknown command " + " ".join(args))
"""


def stamp(ago: timedelta) -> str:
    return (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def job_container(name: str, status: str, stopped: timedelta | None, created: timedelta, job: str) -> dict[str, Any]:
    return {
        "id": f"id-{name}",
        "name": name,
        "status": status,
        "created": stamp(created),
        "finished": stamp(stopped) if stopped is not None else "0001-01-01T00:00:00Z",
        "labels": {MANAGED: "true", "com.gitlab.gitlab-runner.job.id": job, "com.gitlab.gitlab-runner.type": "build"},
    }


def cache_volume(name: str, created: timedelta, in_use: bool = False, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "created": stamp(created),
        "in_use": in_use,
        "labels": {MANAGED: "true", "com.gitlab.gitlab-runner.type": "cache", **labels},
    }


def test_only_old_leftovers_of_jobs_are_removed(tmp_path: Path) -> None:
    hour, day = timedelta(hours=1), timedelta(days=1)
    state = {
        "containers": [
            job_container("old-exited", "exited", stopped=2 * day, created=3 * day, job="101"),
            job_container("old-dead", "dead", stopped=2 * day, created=3 * day, job="102"),
            job_container("never-started", "created", stopped=None, created=2 * day, job="103"),
            job_container("recently-stopped", "exited", stopped=hour, created=3 * day, job="104"),
            job_container("recently-created", "created", stopped=None, created=hour, job="105"),
            # Job 106 still runs: its helper container waits, stopped, for the next stage.
            job_container("waiting-helper", "exited", stopped=2 * day, created=3 * day, job="106"),
            job_container("running-build", "running", stopped=None, created=3 * day, job="106"),
            # Not the runner's: never touched, however old.
            {
                "id": "id-bystander",
                "name": "bystander",
                "status": "exited",
                "created": stamp(30 * day),
                "finished": stamp(30 * day),
                "labels": {"app": "other"},
            },
        ],
        "volumes": [
            cache_volume("runner-x-cache-old", created=3 * day),
            cache_volume("runner-x-cache-recent", created=hour),
            cache_volume("runner-x-cache-in-use", created=3 * day, in_use=True),
            {"name": "bystander-volume", "created": stamp(30 * day), "in_use": False, "labels": {}},
            {
                "name": "managed-but-not-cache",
                "created": stamp(30 * day),
                "in_use": False,
                "labels": {MANAGED: "true", "com.gitlab.gitlab-runner.type": "other"},
            },
        ],
    }
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.replace("#!PYTHON", f"#!{sys.executable}"))
    (bin_dir / "docker").chmod(0o755)
    (tmp_path / "state.json").write_text(json.dumps(state))
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_DOCKER_STATE": str(tmp_path / "state.json"),
        "HOUSEKEEPING_EVERY_SECONDS": "3600",
        "HOUSEKEEPING_MAX_AGE_SECONDS": str(int(day.total_seconds())),
    }
    done = subprocess.run(["sh", str(SCRIPT), "once"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    after = json.loads((tmp_path / "state.json").read_text())
    assert sorted(after["removed"]) == [
        ["container", "never-started", True],
        ["container", "old-dead", True],
        ["container", "old-exited", True],
        ["volume", "runner-x-cache-old", False],
    ]
    assert {c["name"] for c in after["containers"]} == {
        "recently-stopped",
        "recently-created",
        "waiting-helper",
        "running-build",
        "bystander",
    }
    assert after["network_prune"] == [[f"label={MANAGED}=true", "until=86400s"]]
    assert "removed job container old-exited (job 101, exited 2d ago)" in done.stdout
    assert "pass done: removed 3 container(s), 1 volume(s), 1 network(s) older than 1d" in done.stdout


def test_an_engine_that_does_not_answer_is_said_and_nothing_is_done(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text("#!/bin/sh\necho 'Cannot connect to the Docker daemon' >&2\nexit 1\n")
    (bin_dir / "docker").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOUSEKEEPING_EVERY_SECONDS": "60",
        "HOUSEKEEPING_MAX_AGE_SECONDS": "60",
    }
    done = subprocess.run(["sh", str(SCRIPT), "once"], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    assert "the Docker API does not answer" in done.stdout and "next try in 60s" in done.stdout


# ---- documented -------------------------------------------------------------------------------------


def test_the_readme_housekeeping_example_is_a_valid_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Housekeeping", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = {k.removeprefix("gitlab-runners:"): v for k, v in yaml.safe_load(block)["config"].items()}
    settings = parse_settings({"target": "docker", **config}, stack="unit", has_gitlab_token=True)
    assert settings.docker is not None and settings.docker.housekeeping.enabled

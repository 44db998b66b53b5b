"""Which settings replace a Docker runner container, read from real previews (issue 18 item 5): the
engine, the docker provider (what it forces to a new container is the Terraform provider's ForceNew),
the current Docker engine, the GitLab API double and the runner stand-in (a test double of
gitlab-runner). A deployed stack is previewed once per setting changed; the settings whose preview
replaces a runner container must be exactly the ones components/replacement.py lists (the README's
list and the plan's notes come from it), so the documented list cannot drift from the provider.
"""

from __future__ import annotations

import copy
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from components.replacement import REPLACING_SETTINGS
from tests.gitlab_double.server import serve
from tests.integration.docker_engine import Engine, base_image
from tests.integration.docker_stack import DockerStack, docker_stack
from tests.integration.local_cluster import free_port_block
from tests.integration.plans import shown_plan

ROOT = Path(__file__).resolve().parents[2]
API_TOKEN = "glpat-replacement-test"
CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"
REPLACING_OPS = {auto.OpType.REPLACE, auto.OpType.CREATE_REPLACEMENT, auto.OpType.DELETE_REPLACED}
AUTOSCALER = {
    "plugin": "aws:1.0.0",
    "maxInstances": 3,
    "connectorConfig": {"username": "ci"},
    "policies": [{"idleCount": 0, "idleTime": "20m"}],
}

Values = dict[str, Any]
Change = Callable[[Values], None]


def _host(values: Values, **changes: Any) -> None:
    values["docker"]["hosts"][0].update(changes)


def _runners(values: Values, **changes: Any) -> None:
    for runner in values["runners"]:
        if runner["executor"] == "docker":
            runner.update(changes)


def _terminal_off(values: Values) -> None:
    values["sessionServer"].update(enabled=False)
    values["docker"]["hosts"][0].pop("sessionAddress")  # refused without the terminal


# One change per setting, from the deployed stack below. The first column is the setting's key as the
# configuration reference (and components/replacement.py) names it.
CHANGES: list[tuple[str, Change]] = [
    ("allowPrivileged", lambda v: v.update(allowPrivileged=True)),
    ("checkInterval", lambda v: v.update(checkInterval=2)),
    ("concurrent", lambda v: v.update(concurrent=7)),
    ("shutdownTimeout", lambda v: v.update(shutdownTimeout=45)),
    ("logLevel", lambda v: v.update(logLevel="debug")),
    ("extraGlobalConfig", lambda v: v.update(extraGlobalConfig={"log_format": "json"})),
    ("gitlabUrl", lambda v: v.update(gitlabUrl="https://gitlab.example.com")),
    ("readiness.enabled", lambda v: v["readiness"].update(enabled=False)),
    ("readiness.timeoutSeconds", lambda v: v["readiness"].update(timeoutSeconds=600)),
    (
        "cache",
        lambda v: v.update(cache={"type": "s3", "s3": {"bucketName": "runner-cache", "authenticationType": "iam"}}),
    ),
    ("metrics.enabled", lambda v: v["metrics"].update(enabled=False)),
    ("metrics.port", lambda v: v["metrics"].update(port=v["metrics"]["port"] + 10)),
    ("metrics.hostAddress", lambda v: v["metrics"].update(hostAddress="127.0.0.1")),
    (
        "runners[*] (limit, requestConcurrency, image, pullPolicy, volumes, extraConfig)",
        lambda v: _runners(
            v,
            limit=3,
            requestConcurrency=2,
            image="alpine:3.20.2",
            pullPolicy=["if-not-present"],
            volumes=["/cache", "/builds-cache"],
            extraConfig={"environment": ["GIT_DEPTH=10"]},
        ),
    ),
    ("runners[*].autoscaler.maxInstances", lambda v: v["runners"][2]["autoscaler"].update(maxInstances=5)),
    ("runners[*].autoscaler.plugin", lambda v: v["runners"][2]["autoscaler"].update(plugin="aws:1.0.1")),
    ("docker.stopTimeout", lambda v: v["docker"].update(stopTimeout=300)),
    ("docker.containerName", lambda v: v["docker"].update(containerName=v["docker"]["containerName"] + "-b")),
    ("docker.keepConfigVolume", lambda v: v["docker"].update(keepConfigVolume=True)),
    ("docker.image", lambda v: v["docker"]["image"].update(extraPackages=["jq"])),
    ("docker.prebuiltImage", lambda v: v["docker"].update(image=None, prebuiltImage="example.com/runner:18.9.0")),
    ("docker.hosts[*].networkMode", lambda v: _host(v, networkMode="bridge")),
    ("docker.hosts[*].socketPath", lambda v: _host(v, socketPath="/run/other/docker.sock")),
    ("docker.hosts[*].platform", lambda v: _host(v, platform="linux/arm64")),
    ("docker.hosts[*].metricsPort", lambda v: _host(v, metricsPort=v["metrics"]["port"] + 20)),
    # The web terminal, on in the deployed stack: its addresses are taken when the runner starts.
    ("sessionServer.enabled", lambda v: _terminal_off(v)),
    ("sessionServer.port", lambda v: v["sessionServer"].update(port=v["sessionServer"]["port"] + 10)),
    ("sessionServer.hostAddress", lambda v: v["sessionServer"].update(hostAddress="0.0.0.0")),  # noqa: S104
    ("sessionServer.sessionTimeout", lambda v: v["sessionServer"].update(sessionTimeout=600)),
    ("docker.hosts[*].sessionAddress", lambda v: _host(v, sessionAddress="127.0.0.2")),
]


def session_port(metrics: int) -> int:
    """A free port for the terminal clear of every metrics port the changes above move to."""
    taken = {metrics + offset + shift for offset in (0, 1, 2) for shift in (0, 10, 20)}
    while True:
        port = free_port_block(12)
        if not {port, port + 1, port + 10, port + 11} & taken:
            return port


def apply(stack: DockerStack, values: Values, before: Values) -> None:
    """The stack's config set to `values` (keys absent or None are removed); runnerTokens is kept."""
    for key in before:
        if values.get(key) is None:
            stack.stack.remove_config(f"gitlab-runners:{key}")
    for key, value in values.items():
        if value is not None and value != before.get(key):
            stack.set(key, value)


def replaced(stack: DockerStack) -> tuple[set[str], set[str]]:
    """A preview of the stack as configured: the runner containers and the volumes it replaces."""
    events: list[auto.EngineEvent] = []
    stack.stack.preview(color="never", on_event=events.append)
    containers, volumes = set(), set()
    for event in events:
        pre = event.resource_pre_event
        if pre is None or pre.metadata.op not in REPLACING_OPS:
            continue
        name = pre.metadata.urn.rsplit("::", 1)[-1]
        if pre.metadata.type == CONTAINER and not name.endswith("-sync"):
            containers.add(name)
        elif pre.metadata.type == VOLUME:
            volumes.add(name)
    return containers, volumes


def container_ids(engine: Engine, stack: DockerStack) -> dict[str, str]:
    names = [stack.container(kind) for kind in ("docker", "shell", "autoscaler")]
    return {n: engine.inspect("container", n)["Id"] for n in names}  # type: ignore[index]


def test_the_settings_that_replace_a_runner_container(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> None:
    base = base_image(engine)
    with serve(API_TOKEN) as gitlab:
        tokens = {n: gitlab.create_runner().token for n in ("rep-docker", "rep-shell", "rep-scale")}
        runners: list[dict[str, Any]] = [
            {"name": "rep-docker", "executor": "docker"},
            {"name": "rep-shell", "executor": "shell"},
            {"name": "rep-scale", "executor": "docker-autoscaler", "autoscaler": AUTOSCALER},
        ]
        metrics_port = free_port_block(23)
        with docker_stack(
            tmp_path_factory.mktemp("replacement"),
            [engine],
            gitlab,
            base,
            runners=runners,
            tokens=tokens,
            hosts=[{"name": "local", "host": engine.host, "networkMode": "host", "sessionAddress": "127.0.0.1"}],
            # Published on all addresses: each metrics setting then moves what the runner listens on.
            metrics={"port": metrics_port, "enabled": True, "hostAddress": "0.0.0.0"},  # noqa: S104
            sessionServer={"enabled": True, "port": session_port(metrics_port), "hostAddress": "127.0.0.1"},
            readiness={"enabled": True, "timeoutSeconds": 120},
        ) as stack:
            assert stack.up().summary.result == "succeeded"
            before: Values = {
                key.split(":", 1)[1]: json.loads(item.value) if item.value[:1] in "{[" else item.value
                for key, item in stack.stack.get_all_config().items()
                if key.startswith("gitlab-runners:") and not item.secret
            }
            assert replaced(stack) == (set(), set())  # the deployed stack previews as it is

            replacing: dict[str, set[str]] = {}
            volumes_replaced: dict[str, set[str]] = {}
            for setting, change in CHANGES:
                values = copy.deepcopy(before)
                change(values)
                apply(stack, values, before)
                try:
                    containers, volumes = replaced(stack)
                finally:
                    apply(stack, before, values)
                if containers:
                    replacing[setting] = containers
                if volumes:
                    volumes_replaced[setting] = volumes
            print("runner containers replaced, by setting:", json.dumps({k: sorted(v) for k, v in replacing.items()}))

            # What the provider replaces is what the README and the plan say, no more and no less.
            assert set(replacing) == set(REPLACING_SETTINGS), replacing
            # The socket is mounted in the docker-executor container only: only it is replaced.
            assert replacing["docker.hosts[*].socketPath"] == {"docker-local-docker-runner"}
            # A config volume (with the credentials the runners hold) goes only with a new name.
            assert set(volumes_replaced) == {"docker.containerName"}, volumes_replaced

            # The plan names the cause: `pulumi preview --json` read by scripts/plan_table.py.
            apply(stack, {**before, "docker": {**before["docker"], "stopTimeout": 300}}, before)
            shown, _ = shown_plan(stack.project.dir, stack.project.env, "test", tmp_path_factory.mktemp("plan"))
            for kind in ("docker", "shell", "autoscaler"):
                assert (
                    f"note: replaces runner container docker-local-{kind}-runner: it stops taking jobs and drains "
                    "its running ones (up to docker.stopTimeout) before the new one starts; a change of "
                    "docker.stopTimeout does this"
                ) in shown, shown
            # ...and each container's config.toml, which the stop timeout leaves as it is (issue 20 item 2).
            unchanged = [line for line in shown.splitlines() if line.endswith(" on host local: unchanged")]
            assert len(unchanged) == 3, shown
            apply(stack, before, {**before, "docker": {**before["docker"], "stopTimeout": 300}})

            # A runner's limit: the plan shows the diff of its manager's config.toml only, tokens masked.
            limited = copy.deepcopy(before)
            limited["runners"][0]["limit"] = 7
            apply(stack, limited, before)
            shown, plan_text = shown_plan(stack.project.dir, stack.project.env, "test", tmp_path_factory.mktemp("plan"))
            apply(stack, before, limited)
            header = next(line for line in shown.splitlines() if "(changes; secrets masked):" in line)
            assert header.startswith("config.toml of container ") and header.endswith(
                "-docker on host local (changes; secrets masked):"
            ), header
            diff = shown[shown.index(header) :].splitlines()
            assert "    +limit = 7" in diff, shown
            assert 'token = \\"[MASKED]\\"' in plan_text  # the file the plan carries, as JSON
            assert len([line for line in shown.splitlines() if line.endswith(": unchanged")]) == 2, shown
            assert not any(token in shown or token in plan_text for token in tokens.values())

            # For real: allowPrivileged, a label once, replaces nothing now...
            ids = container_ids(engine, stack)
            stack.set("allowPrivileged", True)
            assert stack.up().summary.result == "succeeded"
            assert container_ids(engine, stack) == ids
            # ...and a metrics address that moves replaces the runner containers (their trigger: no
            # input of theirs changes), each taking its old name, and the runner listens there.
            metrics = {**before["metrics"], "hostAddress": "127.0.0.1"}
            stack.set("metrics", metrics)
            assert stack.up().summary.result == "succeeded"
            moved = container_ids(engine, stack)
            assert all(moved[name] != ids[name] for name in ids)
            port = metrics["port"]
            assert f'listen_address = "127.0.0.1:{port + 1}"' in stack.config_toml("shell")
            # Host networking: the shell container's metrics are this machine's 127.0.0.1:<port + 1>.
            with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/metrics", timeout=10) as answer:
                assert b"gitlab_runner" in answer.read()

"""A fleet of Docker hosts in one stack, for real: two dockerd on this machine (their own data roots
and sockets), the docker provider, the GitLab API double and the runner stand-in (a test double of
gitlab-runner). Each host is its own subtree: a change on one leaves the other's containers alone, a
stopped engine fails only its own resources, and `pulumi up --target` on one host works. Tokens that
expire: each host rotates its own, and a token shared by two hosts is never rotated by either."""

from __future__ import annotations

import functools
import secrets
import time
import tomllib
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pulumi import automation as auto

from components.docker_host import COMPONENT_TYPE as DOCKER_HOST_TYPE
from components.runner_registration import child_urn
from components.settings import PROJECT
from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.docker_engine import (
    Engine,
    ExtraEngine,
    base_image,
    docker_provider_or_skip,
    start_engine,
    wait_for,
)
from tests.integration.docker_stack import docker_stack
from tests.integration.local_cluster import free_port_block

API_TOKEN = "glpat-" + secrets.token_hex(10)
PLUGIN = "aws:1.0.0"  # GitLab's AWS plugin, as `fleeting install` resolves it


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Engine, ExtraEngine]]:
    docker_provider_or_skip()
    first = start_engine()
    second = ExtraEngine(tmp_path_factory.mktemp("dockerd-2"))
    second.start()
    try:
        yield first, second
    finally:
        second.close()


def ids(engine: Engine, names: list[str]) -> dict[str, str]:
    return {n: engine.inspect("container", n)["Id"] for n in names}  # type: ignore[index]


def polled_from(gitlab: GitLabDouble, token: str) -> set[str]:
    with gitlab.lock:
        return {str(p.system_id) for p in gitlab.polls if p.token == token}


def test_a_fleet_of_two_hosts(engines: tuple[Engine, ExtraEngine], tmp_path_factory: pytest.TempPathFactory) -> None:
    first, extra = engines
    second = extra.engine
    base = base_image(first)
    assert base_image(second) == base
    with serve(API_TOKEN) as gitlab:
        created = {n: gitlab.create_runner() for n in ("spread", "one", "two", "scale")}
        tokens = {n: r.token for n, r in created.items()}
        port = free_port_block()
        hosts: list[dict[str, Any]] = [
            {"name": "local", "host": first.host, "networkMode": "host"},
            # Both engines share this machine's network: the second host's metrics go elsewhere.
            {"name": "build-2", "host": second.host, "networkMode": "host", "metricsPort": free_port_block()},
        ]
        autoscaler = {
            "plugin": PLUGIN,
            "maxInstances": 3,
            "connectorConfig": {"username": "ci"},
            "policies": [{"idleCount": 0, "idleTime": "20m"}],
        }
        runners: list[dict[str, Any]] = [
            {"name": "spread", "executor": "shell", "hosts": ["local", "build-2"]},
            {"name": "one", "executor": "shell", "hosts": ["local"]},
            {"name": "two", "executor": "shell", "hosts": ["build-2"]},
            {"name": "scale", "executor": "docker-autoscaler", "hosts": ["build-2"], "autoscaler": autoscaler},
        ]
        with docker_stack(
            tmp_path_factory.mktemp("fleet"),
            [first, second],
            gitlab,
            base,
            runners=runners,
            tokens=tokens,
            hosts=hosts,
            metrics={"port": port},
        ) as stack:
            up = stack.up()
            assert up.summary.result == "succeeded"
            shell, scale = stack.container("shell"), stack.container("autoscaler")
            assert first.exists("container", shell) and not first.exists("container", scale)
            assert second.exists("container", shell) and second.exists("container", scale)
            # One runner spread over both hosts: two runner managers, one system id each.
            wait_for("the spread runner on both hosts", lambda: len(polled_from(gitlab, tokens["spread"])) == 2)
            for name in ("one", "two", "scale"):
                wait_for(f"runner {name} to poll", functools.partial(polled_from, gitlab, tokens[name]))
            # The autoscaling runner's host got its fleeting plugin installed into its image, where the
            # runner looks for aws:1.0.0.
            installed = "$FLEETING_PLUGIN_PATH/registry.gitlab.com/gitlab-org/fleeting/plugins/aws/1.0.0/plugin"
            found = second.run(
                "run", "--rm", "--entrypoint", "sh", stack.image, "-c", f'test -x "{installed}"', check=False
            )
            assert found.returncode == 0, f"{installed} is not in the image"
            image = second.inspect("image", stack.image)
            assert image is not None and image["Config"]["Labels"]["io.gitlab-runners.fleeting-plugins"] == PLUGIN
            assert "[runners.autoscaler]" in stack.config_toml("autoscaler", second)

            # A change on one host only: the other host's containers are not touched.
            before_first = ids(first, [shell, f"{shell}-sync"])
            before_second = ids(second, [shell, f"{shell}-sync"])
            runners[2]["limit"] = 2  # "two" runs on build-2 only
            stack.set("runners", runners)
            stack.up()
            assert ids(first, [shell, f"{shell}-sync"]) == before_first
            after_second = ids(second, [shell, f"{shell}-sync"])
            assert after_second[shell] == before_second[shell]  # reloaded in place
            assert after_second[f"{shell}-sync"] != before_second[f"{shell}-sync"]

            # `pulumi up --target` on one host: only that host's subtree is updated.
            runners[0]["limit"] = 2  # "spread" runs on both hosts: only local is targeted
            stack.set("runners", runners)
            resources: list[dict[str, Any]] = (stack.stack.export_stack().deployment or {})["resources"]
            targets = [
                r["urn"] for r in resources if r["urn"].endswith("gitlab-runners:index:DockerHost::docker-local")
            ]
            assert len(targets) == 1
            # The URNs the engine gives a root component's children are the ones the registration's
            # aliases name (components/runner_registration.py builds them itself).
            provider = child_urn(
                DOCKER_HOST_TYPE, "pulumi:providers:docker", "docker-local-provider", stack.stack.name, PROJECT
            )
            assert provider in {r["urn"] for r in resources}
            stack.up(target=targets, target_dependents=True)
            assert 'name = "spread"' in stack.config_toml("shell", first)
            assert ids(second, [f"{shell}-sync"]) == {f"{shell}-sync": after_second[f"{shell}-sync"]}
            assert stack.config_toml("shell", first).count("limit = 2") >= 1
            on_second = stack.config_toml("shell", second).split("[[runners]]")
            assert "limit = 2" not in next(part for part in on_second if '"spread"' in part)

            # One engine stopped: the other host's update still goes through (--continue-on-error), and
            # the failure names the stopped host's own provider.
            extra.stop()
            runners[1]["limit"] = 3  # "one" runs on local only
            stack.set("runners", runners)
            with pytest.raises(auto.CommandError) as caught:
                stack.up(continue_on_error=True)
            assert "docker-build-2-provider" in str(caught.value)
            assert "failed to connect to any docker daemon" in str(caught.value)
            assert "limit = 3" in stack.config_toml("shell", first)

            # The engine back; then the host leaves the stack: its containers go, the other's stay.
            extra.start()
            stack.up()
            stack.set("runners", [{**runners[0], "hosts": ["local"]}, runners[1]])
            stack.set("runnerTokens", {n: tokens[n] for n in ("spread", "one")}, secret=True)
            docker = stack.config("docker")
            docker["hosts"] = [hosts[0]]
            stack.set("docker", docker)
            stack.up()
            time.sleep(1)
            assert not second.exists("container", shell) and not second.exists("container", scale)
            assert not [v for v in second.names("volume") if v.startswith(stack.prefix)]
            assert first.exists("container", shell)
            assert ids(first, [shell])[shell] == before_first[shell]


LIFETIME = 40  # seconds: the instance's runner-token lifetime; each runner resets its token at 75% of it


def managers_polling(gitlab: GitLabDouble, token: str, since: float) -> set[str]:
    """The system ids (runner managers) that polled with `token` at or after `since`."""
    with gitlab.lock:
        return {str(p.system_id) for p in gitlab.polls if p.token == token and p.at.timestamp() >= since}


def runner_entry(config_toml: str, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(r for r in tomllib.loads(config_toml)["runners"] if r["name"] == name)
    return entry


def test_tokens_that_rotate_themselves_on_a_fleet(
    engines: tuple[Engine, ExtraEngine], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Issue 18 item 1: with one token per host each host rotates its own and keeps polling past the
    token's lifetime; one token on both hosts is rotated by neither, and its new token from the user
    reaches both; `pulumi up` after the lifetime goes through and writes back no revoked token."""
    first, extra = engines
    second = extra.engine
    base = base_image(first)
    assert base_image(second) == base
    started = time.time()
    with serve(API_TOKEN, token_lifetime=timedelta(seconds=LIFETIME)) as gitlab:
        # What the stack creates with the gitlab provider, one GitLab runner per host, is brought along
        # here (the provider cannot be built on these machines): runnerTokens.each.<host>.
        each = {"local": gitlab.create_runner(), "build-2": gitlab.create_runner()}
        shared = gitlab.create_runner()
        hosts: list[dict[str, Any]] = [
            {"name": "local", "host": first.host, "networkMode": "host"},
            {"name": "build-2", "host": second.host, "networkMode": "host", "metricsPort": free_port_block()},
        ]
        runners: list[dict[str, Any]] = [
            {"name": "each", "executor": "shell", "hosts": ["local", "build-2"]},
            {"name": "shared", "executor": "shell", "hosts": ["local", "build-2"]},
        ]
        tokens: dict[str, Any] = {"each": {h: r.token for h, r in each.items()}, "shared": shared.token}
        with docker_stack(
            tmp_path_factory.mktemp("fleet-rotation"),
            [first, second],
            gitlab,
            base,
            runners=runners,
            tokens=tokens,
            hosts=hosts,
        ) as stack:
            up = stack.up()
            assert up.summary.result == "succeeded"
            assert "runnerTokens.shared is one token for 2 Docker hosts" in up.stdout + up.stderr
            shell = "shell"
            for engine, host in ((first, "local"), (second, "build-2")):
                config = stack.config_toml(shell, engine)
                own = runner_entry(config, "each")
                assert own["token"] == each[host].token and own["token_expires_at"]
                common = runner_entry(config, "shared")
                assert common["feature_flags"] == {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}
                assert "token_expires_at" not in common  # no reset is ever scheduled for it
            originals = {h: r.token for h, r in each.items()}

            # At 75% of the lifetime each host resets its own runner's token; nobody resets the shared one.
            each_ids = {r.id for r in each.values()}
            wait_for(
                "both hosts to rotate their own tokens",
                lambda: {p.runner_id for p in gitlab.resets} >= each_ids,
                seconds=LIFETIME + 30,
            )
            with gitlab.lock:
                assert shared.id not in {p.runner_id for p in gitlab.resets}
                assert sorted(p.runner_id for p in gitlab.resets if p.runner_id in each_ids) == sorted(each_ids)
            for host, runner in each.items():
                assert originals[host] in runner.revoked and runner.token != originals[host]
            # Both hosts still poll with the shared token: neither cut the other off.
            since = time.time()
            wait_for(
                "both hosts to poll with the shared token",
                lambda: len(managers_polling(gitlab, shared.token, since)) == 2,
                seconds=30,
            )

            # The user's rotation of the shared token (a new runner made in GitLab), before it expires.
            renewed = gitlab.create_runner()
            stack.set("runnerTokens", {**tokens, "shared": renewed.token}, secret=True)
            assert stack.up().summary.result == "succeeded"

            # Past the lifetime of every token the stack delivered first: every host still polls, each
            # with its current token, and the new shared token on both.
            time.sleep(max(0.0, started + LIFETIME + 2 - time.time()))
            since = time.time()
            for host, runner in each.items():
                wait_for(
                    f"{host} to poll with its current token",
                    functools.partial(gitlab.polled_since, runner.token, since),
                )
            wait_for(
                "both hosts to poll with the new shared token",
                lambda: len(managers_polling(gitlab, renewed.token, since)) == 2,
                seconds=30,
            )
            with gitlab.lock:
                systems = {h: {p.system_id for p in gitlab.polls if p.runner_id == r.id} for h, r in each.items()}
            assert len(systems["local"]) == 1 and systems["local"].isdisjoint(systems["build-2"])

            # A settings change after the lifetime: it goes through, keeps what each runner holds, and
            # never writes back a token the runner replaced.
            before = {e.host: e.inspect("container", stack.container(shell))["Id"] for e in (first, second)}  # type: ignore[index]
            stack.set("checkInterval", "2")
            assert stack.up().summary.result == "succeeded"
            for engine, host in ((first, "local"), (second, "build-2")):
                config = stack.config_toml(shell, engine)
                assert "check_interval = 2" in config
                assert runner_entry(config, "each")["token"] == each[host].token
                assert originals[host] not in config and shared.token not in config
                assert runner_entry(config, "shared")["token"] == renewed.token
                assert engine.inspect("container", stack.container(shell))["Id"] == before[engine.host]  # type: ignore[index]
            with gitlab.lock:
                assert renewed.id not in {p.runner_id for p in gitlab.resets}

"""The interactive web terminal (config.toml [session_server]): off by default; on, each runner manager
listens where GitLab can reach it and advertises that address, or the settings say why it cannot."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components.docker_host import DockerHost, DockerHostArgs
from components.kubernetes_runner import chart_values
from components.settings import ManagerSettings, Settings, SettingsError, parse_settings
from tests.unit.helpers import run
from tests.unit.mocks import RecordingMocks

ROOT = Path(__file__).resolve().parents[2]
CONTAINER = "docker:index/container:Container"
TOKEN = "glrt-session-unit-token"
ON = {"enabled": True}
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 - the address the tests expect the port published on


def parse(target: str, **values: Any) -> Settings:
    return parse_settings({"target": target, **values}, stack="unit", has_gitlab_token=True)


def problems(target: str, **values: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(target, **values)
    return [str(p) for p in caught.value.problems]


def deploy(settings: Settings, host: int = 0) -> None:
    target = settings.docker
    assert target is not None
    run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=target.hosts[host],
                target=target,
                runners=[r for r in settings.runners if target.hosts[host].name in (r.hosts or ())],
                manager=ManagerSettings(gitlab_url="https://gl.example", global_=settings.global_),
                tokens={r.name: pulumi.Output.secret(TOKEN) for r in settings.runners},
            ),
        )
    )


def containers(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    return {c.inputs["name"]: c.inputs for c in mocks.by_type(CONTAINER)}


def config_toml(mocks: RecordingMocks, container: str) -> dict[str, Any]:
    sync = containers(mocks)[f"{container}-sync"]
    return tomllib.loads(next(u["content"] for u in sync["uploads"] if u["file"].endswith("config.toml")))


def trigger(mocks: RecordingMocks, container: str) -> Any:
    """The runner container's replacement trigger: what the runner takes only when it starts."""
    runner = next(c for c in mocks.by_type(CONTAINER) if c.inputs["name"] == container)
    return runner.options["replacementTrigger"]


# ---- Docker -------------------------------------------------------------------------------------------


def test_off_by_default(mocks: RecordingMocks) -> None:
    deploy(parse("docker", runners=[{"name": "d"}, {"name": "s", "executor": "shell"}]))
    for kind in ("docker", "shell"):
        assert "session_server" not in config_toml(mocks, f"gitlab-runner-unit-{kind}")
        runner = containers(mocks)[f"gitlab-runner-unit-{kind}"]
        assert "ports" not in runner
    # As before the terminal existed: the metrics address alone, so an upgrade replaces nothing.
    assert trigger(mocks, "gitlab-runner-unit-docker") == "127.0.0.1:9252"


def test_bridge_publishes_each_containers_port_and_advertises_the_hosts_address(mocks: RecordingMocks) -> None:
    deploy(
        parse(
            "docker",
            runners=[
                {"name": "d"},
                {"name": "s", "executor": "shell"},
                {
                    "name": "a",
                    "executor": "docker-autoscaler",
                    "autoscaler": {
                        "plugin": "aws:1.0.0",
                        "maxInstances": 2,
                        "connectorConfig": {"username": "ec2-user"},
                        "policies": [{"idleCount": 0}],
                    },
                },
            ],
            sessionServer={"enabled": True, "sessionTimeout": 600},
            docker={"hosts": [{"name": "build-1", "sessionAddress": "build-1.example.com"}]},
        )
    )
    for kind, port in (("docker", 8093), ("shell", 8094)):
        config = config_toml(mocks, f"gitlab-runner-unit-{kind}")
        assert config["session_server"] == {
            # Its own network namespace: every address in it; the published port is what GitLab reaches.
            "listen_address": f"0.0.0.0:{port}",
            "advertise_address": f"build-1.example.com:{port}",
            "session_timeout": 600,
        }
        runner = containers(mocks)[f"gitlab-runner-unit-{kind}"]
        assert runner["ports"] == [{"internal": port, "external": port, "ip": ALL_ADDRESSES}]
        assert trigger(mocks, f"gitlab-runner-unit-{kind}") == (
            f"127.0.0.1:{9252 + (port - 8093)} session 0.0.0.0:{port} build-1.example.com:{port}"
        )
    # docker-autoscaler and instance jobs have no terminal: that container serves none.
    assert "session_server" not in config_toml(mocks, "gitlab-runner-unit-autoscaler")
    assert "ports" not in containers(mocks)["gitlab-runner-unit-autoscaler"]


def test_host_network_listens_on_the_host_address_and_publishes_nothing(mocks: RecordingMocks) -> None:
    deploy(
        parse(
            "docker",
            runners=[{"name": "d"}],
            sessionServer={"enabled": True, "port": 9093, "hostAddress": "10.0.0.5"},
            metrics={"enabled": True, "hostAddress": "127.0.0.1"},
            docker={"hosts": [{"networkMode": "host", "sessionAddress": "10.0.0.5"}]},
        )
    )
    config = config_toml(mocks, "gitlab-runner-unit-docker")
    assert config["session_server"]["listen_address"] == "10.0.0.5:9093"
    assert config["session_server"]["advertise_address"] == "10.0.0.5:9093"
    assert "ports" not in containers(mocks)["gitlab-runner-unit-docker"]


def test_an_ipv6_listen_address_is_bracketed(mocks: RecordingMocks) -> None:
    deploy(
        parse(
            "docker",
            runners=[{"name": "d"}],
            sessionServer={"enabled": True, "hostAddress": "::"},
            docker={"hosts": [{"networkMode": "host", "sessionAddress": "[2001:db8::5]"}]},
        )
    )
    session = config_toml(mocks, "gitlab-runner-unit-docker")["session_server"]
    assert session["listen_address"] == "[::]:8093" and session["advertise_address"] == "[2001:db8::5]:8093"


def test_each_host_of_a_fleet_advertises_its_own_address(mocks: RecordingMocks) -> None:
    settings = parse(
        "docker",
        runners=[{"name": "d"}],
        sessionServer=ON,
        docker={
            "hosts": [
                {"name": "build-1", "host": "ssh://ci@build-1", "sessionAddress": "build-1.example.com"},
                {"name": "build-2", "host": "ssh://ci@build-2", "sessionAddress": "build-2.example.com"},
            ]
        },
    )
    advertised = []
    for index in (0, 1):
        mocks.resources.clear()
        deploy(settings, index)
        advertised.append(config_toml(mocks, "gitlab-runner-unit-docker")["session_server"]["advertise_address"])
    assert advertised == ["build-1.example.com:8093", "build-2.example.com:8093"]


def test_a_new_address_replaces_the_runner_container_which_binds_it_at_start(mocks: RecordingMocks) -> None:
    def started_with(address: str, timeout: int = 1800) -> Any:
        mocks.resources.clear()
        deploy(
            parse(
                "docker",
                runners=[{"name": "d"}],
                sessionServer={"enabled": True, "sessionTimeout": timeout},
                docker={"hosts": [{"sessionAddress": address}]},
            )
        )
        return trigger(mocks, "gitlab-runner-unit-docker")

    # The runner reads [session_server]'s addresses when it starts only: a new one replaces the container.
    assert started_with("a.example.com") != started_with("b.example.com")
    # Its timeout is read for each job from the reloaded config.toml: nothing replaced.
    assert started_with("a.example.com", 600) == started_with("a.example.com")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"sessionServer": ON},
            "gitlab-runners:docker.hosts[0].sessionAddress is required with gitlab-runners:sessionServer.enabled: "
            "the host name or IP GitLab reaches the web terminal of host local on (its runners advertise it; a "
            "container cannot know it). Example: sessionAddress: local.example.com",
        ),
        (
            {
                "sessionServer": ON,
                "runners": [{"name": "d", "hosts": ["b1", "b2"]}],
                "docker": {
                    "hosts": [
                        {"name": "b1", "host": "ssh://ci@b1", "sessionAddress": "ci.example.com"},
                        {"name": "b2", "host": "ssh://ci@b2", "sessionAddress": "ci.example.com"},
                    ]
                },
            },
            'gitlab-runners:docker.hosts[1].sessionAddress "ci.example.com" is host b1\'s too: GitLab would open '
            "the terminals of both hosts' jobs on one of them. Example: sessionAddress: b2.example.com",
        ),
        (
            {"docker": {"hosts": [{"sessionAddress": "ci.example.com"}]}},
            "gitlab-runners:docker.hosts[0].sessionAddress has no effect without gitlab-runners:sessionServer.enabled: "
            "true. Example: sessionServer: {enabled: true}",
        ),
        (
            {
                "sessionServer": {"enabled": True, "port": 9252},
                "runners": [{"name": "s", "executor": "shell"}],
                "docker": {"hosts": [{"sessionAddress": "ci.example.com"}]},
            },
            "gitlab-runners:sessionServer.port is 9252: the session port 9253 of host local is one of its metrics "
            "ports (9252-9254). Example: port: 8093",
        ),
        (
            {
                "sessionServer": {"enabled": True, "port": 65535},
                "runners": [{"name": "s", "executor": "shell"}],
                "docker": {"hosts": [{"sessionAddress": "ci.example.com"}]},
            },
            "gitlab-runners:sessionServer.port is 65535, and the shell runners' container takes the next port",
        ),
        (
            {
                "sessionServer": ON,
                "runners": [
                    {
                        "name": "i",
                        "executor": "instance",
                        "autoscaler": {
                            "plugin": "aws:1.0.0",
                            "maxInstances": 2,
                            "connectorConfig": {"username": "ec2-user"},
                            "policies": [{"idleCount": 0}],
                        },
                    }
                ],
            },
            "gitlab-runners:sessionServer.enabled is true but no runner's jobs have a web terminal "
            "(docker-autoscaler and instance jobs have none). Example: enabled: false",
        ),
        (
            {"extraGlobalConfig": {"session_server": {"listen_address": "0.0.0.0:8093"}}},
            "gitlab-runners:extraGlobalConfig.session_server is rendered by the stack from "
            "gitlab-runners:sessionServer: set that instead",
        ),
        (
            {"sessionServer": {"enabled": True, "sessionTimeout": 0}},
            "gitlab-runners:sessionServer.sessionTimeout must be at least 1, got 0",
        ),
        (
            {"sessionServer": ON, "docker": {"hosts": [{"sessionAddress": "https://ci.example.com"}]}},
            "gitlab-runners:docker.hosts[0].sessionAddress must be a host name or an IP address, without scheme or "
            'port (IPv6 in brackets), got "https://ci.example.com"',
        ),
    ],
)
def test_docker_settings_that_cannot_serve_the_terminal(values: dict[str, Any], expected: str) -> None:
    found = problems("docker", **values)
    assert any(p.startswith(expected) for p in found), found


# ---- Kubernetes -------------------------------------------------------------------------------------


def k8s_values(settings: Settings) -> dict[str, Any]:
    assert settings.kubernetes is not None
    return chart_values(settings.runners[0], settings.kubernetes, settings.global_, settings.gitlab_url, "s", "f")


def test_kubernetes_off_by_default() -> None:
    assert "sessionServer" not in k8s_values(parse("kubernetes"))


def test_kubernetes_chart_values() -> None:
    assert k8s_values(parse("kubernetes", sessionServer=ON))["sessionServer"] == {
        "enabled": True,
        "timeout": 1800,
        "internalPort": 8093,
        "externalPort": 9000,
        "serviceType": "LoadBalancer",
    }
    values = k8s_values(
        parse(
            "kubernetes",
            sessionServer={"enabled": True, "port": 8100, "sessionTimeout": 900},
            kubernetes={"sessionService": {"type": "NodePort", "nodePort": 30093, "publicAddress": "ci.example.com"}},
        )
    )
    assert values["sessionServer"] == {
        "enabled": True,
        "timeout": 900,
        "internalPort": 8100,
        "externalPort": 9000,
        "serviceType": "NodePort",
        "nodePort": 30093,
        "publicIP": "ci.example.com",
    }
    values = k8s_values(
        parse(
            "kubernetes",
            sessionServer=ON,
            kubernetes={"sessionService": {"port": 443, "sourceRanges": ["203.0.113.0/24"]}},
        )
    )
    assert values["sessionServer"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert values["sessionServer"]["externalPort"] == 443


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"sessionServer": ON, "kubernetes": {"replicas": 2}},
            "gitlab-runners:kubernetes.replicas is 2, but the chart serves the web terminal from one manager pod only",
        ),
        (
            {"sessionServer": ON, "kubernetes": {"sessionService": {"nodePort": 30093}}},
            'gitlab-runners:kubernetes.sessionService.nodePort only applies to type NodePort, not "LoadBalancer"',
        ),
        (
            {
                "sessionServer": ON,
                "kubernetes": {"sessionService": {"type": "NodePort", "sourceRanges": ["10.0.0.0/8"]}},
            },
            'gitlab-runners:kubernetes.sessionService.sourceRanges only applies to type LoadBalancer, not "NodePort"',
        ),
        (
            {
                "sessionServer": ON,
                "kubernetes": {"sessionService": {"type": "ClusterIP", "publicAddress": "a.example"}},
            },
            "gitlab-runners:kubernetes.sessionService.publicAddress would be advertised, but a ClusterIP Service",
        ),
        (
            {"kubernetes": {"sessionService": {"type": "NodePort"}}},
            "gitlab-runners:kubernetes.sessionService has no effect without gitlab-runners:sessionServer.enabled: true",
        ),
        (
            {"sessionServer": {"enabled": True, "hostAddress": ALL_ADDRESSES}},
            "gitlab-runners:sessionServer.hostAddress has no effect on Kubernetes",
        ),
        (
            {"sessionServer": {"enabled": True, "port": 9252}},
            "gitlab-runners:sessionServer.port is the metrics port (9252) of the manager pod",
        ),
        (
            {"sessionServer": ON, "kubernetes": {"sessionService": {"type": "NodePort", "nodePort": 8080}}},
            "gitlab-runners:kubernetes.sessionService.nodePort must be at least 30000, got 8080",
        ),
    ],
)
def test_kubernetes_settings_that_cannot_serve_the_terminal(values: dict[str, Any], expected: str) -> None:
    found = problems("kubernetes", **values)
    assert any(p.startswith(expected) for p in found), found


# What the chart's entrypoint holds when the pre-entrypoint script runs: its global part with the
# [session_server] its scripts completed (address and port found), then the registered runner.
REGISTERED = f"""shutdown_timeout = 30
concurrent = 1
check_interval = 3
log_level = "info"

[session_server]
  listen_address = "0.0.0.0:8093"
  advertise_address = "203.0.113.7:9000"
  session_timeout = 1800

[[runners]]
  name = "d"
  url = "https://gitlab.example.com"
  id = 7
  token = "{TOKEN}"
  executor = "kubernetes"
  [runners.kubernetes]
    namespace = "gitlab"
"""


def test_extra_global_keys_keep_the_charts_session_server(tmp_path: Path) -> None:
    values = k8s_values(parse("kubernetes", sessionServer=ON, extraGlobalConfig={"log_format": "json"}))
    (tmp_path / "config.toml").write_text(REGISTERED)
    (tmp_path / "script").write_text(values["preEntrypointScript"])
    env = {**os.environ, "CONFIG_PATH_FOR_INIT": f"{tmp_path}/"}
    done = subprocess.run(["bash", str(tmp_path / "script")], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    document = tomllib.loads((tmp_path / "config.toml").read_text())
    assert document["log_format"] == "json"
    assert document["session_server"] == {
        "listen_address": "0.0.0.0:8093",
        "advertise_address": "203.0.113.7:9000",
        "session_timeout": 1800,
    }
    assert document["runners"][0]["token"] == TOKEN


# ---- documented -------------------------------------------------------------------------------------


def test_the_readme_terminal_example_is_a_valid_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The web terminal", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = {k.removeprefix("gitlab-runners:"): v for k, v in yaml.safe_load(block)["config"].items()}
    settings = parse_settings(config, stack="unit", has_gitlab_token=True)
    assert settings.global_.session_server.enabled
    assert settings.docker is not None and all(h.session_address for h in settings.docker.hosts)

"""config.toml parsed back and compared field by field, for each executor."""

from __future__ import annotations

import tomllib

from components.runner_config import render_chart_runner_toml, render_config_toml
from components.settings import parse_settings


def _settings(target: str, runners: list[dict[str, object]], **extra: object):  # type: ignore[no-untyped-def]
    return parse_settings({"target": target, "runners": runners, **extra}, stack="t", has_gitlab_token=True)


def test_docker_and_shell_runners() -> None:
    settings = _settings(
        "docker",
        [
            {
                "name": "d",
                "executor": "docker",
                "image": "debian:12.7",
                "limit": 2,
                "requestConcurrency": 2,
                "volumes": ["/cache", "/certs:/certs:ro"],
                "pullPolicy": ["if-not-present"],
            },
            {"name": "s", "executor": "shell", "limit": 1},
        ],
        checkInterval=5,
    )
    tokens = {"d": "glrt-d", "s": "glrt-s"}
    text = render_config_toml(settings.global_, settings.runners, "https://gl.example", tokens, "127.0.0.1:9300")
    doc = tomllib.loads(text)
    assert doc["concurrent"] == 3
    assert doc["check_interval"] == 5
    assert doc["shutdown_timeout"] == 30
    assert doc["listen_address"] == "127.0.0.1:9300"
    docker_runner, shell_runner = doc["runners"]
    assert docker_runner["name"] == "d"
    assert docker_runner["url"] == "https://gl.example"
    assert docker_runner["token"] == "glrt-d"
    assert docker_runner["executor"] == "docker"
    assert docker_runner["limit"] == 2 and docker_runner["request_concurrency"] == 2
    assert docker_runner["docker"] == {
        "image": "debian:12.7",
        "privileged": False,
        "volumes": ["/cache", "/certs:/certs:ro"],
        "pull_policy": ["if-not-present"],
        "tls_verify": False,
        "disable_cache": False,
        "shm_size": 0,
    }
    assert shell_runner["executor"] == "shell" and shell_runner["token"] == "glrt-s"
    assert "docker" not in shell_runner and "kubernetes" not in shell_runner


def test_no_listen_address_unless_given() -> None:
    settings = _settings("docker", [{"name": "d"}])
    doc = tomllib.loads(render_config_toml(settings.global_, settings.runners, "https://x", {"d": "glrt-x"}))
    assert "listen_address" not in doc


def test_kubernetes_runner_full_and_chart_template() -> None:
    settings = _settings(
        "kubernetes",
        [{"name": "k", "image": "alpine:3.20.3", "jobResources": {"cpuRequest": "250m", "memoryLimit": "1Gi"}}],
        kubernetes={"namespace": "ci"},
    )
    full = tomllib.loads(render_config_toml(settings.global_, settings.runners, "https://x", {"k": "glrt-k"}))
    section = full["runners"][0]["kubernetes"]
    assert section == {
        "namespace": "gitlab",
        "image": "alpine:3.20.3",
        "privileged": False,
        "pull_policy": ["always"],
        "cpu_request": "250m",
        "memory_limit": "1Gi",
        # The architecture of the helper the runner pulls without a pin of its own (placement.py).
        "node_selector": {"kubernetes.io/arch": "amd64"},
    }
    chart = tomllib.loads(render_chart_runner_toml(settings.runners[0], "ci"))
    entry = chart["runners"][0]
    # The chart supplies url and token (from its Secret); the template must carry neither.
    assert "token" not in entry and "url" not in entry
    assert entry["executor"] == "kubernetes"
    assert entry["kubernetes"]["namespace"] == "ci"


def test_strings_are_escaped_not_templated() -> None:
    settings = _settings("docker", [{"name": "d", "image": 'img"with"quotes:1'}])
    doc = tomllib.loads(render_config_toml(settings.global_, settings.runners, "https://x", {"d": 'glrt-"\n'}))
    assert doc["runners"][0]["docker"]["image"] == 'img"with"quotes:1'
    assert doc["runners"][0]["token"] == 'glrt-"\n'

"""The program under the real engine: preview of both example stacks, and bad config."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.integration.conftest import Project

FAKE_TOKENS = {"dev-docker": "glrt-integration-fake-docker", "dev-shell": "glrt-integration-fake-shell"}


def stack(project: Project, name: str) -> auto.Stack:
    return auto.create_or_select_stack(
        stack_name=name,
        work_dir=str(project.dir),
        opts=auto.LocalWorkspaceOptions(env_vars=project.env),
    )


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on: the 'cluster' of a kubeconfig that cannot be reached."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unreachable_kubeconfig(path: Path) -> Path:
    server = f"https://127.0.0.1:{closed_port()}"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "none", "user": {"token": "not-a-real-credential"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    return path


def test_bad_config_fails_in_the_engine_before_any_resource(project: Project) -> None:
    dev = stack(project, "dev")
    dev.set_config("gitlab-runners:target", auto.ConfigValue("dokcer"))
    with pytest.raises(auto.CommandError) as caught:
        dev.preview(color="never")
    output = str(caught.value)
    assert 'gitlab-runners:target must be "docker" or "kubernetes", got "dokcer"' in output
    # A clean message from settings, not a Python traceback.
    assert "Traceback" not in output
    assert "docker:index" not in output and "gitlab:index" not in output


def test_dev_stack_preview_runs_the_program_up_to_the_docker_provider(project: Project) -> None:
    """The dev stack evaluates in the real engine; its only failure is the docker provider plugin,
    which cannot be built on these machines (see README, "What runs where"). When that plugin is
    installed this test fails, and should then assert a successful preview instead."""
    dev = stack(project, "dev")
    dev.set_config("gitlab-runners:runnerTokens", auto.ConfigValue(json.dumps(FAKE_TOKENS), secret=True))
    events: list[auto.EngineEvent] = []
    with pytest.raises(auto.CommandError) as caught:
        dev.preview(color="never", on_event=events.append)
    output = str(caught.value)
    assert "no resource plugin 'pulumi-resource-docker' found" in output
    assert "gitlab-runners:" not in output  # settings accepted the stack
    registered = {e.resource_pre_event.metadata.type for e in events if e.resource_pre_event}
    assert "gitlab-runners:index:RunnerRegistration" in registered
    assert not any(t.startswith("gitlab:") for t in registered)  # existing tokens: nothing in GitLab
    for token in FAKE_TOKENS.values():
        assert token not in output


def test_prod_stack_preview_without_a_cluster(project: Project, tmp_path: Path) -> None:
    prod = stack(project, "prod")
    prod.set_config(
        "gitlab-runners:runnerTokens",
        auto.ConfigValue(json.dumps({"prod-k8s": "glrt-integration-fake-k8s"}), secret=True),
    )
    kubeconfig = unreachable_kubeconfig(tmp_path / "kubeconfig")
    prod.set_config(
        "gitlab-runners:kubernetes",
        auto.ConfigValue(
            json.dumps(
                {
                    "namespace": "gitlab",
                    "chart": {"repository": "https://charts.gitlab.io", "version": "0.82.0"},
                    "kubeconfig": str(kubeconfig),
                }
            )
        ),
    )
    events: list[auto.EngineEvent] = []
    try:
        result = prod.preview(color="never", on_event=events.append)
        output = result.stdout
        succeeded = True
    except auto.CommandError as error:
        output = str(error)
        succeeded = False
    registered = {e.resource_pre_event.metadata.type for e in events if e.resource_pre_event}
    assert "kubernetes:core/v1:Namespace" in registered, output
    assert "glrt-integration-fake-k8s" not in output
    if not succeeded:
        # Without a reachable cluster the failure names the cluster, not a stack trace.
        assert "Traceback" not in output
        assert "127.0.0.1" in output or "unreachable" in output or "connection refused" in output, output

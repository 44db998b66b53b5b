"""The program under the real engine (Automation API, `file://` backend): both example stacks,
bad config, and the policy pack. No cluster, no chart repository and no GitLab are reachable here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pulumi import automation as auto

from components.settings import CHART_VERSION
from tests.integration.conftest import ROOT, Project, stack, with_existing_tokens
from tests.integration.docker_engine import docker_provider_or_skip, start_engine
from tests.integration.local_cluster import free_port, write_kubeconfig

FAKE_DEV_TOKENS = {"dev-docker": "glrt-integration-fake-docker", "dev-shell": "glrt-integration-fake-shell"}
FAKE_PROD_TOKEN = "glrt-integration-fake-kubernetes"
LOCAL_CHART = ROOT / "tests" / "fixtures" / "chart"
POLICY_PACK = str(ROOT / "policy")


def unreachable_kubeconfig(path: Path) -> Path:
    """A kubeconfig whose API server is a 127.0.0.1 port nothing listens on."""
    return write_kubeconfig(path, f"https://127.0.0.1:{free_port()}", "no-credential")


def prod_stack(project: Project, tmp_path: Path, chart: dict[str, str]) -> auto.Stack:
    """The prod example stack with an existing (fake) runner token and no reachable cluster."""
    prod = stack(project, "prod")
    with_existing_tokens(prod, {"prod-k8s": FAKE_PROD_TOKEN})
    kubernetes = {"namespace": "gitlab", "chart": chart, "kubeconfig": str(unreachable_kubeconfig(tmp_path / "kc"))}
    prod.set_config("gitlab-runners:kubernetes", auto.ConfigValue(json.dumps(kubernetes)))
    return prod


def pre_event_types(events: list[auto.EngineEvent]) -> list[str]:
    return [e.resource_pre_event.metadata.type for e in events if e.resource_pre_event]


def test_prod_stack_previews_offline_with_a_local_chart(project: Project, tmp_path: Path) -> None:
    prod = prod_stack(project, tmp_path, {"path": str(LOCAL_CHART)})
    events: list[auto.EngineEvent] = []
    result = prod.preview(color="never", on_event=events.append, diff=True)
    types = pre_event_types(events)
    for expected in (
        "gitlab-runners:index:RunnerRegistration",
        "pulumi:providers:kubernetes",
        "gitlab-runners:index:KubernetesRunner",
        "kubernetes:core/v1:Secret",
        "kubernetes:helm.sh/v3:Release",
    ):
        assert expected in types, (expected, types)
    assert not any(t.startswith("gitlab:") for t in types)  # existing token: nothing created in GitLab
    assert "kubernetes:core/v1:Namespace" not in types  # an existing namespace is used, not managed
    assert result.change_summary.get(auto.OpType.CREATE) == 6
    assert FAKE_PROD_TOKEN not in result.stdout + result.stderr
    assert '"prod-k8s-runner"' in result.stdout


def test_prod_stack_names_the_unreachable_chart_repository(project: Project, tmp_path: Path) -> None:
    prod = prod_stack(project, tmp_path, {"repository": "https://charts.gitlab.io", "version": CHART_VERSION})
    with pytest.raises(auto.CommandError) as caught:
        prod.preview(color="never")
    output = str(caught.value)
    assert '"https://charts.gitlab.io" is not a valid chart repository or cannot be reached' in output
    assert FAKE_PROD_TOKEN not in output


def test_prod_stack_passes_the_policy_pack(project: Project, tmp_path: Path) -> None:
    prod = prod_stack(project, tmp_path, {"path": str(LOCAL_CHART)})
    result = prod.preview(color="never", policy_packs=[POLICY_PACK])
    assert "gitlab-runners-security" in result.stdout
    assert "mandatory" not in result.stdout.lower()


def test_unsafe_fixture_fails_the_policy_pack(unsafe_project: Project, tmp_path: Path) -> None:
    unsafe = stack(unsafe_project, "unsafe")
    # The docker provider plugin is not available on these machines; the Kubernetes part is.
    unsafe.set_config("unsafe-runners:parts", auto.ConfigValue('["kubernetes"]'))
    unsafe.set_config("unsafe-runners:chartPath", auto.ConfigValue(str(LOCAL_CHART)))
    unsafe.set_config("unsafe-runners:kubeconfig", auto.ConfigValue(str(unreachable_kubeconfig(tmp_path / "kc"))))
    with pytest.raises(auto.CommandError) as caught:
        unsafe.preview(color="never", policy_packs=[POLICY_PACK])
    output = str(caught.value)
    for policy in (
        "no-privileged-runners",
        "pinned-images-and-charts",
        "no-plaintext-tokens",
        "kubernetes-runner-hardened",
        "rbac-stays-namespaced",
        "no-wildcard-rbac",
    ):
        assert policy in output, policy
    assert "runner priv runs privileged job pods" in output
    assert "input values.runnerToken holds a GitLab token" in output


def test_bad_config_fails_in_the_engine_before_any_resource(project: Project) -> None:
    dev = stack(project, "dev")
    dev.set_config("gitlab-runners:target", auto.ConfigValue("dokcer"))
    events: list[auto.EngineEvent] = []
    with pytest.raises(auto.CommandError) as caught:
        dev.preview(color="never", on_event=events.append)
    output = str(caught.value)
    assert 'gitlab-runners:target must be "docker" or "kubernetes", got "dokcer"' in output
    assert "Traceback" not in output  # a clean message from settings, not a stack trace
    # Nothing but the stack itself was even announced to the engine.
    assert set(pre_event_types(events)) <= {"pulumi:pulumi:Stack"}


def test_dev_stack_previews_with_the_docker_provider(project: Project) -> None:
    docker_provider_or_skip()
    engine = start_engine()
    dev = stack(project, "dev")
    with_existing_tokens(dev, FAKE_DEV_TOKENS)
    dev.set_config(
        "gitlab-runners:docker", auto.ConfigValue(json.dumps({"hosts": [{"name": "local", "host": engine.host}]}))
    )
    events: list[auto.EngineEvent] = []
    result = dev.preview(color="never", on_event=events.append)
    types = pre_event_types(events)
    assert types.count("gitlab-runners:index:DockerRunner") == 2  # one per executor kind
    assert types.count("docker:index/container:Container") == 4  # each runner and its config sync
    assert "docker:index/image:Image" in types and "pulumi:providers:docker" in types
    output = result.stdout + result.stderr
    for token in FAKE_DEV_TOKENS.values():
        assert token not in output


def test_an_unreachable_docker_host_is_named(project: Project, tmp_path: Path) -> None:
    docker_provider_or_skip()
    dev = stack(project, "dev")
    with_existing_tokens(dev, FAKE_DEV_TOKENS)
    nowhere = f"unix://{tmp_path / 'no-daemon.sock'}"
    dev.set_config(
        "gitlab-runners:docker", auto.ConfigValue(json.dumps({"hosts": [{"name": "gone", "host": nowhere}]}))
    )
    with pytest.raises(auto.CommandError) as caught:
        dev.preview(color="never")
    output = str(caught.value)
    assert "docker-gone-provider" in output  # the host's own provider, named after the host
    assert "failed to connect to any docker daemon" in output
    # The language host stops the abandoned program with SIGTERM, not SIGINT: no KeyboardInterrupt
    # traceback. (A call in flight when the engine shuts down may still print its gRPC error.)
    assert "KeyboardInterrupt" not in output
    for token in FAKE_DEV_TOKENS.values():
        assert token not in output

"""Every policy with passing and failing resources built by hand; then whole stacks under mocks."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import PolicyCustomTimeouts, PolicyResourceOptions, ResourceValidationArgs
from runner_policies import (
    CONTAINER,
    IMAGE,
    POLICIES,
    RELEASE,
    SECRET_TYPE,
    docker_socket_only_for_docker_executor,
    is_pinned_image,
    kubernetes_runner_hardened,
    no_plaintext_tokens,
    no_privileged_runners,
    pinned_images_and_charts,
    rbac_stays_namespaced,
)

from tests.unit.test_program import FAKE_API_TOKEN, ROOT, run_program, stack_config

Validator = Any


def make_args(resource_type: str, props: dict[str, Any], name: str = "r") -> ResourceValidationArgs:
    options = PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )
    return ResourceValidationArgs(
        resource_type=resource_type,
        props=props,
        urn=f"urn:pulumi:test::proj::{resource_type}::{name}",
        name=name,
        opts=options,
        provider=None,
    )


def violations(validate: Validator, resource_type: str, props: dict[str, Any]) -> list[str]:
    found: list[str] = []
    validate(make_args(resource_type, props), lambda message, urn=None: found.append(message))
    return found


def config_upload(toml: str) -> list[dict[str, str]]:
    return [{"file": "/etc/gitlab-runner/config.toml", "content": toml}]


DOCKER_RUNNER = '[[runners]]\nname = "d"\nexecutor = "docker"\n[runners.docker]\nimage = "alpine:3.20.3"\n'
PRIVILEGED_DOCKER_RUNNER = DOCKER_RUNNER + "privileged = true\n"
SHELL_RUNNER = '[[runners]]\nname = "s"\nexecutor = "shell"\n'
SOCKET = [{"target": "/var/run/docker.sock", "source": "/var/run/docker.sock", "type": "bind"}]


def release(values: dict[str, Any], **props: Any) -> dict[str, Any]:
    base = {"chart": "gitlab-runner", "version": "0.82.0", "namespace": "gitlab", "values": values}
    return {**base, **props}


HARDENED_VALUES = {
    "securityContext": {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}},
    "rbac": {"create": True, "clusterWideAccess": False},
}


class TestNoPrivilegedRunners:
    def test_unprivileged_passes(self) -> None:
        props = {"privileged": False, "uploads": config_upload(DOCKER_RUNNER)}
        assert violations(no_privileged_runners, CONTAINER, props) == []

    def test_privileged_container_fails(self) -> None:
        found = violations(no_privileged_runners, CONTAINER, {"privileged": True})
        assert found and "runner container itself is privileged" in found[0]

    def test_privileged_jobs_without_allowance_fail(self) -> None:
        found = violations(no_privileged_runners, CONTAINER, {"uploads": config_upload(PRIVILEGED_DOCKER_RUNNER)})
        assert found and "runner d runs privileged jobs" in found[0]

    def test_privileged_jobs_with_allowance_pass(self) -> None:
        props = {
            "uploads": config_upload(PRIVILEGED_DOCKER_RUNNER),
            "labels": [{"label": "io.gitlab-runners.allow-privileged", "value": "true"}],
        }
        assert violations(no_privileged_runners, CONTAINER, props) == []

    def test_privileged_chart_pod_fails(self) -> None:
        values = {**HARDENED_VALUES, "securityContext": {"privileged": True}}
        assert violations(no_privileged_runners, RELEASE, release(values))


class TestDockerSocket:
    def test_socket_for_docker_executor_passes(self) -> None:
        props = {"mounts": SOCKET, "uploads": config_upload(DOCKER_RUNNER)}
        assert violations(docker_socket_only_for_docker_executor, CONTAINER, props) == []

    def test_socket_for_shell_only_fails(self) -> None:
        props = {"mounts": SOCKET, "uploads": config_upload(SHELL_RUNNER)}
        found = violations(docker_socket_only_for_docker_executor, CONTAINER, props)
        assert found and "serves no docker-executor runner (executors: shell)" in found[0]

    def test_rootless_socket_counts_too(self) -> None:
        mounts = [{"target": "/var/run/docker.sock", "source": "/run/user/1000/docker.sock", "type": "bind"}]
        props = {"mounts": mounts, "uploads": config_upload(SHELL_RUNNER)}
        assert violations(docker_socket_only_for_docker_executor, CONTAINER, props)

    def test_no_socket_passes(self) -> None:
        props = {"mounts": [{"target": "/etc/gitlab-runner"}], "uploads": config_upload(SHELL_RUNNER)}
        assert violations(docker_socket_only_for_docker_executor, CONTAINER, props) == []


class TestPinned:
    @pytest.mark.parametrize(
        ("reference", "pinned"),
        [
            ("alpine:3.20.3", True),
            ("registry.local:5000/runner:18.5.0", True),
            ("sha256:" + "a" * 64, True),
            ("alpine@sha256:" + "b" * 64, True),
            ("alpine", False),
            ("alpine:latest", False),
            ("registry.local:5000/runner", False),
        ],
    )
    def test_reference(self, reference: str, pinned: bool) -> None:
        assert is_pinned_image(reference) is pinned

    def test_container_latest_fails(self) -> None:
        assert violations(pinned_images_and_charts, CONTAINER, {"image": "gitlab/gitlab-runner:latest"})

    def test_container_digest_and_pinned_job_image_pass(self) -> None:
        props = {"image": "sha256:" + "c" * 64, "uploads": config_upload(DOCKER_RUNNER)}
        assert violations(pinned_images_and_charts, CONTAINER, props) == []

    def test_unpinned_job_image_fails(self) -> None:
        toml = DOCKER_RUNNER.replace("alpine:3.20.3", "alpine")
        found = violations(pinned_images_and_charts, CONTAINER, {"image": "x:1", "uploads": config_upload(toml)})
        assert found and "job image 'alpine' is not pinned" in found[0]

    def test_base_image_must_be_pinned(self) -> None:
        assert violations(pinned_images_and_charts, IMAGE, {"build": {"args": {"BASE_IMAGE": "gitlab/gitlab-runner"}}})
        ok = {"build": {"args": {"BASE_IMAGE": "gitlab/gitlab-runner:alpine-v18.5.0"}}}
        assert violations(pinned_images_and_charts, IMAGE, ok) == []

    def test_chart_without_version_fails(self) -> None:
        found = violations(pinned_images_and_charts, RELEASE, release(HARDENED_VALUES, version=None))
        assert found and "has no exact version" in found[0]
        assert violations(pinned_images_and_charts, RELEASE, release(HARDENED_VALUES)) == []


class TestNoPlaintextTokens:
    def test_token_in_env_fails(self) -> None:
        found = violations(no_plaintext_tokens, CONTAINER, {"envs": ["TOKEN=glrt-abcdefghijklmnop"]})
        assert found and "input envs[0] holds a GitLab token" in found[0]

    def test_token_in_chart_values_fails(self) -> None:
        assert violations(no_plaintext_tokens, RELEASE, release({"runnerToken": "glrt-abcdefghijklmnop"}))

    def test_legacy_registration_token_fails(self) -> None:
        assert violations(no_plaintext_tokens, CONTAINER, {"labels": [{"value": "GR1348941abcdefghij"}]})

    def test_token_in_the_secret_places_passes(self) -> None:
        assert (
            violations(no_plaintext_tokens, SECRET_TYPE, {"stringData": {"runner-token": "glrt-abcdefghijklmnop"}})
            == []
        )
        assert (
            violations(no_plaintext_tokens, CONTAINER, {"uploads": config_upload('token = "glrt-abcdefghijk"')}) == []
        )


class TestKubernetesHardened:
    def test_hardened_passes(self) -> None:
        assert violations(kubernetes_runner_hardened, RELEASE, release(HARDENED_VALUES)) == []

    def test_default_namespace_fails(self) -> None:
        found = violations(kubernetes_runner_hardened, RELEASE, release(HARDENED_VALUES, namespace="default"))
        assert found and "namespace 'default'" in found[0]

    def test_root_without_limits_fails(self) -> None:
        found = violations(kubernetes_runner_hardened, RELEASE, release({"resources": {"requests": {"cpu": "1"}}}))
        assert any("runAsNonRoot" in f for f in found)
        assert any("no resource limits" in f for f in found)
        assert any("drop ALL" in f for f in found)


class TestRbac:
    def test_namespaced_passes(self) -> None:
        assert violations(rbac_stays_namespaced, RELEASE, release(HARDENED_VALUES)) == []

    def test_cluster_wide_without_allowance_fails(self) -> None:
        values = {**HARDENED_VALUES, "rbac": {"clusterWideAccess": True}}
        assert violations(rbac_stays_namespaced, RELEASE, release(values))

    def test_cluster_wide_with_allowance_passes(self) -> None:
        values = {
            **HARDENED_VALUES,
            "rbac": {"clusterWideAccess": True},
            "podAnnotations": {"gitlab-runners.io/allow-cluster-wide-rbac": "true"},
        }
        assert violations(rbac_stays_namespaced, RELEASE, release(values)) == []

    def test_cluster_role_binding_fails(self) -> None:
        typ = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding"
        assert violations(rbac_stays_namespaced, typ, {"metadata": {"name": "x"}})


def policy_report(resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Run the whole pack over what a program registered: policy name -> violations."""
    report: dict[str, list[str]] = defaultdict(list)
    for resource in resources:
        for policy in POLICIES:
            args = make_args(resource["typ"], resource["inputs"], resource["name"])
            policy.validate(args, lambda message, urn=None, name=policy.name: report[name].append(message))
    return dict(report)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_example_stacks_pass_the_pack(stack: str) -> None:
    result = run_program(stack)
    assert result["error"] is None and result["resources"]
    assert policy_report(result["resources"]) == {}


def test_privileged_stack_with_allowance_passes_the_pack() -> None:
    config = stack_config("dev")
    config["gitlab-runners:allowPrivileged"] = "true"
    config["gitlab-runners:runners"] = '[{"name": "dind", "executor": "docker", "privileged": true}]'
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN})
    assert result["error"] is None
    assert policy_report(result["resources"]) == {}


def test_unsafe_fixture_fails_every_policy() -> None:
    fixture = ROOT / "tests" / "fixtures" / "unsafe_stack"
    result = run_program("unsafe", config={}, secret_keys=(), program=Path(fixture))
    assert result["error"] is None
    report = policy_report(result["resources"])
    assert set(report) == {p.name for p in POLICIES}
    messages = "\n".join(m for ms in report.values() for m in ms)
    for expected in (
        "runner container itself is privileged",
        "runner priv runs privileged job pods",
        "mounts the Docker socket",
        "'gitlab/gitlab-runner:latest' is not pinned",
        "base image 'gitlab/gitlab-runner:latest' is not pinned",
        "has no exact version",
        "input envs[0] holds a GitLab token",
        "input values.runnerToken holds a GitLab token",
        "namespace 'default'",
        "rbac.clusterWideAccess",
        "cluster-wide RBAC (ClusterRoleBinding)",
    ):
        assert expected in messages, expected

"""Every policy with passing and failing resources built by hand; then whole stacks under mocks.

Docker resources come in the program's layout (a config sync container uploads config.toml into a
volume the runner container mounts) and in the older one (config.toml uploaded into the runner).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyProviderResource,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, UnknownValueError, unknown_checking_proxy
from runner_policies import (
    CLUSTER_ROLE,
    CONTAINER,
    IMAGE,
    POLICIES,
    RELEASE,
    ROLE,
    SECRET_TYPE,
    chart_rbac_rules,
    docker_socket_only_for_docker_executor,
    is_pinned_image,
    kubernetes_runner_hardened,
    no_plaintext_tokens,
    no_privileged_runners,
    no_wildcard_rbac,
    pinned_images_and_charts,
    rbac_stays_namespaced,
)

from tests.unit.test_program import FAKE_API_TOKEN, ROOT, run_program, stack_config

Validator = Any
OPTIONS = PolicyResourceOptions(
    protect=False,
    ignore_changes=[],
    delete_before_replace=None,
    aliases=[],
    custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
    additional_secret_outputs=[],
)


def urn_of(resource_type: str, name: str) -> str:
    return f"urn:pulumi:test::proj::{resource_type}::{name}"


def make_args(resource_type: str, props: dict[str, Any], name: str = "r") -> ResourceValidationArgs:
    return ResourceValidationArgs(
        resource_type=resource_type,
        props=props,
        urn=urn_of(resource_type, name),
        name=name,
        opts=OPTIONS,
        provider=None,
    )


def resource(
    resource_type: str, props: Any, name: str = "r", provider: PolicyProviderResource | None = None
) -> PolicyResource:
    return PolicyResource(resource_type, props, urn_of(resource_type, name), name, OPTIONS, provider, None, [], {})


def docker_host(name: str) -> PolicyProviderResource:
    return PolicyProviderResource("pulumi:providers:docker", {}, urn_of("pulumi:providers:docker", name), name)


def violations(validate: Validator, resource_type: str, props: dict[str, Any]) -> list[str]:
    """What a resource policy reports for one resource."""
    found: list[str] = []
    validate(make_args(resource_type, props), lambda message, urn=None: found.append(message))
    return found


def stack_violations(validate: Validator, resources: list[PolicyResource]) -> list[str]:
    """What a stack policy reports for these resources."""
    found: list[str] = []
    validate(StackValidationArgs(resources), lambda message, urn=None: found.append(message))
    return found


def config_upload(toml: str) -> list[dict[str, str]]:
    """The older layout: config.toml uploaded straight into the runner container."""
    return [{"file": "/etc/gitlab-runner/config.toml", "content": toml}]


def config_volume(volume: str) -> dict[str, str]:
    return {"volumeName": volume, "containerPath": "/etc/gitlab-runner"}


SOCKET_VOLUME = {"hostPath": "/var/run/docker.sock", "containerPath": "/var/run/docker.sock"}
SOCKET = [{"target": "/var/run/docker.sock", "source": "/var/run/docker.sock", "type": "bind"}]
ALLOW_PRIVILEGED = [{"label": "io.gitlab-runners.allow-privileged", "value": "true"}]
IMAGE_REF = "gitlab/gitlab-runner:alpine-v18.5.0"


def runner_pair(
    toml: Any,
    kind: str = "docker",
    socket: bool = False,
    labels: list[dict[str, str]] | None = None,
    host: PolicyProviderResource | None = None,
    **runner_props: Any,
) -> list[PolicyResource]:
    """The program's layout for one executor kind: the config sync container and the runner container."""
    volume = f"gitlab-runner-{kind}-config"
    sync = {
        "image": IMAGE_REF,
        "uploads": [
            {"file": "/gitlab-runners/config.toml", "content": toml, "permissions": "0600"},
            {"file": "/gitlab-runners/sync-config", "content": "#!/bin/sh\n", "permissions": "0755"},
        ],
        "volumes": [config_volume(volume)],
        "labels": labels or [],
    }
    runner = {
        "image": IMAGE_REF,
        "privileged": False,
        "volumes": [config_volume(volume), *([SOCKET_VOLUME] if socket else [])],
        "labels": labels or [],
        **runner_props,
    }
    return [resource(CONTAINER, sync, f"{kind}-sync", host), resource(CONTAINER, runner, f"{kind}-runner", host)]


# The housekeeping container as components/docker_housekeeping.py makes it (its socket added per test).
HOUSEKEEPING = {
    "image": "docker:29.7.2-cli",
    "networkMode": "none",
    "readOnly": True,
    "capabilities": {"drops": ["ALL"]},
    "labels": [{"label": "io.gitlab-runners.role", "value": "housekeeping"}],
}
DOCKER_RUNNER = '[[runners]]\nname = "d"\nexecutor = "docker"\n[runners.docker]\nimage = "alpine:3.20.3"\n'
PRIVILEGED_DOCKER_RUNNER = DOCKER_RUNNER + "privileged = true\n"
SHELL_RUNNER = '[[runners]]\nname = "s"\nexecutor = "shell"\n'
MIXED_RUNNERS = DOCKER_RUNNER + SHELL_RUNNER


def release(values: dict[str, Any], **props: Any) -> dict[str, Any]:
    base = {"chart": "gitlab-runner", "version": "0.82.0", "namespace": "gitlab", "values": values}
    return {**base, **props}


# The permissions the gitlab-runner docs list for the kubernetes executor.
MINIMAL_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/exec", "pods/attach"], "verbs": ["create", "delete", "get", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "update"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "delete", "get", "update"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]

HARDENED_VALUES = {
    "securityContext": {"runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
    "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "500m"}},
    "rbac": {"create": True, "clusterWideAccess": False, "rules": MINIMAL_RULES},
}


class TestNoPrivilegedRunners:
    def test_unprivileged_passes(self) -> None:
        assert stack_violations(no_privileged_runners, runner_pair(DOCKER_RUNNER, socket=True)) == []

    def test_privileged_container_fails(self) -> None:
        found = stack_violations(no_privileged_runners, runner_pair(DOCKER_RUNNER, privileged=True))
        assert found == ["docker-runner: the runner container itself is privileged; it never needs to be"]

    def test_privileged_jobs_without_allowance_fail_once_at_the_runner(self) -> None:
        found = stack_violations(no_privileged_runners, runner_pair(PRIVILEGED_DOCKER_RUNNER))
        assert len(found) == 1
        assert found[0].startswith("docker-runner: runner d (config.toml from docker-sync) runs privileged jobs")

    def test_privileged_jobs_with_allowance_pass(self) -> None:
        resources = runner_pair(PRIVILEGED_DOCKER_RUNNER, labels=ALLOW_PRIVILEGED)
        assert stack_violations(no_privileged_runners, resources) == []

    def test_the_allowance_is_the_config_syncs(self) -> None:
        """The program labels only the sync container (a label on the runner container would replace it
        whenever allowPrivileged changes): its allowance counts, a stale one on the runner does not."""
        sync, runner = runner_pair(PRIVILEGED_DOCKER_RUNNER, labels=ALLOW_PRIVILEGED)
        runner.props["labels"] = []
        assert stack_violations(no_privileged_runners, [sync, runner]) == []
        sync, runner = runner_pair(PRIVILEGED_DOCKER_RUNNER, labels=ALLOW_PRIVILEGED)
        sync.props["labels"] = []
        found = stack_violations(no_privileged_runners, [sync, runner])
        assert len(found) == 1 and found[0].startswith("docker-runner: runner d (config.toml from docker-sync)")

    def test_a_config_sync_read_by_no_runner_is_checked_itself(self) -> None:
        sync = runner_pair(PRIVILEGED_DOCKER_RUNNER)[0]
        found = stack_violations(no_privileged_runners, [sync])
        assert len(found) == 1 and found[0].startswith("docker-sync: runner d runs privileged jobs")

    def test_old_layout_privileged_jobs_fail(self) -> None:
        container = resource(CONTAINER, {"uploads": config_upload(PRIVILEGED_DOCKER_RUNNER)}, "old")
        found = stack_violations(no_privileged_runners, [container])
        assert len(found) == 1 and found[0].startswith("old: runner d runs privileged jobs")

    def test_old_layout_with_allowance_passes(self) -> None:
        props = {"uploads": config_upload(PRIVILEGED_DOCKER_RUNNER), "labels": ALLOW_PRIVILEGED}
        assert stack_violations(no_privileged_runners, [resource(CONTAINER, props)]) == []

    def test_privileged_chart_pod_fails(self) -> None:
        values = {**HARDENED_VALUES, "securityContext": {"privileged": True}}
        found = stack_violations(no_privileged_runners, [resource(RELEASE, release(values), "k8s")])
        assert found == ["k8s: the runner pod is privileged; it never needs to be"]

    def test_privileged_job_pods_without_allowance_fail(self) -> None:
        toml = '[[runners]]\nname = "p"\n[runners.kubernetes]\nprivileged = true\n'
        values = {**HARDENED_VALUES, "runners": {"config": toml}}
        found = stack_violations(no_privileged_runners, [resource(RELEASE, release(values), "k8s")])
        assert found and "runner p runs privileged job pods" in found[0]


class TestDockerSocket:
    def test_socket_for_docker_only_passes(self) -> None:
        assert stack_violations(docker_socket_only_for_docker_executor, runner_pair(DOCKER_RUNNER, socket=True)) == []

    def test_socket_for_shell_only_fails(self) -> None:
        found = stack_violations(docker_socket_only_for_docker_executor, runner_pair(SHELL_RUNNER, socket=True))
        assert found == [
            "docker-runner: mounts the Docker socket /var/run/docker.sock (root on the host) but serves runners "
            "other than docker-executor ones (executors: shell)"
        ]

    def test_socket_for_mixed_docker_and_shell_fails(self) -> None:
        found = stack_violations(docker_socket_only_for_docker_executor, runner_pair(MIXED_RUNNERS, socket=True))
        assert len(found) == 1
        assert "docker-runner: mounts the Docker socket /var/run/docker.sock" in found[0]
        assert "(executors: docker, shell)" in found[0]

    def test_socket_without_a_findable_config_fails(self) -> None:
        runner = runner_pair(DOCKER_RUNNER, socket=True)[1]
        found = stack_violations(docker_socket_only_for_docker_executor, [runner])
        assert found and "its config.toml cannot be found" in found[0] and "(executors: unknown)" in found[0]

    def test_a_config_on_another_volume_is_not_its_config(self) -> None:
        sync = runner_pair(DOCKER_RUNNER, kind="other")[0]
        runner = runner_pair(DOCKER_RUNNER, socket=True)[1]
        assert stack_violations(docker_socket_only_for_docker_executor, [sync, runner])

    def test_a_volume_of_the_same_name_on_another_host_is_not_its_config(self) -> None:
        # Every host has a `gitlab-runner-docker-config` volume; only the one on the runner's host counts.
        sync = runner_pair(DOCKER_RUNNER, host=docker_host("host-a"))[0]
        runner = runner_pair(DOCKER_RUNNER, socket=True, host=docker_host("host-b"))[1]
        found = stack_violations(docker_socket_only_for_docker_executor, [sync, runner])
        assert found and "(executors: unknown)" in found[0]
        same_host = runner_pair(DOCKER_RUNNER, socket=True, host=docker_host("host-a"))
        assert stack_violations(docker_socket_only_for_docker_executor, same_host) == []

    def test_a_sync_container_with_the_socket_is_judged_by_its_own_config(self) -> None:
        sync, runner = runner_pair(SHELL_RUNNER)
        sync_props = {**sync.props, "volumes": [*sync.props["volumes"], SOCKET_VOLUME]}
        found = stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, sync_props, "s"), runner])
        assert found and found[0].startswith("s: mounts the Docker socket") and "(executors: shell)" in found[0]

    def test_unreadable_config_fails(self) -> None:
        found = stack_violations(docker_socket_only_for_docker_executor, runner_pair("not = [toml", socket=True))
        assert found and "(executors: unknown)" in found[0]

    def test_the_housekeeping_container_may_use_the_socket(self) -> None:
        props = {**HOUSEKEEPING, "volumes": [SOCKET_VOLUME]}
        assert stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, props, "hk")]) == []

    @pytest.mark.parametrize(
        ("change", "problem"),
        [
            ({"networkMode": "bridge"}, "has network 'bridge', not 'none'"),
            ({"networkMode": None}, "has network 'bridge', not 'none'"),
            ({"uploads": config_upload(SHELL_RUNNER)}, "mounts a runner config or has files uploaded"),
            ({"volumes": [SOCKET_VOLUME, config_volume("v")]}, "mounts a runner config or has files uploaded"),
            ({"capabilities": {"drops": ["NET_RAW"]}}, "keeps Linux capabilities"),
            ({"privileged": True}, "keeps Linux capabilities"),
        ],
    )
    def test_a_container_only_labelled_housekeeping_fails(self, change: dict[str, Any], problem: str) -> None:
        props = {**HOUSEKEEPING, "volumes": [SOCKET_VOLUME], **change}
        found = stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, props, "hk")])
        assert found == [
            f"hk: mounts the Docker socket /var/run/docker.sock (root on the host) as the housekeeping container, "
            f"but {problem}"
        ]

    def test_old_layout_socket_for_docker_executor_passes(self) -> None:
        props = {"mounts": SOCKET, "uploads": config_upload(DOCKER_RUNNER)}
        assert stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, props)]) == []

    def test_old_layout_socket_for_shell_fails(self) -> None:
        props = {"mounts": SOCKET, "uploads": config_upload(SHELL_RUNNER)}
        found = stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, props)])
        assert found and "(executors: shell)" in found[0]

    def test_old_layout_config_volume_through_mounts_is_found(self) -> None:
        volume = [{"source": "cfg", "target": "/etc/gitlab-runner", "type": "volume"}]
        sync = resource(CONTAINER, {"mounts": volume, "uploads": config_upload(SHELL_RUNNER)}, "sync")
        runner = resource(CONTAINER, {"mounts": volume + SOCKET}, "runner")
        found = stack_violations(docker_socket_only_for_docker_executor, [sync, runner])
        assert found and found[0].startswith("runner:") and "(executors: shell)" in found[0]

    def test_rootless_and_podman_sockets_count_too(self) -> None:
        for source in ("/run/user/1000/docker.sock", "/run/podman/podman.sock"):
            mounts = [{"target": "/var/run/docker.sock", "source": source, "type": "bind"}]
            props = {"mounts": mounts, "uploads": config_upload(SHELL_RUNNER)}
            found = stack_violations(docker_socket_only_for_docker_executor, [resource(CONTAINER, props)])
            assert found and source in found[0]

    def test_no_socket_passes(self) -> None:
        assert stack_violations(docker_socket_only_for_docker_executor, runner_pair(SHELL_RUNNER)) == []

    def test_a_config_unknown_during_preview_is_not_a_violation_and_the_rest_is_still_checked(self) -> None:
        pending = [
            resource(c.resource_type, unknown_checking_proxy(dict(c.props)), c.name)
            for c in runner_pair(UNKNOWN_STRING_VALUE, socket=True)
        ]
        old = resource(CONTAINER, {"mounts": SOCKET, "uploads": config_upload(SHELL_RUNNER)}, "old")
        found: list[str] = []
        with pytest.raises(UnknownValueError):
            docker_socket_only_for_docker_executor(
                StackValidationArgs([*pending, old]), lambda message, urn=None: found.append(message)
            )
        assert len(found) == 1 and found[0].startswith("old: mounts the Docker socket")


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
        container = resource(CONTAINER, {"image": "gitlab/gitlab-runner:latest"}, "c")
        found = stack_violations(pinned_images_and_charts, [container])
        assert found and "'gitlab/gitlab-runner:latest' is not pinned" in found[0]

    def test_pinned_images_pass(self) -> None:
        assert stack_violations(pinned_images_and_charts, runner_pair(DOCKER_RUNNER, socket=True)) == []
        props = {"image": "sha256:" + "c" * 64, "uploads": config_upload(DOCKER_RUNNER)}
        assert stack_violations(pinned_images_and_charts, [resource(CONTAINER, props)]) == []

    def test_unpinned_job_image_fails_once_at_the_runner(self) -> None:
        toml = DOCKER_RUNNER.replace("alpine:3.20.3", "alpine")
        found = stack_violations(pinned_images_and_charts, runner_pair(toml))
        assert found == ["docker-runner: runner d (config.toml from docker-sync) job image 'alpine' is not pinned"]

    def test_old_layout_unpinned_job_image_fails(self) -> None:
        toml = DOCKER_RUNNER.replace("alpine:3.20.3", "alpine")
        container = resource(CONTAINER, {"image": "x:1", "uploads": config_upload(toml)}, "old")
        found = stack_violations(pinned_images_and_charts, [container])
        assert found == ["old: runner d job image 'alpine' is not pinned"]

    def test_base_image_must_be_pinned(self) -> None:
        unpinned = resource(IMAGE, {"build": {"args": {"BASE_IMAGE": "gitlab/gitlab-runner"}}})
        assert stack_violations(pinned_images_and_charts, [unpinned])
        pinned = resource(IMAGE, {"build": {"args": {"BASE_IMAGE": "gitlab/gitlab-runner:alpine-v18.5.0"}}})
        assert stack_violations(pinned_images_and_charts, [pinned]) == []

    def test_chart_without_version_fails(self) -> None:
        found = stack_violations(pinned_images_and_charts, [resource(RELEASE, release(HARDENED_VALUES, version=None))])
        assert found and "has no exact version" in found[0]
        assert stack_violations(pinned_images_and_charts, [resource(RELEASE, release(HARDENED_VALUES))]) == []


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

    def test_token_in_the_config_sync_uploads_passes(self) -> None:
        sync, runner = runner_pair('[[runners]]\nname = "d"\ntoken = "glrt-abcdefghijklmnop"\nexecutor = "docker"\n')
        assert violations(no_plaintext_tokens, CONTAINER, dict(sync.props)) == []
        assert violations(no_plaintext_tokens, CONTAINER, dict(runner.props)) == []


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


def chart_rbac(**rbac: Any) -> dict[str, Any]:
    return release({**HARDENED_VALUES, "rbac": rbac})


class TestNoWildcardRbac:
    def test_the_minimal_rules_pass(self) -> None:
        assert violations(no_wildcard_rbac, RELEASE, release(HARDENED_VALUES)) == []

    @pytest.mark.parametrize("rbac", [{"create": True}, {"create": True, "rules": []}, {"create": True, "rules": None}])
    def test_no_rules_is_the_charts_all_access_rule(self, rbac: dict[str, Any]) -> None:
        found = violations(no_wildcard_rbac, RELEASE, chart_rbac(**rbac))
        assert len(found) == 1
        assert found[0].startswith('r: the chart\'s Role has the rule apiGroups [""] resources ["*"] verbs ["*"]')
        assert "rbac.rules is empty" in found[0] and "resources, verbs" in found[0]

    def test_no_role_without_rbac_create(self) -> None:
        assert violations(no_wildcard_rbac, RELEASE, chart_rbac(create=False)) == []
        assert violations(no_wildcard_rbac, RELEASE, release({})) == []

    def test_cluster_wide_access_renders_a_cluster_role(self) -> None:
        found = violations(no_wildcard_rbac, RELEASE, chart_rbac(create=True, clusterWideAccess=True))
        assert found and "the chart's ClusterRole" in found[0]

    @pytest.mark.parametrize(
        ("rule", "fields"),
        [
            ({"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}, "verbs"),
            ({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]}, "apiGroups"),
            ({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}, "resources"),
            ({"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}, "resources"),
            # A missing or empty field gets the chart's default: "*" for resources and verbs.
            ({"apiGroups": [""], "resources": ["pods"]}, "verbs"),
            ({"apiGroups": [""], "verbs": ["get"]}, "resources"),
            ({"apiGroups": [""], "resources": [], "verbs": []}, "resources, verbs"),
        ],
    )
    def test_a_wildcard_rule_fails(self, rule: dict[str, list[str]], fields: str) -> None:
        found = violations(no_wildcard_rbac, RELEASE, chart_rbac(create=True, rules=[*MINIMAL_RULES, rule]))
        assert len(found) == 1
        assert f"(rbac.rules[{len(MINIMAL_RULES)}]), a wildcard in {fields};" in found[0]

    def test_a_rule_without_api_groups_gets_the_core_group(self) -> None:
        # The chart's default for apiGroups is [""] (the core group), not a wildcard.
        rule = {"resources": ["pods"], "verbs": ["get"]}
        assert chart_rbac_rules({"rbac": {"create": True, "rules": [rule]}}) == [
            ("rbac.rules[0]", {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]})
        ]
        assert violations(no_wildcard_rbac, RELEASE, chart_rbac(create=True, rules=[rule])) == []

    @pytest.mark.parametrize("typ", [ROLE, CLUSTER_ROLE])
    def test_roles_with_a_wildcard_fail(self, typ: str) -> None:
        rules = [*MINIMAL_RULES, {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}]
        found = violations(no_wildcard_rbac, typ, {"rules": rules})
        kind = typ.rsplit(":", 1)[1]
        assert found == [
            f'r: the {kind} has the rule apiGroups ["apps"] resources ["deployments"] verbs ["*"] '
            f"(rules[{len(MINIMAL_RULES)}]), a wildcard in verbs; list the resources and verbs the runner needs"
        ]

    @pytest.mark.parametrize("typ", [ROLE, CLUSTER_ROLE])
    def test_roles_with_named_rules_pass(self, typ: str) -> None:
        assert violations(no_wildcard_rbac, typ, {"rules": MINIMAL_RULES}) == []
        assert violations(no_wildcard_rbac, typ, {}) == []


def recorded_provider(reference: str | None) -> PolicyProviderResource | None:
    """A provider reference as the mocks record it ("<urn>::<id>") as the SDK hands it to a policy."""
    if not reference:
        return None
    urn = reference.rsplit("::", 1)[0]
    parts = urn.split("::")
    return PolicyProviderResource(parts[2].rsplit("$", 1)[-1], {}, urn, parts[3])


def policy_report(resources: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Run the whole pack over what a program registered, as the engine does: a stack policy once
    over all resources, a resource policy once per resource. Policy name -> violations."""
    stack = [resource(r["typ"], r["inputs"], r["name"], recorded_provider(r["provider"])) for r in resources]
    report: dict[str, list[str]] = defaultdict(list)
    for policy in POLICIES:

        def add(message: str, urn: str | None = None, name: str = policy.name) -> None:
            report[name].append(message)

        if isinstance(policy, StackValidationPolicy):
            policy.validate(StackValidationArgs(stack), add)
        else:
            for item in stack:
                policy.validate(make_args(item.resource_type, item.props, item.name), add)
    return dict(report)


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_example_stacks_pass_the_pack(stack: str) -> None:
    result = run_program(stack)
    assert result["error"] is None and result["resources"]
    assert policy_report(result["resources"]) == {}


def test_a_stack_with_housekeeping_and_the_web_terminal_passes_the_pack() -> None:
    config = stack_config("dev")
    docker = json.loads(config["gitlab-runners:docker"])
    docker["housekeeping"] = {"enabled": True}
    docker["hosts"][0]["sessionAddress"] = "ci.example.com"
    config["gitlab-runners:docker"] = json.dumps(docker)
    config["gitlab-runners:sessionServer"] = '{"enabled": true}'
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN})
    assert result["error"] is None
    names = {r["name"] for r in result["resources"] if r["typ"] == CONTAINER}
    assert "docker-local-housekeeping-container" in names
    assert policy_report(result["resources"]) == {}


def test_privileged_stack_with_allowance_passes_the_pack() -> None:
    config = stack_config("dev")
    config["gitlab-runners:allowPrivileged"] = "true"
    config["gitlab-runners:runners"] = '[{"name": "dind", "executor": "docker", "privileged": true}]'
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN})
    assert result["error"] is None
    assert policy_report(result["resources"]) == {}


def test_privileged_jobs_without_the_label_fail_once_at_the_runner_container() -> None:
    """The settings refuse privileged runners without the allowance, so the label is taken off here:
    the config sync's config.toml is judged at the runner container that reads it, once."""
    config = stack_config("dev")
    config["gitlab-runners:allowPrivileged"] = "true"
    config["gitlab-runners:runners"] = '[{"name": "dind", "executor": "docker", "privileged": true}]'
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN})
    for recorded in result["resources"]:
        for label in recorded["inputs"].get("labels") or []:
            if label["label"] == "io.gitlab-runners.allow-privileged":
                label["value"] = "false"
    report = policy_report(result["resources"])
    assert list(report) == ["no-privileged-runners"]
    [message] = report["no-privileged-runners"]
    assert message.startswith(
        "docker-local-docker-runner: runner dind (config.toml from docker-local-docker-sync) runs privileged jobs"
    )


def test_unsafe_fixture_fails_every_policy() -> None:
    fixture = ROOT / "tests" / "fixtures" / "unsafe_stack"
    result = run_program("unsafe", config={}, secret_keys=(), program=Path(fixture))
    assert result["error"] is None
    report = policy_report(result["resources"])
    assert set(report) == {p.name for p in POLICIES}
    messages = "\n".join(m for ms in report.values() for m in ms)
    for expected in (
        "runner: the runner container itself is privileged",
        "runner: runner dind (config.toml from runner-sync) runs privileged jobs",
        "runner priv runs privileged job pods",
        "runner: mounts the Docker socket /var/run/docker.sock (root on the host) but serves runners other than "
        "docker-executor ones (executors: docker, shell)",
        "'gitlab/gitlab-runner:latest' is not pinned",
        "runner: runner dind (config.toml from runner-sync) job image 'docker' is not pinned",
        "base image 'gitlab/gitlab-runner:latest' is not pinned",
        "has no exact version",
        "input envs[0] holds a GitLab token",
        "input values.runnerToken holds a GitLab token",
        "namespace 'default'",
        "rbac.clusterWideAccess",
        "cluster-wide RBAC (ClusterRoleBinding)",
        'the chart\'s ClusterRole has the rule apiGroups [""] resources ["*"] verbs ["*"]',
    ):
        assert expected in messages, expected

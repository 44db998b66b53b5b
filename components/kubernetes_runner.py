"""KubernetesRunner: the official gitlab-runner Helm chart, one release per runner."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as kubernetes

from components.runner_config import manager_concurrency, render_chart_runner_toml
from components.settings import GlobalSettings, KubernetesTarget, Runner

COMPONENT_TYPE = "gitlab-runners:index:KubernetesRunner"
# The chart's image runs as this user (gitlab-runner in the official alpine image).
RUNNER_UID = 100
RUNNER_FS_GROUP = 65533
TOKEN_FINGERPRINT = "gitlab-runners.io/token-fingerprint"  # noqa: S105 - an annotation name
# What the kubernetes executor needs in its namespace (gitlab-runner docs, executors/kubernetes):
# without rules the chart would grant "*" on "*", and every runner manager could read every other
# runner's token Secret.
RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/exec", "pods/attach"], "verbs": ["create", "delete", "get", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "update"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]


@dataclass(frozen=True)
class KubernetesRunnerArgs:
    settings: KubernetesTarget
    """Namespace, chart source and version, replicas, resources, RBAC, service account."""

    global_: GlobalSettings
    """check interval, metrics, shutdown timeout (shared with the Docker target)."""

    gitlab_url: str
    """The GitLab instance URL the runners talk to."""

    runners: Sequence[Runner]
    """One Helm release per runner (the chart serves one runner token)."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> secret glrt- token, stored only in the runner's Secret."""

    allow_privileged: bool = False
    """The stack allows privileged job pods; recorded as a pod annotation the policy pack reads."""


def token_fingerprint(token: str) -> str:
    """A short hash of a token: it changes with the token and says nothing about it."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def chart_values(
    runner: Runner,
    settings: KubernetesTarget,
    global_: GlobalSettings,
    gitlab_url: str,
    secret_name: str,
    fingerprint: str,
    allow_privileged: bool = False,
) -> dict[str, Any]:
    """The chart's values for one runner. No token: the chart reads it from `runners.secret`."""
    service_account: dict[str, Any] = {"create": settings.service_account.create}
    if settings.service_account.name:
        service_account["name"] = settings.service_account.name
    rbac: dict[str, Any] = {"create": settings.rbac.create, "clusterWideAccess": settings.rbac.cluster_wide_access}
    if settings.rbac.create:
        rbac["rules"] = RBAC_RULES
    return {
        "gitlabUrl": gitlab_url,
        # Per runner manager pod: with replicas R the runner runs up to R x this many jobs.
        "concurrent": manager_concurrency(global_, [runner]),
        "checkInterval": global_.check_interval,
        "logLevel": global_.log_level,
        "replicas": settings.replicas,
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        "shutdown_timeout": global_.shutdown_timeout,
        "rbac": rbac,
        "serviceAccount": service_account,
        "resources": {"requests": dict(settings.resources.requests), "limits": dict(settings.resources.limits)},
        # The chart always listens on :<port> when enabled; there is no listen address to set.
        "metrics": {"enabled": global_.metrics_enabled, "port": global_.metrics_port},
        "podAnnotations": {
            # The chart's checksum/secrets does not cover a Secret it did not render: a new token (a
            # re-created runner, a rotation) must roll the pods through this annotation.
            TOKEN_FINGERPRINT: fingerprint,
            # Allowances the stack file made, visible to the policy pack.
            "gitlab-runners.io/allow-privileged": str(allow_privileged).lower(),
            "gitlab-runners.io/allow-cluster-wide-rbac": str(settings.rbac.cluster_wide_access).lower(),
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "fsGroup": RUNNER_FS_GROUP,
        },
        "runners": {
            "secret": secret_name,
            "name": runner.name,
            "config": render_chart_runner_toml(runner, settings.namespace),
        },
    }


class KubernetesRunner(pulumi.ComponentResource):
    """The namespace (adopted, or created when asked), one token Secret and one chart release per runner."""

    namespace: pulumi.Output[str]
    release_names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: KubernetesRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        settings = args.settings
        labels = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "gitlab-runners"}

        if settings.create_namespace:
            namespace = kubernetes.core.v1.Namespace(
                f"{name}-namespace",
                metadata=kubernetes.meta.v1.ObjectMetaArgs(name=settings.namespace, labels=labels),
                opts=pulumi.ResourceOptions(parent=self),
            )
            self.namespace = namespace.metadata.name
        else:
            # Not a resource of the stack: the namespace must exist (GitLab itself often lives there),
            # and destroy never deletes it.
            self.namespace = pulumi.Output.from_input(settings.namespace)
        self.release_names = {}
        for runner in args.runners:
            token = args.tokens[runner.name]
            secret = kubernetes.core.v1.Secret(
                f"{name}-{runner.name}-token",
                metadata=kubernetes.meta.v1.ObjectMetaArgs(
                    name=f"{runner.name}-runner-token", namespace=self.namespace, labels=labels
                ),
                type="Opaque",
                # The keys the chart mounts; the registration token is gone with the glrt- workflow.
                string_data={
                    "runner-token": token,
                    "runner-registration-token": "",
                },
                opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"]),
            )
            # Deliberately not secret: a hash that identifies the token without revealing it.
            fingerprint = pulumi.Output.unsecret(token.apply(token_fingerprint))
            release = kubernetes.helm.v3.Release(
                f"{name}-{runner.name}",
                name=f"{runner.name}-runner",
                chart=settings.chart.reference,
                version=settings.chart.version,
                repository_opts=kubernetes.helm.v3.RepositoryOptsArgs(repo=settings.chart.repository)
                if settings.chart.repository
                else None,
                namespace=self.namespace,
                values=pulumi.Output.all(secret.metadata.name, fingerprint).apply(
                    functools.partial(self._values, runner, args)
                ),
                atomic=True,
                cleanup_on_fail=True,
                timeout=600,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[secret]),
            )
            self.release_names[runner.name] = release.name
        self.register_outputs({"namespace": self.namespace, "releaseNames": self.release_names})

    @staticmethod
    def _values(runner: Runner, args: KubernetesRunnerArgs, parts: list[str]) -> dict[str, Any]:
        secret_name, fingerprint = parts
        return chart_values(
            runner, args.settings, args.global_, args.gitlab_url, secret_name, fingerprint, args.allow_privileged
        )

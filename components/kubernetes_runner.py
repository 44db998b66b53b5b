"""KubernetesRunner: the official gitlab-runner Helm chart, one release per runner."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as kubernetes

from components.runner_config import render_chart_runner_toml
from components.settings import GlobalSettings, KubernetesSettings, RunnerSpec

COMPONENT_TYPE = "gitlab-runners:index:KubernetesRunner"
# The chart's image runs as this user (gitlab-runner in the official image).
RUNNER_UID = 100
RUNNER_FS_GROUP = 65533


@dataclass(frozen=True)
class KubernetesRunnerArgs:
    settings: KubernetesSettings
    """Namespace, chart source and version, replicas, resources, RBAC, service account."""

    global_: GlobalSettings
    """check interval, metrics, shutdown timeout (shared with the Docker target)."""

    gitlab_url: str
    """The GitLab instance URL the runners talk to."""

    runners: Sequence[RunnerSpec]
    """One Helm release per runner (the chart serves one runner token)."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> secret glrt- token, stored only in the runner's Secret."""

    allow_privileged: bool = False
    """The stack allows privileged job pods; recorded as a pod annotation the policy pack reads."""


def chart_values(
    runner: RunnerSpec,
    settings: KubernetesSettings,
    global_: GlobalSettings,
    gitlab_url: str,
    secret_name: str,
    allow_privileged: bool = False,
) -> dict[str, Any]:
    """The chart's values for one runner. No token: the chart reads it from `runners.secret`."""
    service_account: dict[str, Any] = {"create": settings.service_account_create}
    if settings.service_account_name:
        service_account["name"] = settings.service_account_name
    return {
        "gitlabUrl": gitlab_url,
        "concurrent": runner.limit or global_.concurrent,
        "checkInterval": global_.check_interval,
        "logLevel": global_.log_level,
        "replicas": settings.replicas,
        "terminationGracePeriodSeconds": settings.termination_grace_period,
        "shutdown_timeout": global_.shutdown_timeout,
        # The runner belongs to the stack (RunnerRegistration): a pod going away must not remove it.
        "unregisterRunners": False,
        "rbac": {"create": settings.rbac_create, "clusterWideAccess": settings.rbac_cluster_wide},
        "serviceAccount": service_account,
        "resources": {"requests": dict(settings.requests), "limits": dict(settings.limits)},
        "metrics": {"enabled": global_.metrics_enabled},
        # Allowances the stack file made, visible to the policy pack.
        "podAnnotations": {
            "gitlab-runners.io/allow-privileged": str(allow_privileged).lower(),
            "gitlab-runners.io/allow-cluster-wide-rbac": str(settings.rbac_cluster_wide).lower(),
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
    """Namespace, one token Secret and one chart release per runner."""

    namespace: pulumi.Output[str]
    release_names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: KubernetesRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        settings = args.settings
        child = pulumi.ResourceOptions(parent=self)
        labels = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "gitlab-runners"}

        namespace = kubernetes.core.v1.Namespace(
            f"{name}-namespace",
            metadata=kubernetes.meta.v1.ObjectMetaArgs(name=settings.namespace, labels=labels),
            opts=child,
        )
        self.namespace = namespace.metadata.name
        self.release_names = {}
        for runner in args.runners:
            secret = kubernetes.core.v1.Secret(
                f"{name}-{runner.name}-token",
                metadata=kubernetes.meta.v1.ObjectMetaArgs(
                    name=f"{runner.name}-runner-token", namespace=self.namespace, labels=labels
                ),
                type="Opaque",
                # The keys the chart reads; the registration token is gone with the glrt- workflow.
                string_data={
                    "runner-token": args.tokens[runner.name],
                    "runner-registration-token": "",
                },
                opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"]),
            )
            release = kubernetes.helm.v3.Release(
                f"{name}-{runner.name}",
                name=f"{runner.name}-runner",
                chart=settings.chart.reference,
                version=settings.chart.version,
                repository_opts=kubernetes.helm.v3.RepositoryOptsArgs(repo=settings.chart.repository)
                if settings.chart.repository
                else None,
                namespace=self.namespace,
                values=secret.metadata.name.apply(
                    lambda secret_name, runner=runner: chart_values(
                        runner, settings, args.global_, args.gitlab_url, secret_name, args.allow_privileged
                    )
                ),
                atomic=True,
                cleanup_on_fail=True,
                timeout=600,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[secret]),
            )
            self.release_names[runner.name] = release.name
        self.register_outputs({"namespace": self.namespace, "releaseNames": self.release_names})

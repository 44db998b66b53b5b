"""Explicit providers, built from settings; no resource falls back to a default provider."""

from __future__ import annotations

import pulumi_docker as docker
import pulumi_gitlab as gitlab
import pulumi_kubernetes as kubernetes

from components.settings import DockerSettings, KubernetesSettings, Secrets, Settings


def gitlab_provider(settings: Settings, secrets: Secrets) -> gitlab.Provider | None:
    """The GitLab API provider, or None when every runner brings its own token."""
    if not settings.runners_to_create:
        return None
    return gitlab.Provider(
        "gitlab",
        base_url=f"{settings.gitlab_url}/api/v4/",
        token=secrets.gitlab_token,
        # The token is checked when a runner is created, not on every preview.
        early_auth_check=False,
    )


def docker_provider(docker_settings: DockerSettings) -> docker.Provider:
    return docker.Provider("docker", host=docker_settings.host)


def kubernetes_provider(kubernetes_settings: KubernetesSettings) -> kubernetes.Provider:
    """The cluster from the stack's kubeconfig/context (else the ambient kubeconfig)."""
    return kubernetes.Provider(
        "kubernetes",
        kubeconfig=kubernetes_settings.kubeconfig,
        context=kubernetes_settings.context,
        # Objects without a namespace land in the runners' namespace, never in the kubeconfig's.
        namespace=kubernetes_settings.namespace,
    )

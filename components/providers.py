"""Explicit providers, built from settings; no resource falls back to a default provider."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pulumi

from components.settings import KubernetesTarget, Secrets, Settings

if TYPE_CHECKING:
    import pulumi_gitlab as gitlab
    import pulumi_kubernetes as kubernetes


def gitlab_provider(settings: Settings, secrets: Secrets) -> gitlab.Provider | None:
    """The GitLab API provider, or None when every runner brings its own token.

    On `pulumi up` its token passes through the scope check first (asked while the rest of the program
    goes on), so no runner is created with a token that could not delete it again. A preview contacts
    no GitLab.
    """
    if not settings.runners_to_create:
        return None
    # Imported here: pulumi_gitlab loads its whole SDK on import (about 0.13 s), which only stacks that
    # create runners need.
    import pulumi_gitlab as gitlab

    token = secrets.gitlab_token
    if token is not None and not pulumi.runtime.is_dry_run():
        from components.gitlab_access import checked_token_meanwhile  # only an `up` asks GitLab

        token = pulumi.Output.secret(token.apply(functools.partial(checked_token_meanwhile, settings.gitlab_url)))
    return gitlab.Provider(
        "gitlab",
        base_url=f"{settings.gitlab_url}/api/v4/",
        token=token,
        # The token is checked when a runner is created, not on every preview.
        early_auth_check=False,
    )


def kubernetes_provider(kubernetes_settings: KubernetesTarget) -> kubernetes.Provider:
    """The cluster from the stack's kubeconfig/context (else the ambient kubeconfig)."""
    # Imported here: a Docker stack never loads the kubernetes SDK.
    import pulumi_kubernetes as kubernetes

    return kubernetes.Provider(
        "kubernetes",
        kubeconfig=kubernetes_settings.kubeconfig,
        context=kubernetes_settings.context,
        # Objects without a namespace land in the runners' namespace, never in the kubeconfig's.
        namespace=kubernetes_settings.namespace,
        # A new token updates the runner's Secret in place (the pods then roll onto it); by default
        # the provider would delete and re-create it, leaving the pods without it for a moment.
        enable_secret_mutable=True,
    )

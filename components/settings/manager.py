"""What every runner manager shares, as one value: a runner container on Docker, a chart release on
Kubernetes. Built once from the settings and the secrets; each component's Args carries it whole, so a
setting every manager needs is added here and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import pulumi

from components.settings.model import Cache, Readiness
from components.settings.resolve import GlobalSettings, Settings
from components.settings.secrets import Secrets


class ManagerSettings(NamedTuple):
    gitlab_url: str
    """The GitLab instance the runners talk to."""

    global_: GlobalSettings
    """config.toml's global part: concurrency, intervals, metrics, session server, extraGlobalConfig."""

    gitlab_ca: str | None = None
    """The PEM of a private CA for GitLab; installed where the runner looks for it."""

    cache: Cache | None = None
    """The distributed cache every runner uses."""

    cache_credentials: Mapping[str, pulumi.Output[str]] | None = None
    """Its credentials, secret: they reach only config.toml (Docker) or the cache Secret (Kubernetes)."""

    readiness: Readiness = Readiness()
    """Whether `pulumi up` waits for healthy runners, and how long."""

    allow_privileged: bool = False
    """The stack allows privileged jobs; recorded where the policy pack reads it."""


def manager_settings(settings: Settings, secrets: Secrets) -> ManagerSettings:
    return ManagerSettings(
        gitlab_url=settings.gitlab_url,
        global_=settings.global_,
        gitlab_ca=settings.gitlab_ca,
        cache=settings.cache,
        cache_credentials=secrets.cache_credentials,
        readiness=settings.readiness,
        allow_privileged=settings.allow_privileged,
    )

"""Defaults that depend on the stack's name or on other keys, filled in once the config is valid.

The components read only resolved settings: every optional key they use has its value here.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from components.settings.model import (
    CHART_REPOSITORY,
    CHART_VERSION,
    DEFAULT_JOB_IMAGE,
    EXECUTORS,
    PROJECT,
    Cache,
    DockerTarget,
    ImageBuild,
    KubernetesTarget,
    Readiness,
    Runner,
    SessionServer,
    StackConfig,
    Target,
)
from components.settings.placement import resolve_job_pods
from components.settings.problems import Problem


class GlobalSettings(NamedTuple):
    """The global part of config.toml, shared by both targets."""

    concurrent: int
    """Jobs at once per runner manager (one container, one pod)."""
    concurrent_set: bool
    """The stack set `concurrent`; otherwise each manager takes the sum of its own runners' limits."""
    check_interval: int
    shutdown_timeout: int
    log_level: str
    metrics_enabled: bool
    metrics_port: int
    metrics_host_address: str
    extra: Mapping[str, Any] = MappingProxyType({})
    """extraGlobalConfig: more global keys of config.toml, checked against the runner's key tree."""
    session_server: SessionServer = SessionServer()
    """The web terminal: config.toml's [session_server] (its addresses are each target's to work out)."""


class Settings(NamedTuple):
    """Everything the program needs, validated and resolved. Secrets are kept apart, in `Secrets`."""

    stack: str
    target: Target
    gitlab_url: str
    runners: tuple[Runner, ...]
    global_: GlobalSettings
    allow_privileged: bool
    existing_token_names: frozenset[str]
    cache: Cache | None = None
    """The distributed cache every runner uses (credentials in Secrets)."""
    gitlab_ca: str | None = None
    """The PEM of the CA that signed GitLab's certificate, for a self-hosted instance."""
    readiness: Readiness = Readiness()
    docker: DockerTarget | None = None
    kubernetes: KubernetesTarget | None = None
    warnings: tuple[str, ...] = ()
    """Problems that do not stop the program (a missing credential on preview), shown as warnings."""

    @property
    def runners_to_create(self) -> tuple[Runner, ...]:
        """Runners created through the GitLab API (those without an existing token)."""
        return tuple(r for r in self.runners if r.name not in self.existing_token_names)


def read_gitlab_ca(config: StackConfig) -> tuple[str | None, Problem | None]:
    """The CA's PEM, from the stack file or a file next to it (relative to the project)."""
    ca = config.gitlab_ca
    if ca is None:
        return None, None
    if ca.pem is not None:
        return ca.pem, None
    path = Path(str(ca.file)).expanduser()
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        return None, Problem(
            f"{PROJECT}:gitlabCa.file", f"cannot be read ({error.__class__.__name__})", "file: ./certs/gitlab-ca.pem"
        )
    if "-----BEGIN CERTIFICATE-----" not in text:
        return None, Problem(f"{PROJECT}:gitlabCa.file", "holds no PEM certificate", "file: ./certs/gitlab-ca.pem")
    return text, None


def resolve_runners(config: StackConfig, stack: str) -> tuple[Runner, ...]:
    runners = config.runners or [Runner(name="runner")]
    all_hosts = [h.name for h in config.docker.hosts] if config.docker is not None else ["local"]
    resolved = []
    for runner in runners:
        executor = runner.executor or EXECUTORS[config.target][0]
        resolved.append(
            runner.model_copy(
                update={
                    "executor": executor,
                    "description": runner.description or f"{stack}-{runner.name}",
                    # GitLab's own default: a runner without tags picks up untagged jobs.
                    "run_untagged": (not runner.tags) if runner.run_untagged is None else runner.run_untagged,
                    "image": None if executor in ("shell", "instance") else (runner.image or DEFAULT_JOB_IMAGE),
                    "volumes": (runner.volumes if runner.volumes is not None else ["/cache"])
                    if executor in ("docker", "docker-autoscaler")
                    else [],
                    "hosts": (runner.hosts or all_hosts) if config.target == "docker" else [],
                    # The job pods pinned to the architecture of the helper the runner pulls for them.
                    "job_pods": resolve_job_pods(runner, config.kubernetes)
                    if executor == "kubernetes"
                    else runner.job_pods,
                }
            )
        )
    return tuple(resolved)


def default_concurrent(config: StackConfig, runners: tuple[Runner, ...]) -> int:
    # Without per-runner limits, one job per runner at a time is the cautious default.
    return config.concurrent or sum(r.limit for r in runners) or len(runners)


def resolve_global(config: StackConfig, runners: tuple[Runner, ...]) -> GlobalSettings:
    return GlobalSettings(
        concurrent=default_concurrent(config, runners),
        concurrent_set=config.concurrent is not None,
        check_interval=config.check_interval,
        shutdown_timeout=config.shutdown_timeout,
        log_level=config.log_level,
        metrics_enabled=config.metrics.enabled,
        metrics_port=config.metrics.port,
        metrics_host_address=config.metrics.host_address,
        extra=dict(config.extra_global_config),
        session_server=config.session_server,
    )


def resolve_docker(docker: DockerTarget, stack: str) -> DockerTarget:
    hosts = []
    for host in docker.hosts:
        local_socket = host.host[len("unix://") :] if host.host.startswith("unix://") else None
        hosts.append(
            host.model_copy(update={"socket_path": host.socket_path or local_socket or "/var/run/docker.sock"})
        )
    image = None
    if docker.prebuilt_image is None:
        build = docker.image or ImageBuild()
        image = build.model_copy(
            update={
                "base_image": build.resolved_base_image,
                "repository": build.repository or f"gitlab-runners/{stack}-runner",
            }
        )
    return docker.model_copy(
        update={
            "hosts": hosts,
            "container_name": docker.container_name or f"gitlab-runner-{stack}",
            "image": image,
        }
    )


def resolve_kubernetes(kubernetes: KubernetesTarget) -> KubernetesTarget:
    chart = kubernetes.chart
    if chart.path is None:
        chart = chart.model_copy(
            update={"repository": chart.repository or CHART_REPOSITORY, "version": chart.version or CHART_VERSION}
        )
    return kubernetes.model_copy(update={"chart": chart})

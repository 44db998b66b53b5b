"""DockerHost: everything the stack runs on one Docker host, as one subtree with its own provider.

A host's change or failure stays inside its subtree: its provider, image and containers are its own,
so `pulumi up --target` on one host works, and an unreachable host fails only its own resources.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import pulumi
import pulumi_docker as docker

from components.docker_health import Engine
from components.docker_runner import DockerRunner, DockerRunnerArgs, SessionEndpoint
from components.runner_image import RunnerImage, RunnerImageArgs
from components.settings import DockerHost as HostSettings
from components.settings import DockerTarget, DockerTls, GlobalSettings, ManagerSettings, Runner
from components.settings.model import SESSION_OFFSETS

COMPONENT_TYPE = "gitlab-runners:index:DockerHost"
# One runner container per executor kind: only the docker executor gets the Docker socket, so a shell
# job never runs next to it (the socket is root on the host). The offset picks each one's metrics port.
KINDS: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "docker": (("docker",), 0, True),
    "shell": (("shell",), 1, False),
    # Jobs run on the instances the fleeting plugin makes; the manager needs no local Docker socket.
    "autoscaler": (("docker-autoscaler", "instance"), 2, False),
}


def kind_of(executor: str | None) -> str:
    return next(kind for kind, (executors, _, _) in KINDS.items() if executor in executors)


def session_endpoint(host: HostSettings, global_: GlobalSettings, kind: str) -> SessionEndpoint | None:
    """The session server of a host's runner container of `kind`: the host's own address (settings
    rules require it), the port of the kind; None where the terminal is off or the kind has none."""
    session = global_.session_server
    if not session.enabled or kind not in SESSION_OFFSETS or host.session_address is None:
        return None
    port = session.port + SESSION_OFFSETS[kind]
    return SessionEndpoint(
        port=port,
        advertise_address=f"{host.session_address}:{port}",
        timeout=session.session_timeout,
        host_address=session.host_address,
    )


def executor_groups(runners: Sequence[Runner]) -> dict[str, list[Runner]]:
    """The runners of each kind present, in KINDS order."""
    groups: dict[str, list[Runner]] = {}
    for kind, (executors, _, _) in KINDS.items():
        members = [r for r in runners if r.executor in executors]
        if members:
            groups[kind] = members
    return groups


class DockerHostArgs(NamedTuple):
    host: HostSettings
    """The host: address, socket, network mode, platform, TLS or ssh options."""

    target: DockerTarget
    """Image, container name prefix, stop timeout and volume policy shared by every host."""

    runners: Sequence[Runner]
    """The runners that run on this host."""

    manager: ManagerSettings
    """What every runner manager shares: GitLab, config.toml's global part, cache, readiness."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> the secret token this host's runner manager holds."""

    shared_tokens: frozenset[str] = frozenset()
    """Runners whose token other hosts hold too (one runnerTokens token on several hosts): rotation off."""

    tls: DockerTls | None = None
    """PEM material for a tcp:// host, as secrets."""


class DockerHost(pulumi.ComponentResource):
    """The host's docker provider, its runner image and one DockerRunner per executor kind."""

    containers: dict[str, pulumi.Output[str]]
    """Executor kind -> container name."""

    container_ids: dict[str, pulumi.Output[str]]
    """Executor kind -> container id."""

    image_name: pulumi.Output[str] | None
    """The built image's name and tag (None with a prebuilt image)."""

    housekeeping: pulumi.Output[str] | None
    """The housekeeping container's name (None when housekeeping is off)."""

    def __init__(self, name: str, args: DockerHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        host = args.host
        tls = args.tls
        provider = docker.Provider(
            f"{name}-provider",
            host=host.host,
            cert_path=host.cert_path,
            ca_material=tls.ca_cert if tls else None,
            cert_material=tls.cert if tls else None,
            key_material=tls.key if tls else None,
            ssh_opts=list(host.ssh_opts) or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        on_host = pulumi.ResourceOptions(parent=self, providers=[provider])
        image_ref: pulumi.Input[str]
        self.image_name = None
        target = args.target
        if target.build is not None:
            plugins = sorted({r.autoscaler.plugin for r in args.runners if r.autoscaler is not None})
            image = RunnerImage(
                f"{name}-image",
                RunnerImageArgs(build=target.build, platform=host.platform, fleeting_plugins=tuple(plugins)),
                opts=on_host,
            )
            image_ref = image.image_ref
            self.image_name = image.image_name
        else:
            image_ref = target.prebuilt_image or ""

        engine = None
        if host.host.startswith("unix://") or host.cert_path is not None:
            engine = Engine(host.host, cert_path=host.cert_path)
        self.containers = {}
        self.container_ids = {}
        prefix = target.container_name or "gitlab-runner"
        global_ = args.manager.global_
        for kind, runners in executor_groups(args.runners).items():
            _, offset, socket = KINDS[kind]
            runner = DockerRunner(
                f"{name}-{kind}",
                DockerRunnerArgs(
                    container_name=f"{prefix}-{kind}",
                    host=host.name,
                    runners=runners,
                    image=image_ref,
                    manager=args.manager,
                    tokens={r.name: args.tokens[r.name] for r in runners},
                    shared_tokens=frozenset(r.name for r in runners if r.name in args.shared_tokens),
                    socket_path=host.socket_path if socket else None,
                    network_mode=host.network_mode,
                    metrics_port=(host.metrics_port or global_.metrics_port) + offset,
                    publish_metrics=global_.metrics_enabled,
                    metrics_address=global_.metrics_host_address,
                    stop_timeout=target.stop_timeout,
                    keep_config_volume=target.keep_config_volume,
                    engine=engine,
                    session=session_endpoint(host, global_, kind),
                ),
                opts=on_host,
            )
            self.containers[kind] = runner.container_name
            self.container_ids[kind] = runner.container_id
        self.housekeeping = None
        if target.housekeeping.enabled:
            # Imported here: housekeeping is off by default, and every preview and up imports this module.
            from components.docker_housekeeping import DockerHousekeeping, DockerHousekeepingArgs

            housekeeping = DockerHousekeeping(
                f"{name}-housekeeping",
                DockerHousekeepingArgs(
                    settings=target.housekeeping,
                    container_name=f"{prefix}-housekeeping",
                    socket_path=host.socket_path or "/var/run/docker.sock",
                    host=host.name,
                ),
                opts=on_host,
            )
            self.housekeeping = housekeeping.container_name
        self.register_outputs({"containers": self.containers})

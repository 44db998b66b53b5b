"""DockerRunner: the runner manager as a container on a Docker host."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_docker as docker

from components.runner_config import render_config_toml
from components.settings import DockerSettings, GlobalSettings, RunnerSpec

COMPONENT_TYPE = "gitlab-runners:index:DockerRunner"
CONFIG_DIR = "/etc/gitlab-runner"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"


@dataclass(frozen=True)
class DockerRunnerArgs:
    settings: DockerSettings
    """Host, network mode, container name, stop timeout, config volume policy."""

    runners: Sequence[RunnerSpec]
    """The runners this container serves; decides whether the Docker socket is mounted."""

    image: pulumi.Input[str]
    """The image to run (an image ID or a pinned reference)."""

    global_: GlobalSettings
    """config.toml's global part (concurrency, intervals, metrics; shared with the Kubernetes target)."""

    gitlab_url: str
    """The GitLab instance the runners talk to."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> secret glrt- token; they reach only the uploaded config.toml."""

    allow_privileged: bool = False
    """The stack allows privileged jobs; recorded as a label the policy pack reads."""


def needs_docker_socket(runners: Sequence[RunnerSpec]) -> bool:
    """Only the docker executor talks to the Docker engine; shell runners never get the socket."""
    return any(r.executor == "docker" for r in runners)


def health_check(metrics_listen_address: str | None) -> docker.ContainerHealthcheckArgs:
    if metrics_listen_address:
        port = metrics_listen_address.rsplit(":", 1)[1]
        test = ["CMD-SHELL", f"wget -q -O /dev/null http://127.0.0.1:{port}/metrics"]
    else:
        # `list` parses config.toml: a broken config makes the container unhealthy.
        test = ["CMD", "gitlab-runner", "list"]
    return docker.ContainerHealthcheckArgs(tests=test, interval="30s", timeout="10s", retries=3, start_period="10s")


class DockerRunner(pulumi.ComponentResource):
    """A config volume, and the runner container with config.toml uploaded into it."""

    container_name: pulumi.Output[str]
    container_id: pulumi.Output[str]
    volume_name: pulumi.Output[str]

    def __init__(self, name: str, args: DockerRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        settings = args.settings
        # config.toml holds every runner token: a secret Output from end to end.
        config_toml: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(**args.tokens).apply(
                lambda tokens: render_config_toml(args.global_, args.runners, args.gitlab_url, tokens)
            )
        )
        metrics = args.global_.metrics_listen_address if args.global_.metrics_enabled else None
        labels = {
            "io.gitlab-runners.component": name,
            "io.gitlab-runners.managed-by": "pulumi",
            "io.gitlab-runners.allow-privileged": "true" if args.allow_privileged else "false",
        }

        volume = docker.Volume(
            f"{name}-config",
            name=f"{settings.container_name}-config",
            labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in labels.items()],
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=settings.keep_config_volume),
        )

        mounts = [docker.ContainerMountArgs(target=CONFIG_DIR, type="volume", source=volume.name, read_only=False)]
        if needs_docker_socket(args.runners):
            mounts.append(
                docker.ContainerMountArgs(
                    target=SOCKET_IN_CONTAINER, type="bind", source=settings.socket_path, read_only=False
                )
            )

        container = docker.Container(
            f"{name}-container",
            name=settings.container_name,
            image=args.image,
            restart="unless-stopped",
            must_run=True,
            # SIGQUIT makes gitlab-runner stop taking jobs and finish the running ones.
            stop_signal="SIGQUIT",
            stop_timeout=settings.stop_timeout,
            destroy_grace_seconds=settings.stop_timeout,
            network_mode=settings.network_mode,
            mounts=mounts,
            uploads=[
                docker.ContainerUploadArgs(file=f"{CONFIG_DIR}/config.toml", content=config_toml, permissions="0600")
            ],
            healthcheck=health_check(metrics),
            capabilities=docker.ContainerCapabilitiesArgs(drops=["NET_RAW"]),
            security_opts=["no-new-privileges:true"],
            privileged=False,
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in labels.items()],
            opts=pulumi.ResourceOptions(parent=self, delete_before_replace=True),
        )
        self.container_name = container.name
        self.container_id = container.id
        self.volume_name = volume.name
        self.register_outputs(
            {"containerName": self.container_name, "containerId": self.container_id, "volumeName": self.volume_name}
        )

"""DockerHousekeeping: a small container on a Docker host that, on a schedule, removes what the runner's
jobs left there (stopped job containers, unused cache volumes, unused job networks) once it is old
enough, and nothing else.

Docker hosts running the docker executor fill their disks with what jobs leave: containers of jobs the
runner could not clean up, cache volumes (`<runner>-cache-<hash>`, one per project and slot), job
networks. People add cron jobs for `docker system prune`, which also takes whatever else runs on the
host. Here what is removed is told by the labels the runner itself puts on it
(`com.gitlab.gitlab-runner.managed=true`; `...type=cache` on cache volumes) and by its age; the rules
are in components/files/housekeeping.sh, which the container runs with the docker CLI through the host's
socket. It has no network (the socket is a file), no capabilities and a read-only root.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pulumi
import pulumi_docker as docker

from components.settings.model import Housekeeping, seconds

COMPONENT_TYPE = "gitlab-runners:index:DockerHousekeeping"
SCRIPT = Path(__file__).resolve().parent / "files" / "housekeeping.sh"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"
ROLE_LABEL = "io.gitlab-runners.role"
ROLE = "housekeeping"


class DockerHousekeepingArgs(NamedTuple):
    settings: Housekeeping
    """How often, what age, and the image (sh and the docker CLI)."""

    container_name: str
    """The container's name on the host."""

    socket_path: str
    """The host's Docker socket: the only thing the container reaches."""

    host: str = "local"
    """The name of the Docker host (shown in the plan)."""


def command(settings: Housekeeping) -> tuple[list[str], list[str]]:
    """The container's entrypoint (the script, run by sh) and its environment."""
    script = SCRIPT.read_text()
    entrypoint = ["/bin/sh", "-c", script, "housekeeping", "run"]
    env = [
        f"HOUSEKEEPING_EVERY_SECONDS={seconds(settings.every)}",
        f"HOUSEKEEPING_MAX_AGE_SECONDS={seconds(settings.max_age)}",
        f"DOCKER_HOST=unix://{SOCKET_IN_CONTAINER}",
    ]
    return entrypoint, env


class DockerHousekeeping(pulumi.ComponentResource):
    """One container: the housekeeping loop, with the host's Docker socket and nothing else."""

    container_name: pulumi.Output[str]

    def __init__(self, name: str, args: DockerHousekeepingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(COMPONENT_TYPE, name, {"host": args.host, "container": args.container_name}, opts)
        entrypoint, env = command(args.settings)
        labels = {
            "io.gitlab-runners.component": name,
            "io.gitlab-runners.managed-by": "pulumi",
            # Read by the policy pack: the socket is allowed to this container, which runs no jobs.
            ROLE_LABEL: ROLE,
        }
        container = docker.Container(
            f"{name}-container",
            name=args.container_name,
            image=args.settings.image,
            entrypoints=entrypoint,
            envs=env,
            restart="unless-stopped",
            must_run=True,
            # The socket is a file: no network at all.
            network_mode="none",
            volumes=[docker.ContainerVolumeArgs(host_path=args.socket_path, container_path=SOCKET_IN_CONTAINER)],
            read_only=True,
            capabilities=docker.ContainerCapabilitiesArgs(drops=["ALL"]),
            security_opts=["no-new-privileges:true"],
            privileged=False,
            memory=128,
            stop_timeout=10,
            labels=[docker.ContainerLabelArgs(label=k, value=v) for k, v in labels.items()],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.container_name = container.name
        self.register_outputs({"containerName": self.container_name})

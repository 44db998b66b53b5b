"""DockerRunner: one runner manager container on a Docker host, for runners of one executor kind.

config.toml reaches the container's config volume through a one-shot "config sync" container, never
through the runner container's own inputs: nearly every input of a Docker container forces its
replacement (ForceNew in the Terraform provider the docker provider wraps), and replacing a runner
stops its job intake and drains it for up to the stop timeout. So a settings change re-runs only the
sync container; the running runner notices the new file and reloads it. The sync keeps the
credentials the runner owns (components/files/sync-config.sh): a token the runner rotated itself is
never overwritten, and it checks the new file (and a new CA) with GitLab before either goes live. A
config.toml edited by hand runs the sync again (components/config_drift.py).

What still reaches the runner container is what Docker fixes when it creates one, each a setting the
runner cannot take by a reload: the image, name, stop timeout, network mode, mounts, published ports and
health check, and the metrics and session server addresses the runner binds at start
(components/replacement.py lists the settings, which the README and the plan name). Nothing else: the
privileged allowance the policy pack reads travels on the sync container, with the config.toml it allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pulumi
import pulumi_docker as docker

from components.config_drift import RESTORED_LABEL, restore_label
from components.docker_health import Engine, wait_healthy
from components.runner_config import gitlab_host, masked, render_config_toml
from components.settings import ManagerSettings, Runner

COMPONENT_TYPE = "gitlab-runners:index:DockerRunner"
CONFIG_DIR = "/etc/gitlab-runner"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"
# As the engine stores and reads them back (Docker normalises capability names to CAP_…): written
# otherwise, every refresh sees a difference and replaces every container.
DROPPED_CAPABILITIES = ["CAP_NET_RAW"]
STAGING_DIR = "/gitlab-runners"
# The runner container's label holding the metrics address it binds: a new address replaces it.
LISTEN_ADDRESS_LABEL = "io.gitlab-runners.listen-address"
FILES = Path(__file__).resolve().parent / "files"
# Time a delete gets beyond the stop timeout: the daemon's own stop, removal and the provider's checks.
DELETE_MARGIN_SECONDS = 300


class SessionEndpoint(NamedTuple):
    """Where a runner container serves the web terminal, and the address it tells GitLab."""

    port: int
    """The session port, inside the container and on the host alike."""

    advertise_address: str
    """host:port GitLab connects to (config.toml advertise_address; the runner's TLS certificate names the host)."""

    timeout: int
    """Seconds a terminal stays open after its job ends."""

    host_address: str = "0.0.0.0"  # noqa: S104 - GitLab must reach it
    """The host address the port is published on (bridge) or listened on (host network)."""

    def listen_address(self, network_mode: str) -> str:
        """config.toml listen_address: every address of the container's own network namespace (bridge;
        the published port is what limits it), else the host address asked for."""
        if network_mode == "host":
            address = self.host_address
            return (
                f"[{address}]:{self.port}"
                if ":" in address and not address.startswith("[")
                else f"{address}:{self.port}"
            )
        return f"0.0.0.0:{self.port}"

    def table(self, network_mode: str) -> dict[str, str | int]:
        return {
            "listen_address": self.listen_address(network_mode),
            "advertise_address": self.advertise_address,
            "session_timeout": self.timeout,
        }


class DockerRunnerArgs(NamedTuple):
    container_name: str
    """The runner container's name; its config volume is `<name>-config`, the sync container `<name>-sync`."""

    runners: Sequence[Runner]
    """The runners this container serves, all of one executor kind."""

    image: pulumi.Input[str]
    """The image to run (an image ID, so a rebuilt image replaces the container, or a pinned reference)."""

    manager: ManagerSettings
    """What every runner manager shares: GitLab, config.toml's global part, cache, readiness."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> secret glrt- token; they reach only the uploaded config.toml."""

    socket_path: str | None
    """The Docker socket on the host, mounted for the docker executor; None mounts none."""

    shared_tokens: frozenset[str] = frozenset()
    """Runners whose token runner managers on other hosts hold too: their automatic rotation is off."""

    network_mode: str = "bridge"
    """`bridge`, or `host` to reach services on the host's loopback."""

    metrics_port: int = 9252
    """The port the runner serves its metrics on (its health check reads them)."""

    publish_metrics: bool = False
    """Serve the metrics beyond the container: published on the host (bridge) or on `metrics_address` (host)."""

    metrics_address: str = "127.0.0.1"
    """The host address the metrics are published on when `publish_metrics`."""

    stop_timeout: int = 3600
    """Seconds a stopping runner gets to finish its running jobs (SIGQUIT)."""

    keep_config_volume: bool = False
    """Keep the config volume (and the credentials the runner holds) when the stack is destroyed."""

    host: str = "local"
    """The name of the Docker host it runs on (shown in the plan)."""

    engine: Engine | None = None
    """How the readiness gate reaches the host's Docker API (None: the provider's own wait)."""

    session: SessionEndpoint | None = None
    """The web terminal's session server, None for none."""


def listen_address(args: DockerRunnerArgs) -> str:
    """Where the runner serves metrics: always on, for the health check; beyond 127.0.0.1 only when asked."""
    if args.network_mode == "host":
        return f"{args.metrics_address if args.publish_metrics else '127.0.0.1'}:{args.metrics_port}"
    return f"{'0.0.0.0' if args.publish_metrics else '127.0.0.1'}:{args.metrics_port}"  # noqa: S104 - own netns


def health_check(args: DockerRunnerArgs) -> docker.ContainerHealthcheckArgs:
    address = listen_address(args).rsplit(":", 1)[0]
    probe = "127.0.0.1" if address in ("0.0.0.0", "127.0.0.1") else address  # noqa: S104
    script = (FILES / "healthcheck.sh").read_text()
    script = script.replace("__ADDRESS__", probe).replace("__PORT__", str(args.metrics_port))
    return docker.ContainerHealthcheckArgs(
        tests=["CMD-SHELL", script], interval="5s", timeout="10s", retries=3, start_period="5s"
    )


class DockerRunner(pulumi.ComponentResource):
    """A config volume, the config sync container, and the runner container."""

    container_name: pulumi.Output[str]
    container_id: pulumi.Output[str]
    volume_name: pulumi.Output[str]
    ready: pulumi.Output[None] | None = None
    """Resolves once the readiness gate saw the runner healthy (None: no gate)."""

    def __init__(self, name: str, args: DockerRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        session = args.session.table(args.network_mode) if args.session is not None else None
        address = listen_address(args)
        manager = args.manager
        ca_file = f"{CONFIG_DIR}/certs/{gitlab_host(manager.gitlab_url)}.crt" if manager.gitlab_ca else None
        credentials = dict(manager.cache_credentials or {})

        def render(tokens: Mapping[str, str], cache_credentials: Mapping[str, str]) -> str:
            return render_config_toml(
                manager.global_,
                args.runners,
                manager.gitlab_url,
                tokens,
                address,
                cache=manager.cache,
                cache_credentials=cache_credentials or None,
                ca_file=ca_file,
                session_server=session,
                shared_tokens=args.shared_tokens,
            )

        described = {
            "host": args.host,
            "container": args.container_name,
            "runners": [r.name for r in args.runners],
            # The file with its secrets masked, for the plan's config.toml diff (scripts/plan_table.py).
            "configToml": render(masked(args.tokens), masked(credentials)),
        }
        super().__init__(COMPONENT_TYPE, name, described, opts)
        labels = {"io.gitlab-runners.component": name, "io.gitlab-runners.managed-by": "pulumi"}
        # The allowance belongs to the config.toml that uses it: on the sync container, which a settings
        # change replaces anyway, never on the runner container or the volume (a label change replaces
        # them, and a volume replaced loses the credentials the runner holds).
        allowance_labels = {
            **labels,
            "io.gitlab-runners.allow-privileged": "true" if manager.allow_privileged else "false",
        }
        # Stacks deployed by earlier versions carry the allowance on those two as well: their labels are
        # left as Docker has them, so this version replaces nothing to take it off.
        fixed_labels = ["labels"]
        # config.toml holds every runner token and the cache's credentials: a secret Output end to end.
        config_toml: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(pulumi.Output.all(**args.tokens), pulumi.Output.all(**credentials)).apply(
                lambda parts: render(parts[0], parts[1])
            )
        )
        uploads = [
            docker.ContainerUploadArgs(file=f"{STAGING_DIR}/config.toml", content=config_toml, permissions="0600"),
            docker.ContainerUploadArgs(
                file=f"{STAGING_DIR}/sync-config", content=(FILES / "sync-config.sh").read_text(), permissions="0755"
            ),
        ]
        if manager.gitlab_ca and ca_file:
            uploads.append(
                docker.ContainerUploadArgs(
                    file=f"{STAGING_DIR}/certs/{Path(ca_file).name}", content=manager.gitlab_ca, permissions="0644"
                )
            )

        volume = docker.Volume(
            f"{name}-config",
            name=f"{args.container_name}-config",
            labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in labels.items()],
            opts=pulumi.ResourceOptions(
                parent=self, retain_on_delete=args.keep_config_volume, ignore_changes=fixed_labels
            ),
        )
        config_volume = docker.ContainerVolumeArgs(volume_name=volume.name, container_path=CONFIG_DIR)

        sync_labels: pulumi.Input[Sequence[pulumi.Input[docker.ContainerLabelArgs]]] = [
            docker.ContainerLabelArgs(label=k, value=v) for k, v in allowance_labels.items()
        ]
        if args.engine is not None:
            # A config.toml edited by hand on the host gives the sync a new label, so it runs again
            # (components/config_drift.py); the label is a time and a hash, no secret.
            engine, container_name = args.engine, args.container_name
            restored = pulumi.Output.unsecret(
                config_toml.apply(lambda text: restore_label(engine, container_name, text))
            )
            sync_labels = restored.apply(
                lambda marker: [
                    *(docker.ContainerLabelArgs(label=k, value=v) for k, v in allowance_labels.items()),
                    *([docker.ContainerLabelArgs(label=RESTORED_LABEL, value=marker)] if marker else []),
                ]
            )

        # Runs once per rendered config.toml: a changed file replaces this container, and only it.
        sync = docker.Container(
            f"{name}-sync",
            name=f"{args.container_name}-sync",
            image=args.image,
            entrypoints=["/bin/sh", f"{STAGING_DIR}/sync-config"],
            command=["sync"],
            network_mode=args.network_mode,
            volumes=[config_volume],
            uploads=uploads,
            # Wait for it to finish; it is not a service (must_run=False keeps an exited one as it is).
            attach=True,
            must_run=False,
            # Its output (never a token: the script masks them) says why it failed, for `up` to repeat.
            logs=True,
            rm=False,
            restart="no",
            capabilities=docker.ContainerCapabilitiesArgs(drops=DROPPED_CAPABILITIES),
            security_opts=["no-new-privileges:true"],
            labels=sync_labels,
            # A container's name is taken until it is gone: the provider deletes first when a change
            # replaces it, and `pulumi up --replace` (how a failed sync runs again unchanged) must too.
            opts=pulumi.ResourceOptions(
                parent=self, additional_secret_outputs=["uploads", "containerLogs"], delete_before_replace=True
            ),
        )
        # Resolves once the sync succeeded; a failed one raises, saying why. The runner container waits
        # on it: a runner started before its first config.toml would never serve its metrics (it binds
        # listen_address at start only), so it is not created, nor changed, on a failed sync.
        synced: pulumi.Output[pulumi.Resource] = pulumi.Output.all(sync.exit_code, sync.container_logs).apply(
            lambda parts: _synced(sync, parts[0], args.container_name, parts[1])
        )

        volumes = [config_volume]
        if args.socket_path is not None:
            volumes.append(docker.ContainerVolumeArgs(host_path=args.socket_path, container_path=SOCKET_IN_CONTAINER))
        ports: list[docker.ContainerPortArgs] = []
        if args.publish_metrics and args.network_mode == "bridge":
            ports.append(
                docker.ContainerPortArgs(
                    internal=args.metrics_port, external=args.metrics_port, ip=args.metrics_address
                )
            )
        # The runner binds its metrics address at start only (a reload does not re-bind it), and so its
        # session server, with the address it advertises: what a new process needs.
        started_with = address
        if args.session is not None:
            if args.network_mode == "bridge":
                ports.append(
                    docker.ContainerPortArgs(
                        internal=args.session.port, external=args.session.port, ip=args.session.host_address
                    )
                )
            started_with += (
                f" session {args.session.listen_address(args.network_mode)} {args.session.advertise_address}"
            )

        container = docker.Container(
            f"{name}-runner",
            name=args.container_name,
            image=args.image,
            restart="unless-stopped",
            must_run=True,
            # SIGQUIT makes gitlab-runner stop taking jobs and finish the running ones.
            stop_signal="SIGQUIT",
            stop_timeout=args.stop_timeout,
            # What the provider's delete waits before it kills: the same drain time.
            destroy_grace_seconds=args.stop_timeout,
            network_mode=args.network_mode,
            volumes=volumes,
            ports=ports or None,
            healthcheck=health_check(args),
            # Where the gate cannot ask the host's API itself, the provider waits (on create only).
            wait=manager.readiness.enabled and args.engine is None,
            wait_timeout=manager.readiness.timeout_seconds if args.engine is None else None,
            capabilities=docker.ContainerCapabilitiesArgs(drops=DROPPED_CAPABILITIES),
            security_opts=["no-new-privileges:true"],
            privileged=False,
            # The address the runner bound when it started (it binds listen_address only then:
            # commands/multi.go), for whoever inspects the container; the replacement trigger below is
            # what replaces the container when it moves.
            labels=[
                docker.ContainerLabelArgs(label=k, value=v)
                for k, v in {**labels, LISTEN_ADDRESS_LABEL: address}.items()
            ],
            opts=pulumi.ResourceOptions(
                parent=self,
                # The first config.toml is in the volume before the runner starts; later ones reach it
                # without touching this container.
                depends_on=[sync, synced],
                custom_timeouts=pulumi.CustomTimeouts(delete=f"{args.stop_timeout + DELETE_MARGIN_SECONDS}s"),
                ignore_changes=fixed_labels,
                # A new address needs a new runner process: said as a replacement, not left unapplied. The
                # metrics address alone without the terminal, as before it existed (nothing replaced).
                replacement_trigger=started_with,
                # Docker cannot change a container's health check, and the provider's update leaves it
                # as it was (and reads the old one back): a new one is a new container.
                replace_on_changes=["healthcheck"],
                # The new container takes the old one's name: the old one goes first (as the provider
                # asks for every container; said here because a trigger's replacement asks no provider).
                delete_before_replace=True,
            ),
        )
        if manager.readiness.enabled and args.engine is not None and not pulumi.runtime.is_dry_run():
            engine, names = args.engine, [r.name for r in args.runners]
            self.ready = pulumi.Output.all(container.id, sync.exit_code).apply(
                lambda parts: wait_healthy(
                    engine, parts[0], names, manager.readiness.timeout_seconds, name=args.container_name
                )
            )
        self.container_name = container.name
        self.container_id = container.id
        self.volume_name = volume.name
        self.register_outputs(
            {"containerName": self.container_name, "containerId": self.container_id, "volumeName": self.volume_name}
        )


# The sync's exit code when GitLab refuses the stack's token and the volume is new (sync-config.sh).
LOST_TOKEN_EXIT = 3


def sync_said(logs: str | None) -> str | None:
    """The sync's last "config sync: …" line (what went wrong, GitLab's answer named), if any."""
    said = re.findall(r"config sync: ([^\n]+)", logs or "")
    return said[-1].strip() if said else None


def _synced(sync: pulumi.Resource, code: int | None, container_name: str, logs: str | None) -> pulumi.Resource:
    """The sync container, once it installed config.toml."""
    _check_sync(code, container_name, logs)
    return sync


def _check_sync(code: int | None, container_name: str, logs: str | None = None) -> None:
    """A config sync that failed leaves the previous config.toml and CA in place; `up` must say why."""
    if not code:
        return
    said = sync_said(logs)
    if code == LOST_TOKEN_EXIT and said:
        raise pulumi.RunError(f"runner container {container_name}: {said}")
    reason = said or (
        f"config.toml was not changed; `docker logs {container_name}-sync` says why (no token is printed there)"
    )
    raise pulumi.RunError(
        f"the config sync of {container_name} exited {code}: {reason}. Once GitLab answers (or the cause is "
        f"fixed), run `pulumi up` again; with nothing else to change, add `--replace` on its "
        f"`{container_name}-sync` container"
    )

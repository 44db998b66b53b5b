"""The settings whose change replaces a Docker runner container, and why: one list, read by the README's
generated configuration reference (components/settings/schema.py), by the plan (scripts/plan_table.py,
which marks a runner container's replacement with the settings that cause it), and checked against
what the docker provider does, in a real preview (tests/integration/test_docker_replacement.py).

A replaced runner container stops taking jobs and drains: SIGQUIT, its running jobs finish (up to
`docker.stopTimeout`), then the new container starts. Every other setting reaches the running runner as
a new config.toml through the config sync container, which it reloads in place (components/docker_runner.py).

Plain data only: scripts/plan_table.py imports it without the Pulumi SDK.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

IMAGE = (
    "a new runner image, which a running container cannot take; a preview shows every rebuild of the image as "
    "one (the new image's ID is known once built), `up` replaces only when the ID changes"
)
LISTEN = (
    "when it moves the address the runner serves its metrics on (config.toml's listen_address, bound only when "
    "the runner starts) or the port published for them (Docker keeps a container's ports and health check from "
    "its creation); metrics.enabled with hostAddress 127.0.0.1 in host mode moves neither"
)
SESSION = (
    "the docker and shell runner containers, when it moves the address the web terminal listens on or "
    "advertises (config.toml's [session_server], taken only when the runner starts) or the port published for "
    "it; sessionServer.sessionTimeout reaches the running runner"
)

REPLACING_SETTINGS: dict[str, str] = {
    "docker.image": IMAGE,
    "docker.prebuiltImage": IMAGE,
    "docker.hosts[*].platform": IMAGE,
    "runners[*].autoscaler.plugin": IMAGE + "; a host's image holds the fleeting plugins of all its runners",
    "docker.containerName": "new container names, and new config volumes (the runners start from the stack's tokens)",
    "docker.stopTimeout": "Docker keeps a container's stop timeout from its creation",
    "docker.hosts[*].networkMode": "Docker keeps a container's network mode from its creation",
    "docker.hosts[*].socketPath": "Docker keeps a container's mounts from its creation (docker-executor container)",
    "metrics.enabled": LISTEN,
    "metrics.port": LISTEN,
    "metrics.hostAddress": LISTEN,
    "docker.hosts[*].metricsPort": LISTEN,
    "sessionServer.enabled": SESSION,
    "sessionServer.port": SESSION,
    "sessionServer.hostAddress": SESSION,
    "docker.hosts[*].sessionAddress": SESSION,
}
"""Setting key (as in the configuration reference) -> why its change replaces the runner containers."""

METRICS = ("metrics.enabled", "metrics.port", "metrics.hostAddress", "docker.hosts[*].metricsPort")
SESSION_SETTINGS = (
    "sessionServer.enabled",
    "sessionServer.port",
    "sessionServer.hostAddress",
    "docker.hosts[*].sessionAddress",
)

# The runner container's inputs a change of which replaces it, as a plan names them (`replaceReasons`),
# with the settings they come from; a replacement the plan gives no reason for is the listen addresses
# (the container's replacement trigger: metrics, and the web terminal's).
INPUT_SETTINGS: dict[str, tuple[str, ...]] = {
    "image": ("docker.image", "docker.prebuiltImage", "docker.hosts[*].platform", "runners[*].autoscaler.plugin"),
    "name": ("docker.containerName",),
    "stopTimeout": ("docker.stopTimeout",),
    "networkMode": ("docker.hosts[*].networkMode",),
    "volumes": ("docker.hosts[*].socketPath", "docker.containerName"),
    "ports": METRICS + SESSION_SETTINGS,
    "healthcheck": METRICS,
}
TRIGGER_SETTINGS = METRICS + SESSION_SETTINGS
"""What changes the runner container's replacement trigger (its metrics and session server addresses)."""


def settings_replacing(reasons: Sequence[str]) -> list[str]:
    """The settings that may have caused a runner container's replacement, from the plan's reasons
    (no reason: its replacement trigger, the metrics and session server addresses)."""
    if not reasons:
        return list(TRIGGER_SETTINGS)
    found: list[str] = []
    for reason in reasons:
        top = re.split(r"[.\[]", reason, maxsplit=1)[0]
        for setting in INPUT_SETTINGS.get(top, (f"the container's {top}",)):
            if setting not in found:
                found.append(setting)
    return found

"""config.toml for gitlab-runner, rendered from settings with a TOML writer.

Both targets use these functions so a Docker runner and a Kubernetes runner with the same settings
are configured alike. They are pure: plain values in, TOML text out. Callers that pass real tokens
wrap the result in a secret Output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tomli_w

from components.settings import GlobalSettings, Runner
from components.settings.model import JobResources


def _executor_section(runner: Runner, namespace: str | None) -> dict[str, Any]:
    if runner.executor == "docker":
        return {
            "docker": {
                "image": runner.image,
                "privileged": runner.privileged,
                "volumes": list(runner.volumes or ()),
                "pull_policy": list(runner.pull_policy),
                "tls_verify": False,
                "disable_cache": False,
                "shm_size": 0,
            }
        }
    if runner.executor == "kubernetes":
        section: dict[str, Any] = {
            "namespace": namespace or "gitlab",
            "image": runner.image,
            "privileged": runner.privileged,
            "pull_policy": list(runner.pull_policy),
        }
        resources = runner.job_resources or JobResources()
        for key, value in (
            ("cpu_request", resources.cpu_request),
            ("memory_request", resources.memory_request),
            ("cpu_limit", resources.cpu_limit),
            ("memory_limit", resources.memory_limit),
        ):
            if value is not None:
                section[key] = value
        return {"kubernetes": section}
    return {}


def runner_table(
    runner: Runner,
    url: str | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    """One `[[runners]]` entry. Without url/token it is the chart's template (the chart adds both)."""
    table: dict[str, Any] = {"name": runner.name}
    if url is not None:
        table["url"] = url
    if token is not None:
        table["token"] = token
    table["executor"] = runner.executor
    table["request_concurrency"] = runner.request_concurrency
    table["limit"] = runner.limit
    table.update(_executor_section(runner, namespace))
    return table


def manager_concurrency(global_: GlobalSettings, runners: Sequence[Runner]) -> int:
    """`concurrent` of one runner manager: the stack's value, else the sum of its runners' limits
    (one job per runner without limits)."""
    if global_.concurrent_set:
        return global_.concurrent
    return sum(r.limit for r in runners) or len(runners) or 1


def render_config_toml(
    global_: GlobalSettings,
    runners: Sequence[Runner],
    url: str,
    tokens: Mapping[str, str],
    listen_address: str | None = None,
) -> str:
    """The complete config.toml of a runner manager serving `runners`."""
    document: dict[str, Any] = {
        "concurrent": manager_concurrency(global_, runners),
        "check_interval": global_.check_interval,
        "shutdown_timeout": global_.shutdown_timeout,
        "log_level": global_.log_level,
    }
    if listen_address is not None:
        document["listen_address"] = listen_address
    document["runners"] = [runner_table(r, url, tokens[r.name]) for r in runners]
    return tomli_w.dumps(document)


def render_chart_runner_toml(runner: Runner, namespace: str) -> str:
    """`runners.config` for the official chart: the runner's section, token left to the chart's Secret.

    The pod's config.toml lives in an emptyDir and the chart re-registers from the Secret at every pod
    start, so a token the runner rotated itself would be lost with the pod, and the revoked one in the
    Secret would stop it: on Kubernetes the stack owns the token (rotation through the stack, README).
    """
    table = runner_table(runner, namespace=namespace)
    table["feature_flags"] = {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}
    return tomli_w.dumps({"runners": [table]})

"""config.toml for gitlab-runner, rendered from settings with a TOML writer.

Both targets use these functions so a Docker runner and a Kubernetes runner with the same settings
are configured alike. They are pure: plain values in, TOML text out. Callers that pass real tokens
wrap the result in a secret Output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import tomli_w

from components.settings import GlobalSettings, RunnerSpec


def _executor_section(runner: RunnerSpec, namespace: str | None) -> dict[str, Any]:
    if runner.executor == "docker":
        return {
            "docker": {
                "image": runner.image,
                "privileged": runner.privileged,
                "volumes": list(runner.volumes),
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
        resources = runner.job_resources
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
    runner: RunnerSpec,
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


def render_config_toml(
    global_: GlobalSettings,
    runners: Sequence[RunnerSpec],
    url: str,
    tokens: Mapping[str, str],
) -> str:
    """The complete config.toml of a runner manager serving `runners`."""
    document: dict[str, Any] = {
        "concurrent": global_.concurrent,
        "check_interval": global_.check_interval,
        "shutdown_timeout": global_.shutdown_timeout,
        "log_level": global_.log_level,
    }
    if global_.metrics_enabled:
        document["listen_address"] = global_.metrics_listen_address
    document["runners"] = [runner_table(r, url, tokens[r.name]) for r in runners]
    return tomli_w.dumps(document)


def render_chart_runner_toml(runner: RunnerSpec, namespace: str) -> str:
    """`runners.config` for the official chart: the runner's section, token left to the chart's Secret."""
    return tomli_w.dumps({"runners": [runner_table(runner, namespace=namespace)]})

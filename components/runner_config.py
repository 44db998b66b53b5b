"""config.toml for gitlab-runner, rendered from settings with a TOML writer.

Both targets use these functions so a Docker runner and a Kubernetes runner with the same settings
are configured alike. They are pure: plain values in, TOML text out. Callers that pass real tokens
wrap the result in a secret Output.

The typed settings are rendered first; extraConfig and extraGlobalConfig (keys the settings checked
against the runner's own key tree, never one a typed setting renders) are then laid over them, table
by table.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from components.settings import GlobalSettings, Runner
from components.settings.model import Autoscaler, Cache, JobPods, JobResources


def deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `extra` laid over it: a table merged key by key, any other value replaced."""
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _docker_section(runner: Runner) -> dict[str, Any]:
    return {
        "image": runner.image,
        "privileged": runner.privileged,
        "volumes": list(runner.volumes or ()),
        "pull_policy": list(runner.pull_policy),
        "tls_verify": False,
        "disable_cache": False,
        "shm_size": 0,
    }


def autoscaler_table(autoscaler: Autoscaler) -> dict[str, Any]:
    """`[runners.autoscaler]` with its connector and its policies (`[[runners.autoscaler.policy]]`)."""
    connector = autoscaler.connector_config
    connector_table: dict[str, Any] = {
        "os": connector.os,
        "arch": connector.arch,
        "protocol": connector.protocol,
        "username": connector.username,
        "use_static_credentials": connector.use_static_credentials,
        "use_external_addr": connector.use_external_addr,
    }
    for key, value in (
        ("key_path", connector.key_path),
        ("timeout", connector.timeout),
        ("keepalive", connector.keepalive),
    ):
        if value is not None:
            connector_table[key] = value
    policies = []
    for policy in autoscaler.policies:
        table: dict[str, Any] = {
            "periods": list(policy.periods),
            "idle_count": policy.idle_count,
            "idle_time": policy.idle_time,
            "scale_factor": float(policy.scale_factor),
            "scale_factor_limit": policy.scale_factor_limit,
        }
        if policy.timezone is not None:
            table["timezone"] = policy.timezone
        policies.append(table)
    return {
        "plugin": autoscaler.plugin,
        "capacity_per_instance": autoscaler.capacity_per_instance,
        "max_use_count": autoscaler.max_use_count,
        "max_instances": autoscaler.max_instances,
        "plugin_config": dict(autoscaler.plugin_config),
        "connector_config": connector_table,
        "policy": policies,
    }


def _kubernetes_section(runner: Runner, namespace: str | None) -> dict[str, Any]:
    pods = runner.job_pods or JobPods()
    section: dict[str, Any] = {
        "namespace": pods.namespace or namespace or "gitlab",
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
        # The bounds a job's own KUBERNETES_* variables may not exceed.
        ("cpu_limit_overwrite_max_allowed", pods.max_cpu_limit),
        ("memory_limit_overwrite_max_allowed", pods.max_memory_limit),
        ("cpu_request_overwrite_max_allowed", pods.max_cpu_request),
        ("memory_request_overwrite_max_allowed", pods.max_memory_request),
        ("service_account", pods.service_account),
        # Resolved settings: a mirrored helper with the tag of the job pods' architecture (placement.py).
        ("helper_image", pods.helper_image),
        ("helper_image_flavor", pods.helper_image_flavor),
    ):
        if value is not None:
            section[key] = value
    if pods.namespace_per_job:
        section["namespace_per_job"] = True
    if pods.node_selector:
        section["node_selector"] = dict(pods.node_selector)
    if pods.tolerations:
        section["node_tolerations"] = dict(pods.tolerations)
    return section


def _executor_section(runner: Runner, namespace: str | None) -> dict[str, Any]:
    if runner.executor == "docker":
        return {"docker": _docker_section(runner)}
    if runner.executor == "docker-autoscaler" and runner.autoscaler is not None:
        return {"docker": _docker_section(runner), "autoscaler": autoscaler_table(runner.autoscaler)}
    if runner.executor == "instance" and runner.autoscaler is not None:
        return {"autoscaler": autoscaler_table(runner.autoscaler)}
    if runner.executor == "kubernetes":
        return {"kubernetes": _kubernetes_section(runner, namespace)}
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
    return deep_merge(table, runner.extra_config)


ROTATION_OFF = "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION"


def without_token_rotation(table: Mapping[str, Any]) -> dict[str, Any]:
    """A `[[runners]]` entry whose runner never resets its token itself (the flag wins over extraConfig):
    for a token several runner managers hold, which one manager's reset would revoke for the others."""
    return {**table, "feature_flags": {**table.get("feature_flags", {}), ROTATION_OFF: True}}


def gitlab_host(url: str) -> str:
    """The host name the runner files a custom CA under (`<config dir>/certs/<host>.crt`, no port)."""
    return urlsplit(url).hostname or "gitlab"


def manager_concurrency(global_: GlobalSettings, runners: Sequence[Runner]) -> int:
    """`concurrent` of one runner manager: the stack's value, else the sum of its runners' limits
    (one job per runner without limits)."""
    if global_.concurrent_set:
        return global_.concurrent
    return sum(r.limit for r in runners) or len(runners) or 1


def cache_table(cache: Cache, credentials: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`[runners.cache]`. Credentials only where they go into the file (Docker); the chart's
    pods take theirs from a Secret."""
    table: dict[str, Any] = {"Type": cache.type, "Shared": cache.shared}
    if cache.path:
        table["Path"] = cache.path
    creds = credentials or {}
    if cache.s3 is not None:
        s3: dict[str, Any] = {"BucketName": cache.s3.bucket_name, "Insecure": cache.s3.insecure}
        s3["AuthenticationType"] = cache.s3.authentication_type
        if cache.s3.server_address:
            s3["ServerAddress"] = cache.s3.server_address
        if cache.s3.bucket_location:
            s3["BucketLocation"] = cache.s3.bucket_location
        if "accessKey" in creds:
            s3["AccessKey"], s3["SecretKey"] = creds["accessKey"], creds["secretKey"]
        table["s3"] = s3
    if cache.gcs is not None:
        gcs: dict[str, Any] = {"BucketName": cache.gcs.bucket_name}
        if "accessId" in creds:
            gcs["AccessID"], gcs["PrivateKey"] = creds["accessId"], creds["privateKey"]
        table["gcs"] = gcs
    if cache.azure is not None:
        azure: dict[str, Any] = {"ContainerName": cache.azure.container_name}
        if cache.azure.storage_domain:
            azure["StorageDomain"] = cache.azure.storage_domain
        if "accountName" in creds:
            azure["AccountName"], azure["AccountKey"] = creds["accountName"], creds["accountKey"]
        table["azure"] = azure
    return table


def global_table(
    global_: GlobalSettings,
    concurrent: int,
    listen_address: str | None = None,
    session_server: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """config.toml's global part: the typed settings, then extraGlobalConfig."""
    document: dict[str, Any] = {
        "concurrent": concurrent,
        "check_interval": global_.check_interval,
        "shutdown_timeout": global_.shutdown_timeout,
        "log_level": global_.log_level,
    }
    if listen_address is not None:
        document["listen_address"] = listen_address
    if session_server is not None:
        document["session_server"] = dict(session_server)
    return deep_merge(document, global_.extra)


def render_config_toml(
    global_: GlobalSettings,
    runners: Sequence[Runner],
    url: str,
    tokens: Mapping[str, str],
    listen_address: str | None = None,
    cache: Cache | None = None,
    cache_credentials: Mapping[str, str] | None = None,
    ca_file: str | None = None,
    session_server: Mapping[str, Any] | None = None,
    shared_tokens: Collection[str] = (),
) -> str:
    """The complete config.toml of a runner manager serving `runners`; `session_server` is its
    [session_server] table (listen_address, advertise_address, session_timeout), None for none; the
    runners in `shared_tokens` hold a token other runner managers hold too, so their automatic token
    rotation is off."""
    document = global_table(global_, manager_concurrency(global_, runners), listen_address, session_server)
    tables = []
    for runner in runners:
        table = runner_table(runner, url, tokens[runner.name])
        if ca_file is not None:
            table["tls-ca-file"] = ca_file
        if cache is not None:
            table["cache"] = cache_table(cache, cache_credentials)
        if runner.name in shared_tokens:
            table = without_token_rotation(table)
        tables.append(table)
    document["runners"] = tables
    return tomli_w.dumps(document)


def render_chart_runner_toml(runner: Runner, namespace: str, cache: Cache | None = None) -> str:
    """`runners.config` for the official chart: the runner's section, token left to the chart's Secret.

    The pod's config.toml lives in an emptyDir and the chart re-registers from the Secret at every pod
    start, so a token the runner rotated itself would be lost with the pod, and the revoked one in the
    Secret would stop it: on Kubernetes the stack owns the token (rotation through the stack, README).
    """
    table = runner_table(runner, namespace=namespace)
    if cache is not None:
        table["cache"] = cache_table(cache)
    table = without_token_rotation(table)
    # The chart passes runners.config through Helm's `tpl`: a "{{" of a value (a script's
    # `docker ps --format '{{.ID}}'`) would be taken for a template action.
    return tomli_w.dumps({"runners": [table]}).replace("{{", '{{ "{{" }}')


def render_chart_global_toml(global_: GlobalSettings, runner: Runner) -> str | None:
    """config.toml's global part for a runner's chart release, when extraGlobalConfig adds to it.

    The chart renders the global part itself, from values with no place for other keys, and its
    registration takes only the [[runners]] entry of runners.config. So with extraGlobalConfig the whole
    global part is rendered here, the chart's keys with the values chart_values gives the chart
    (kubernetes_runner.py puts it in place in the pod). None without extraGlobalConfig: the chart's own
    stays as it is. The chart's [session_server] is not rendered here: its address is found in the pod
    at start, and the script keeps the table the chart wrote.
    """
    if not global_.extra:
        return None
    listen_address = f":{global_.metrics_port}" if global_.metrics_enabled else None
    return tomli_w.dumps(global_table(global_, manager_concurrency(global_, [runner]), listen_address))

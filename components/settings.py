"""Stack settings: read once, typed, validated.

This is the only module that reads `pulumi.Config`. `parse_settings` is a pure function over plain
data so every rule can be unit-tested; `load_settings` feeds it the stack's config and turns the
secrets into secret Outputs. Any problem stops the program before a single resource is registered,
with one message per problem naming the key, what is wrong, and a right value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config

from components.config_reader import Node, Problem, Problems

PROJECT = "gitlab-runners"

# Pinned defaults. The runner image tag and the chart version move together: chart 0.(77+N).x
# ships runner 18.N.x.
RUNNER_VERSION = "18.5.0"
CHART_VERSION = "0.82.0"
CHART_REPOSITORY = "https://charts.gitlab.io"
DEFAULT_JOB_IMAGE = "alpine:3.20.3"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

Target = Literal["docker", "kubernetes"]
Flavor = Literal["alpine", "ubuntu"]
EXECUTORS: dict[str, tuple[str, ...]] = {
    "docker": ("docker", "shell"),
    "kubernetes": ("kubernetes",),
}
SCOPES = ("instance", "group", "project")
ACCESS_LEVELS = ("not_protected", "ref_protected")
PULL_POLICIES = ("always", "if-not-present", "never")
NAME_PATTERN = r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?"
# An image reference with a tag other than `latest`, or a digest.
PINNED_IMAGE_PATTERN = r"[^\s@]+:(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]*|[^\s@:]+(:[^\s@/]+)?@sha256:[0-9a-f]{64}"
QUANTITY_PATTERN = r"[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?"


class SettingsError(pulumi.RunError):
    """Raised with every config problem found; pulumi prints it without a traceback."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid stack configuration ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class RunnerScope:
    """Where the runner is created in GitLab."""

    kind: Literal["instance", "group", "project"]
    group_id: int | None = None
    project_id: int | None = None

    @property
    def runner_type(self) -> str:
        """The value GitLab's API expects for `runner_type`."""
        return f"{self.kind}_type"


@dataclass(frozen=True)
class JobResources:
    """Kubernetes requests/limits for job pods (kubernetes executor only)."""

    cpu_request: str | None = None
    memory_request: str | None = None
    cpu_limit: str | None = None
    memory_limit: str | None = None


@dataclass(frozen=True)
class RunnerSpec:
    """One runner: its GitLab-side attributes and how its jobs execute."""

    name: str
    scope: RunnerScope
    description: str
    tags: tuple[str, ...]
    run_untagged: bool
    locked: bool
    access_level: str
    paused: bool
    maximum_timeout: int | None
    maintenance_note: str | None
    executor: str
    image: str
    request_concurrency: int
    limit: int
    privileged: bool
    volumes: tuple[str, ...]
    pull_policy: tuple[str, ...]
    job_resources: JobResources = JobResources()


@dataclass(frozen=True)
class GlobalSettings:
    """The global part of config.toml."""

    concurrent: int
    check_interval: int
    shutdown_timeout: int
    log_level: str
    metrics_enabled: bool
    metrics_listen_address: str


@dataclass(frozen=True)
class ImageBuild:
    """How the runner image is built from images/runner/Dockerfile."""

    base_image: str
    runner_version: str
    flavor: Flavor
    extra_packages: tuple[str, ...]
    repository: str

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.flavor}-v{self.runner_version}"


@dataclass(frozen=True)
class DockerSettings:
    """The Docker target."""

    host: str
    socket_path: str
    network_mode: str
    container_name: str
    build: ImageBuild | None
    prebuilt_image: str | None
    keep_config_volume: bool
    stop_timeout: int


@dataclass(frozen=True)
class ChartSettings:
    """Where the official gitlab-runner chart comes from."""

    repository: str | None
    version: str | None
    path: str | None

    @property
    def reference(self) -> str:
        return self.path or "gitlab-runner"


@dataclass(frozen=True)
class KubernetesSettings:
    """The Kubernetes target."""

    namespace: str
    chart: ChartSettings
    replicas: int
    requests: dict[str, str]
    limits: dict[str, str]
    rbac_create: bool
    rbac_cluster_wide: bool
    service_account_create: bool
    service_account_name: str | None
    kubeconfig: str | None
    context: str | None
    termination_grace_period: int


@dataclass(frozen=True)
class Settings:
    """Everything the program needs, validated. Secrets are kept apart, in `Secrets`."""

    stack: str
    target: Target
    gitlab_url: str
    runners: tuple[RunnerSpec, ...]
    global_: GlobalSettings
    allow_privileged: bool
    existing_token_names: frozenset[str]
    docker: DockerSettings | None = None
    kubernetes: KubernetesSettings | None = None
    warnings: tuple[str, ...] = ()
    """Problems that do not stop a preview (a missing credential), shown as warnings."""

    @property
    def runners_to_create(self) -> tuple[RunnerSpec, ...]:
        """Runners created through the GitLab API (those without an existing token)."""
        return tuple(r for r in self.runners if r.name not in self.existing_token_names)


@dataclass(frozen=True)
class Secrets:
    """Secret inputs, only ever held as secret Outputs."""

    gitlab_token: pulumi.Output[str] | None
    runner_tokens: dict[str, pulumi.Output[str]] = field(default_factory=dict)


def _url_check(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", value) else "must be an http(s) URL"


def _pinned_image(node: Node, name: str, example: str, default: str | None) -> Any:
    """An image reference that must be pinned: a tag other than `latest`, or a digest."""
    return node.get_str(
        name,
        example,
        default=default,
        pattern=PINNED_IMAGE_PATTERN,
        pattern_hint="must be pinned with a tag (not latest) or a digest",
    )


def _parse_runner(node: Node, target: str, stack: str, problems: Problems) -> RunnerSpec:
    name = node.get_str(
        "name",
        "name: docker-1",
        pattern=NAME_PATTERN,
        pattern_hint="must be lower-case letters, digits and dashes (at most 40)",
    )
    kind = node.get_choice("scope", SCOPES, default="instance")
    group_id = project_id = None
    if kind == "group":
        group_id = node.get_int("groupId", "groupId: 42", minimum=1)
    elif kind == "project":
        project_id = node.get_int("projectId", "projectId: 7", minimum=1)
    for other, needed in (("groupId", "group"), ("projectId", "project")):
        if node.has(other) and kind != needed:
            node.get_int(other, f"{other}: 1")
            problems.add(node.key(other), f'is only valid with scope "{needed}"', f"scope: {needed}")

    tags = node.get_str_list(
        "tags",
        "tags: [docker, linux]",
        item_check=lambda t: (
            None
            if re.fullmatch(r"[^,\s][^,]{0,254}", t) and t == t.strip()
            else "must be a non-empty tag without commas or surrounding spaces"
        ),
    )
    executors = EXECUTORS.get(target, ("docker",))
    executor = node.get_choice("executor", executors, default=executors[0])
    privileged = node.get_bool("privileged", False)
    if privileged and executor == "shell":
        problems.add(node.key("privileged"), "has no meaning for the shell executor", "privileged: false")

    resources = node.child("jobResources", "jobResources: {cpuRequest: 500m, memoryLimit: 1Gi}")
    job_resources = JobResources(
        **{
            field_name: resources.get_str(
                key,
                f"{key}: {sample}",
                default=None,
                pattern=QUANTITY_PATTERN,
                pattern_hint="must be a Kubernetes quantity",
            )
            for field_name, key, sample in (
                ("cpu_request", "cpuRequest", "500m"),
                ("memory_request", "memoryRequest", "512Mi"),
                ("cpu_limit", "cpuLimit", "2"),
                ("memory_limit", "memoryLimit", "2Gi"),
            )
        }
    )
    resources.finish()
    if job_resources != JobResources() and executor != "kubernetes":
        problems.add(resources.path, "only applies to the kubernetes executor", "remove it")

    spec = RunnerSpec(
        name=name or "",
        scope=RunnerScope(kind or "instance", group_id, project_id),
        description=node.get_str("description", "description: build runner", default=f"{stack}-{name}"),
        tags=tags,
        # GitLab's own default: a runner without tags picks up untagged jobs.
        run_untagged=node.get_bool("runUntagged", not tags),
        locked=node.get_bool("locked", False),
        access_level=node.get_choice("accessLevel", ACCESS_LEVELS, default="not_protected"),
        paused=node.get_bool("paused", False),
        maximum_timeout=node.get_int("maximumTimeout", "maximumTimeout: 3600", default=None, minimum=600),
        maintenance_note=node.get_str("maintenanceNote", "maintenanceNote: owned by platform", default=None),
        executor=executor or executors[0],
        image=_pinned_image(node, "image", f"image: {DEFAULT_JOB_IMAGE}", DEFAULT_JOB_IMAGE),
        request_concurrency=node.get_int(
            "requestConcurrency", "requestConcurrency: 1", default=1, minimum=1, maximum=100
        ),
        limit=node.get_int("limit", "limit: 4", default=0, minimum=0),
        privileged=privileged,
        volumes=node.get_str_list(
            "volumes",
            "volumes: [/cache]",
            default=("/cache",),
            item_check=lambda v: (
                None
                if v.split(":")[0].startswith("/") or (":" in v and v.split(":")[1].startswith("/"))
                else "must be a container path or host:container[:ro] volume"
            ),
        ),
        pull_policy=node.get_str_list(
            "pullPolicy",
            "pullPolicy: [if-not-present]",
            default=("always",),
            item_check=lambda p: None if p in PULL_POLICIES else "must be one of " + ", ".join(PULL_POLICIES),
        ),
        job_resources=job_resources,
    )
    if executor == "shell" and node.has("image"):
        problems.add(node.key("image"), "has no meaning for the shell executor", "remove it")
    node.finish()
    return spec


def _parse_global(root: Node, runners: tuple[RunnerSpec, ...]) -> GlobalSettings:
    metrics = root.child("metrics", "metrics: {enabled: true, listenAddress: 127.0.0.1:9252}")
    enabled = metrics.get_bool("enabled", False)
    listen = metrics.get_str(
        "listenAddress",
        "listenAddress: 127.0.0.1:9252",
        default="127.0.0.1:9252",
        pattern=r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]*):[0-9]{1,5}",
        pattern_hint="must be host:port",
    )
    metrics.finish()
    limits = sum(r.limit for r in runners)
    return GlobalSettings(
        # Without per-runner limits, one job per runner at a time is the cautious default.
        concurrent=root.get_int("concurrent", "concurrent: 4", default=limits or len(runners) or 1, minimum=1),
        check_interval=root.get_int("checkInterval", "checkInterval: 3", default=3, minimum=0),
        shutdown_timeout=root.get_int("shutdownTimeout", "shutdownTimeout: 30", default=30, minimum=0),
        log_level=root.get_choice("logLevel", ("info", "debug", "warn", "error"), default="info"),
        metrics_enabled=enabled,
        metrics_listen_address=listen,
    )


def _parse_docker(root: Node, stack: str) -> DockerSettings:
    node = root.child("docker", "docker: {host: unix:///var/run/docker.sock}")
    host = node.get_str(
        "host",
        f"host: {DEFAULT_DOCKER_HOST}",
        default=DEFAULT_DOCKER_HOST,
        pattern=r"(unix://|tcp://|ssh://)\S+",
        pattern_hint="must start with unix://, tcp:// or ssh://",
    )
    local_socket = host[len("unix://") :] if isinstance(host, str) and host.startswith("unix://") else None
    socket_path = node.get_str(
        "socketPath",
        "socketPath: /run/user/1000/docker.sock",
        default=local_socket or "/var/run/docker.sock",
        pattern=r"/\S+",
        pattern_hint="must be an absolute path",
    )
    image = node.child("image", "image: {flavor: alpine, extraPackages: [python3]}")
    flavor = image.get_choice("flavor", ("alpine", "ubuntu"), default="alpine")
    version = image.get_str(
        "runnerVersion",
        f"runnerVersion: {RUNNER_VERSION}",
        default=RUNNER_VERSION,
        pattern=r"[0-9]+\.[0-9]+\.[0-9]+",
        pattern_hint="must be an exact release such as 18.5.0 (never latest)",
    )
    base = _pinned_image(
        image,
        "baseImage",
        f"baseImage: gitlab/gitlab-runner:{flavor}-v{RUNNER_VERSION}",
        f"gitlab/gitlab-runner:{flavor}-v{version}",
    )
    build = ImageBuild(
        base_image=base,
        runner_version=version,
        flavor=flavor,
        extra_packages=image.get_str_list(
            "extraPackages",
            "extraPackages: [python3, py3-pip]",
            item_check=lambda p: (
                None if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._:=~-]*", p) else "must be a package name"
            ),
        ),
        repository=image.get_str(
            "repository",
            "repository: gitlab-runners/runner",
            default=f"gitlab-runners/{stack}-runner",
            pattern=r"[a-z0-9]+([._/-][a-z0-9]+)*",
            pattern_hint="must be a lower-case image repository name",
        ),
    )
    image.finish()
    prebuilt = _pinned_image(node, "prebuiltImage", "prebuiltImage: registry.example.com/runner:18.5.0", None)
    if prebuilt and node.has("image"):
        root.report(node.key("prebuiltImage"), "and docker.image are exclusive", "set only one of them")
    settings = DockerSettings(
        host=host,
        socket_path=socket_path,
        network_mode=node.get_choice("networkMode", ("bridge", "host"), default="bridge"),
        container_name=node.get_str(
            "containerName",
            "containerName: gitlab-runner",
            default=f"gitlab-runner-{stack}",
            pattern=r"[a-zA-Z0-9][a-zA-Z0-9_.-]*",
            pattern_hint="must be a valid container name",
        ),
        build=None if prebuilt else build,
        prebuilt_image=prebuilt,
        keep_config_volume=node.get_bool("keepConfigVolume", False),
        stop_timeout=node.get_int("stopTimeout", "stopTimeout: 3600", default=3600, minimum=0),
    )
    node.finish()
    return settings


def _parse_kubernetes(root: Node) -> KubernetesSettings:
    node = root.child("kubernetes", "kubernetes: {namespace: gitlab}")
    namespace = node.get_str(
        "namespace",
        "namespace: gitlab",
        default="gitlab",
        pattern=NAME_PATTERN,
        pattern_hint="must be a DNS label",
    )
    if namespace == "default":
        root.report(
            node.key("namespace"), 'must not be "default": runners get a namespace of their own', "namespace: gitlab"
        )
    chart = node.child("chart", f"chart: {{version: {CHART_VERSION}}}")
    path = chart.get_str("path", "path: ./charts/gitlab-runner", default=None)
    repository = chart.get_str(
        "repository", f"repository: {CHART_REPOSITORY}", default=None if path else CHART_REPOSITORY
    )
    version = chart.get_str(
        "version",
        f"version: {CHART_VERSION}",
        default=None if path else CHART_VERSION,
        pattern=r"[0-9]+\.[0-9]+\.[0-9]+",
        pattern_hint="must be an exact chart version",
    )
    if path and chart.has("repository"):
        root.report(chart.key("path"), "and chart.repository are exclusive", "set only one of them")
    chart.finish()
    resources = node.child("resources", "resources: {requests: {cpu: 100m}}")
    quantity = "cpu: 100m"
    requests = resources.get_str_map("requests", f"requests: {{{quantity}, memory: 128Mi}}") or {
        "cpu": "100m",
        "memory": "128Mi",
    }
    limits = resources.get_str_map("limits", "limits: {cpu: 500m, memory: 512Mi}") or {
        "cpu": "500m",
        "memory": "512Mi",
    }
    for part, values in (("requests", requests), ("limits", limits)):
        for key, value in values.items():
            if key not in ("cpu", "memory", "ephemeral-storage"):
                root.report(resources.key(f"{part}.{key}"), "is not cpu, memory or ephemeral-storage", quantity)
            elif not re.fullmatch(QUANTITY_PATTERN, value):
                root.report(resources.key(f"{part}.{key}"), f'must be a Kubernetes quantity, got "{value}"', quantity)
    resources.finish()
    rbac = node.child("rbac", "rbac: {create: true}")
    service_account = node.child("serviceAccount", "serviceAccount: {create: true}")
    settings = KubernetesSettings(
        namespace=namespace,
        chart=ChartSettings(repository=repository, version=version, path=path),
        replicas=node.get_int("replicas", "replicas: 1", default=1, minimum=0, maximum=50),
        requests=requests,
        limits=limits,
        rbac_create=rbac.get_bool("create", True),
        rbac_cluster_wide=rbac.get_bool("clusterWideAccess", False),
        service_account_create=service_account.get_bool("create", True),
        service_account_name=service_account.get_str(
            "name", "name: gitlab-runner", default=None, pattern=NAME_PATTERN, pattern_hint="must be a DNS label"
        ),
        kubeconfig=node.get_str("kubeconfig", "kubeconfig: ~/.kube/config", default=None),
        context=node.get_str("context", "context: prod-cluster", default=None),
        termination_grace_period=node.get_int(
            "terminationGracePeriodSeconds", "terminationGracePeriodSeconds: 3600", default=3600, minimum=0
        ),
    )
    rbac.finish()
    service_account.finish()
    node.finish()
    return settings


class _Root(Node):
    """The project's namespace: its keys are written `gitlab-runners:name`."""

    def key(self, name: str) -> str:
        return f"{PROJECT}:{name}"


def parse_settings(
    values: Mapping[str, Any],
    stack: str,
    existing_token_names: frozenset[str] = frozenset(),
    has_gitlab_token: bool = False,
    extra_problems: tuple[Problem, ...] = (),
    dry_run: bool = False,
) -> Settings:
    """Validate the project's config values (keys without the `gitlab-runners:` prefix).

    Raises SettingsError listing every problem found.
    """
    problems = Problems(list(extra_problems))
    root = _Root(values, PROJECT, problems)
    target = root.get_choice("target", ("docker", "kubernetes"))
    gitlab_url = root.get_str("gitlabUrl", "gitlabUrl: https://gitlab.example.com", default="https://gitlab.com")
    if isinstance(gitlab_url, str) and (failure := _url_check(gitlab_url)):
        problems.add(root.key("gitlabUrl"), f'{failure}, got "{gitlab_url}"', "gitlabUrl: https://gitlab.example.com")
    allow_privileged = root.get_bool("allowPrivileged", False)

    nodes = root.children("runners", "runners: [{name: docker-1, executor: docker}]")
    if nodes is None:
        nodes = [Node({"name": "runner"}, f"{PROJECT}:runners[0]", problems)]
    elif not nodes:
        problems.add(root.key("runners"), "must list at least one runner", "runners: [{name: docker-1}]")
    runners = tuple(_parse_runner(n, target or "docker", stack, problems) for n in nodes)

    seen: set[str] = set()
    for index, runner in enumerate(runners):
        if runner.name and runner.name in seen:
            problems.add(
                f"{PROJECT}:runners[{index}].name", f'"{runner.name}" is used twice', "give each runner its own name"
            )
        seen.add(runner.name)
        if runner.privileged and not allow_privileged:
            problems.add(
                f"{PROJECT}:runners[{index}].privileged",
                f"is true but {PROJECT}:allowPrivileged is not set: privileged jobs are root on the host",
                f"{PROJECT}:allowPrivileged: true (and say why in the stack file)",
            )
    for unknown in sorted(existing_token_names - seen):
        problems.add(
            f"{PROJECT}:runnerTokens.{unknown}",
            "names no runner in gitlab-runners:runners",
            f"one of: {', '.join(sorted(seen))}",
        )
    warnings: list[str] = []
    needs_api = [r.name for r in runners if r.name not in existing_token_names]
    if needs_api and not has_gitlab_token:
        missing = Problem(
            "gitlab:token",
            f"is required to create runner(s) {', '.join(needs_api)} through the GitLab API but is not set",
            "pulumi config set --secret gitlab:token  (then paste a glpat- token with the create_runner scope)",
        )
        # A preview contacts no GitLab, so it can show the plan; `up` stops here.
        if dry_run:
            warnings.append(f"{missing} (preview continues; `pulumi up` will stop here)")
        else:
            problems.items.append(missing)

    global_ = _parse_global(root, runners)
    docker = _parse_docker(root, stack) if target == "docker" else None
    kubernetes = _parse_kubernetes(root) if target == "kubernetes" else None
    for other in ("docker", "kubernetes"):
        if target and other != target and root.has(other):
            problems.add(root.key(other), f'is set but target is "{target}"', f"remove {PROJECT}:{other}")
            root.child(other, "")
    root.ignore("runnerTokens")  # read by load_settings, as a secret
    root.finish()

    if problems.items:
        raise SettingsError(problems.items)
    assert target is not None
    return Settings(
        stack=stack,
        target=target,
        gitlab_url=gitlab_url.rstrip("/"),
        runners=runners,
        global_=global_,
        allow_privileged=allow_privileged,
        existing_token_names=existing_token_names,
        docker=docker,
        kubernetes=kubernetes,
        warnings=tuple(warnings),
    )


def _decode(raw: Any) -> Any:
    """Stack config arrives as strings; structured values and numbers as JSON text."""
    if isinstance(raw, str) and re.fullmatch(r"\s*([\[{].*|-?[0-9]+|true|false)\s*", raw, re.S):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _project_values() -> dict[str, Any]:
    """Every `gitlab-runners:*` value the engine (or a test) provided, decoded."""
    raw: dict[str, Any] = dict(runtime_config.get_config_env() or {})
    raw.update(runtime_config.CONFIG.get())
    prefix = f"{PROJECT}:"
    return {k[len(prefix) :]: _decode(v) for k, v in raw.items() if k.startswith(prefix)}


def _runner_tokens(values: dict[str, Any]) -> tuple[dict[str, str], list[Problem]]:
    """The existing runner tokens; they must be stored as a secret, and each must be a glrt- token."""
    key = f"{PROJECT}:runnerTokens"
    example = f"pulumi config set --secret --path '{key}.docker-1'  (then paste the glrt- token)"
    raw = values.pop("runnerTokens", None)
    if raw is None:
        return {}, []
    if not runtime_config.is_config_secret(key):
        # Never echo the value: it is a credential stored in plain text.
        return {}, [Problem(key, "must be stored as a secret (it holds runner tokens)", example)]
    if not isinstance(raw, dict):
        return {}, [Problem(key, "must be an object mapping runner names to tokens", example)]
    problems = [
        Problem(f"{key}.{name}", "must be a runner authentication token starting with glrt-", example)
        for name, token in raw.items()
        if not (isinstance(token, str) and token.startswith("glrt-") and len(token) > 10)
    ]
    return {str(k): str(v) for k, v in raw.items()}, problems


def load_settings() -> tuple[Settings, Secrets]:
    """Read and validate the stack's config. Raises SettingsError before any resource exists."""
    values = _project_values()
    tokens, token_problems = _runner_tokens(values)
    gitlab_token = pulumi.Config("gitlab").get_secret("token")
    settings = parse_settings(
        values,
        stack=pulumi.get_stack(),
        existing_token_names=frozenset(tokens),
        has_gitlab_token=gitlab_token is not None,
        extra_problems=tuple(token_problems),
        dry_run=pulumi.runtime.is_dry_run(),
    )
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    secrets = Secrets(
        gitlab_token=gitlab_token,
        runner_tokens={name: pulumi.Output.secret(token) for name, token in tokens.items()},
    )
    return settings, secrets

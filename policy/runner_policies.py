"""The security baseline, as plain validator functions (unit-tested with hand-made args).

Runners execute other people's code, so their deployment is a security boundary. Each policy says
why it exists; each names the resource and the offending value in its message.

Allowances are explicit and visible: the program marks a resource as allowed only when the stack
file says so (`gitlab-runners:allowPrivileged: true` -> label `io.gitlab-runners.allow-privileged=true`
on the container that uploads the config.toml it allows / chart pod annotation
`gitlab-runners.io/allow-privileged`;
`kubernetes.rbac.clusterWideAccess: true` -> pod annotation `gitlab-runners.io/allow-cluster-wide-rbac`).

A Docker runner container does not carry its config.toml itself: a one-shot "config sync" container
uploads it and installs it into a volume both mount at /etc/gitlab-runner (components/docker_runner.py).
So the policies that read a container's config.toml see the whole stack (stack policies): a
container's config is its own uploaded config.toml, else the one uploaded by a container of the same
Docker host that mounts the same volume at /etc/gitlab-runner. Older programs upload config.toml
straight into the runner container; that still works.

Two limits of the policy SDK:
- a validator receives secret values already decrypted, without their secret mark. So the token
  policy allows tokens only in the few inputs the program always sends as secrets (container uploads,
  Secret data, provider tokens); the tests in tests/unit prove those are secret;
- during a preview a value can be unknown (a config.toml rendered from tokens not created yet);
  reading it raises UnknownValueError, which the SDK reports as "can't run policy during preview".
  A stack policy still checks every other resource first (`_each`), so one unknown value does not
  hide the violations of the rest of the stack.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UnknownValueError

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET_TYPE = "kubernetes:core/v1:Secret"  # noqa: S105 - a resource type, not a credential
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"
CLUSTER_ROLE = "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole"
CLUSTER_RBAC = (CLUSTER_ROLE, "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding")
ALLOW_PRIVILEGED_LABEL = "io.gitlab-runners.allow-privileged"
ALLOW_PRIVILEGED_ANNOTATION = "gitlab-runners.io/allow-privileged"
ALLOW_CLUSTER_RBAC_ANNOTATION = "gitlab-runners.io/allow-cluster-wide-rbac"
# The housekeeping container (components/docker_housekeeping.py) uses the socket with the docker CLI
# to remove what jobs left; it runs no runner and no job.
ROLE_LABEL = "io.gitlab-runners.role"
HOUSEKEEPING_ROLE = "housekeeping"
CONFIG_DIR = "/etc/gitlab-runner"
DOCKER_SOCKET = re.compile(r"(^|/)(docker|podman)\.sock$")
TOKEN = re.compile(r"(glrt-|glpat-|GR1348941)[A-Za-z0-9_-]{8,}")
EXACT_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?")
RBAC_FIELDS = ("apiGroups", "resources", "verbs")
# What the gitlab-runner chart puts in a field of an rbac.rules entry that is missing or empty.
CHART_RULE_DEFAULTS: dict[str, list[str]] = {"apiGroups": [""], "resources": ["*"], "verbs": ["*"]}

# Inputs that the program always sends as secrets: the only places a token may be.
TOKEN_PLACES: dict[str, tuple[str, ...]] = {
    CONTAINER: ("uploads",),
    SECRET_TYPE: ("data", "stringData"),
    "pulumi:providers:gitlab": ("token",),
}


class Resource(Protocol):
    """What the checks read of a resource: ResourceValidationArgs and PolicyResource both have it."""

    resource_type: str
    props: Mapping[str, Any]
    name: str
    urn: str


Check = Callable[[Resource], None]


# ---- reading the resources -------------------------------------------------------------------


def _labels(props: Mapping[str, Any]) -> dict[str, str]:
    return {str(item.get("label")): str(item.get("value")) for item in props.get("labels") or []}


def _pod_annotations(props: Mapping[str, Any]) -> Mapping[str, Any]:
    values = props.get("values") or {}
    return values.get("podAnnotations") or {}


def _config_upload(props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The container's uploaded config.toml (its name only is read: the content may be unknown yet)."""
    for upload in props.get("uploads") or []:
        if isinstance(upload, Mapping) and str(upload.get("file", "")).endswith("config.toml"):
            return upload
    return None


def runner_config(props: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config.toml uploaded into a container, parsed; None when there is none or it cannot be read."""
    upload = _config_upload(props)
    content = upload.get("content") if upload is not None else None
    if not isinstance(content, str):
        return None
    try:
        return tomllib.loads(content)
    except tomllib.TOMLDecodeError:
        return None


def _chart_runner_configs(props: Mapping[str, Any]) -> list[dict[str, Any]]:
    text = ((props.get("values") or {}).get("runners") or {}).get("config")
    if not isinstance(text, str):
        return []
    try:
        return list(tomllib.loads(text).get("runners", []))
    except tomllib.TOMLDecodeError:
        return []


def _executor_sections(runners: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for runner in runners:
        for executor in ("docker", "kubernetes"):
            section = runner.get(executor)
            if isinstance(section, dict):
                yield str(runner.get("name", "?")), section


def is_pinned_image(reference: str) -> bool:
    """A digest, or a tag other than `latest` (a registry port is not a tag)."""
    if "@sha256:" in reference or reference.startswith("sha256:"):
        return True
    last = reference.rsplit("/", 1)[-1]
    return ":" in last and last.rsplit(":", 1)[1] not in ("", "latest")


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")


# ---- a stack's Docker containers and the config.toml each one runs ---------------------------


def _mounts(props: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of every mount: `mounts` ({source, target, type}) and `volumes`
    ({volumeName or hostPath, containerPath})."""
    found = [(str(m.get("source") or ""), str(m.get("target") or "")) for m in props.get("mounts") or []]
    for volume in props.get("volumes") or []:
        source = volume.get("volumeName") or volume.get("hostPath") or ""
        found.append((str(source), str(volume.get("containerPath") or "")))
    return found


def docker_sockets(props: Mapping[str, Any]) -> list[str]:
    """The Docker or podman sockets a container mounts (on the host side, or where it lands inside)."""
    return [
        source or target
        for source, target in _mounts(props)
        if DOCKER_SOCKET.search(source) or DOCKER_SOCKET.search(target)
    ]


def _config_volumes(resource: Resource) -> set[tuple[str | None, str]]:
    """What the container mounts at /etc/gitlab-runner, keyed by its provider too: every Docker host
    has volumes of the same names, and only the containers of one host share one."""
    provider = getattr(resource, "provider", None)
    host = str(provider.urn) if provider is not None else None
    return {(host, source) for source, target in _mounts(resource.props) if source and target.rstrip("/") == CONFIG_DIR}


def _shares_config_volume(one: Resource, other: Resource) -> bool:
    return one.urn != other.urn and bool(_config_volumes(one) & _config_volumes(other))


def config_sources(container: Resource, containers: Sequence[Resource]) -> list[Resource]:
    """The containers whose uploaded config.toml `container` runs with: itself when it uploads one;
    else each container that uploads one into a volume they both mount at /etc/gitlab-runner."""
    if _config_upload(container.props) is not None:
        return [container]
    return [c for c in containers if _config_upload(c.props) is not None and _shares_config_volume(container, c)]


def container_configs(container: Resource, containers: Sequence[Resource]) -> list[tuple[Resource, dict[str, Any]]]:
    """(the container that uploaded it, parsed config.toml) for each config the container may run."""
    found = [(source, runner_config(source.props)) for source in config_sources(container, containers)]
    return [(source, config) for source, config in found if config is not None]


def _configs_to_check(container: Resource, containers: Sequence[Resource]) -> list[tuple[Resource, dict[str, Any]]]:
    """The configs whose runners this container runs, each checked once: a config sync's own upload
    is checked at the containers that read it from the volume, not at the sync container as well."""
    read_by_others = any(_config_upload(c.props) is None and _shares_config_volume(container, c) for c in containers)
    configs = container_configs(container, containers)
    return [(source, config) for source, config in configs if source.urn != container.urn or not read_by_others]


def _from(source: Resource, container: Resource) -> str:
    return "" if source.urn == container.urn else f" (config.toml from {source.name})"


def _containers(resources: Iterable[Resource]) -> list[Resource]:
    return [r for r in resources if r.resource_type == CONTAINER]


def _each(resources: Iterable[Resource], check: Check) -> None:
    """Check every resource; one whose values are unknown during a preview is skipped, and the first
    such error is raised at the end, so the SDK says the policy did not run in full (never "passed")."""
    unknown: UnknownValueError | None = None
    for resource in resources:
        try:
            check(resource)
        except UnknownValueError as error:
            unknown = unknown or error
    if unknown is not None:
        raise unknown


# ---- no-privileged-runners --------------------------------------------------------------------


def _privileged_container(container: Resource, containers: Sequence[Resource], report: ReportViolation) -> None:
    props = container.props
    if props.get("privileged"):
        report(f"{container.name}: the runner container itself is privileged; it never needs to be", container.urn)
    # The allowance travels with the config.toml it allows: a label of the container that uploads it
    # (the config sync; in older programs the runner container itself). A label on a runner container
    # that reads its config.toml from a volume says nothing: the program no longer keeps it current.
    for source, config in _configs_to_check(container, containers):
        if _labels(source.props).get(ALLOW_PRIVILEGED_LABEL) == "true":
            continue
        for runner, section in _executor_sections(list(config.get("runners", []))):
            if section.get("privileged"):
                report(
                    f"{container.name}: runner {runner}{_from(source, container)} runs privileged jobs (root "
                    "on the host) but the stack does not set gitlab-runners:allowPrivileged: true",
                    container.urn,
                )


def _privileged_release(release: Resource, report: ReportViolation) -> None:
    values = release.props.get("values") or {}
    allowed = _pod_annotations(release.props).get(ALLOW_PRIVILEGED_ANNOTATION) == "true"
    if (values.get("securityContext") or {}).get("privileged"):
        report(f"{release.name}: the runner pod is privileged; it never needs to be", release.urn)
    for runner, section in _executor_sections(_chart_runner_configs(release.props)):
        if section.get("privileged") and not allowed:
            report(
                f"{release.name}: runner {runner} runs privileged job pods but the stack does not set "
                "gitlab-runners:allowPrivileged: true",
                release.urn,
            )


def no_privileged_runners(args: StackValidationArgs, report: ReportViolation) -> None:
    containers = _containers(args.resources)

    def check(resource: Resource) -> None:
        if resource.resource_type == CONTAINER:
            _privileged_container(resource, containers, report)
        elif resource.resource_type == RELEASE:
            _privileged_release(resource, report)

    _each(args.resources, check)


# ---- docker-socket-only-for-docker-executor ---------------------------------------------------


def _housekeeping_problem(props: Mapping[str, Any]) -> str | None:
    """Why a container labelled as the housekeeping one could run something else than the docker CLI
    (None: it cannot: no network, no runner config, nothing uploaded, no capabilities)."""
    if props.get("networkMode") != "none":
        return f"has network {props.get('networkMode') or 'bridge'!r}, not 'none'"
    if any(target.rstrip("/") == CONFIG_DIR for _, target in _mounts(props)) or props.get("uploads"):
        return "mounts a runner config or has files uploaded"
    if "ALL" not in ((props.get("capabilities") or {}).get("drops") or []) or props.get("privileged"):
        return "keeps Linux capabilities"
    return None


def _socket_check(container: Resource, containers: Sequence[Resource], report: ReportViolation) -> None:
    sockets = docker_sockets(container.props)
    if not sockets:
        return
    if _labels(container.props).get(ROLE_LABEL) == HOUSEKEEPING_ROLE:
        problem = _housekeeping_problem(container.props)
        if problem is not None:
            report(
                f"{container.name}: mounts the Docker socket {sockets[0]} (root on the host) as the housekeeping "
                f"container, but {problem}",
                container.urn,
            )
        return
    configs = container_configs(container, containers)
    executors = sorted({str(r.get("executor")) for _, config in configs for r in config.get("runners", [])})
    if not configs:
        reason = "its config.toml cannot be found, so what it runs is unknown (executors: unknown)"
    elif executors != ["docker"]:
        # A shell job next to the socket is root on the host, even when a docker runner shares it.
        reason = f"serves runners other than docker-executor ones (executors: {', '.join(executors) or 'none'})"
    else:
        return
    report(f"{container.name}: mounts the Docker socket {sockets[0]} (root on the host) but {reason}", container.urn)


def docker_socket_only_for_docker_executor(args: StackValidationArgs, report: ReportViolation) -> None:
    containers = _containers(args.resources)
    _each(containers, lambda container: _socket_check(container, containers, report))


# ---- pinned-images-and-charts -----------------------------------------------------------------


def _pinned_container(container: Resource, containers: Sequence[Resource], report: ReportViolation) -> None:
    image = str(container.props.get("image") or "")
    if not is_pinned_image(image):
        report(
            f"{container.name}: image {image!r} is not pinned (use a tag other than latest, or a digest)",
            container.urn,
        )
    for source, config in _configs_to_check(container, containers):
        for runner in config.get("runners", []):
            job_image = (runner.get("docker") or {}).get("image")
            if job_image is not None and not is_pinned_image(str(job_image)):
                report(
                    f"{container.name}: runner {runner.get('name')}{_from(source, container)} job image "
                    f"{job_image!r} is not pinned",
                    container.urn,
                )


def _pinned_image_build(image: Resource, report: ReportViolation) -> None:
    base = str(((image.props.get("build") or {}).get("args") or {}).get("BASE_IMAGE") or "")
    if not is_pinned_image(base):
        report(f"{image.name}: base image {base!r} is not pinned", image.urn)


def _pinned_release(release: Resource, report: ReportViolation) -> None:
    version = release.props.get("version")
    chart = str(release.props.get("chart") or "")
    is_local = chart.startswith((".", "/"))
    if not is_local and not (isinstance(version, str) and EXACT_VERSION.fullmatch(version)):
        report(f"{release.name}: chart {chart!r} has no exact version (got {version!r})", release.urn)
    for runner, section in _executor_sections(_chart_runner_configs(release.props)):
        if "image" in section and not is_pinned_image(str(section["image"])):
            report(f"{release.name}: runner {runner} job image {section['image']!r} is not pinned", release.urn)


def pinned_images_and_charts(args: StackValidationArgs, report: ReportViolation) -> None:
    containers = _containers(args.resources)

    def check(resource: Resource) -> None:
        if resource.resource_type == CONTAINER:
            _pinned_container(resource, containers, report)
        elif resource.resource_type == IMAGE:
            _pinned_image_build(resource, report)
        elif resource.resource_type == RELEASE:
            _pinned_release(resource, report)

    _each(args.resources, check)


# ---- resource policies: one resource is all they need ----------------------------------------


def no_plaintext_tokens(args: ResourceValidationArgs, report: ReportViolation) -> None:
    places = TOKEN_PLACES.get(args.resource_type, ())
    for path, text in _strings(dict(args.props)):
        if TOKEN.search(text) and not path.startswith(places or ("\0",)):
            report(f"{args.name}: input {path} holds a GitLab token; tokens belong in secrets only")


def kubernetes_runner_hardened(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != RELEASE:
        return
    props = args.props
    namespace = props.get("namespace")
    if namespace in (None, "", "default"):
        report(f"{args.name}: released into namespace {namespace or 'default'!r}; use a namespace of its own")
    values = props.get("values") or {}
    security = values.get("securityContext") or {}
    pod_security = values.get("podSecurityContext") or {}
    if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
        report(f"{args.name}: the runner does not set runAsNonRoot: true")
    if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
        report(f"{args.name}: the runner keeps its Linux capabilities (drop ALL)")
    resources = values.get("resources") or {}
    for part in ("requests", "limits"):
        if not resources.get(part):
            report(f"{args.name}: the runner has no resource {part}")


def rbac_stays_namespaced(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == RELEASE:
        values = args.props.get("values") or {}
        allowed = _pod_annotations(args.props).get(ALLOW_CLUSTER_RBAC_ANNOTATION) == "true"
        if (values.get("rbac") or {}).get("clusterWideAccess") and not allowed:
            report(f"{args.name}: rbac.clusterWideAccess gives the runner every namespace of the cluster")
    elif args.resource_type in CLUSTER_RBAC:
        annotations = ((args.props.get("metadata") or {}).get("annotations")) or {}
        if annotations.get(ALLOW_CLUSTER_RBAC_ANNOTATION) != "true":
            report(f"{args.name}: cluster-wide RBAC ({args.resource_type.rsplit(':', 1)[1]}) is not allowed")


# ---- no-wildcard-rbac -------------------------------------------------------------------------


def chart_rbac_rules(values: Mapping[str, Any]) -> list[tuple[str, dict[str, list[str]]]]:
    """(where it comes from, rule) for each rule the gitlab-runner chart renders into the runner's Role
    when rbac.create is set. With rbac.rules empty or absent the chart grants every verb on every
    resource of the core group; in a listed rule a missing or empty field gets CHART_RULE_DEFAULTS."""
    rbac = values.get("rbac") or {}
    if not rbac.get("create"):
        return []
    rules = list(rbac.get("rules") or [])
    if not rules:
        return [("rbac.rules is empty: the chart's default rule", dict(CHART_RULE_DEFAULTS))]
    return [
        (
            f"rbac.rules[{index}]",
            {field: [str(x) for x in rule.get(field) or CHART_RULE_DEFAULTS[field]] for field in RBAC_FIELDS},
        )
        for index, rule in enumerate(rules)
    ]


def _wildcard_fields(rule: Mapping[str, Any]) -> list[str]:
    """The fields of an RBAC rule that hold a wildcard ("*", or a pattern such as "pods/*")."""
    return [field for field in RBAC_FIELDS if any("*" in str(item) for item in rule.get(field) or [])]


def _describe_rule(rule: Mapping[str, Any]) -> str:
    return " ".join(f"{field} {json.dumps([str(x) for x in rule.get(field) or []])}" for field in RBAC_FIELDS)


def no_wildcard_rbac(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == RELEASE:
        values = args.props.get("values") or {}
        kind = "ClusterRole" if (values.get("rbac") or {}).get("clusterWideAccess") else "Role"
        rules = chart_rbac_rules(values)
        where = f"the chart's {kind}"
    elif args.resource_type in (ROLE, CLUSTER_ROLE):
        rules = [(f"rules[{index}]", rule) for index, rule in enumerate(args.props.get("rules") or [])]
        where = f"the {args.resource_type.rsplit(':', 1)[1]}"
    else:
        return
    for origin, rule in rules:
        wildcards = _wildcard_fields(rule)
        if wildcards:
            report(
                f"{args.name}: {where} has the rule {_describe_rule(rule)} ({origin}), a wildcard in "
                f"{', '.join(wildcards)}; list the resources and verbs the runner needs"
            )


# ---- the pack ---------------------------------------------------------------------------------


def _resource_policy(name: str, description: str, validate: Any) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, enforcement_level=EnforcementLevel.MANDATORY, validate=validate
    )


def _stack_policy(name: str, description: str, validate: Any) -> StackValidationPolicy:
    return StackValidationPolicy(
        name=name, description=description, enforcement_level=EnforcementLevel.MANDATORY, validate=validate
    )


# These read a Docker container's config.toml, which another container of the stack may upload.
STACK_POLICIES = [
    _stack_policy(
        "no-privileged-runners",
        "Runner containers and job containers are not privileged unless the stack allows it: a "
        "privileged job is root on the host.",
        no_privileged_runners,
    ),
    _stack_policy(
        "docker-socket-only-for-docker-executor",
        "The Docker socket is root on the host; only a container whose runners all use the docker "
        "executor may mount it, and the housekeeping container, which has no network and runs no job.",
        docker_socket_only_for_docker_executor,
    ),
    _stack_policy(
        "pinned-images-and-charts",
        "Every image and chart is pinned (no latest, no missing tag, chart version set), so a deploy "
        "is repeatable and a moved tag cannot change what runs.",
        pinned_images_and_charts,
    ),
]

RESOURCE_POLICIES = [
    _resource_policy(
        "no-plaintext-tokens",
        "No GitLab token (glrt-, glpat-, GR1348941) in a resource input other than the secret ones.",
        no_plaintext_tokens,
    ),
    _resource_policy(
        "kubernetes-runner-hardened",
        "The Kubernetes runner runs as non-root, without capabilities, with requests and limits, in a "
        "namespace of its own.",
        kubernetes_runner_hardened,
    ),
    _resource_policy(
        "rbac-stays-namespaced",
        "The runner's RBAC stays inside its namespace unless cluster-wide access is explicitly allowed.",
        rbac_stays_namespaced,
    ),
    _resource_policy(
        "no-wildcard-rbac",
        "The runner's Role grants named verbs on named resources, never '*': the chart's default rule "
        "(rbac.rules empty) gives every verb on every core resource, secrets included.",
        no_wildcard_rbac,
    ),
]

POLICIES: list[Policy] = [*STACK_POLICIES, *RESOURCE_POLICIES]

"""The security baseline, as plain validator functions (unit-tested with hand-made args).

Runners execute other people's code, so their deployment is a security boundary. Each policy says
why it exists; each names the resource and the offending value in its message.

Allowances are explicit and visible: the program marks a resource as allowed only when the stack
file says so (`gitlab-runners:allowPrivileged: true` -> container label
`io.gitlab-runners.allow-privileged=true` / chart pod annotation `gitlab-runners.io/allow-privileged`;
`kubernetes.rbac.clusterWideAccess: true` -> pod annotation `gitlab-runners.io/allow-cluster-wide-rbac`).

A limit of the policy SDK: a validator receives secret values already decrypted, without their
secret mark. So the token policy allows tokens only in the few inputs the program always sends as
secrets (config.toml uploads, Secret data, provider tokens); the tests in tests/unit prove those are
secret.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
)

CONTAINER = "docker:index/container:Container"
IMAGE = "docker:index/image:Image"
RELEASE = "kubernetes:helm.sh/v3:Release"
SECRET_TYPE = "kubernetes:core/v1:Secret"  # noqa: S105 - a resource type, not a credential
CLUSTER_RBAC = (
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRole",
    "kubernetes:rbac.authorization.k8s.io/v1:ClusterRoleBinding",
)
ALLOW_PRIVILEGED_LABEL = "io.gitlab-runners.allow-privileged"
ALLOW_PRIVILEGED_ANNOTATION = "gitlab-runners.io/allow-privileged"
ALLOW_CLUSTER_RBAC_ANNOTATION = "gitlab-runners.io/allow-cluster-wide-rbac"
DOCKER_SOCKET = re.compile(r"(^|/)(docker|podman)\.sock$")
TOKEN = re.compile(r"(glrt-|glpat-|GR1348941)[A-Za-z0-9_-]{8,}")
EXACT_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.-]+)?")

# Inputs that the program always sends as secrets: the only places a token may be.
TOKEN_PLACES: dict[str, tuple[str, ...]] = {
    CONTAINER: ("uploads",),
    SECRET_TYPE: ("data", "stringData"),
    "pulumi:providers:gitlab": ("token",),
}


# ---- reading the resources -------------------------------------------------------------------


def _labels(props: Mapping[str, Any]) -> dict[str, str]:
    return {str(item.get("label")): str(item.get("value")) for item in props.get("labels") or []}


def _pod_annotations(props: Mapping[str, Any]) -> Mapping[str, Any]:
    values = props.get("values") or {}
    return values.get("podAnnotations") or {}


def runner_config(props: Mapping[str, Any]) -> dict[str, Any] | None:
    """The config.toml uploaded into a runner container, parsed; None when there is none."""
    for upload in props.get("uploads") or []:
        if str(upload.get("file", "")).endswith("config.toml") and isinstance(upload.get("content"), str):
            try:
                return tomllib.loads(upload["content"])
            except tomllib.TOMLDecodeError:
                return None
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


# ---- the validators ----------------------------------------------------------------------------


def no_privileged_runners(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    if args.resource_type == CONTAINER:
        allowed = _labels(props).get(ALLOW_PRIVILEGED_LABEL) == "true"
        if props.get("privileged"):
            report(f"{args.name}: the runner container itself is privileged; it never needs to be")
        config = runner_config(props) or {}
        for runner, section in _executor_sections(list(config.get("runners", []))):
            if section.get("privileged") and not allowed:
                report(
                    f"{args.name}: runner {runner} runs privileged jobs (root on the host) but the stack "
                    "does not set gitlab-runners:allowPrivileged: true"
                )
    elif args.resource_type == RELEASE:
        values = props.get("values") or {}
        allowed = _pod_annotations(props).get(ALLOW_PRIVILEGED_ANNOTATION) == "true"
        if (values.get("securityContext") or {}).get("privileged"):
            report(f"{args.name}: the runner pod is privileged; it never needs to be")
        for runner, section in _executor_sections(_chart_runner_configs(props)):
            if section.get("privileged") and not allowed:
                report(
                    f"{args.name}: runner {runner} runs privileged job pods but the stack does not set "
                    "gitlab-runners:allowPrivileged: true"
                )


def docker_socket_only_for_docker_executor(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type != CONTAINER:
        return
    props = args.props
    sockets = [
        str(m.get("source") or m.get("hostPath"))
        for m in list(props.get("mounts") or []) + list(props.get("volumes") or [])
        if DOCKER_SOCKET.search(str(m.get("source") or m.get("hostPath") or ""))
        or DOCKER_SOCKET.search(str(m.get("target") or m.get("containerPath") or ""))
    ]
    if not sockets:
        return
    config = runner_config(props)
    executors = {str(r.get("executor")) for r in (config or {}).get("runners", [])}
    if "docker" not in executors:
        report(
            f"{args.name}: mounts the Docker socket {sockets[0]} (root on the host) but serves no "
            f"docker-executor runner (executors: {', '.join(sorted(executors)) or 'unknown'})"
        )


def pinned_images_and_charts(args: ResourceValidationArgs, report: ReportViolation) -> None:
    props = args.props
    if args.resource_type == CONTAINER:
        image = str(props.get("image") or "")
        if not is_pinned_image(image):
            report(f"{args.name}: image {image!r} is not pinned (use a tag other than latest, or a digest)")
        for runner in (runner_config(props) or {}).get("runners", []):
            job_image = (runner.get("docker") or {}).get("image")
            if job_image is not None and not is_pinned_image(str(job_image)):
                report(f"{args.name}: runner {runner.get('name')} job image {job_image!r} is not pinned")
    elif args.resource_type == IMAGE:
        base = str(((props.get("build") or {}).get("args") or {}).get("BASE_IMAGE") or "")
        if not is_pinned_image(base):
            report(f"{args.name}: base image {base!r} is not pinned")
    elif args.resource_type == RELEASE:
        version = props.get("version")
        chart = str(props.get("chart") or "")
        is_local = chart.startswith((".", "/"))
        if not is_local and not (isinstance(version, str) and EXACT_VERSION.fullmatch(version)):
            report(f"{args.name}: chart {chart!r} has no exact version (got {version!r})")
        for runner, section in _executor_sections(_chart_runner_configs(props)):
            if "image" in section and not is_pinned_image(str(section["image"])):
                report(f"{args.name}: runner {runner} job image {section['image']!r} is not pinned")


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


def _policy(name: str, description: str, validate: Any) -> ResourceValidationPolicy:
    return ResourceValidationPolicy(
        name=name, description=description, enforcement_level=EnforcementLevel.MANDATORY, validate=validate
    )


POLICIES = [
    _policy(
        "no-privileged-runners",
        "Runner containers and job containers are not privileged unless the stack allows it: a "
        "privileged job is root on the host.",
        no_privileged_runners,
    ),
    _policy(
        "docker-socket-only-for-docker-executor",
        "The Docker socket is root on the host; only a runner with the docker executor needs it.",
        docker_socket_only_for_docker_executor,
    ),
    _policy(
        "pinned-images-and-charts",
        "Every image and chart is pinned (no latest, no missing tag, chart version set), so a deploy "
        "is repeatable and a moved tag cannot change what runs.",
        pinned_images_and_charts,
    ),
    _policy(
        "no-plaintext-tokens",
        "No GitLab token (glrt-, glpat-, GR1348941) in a resource input other than the secret ones.",
        no_plaintext_tokens,
    ),
    _policy(
        "kubernetes-runner-hardened",
        "The Kubernetes runner runs as non-root, without capabilities, with requests and limits, in a "
        "namespace of its own.",
        kubernetes_runner_hardened,
    ),
    _policy(
        "rbac-stays-namespaced",
        "The runner's RBAC stays inside its namespace unless cluster-wide access is explicitly allowed.",
        rbac_stays_namespaced,
    ),
]

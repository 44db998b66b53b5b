"""Where Kubernetes pods run: the manager pods' placement, and job pods whose helper image agrees with
the nodes they are pinned to.

What the real runner does (executors/kubernetes/kubernetes.go at v18.9.0, prepareHelperImage): the
helper image is `registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper:[flavor-]<arch>-v<version>`
with <arch> amd64 (written x86_64) unless `[runners.kubernetes] node_selector` (or a job's node selector
overwrite) names `kubernetes.io/arch`, or `helper_image_autoset_arch_and_os` makes it the runner
manager's own architecture. An explicit `helper_image` is used as it is, whatever the node. So a runner
whose job pods may land on any node of a mixed amd64/arm64 cluster gets the x86_64 helper on arm64
nodes too, and its jobs fail there.

So the stack always pins a Kubernetes runner's job pods to the architecture of the helper the runner
picks (`kubernetes.io/arch: amd64` unless the stack file pins another), renders a mirrored helper
image with that architecture's tag, and refuses settings under which the helper and the nodes could
disagree: an architecture no node is labelled with, a helper image tag of another architecture, a
flavour not published for it, an affinity that sends the pods elsewhere, a node selector overwrite a
job could use to move its pod under a fixed helper.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from components.settings.model import (
    CHART_VERSION,
    EXECUTORS,
    PROJECT,
    RUNNER_VERSION,
    JobPods,
    KubernetesTarget,
    Runner,
    StackConfig,
)
from components.settings.problems import Problem, show

ARCH_LABEL = "kubernetes.io/arch"
# kubernetes.io/arch values (Go's GOARCH names, as the kubelet labels its node) and the helper image
# tag each has (helpers/container/helperimage/linux_info.go; dockerfiles/runner-helper/docker-bake.hcl).
HELPER_ARCH = {
    "amd64": "x86_64",
    "arm64": "arm64",
    "arm": "arm",
    "s390x": "s390x",
    "ppc64le": "ppc64le",
    "riscv64": "riscv64",
}
# The runner image the chart runs is published for these (dockerfiles/runner/docker-bake.hcl).
RUNNER_IMAGE_ARCHES = ("amd64", "arm64", "s390x", "ppc64le", "riscv64")
# The only flavour not published for every architecture.
FLAVOR_ARCHES = {"ubi-fips": ("amd64",)}
# What people write for an architecture, and the node label's name for it.
ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "x64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "armhf": "arm",
}
DEFAULT_ARCH = "amd64"
# The architecture in a helper image tag: [flavor-]<arch>-v<version>[-pwsh].
TAG_ARCH = re.compile(r"(?:^|-)(" + "|".join(HELPER_ARCH.values()) + r")-v")
TAG_VERSION = re.compile(r"-v([0-9]+\.[0-9]+\.[0-9]+)(?:-|$)")


def _key(name: str) -> str:
    return f"{PROJECT}:{name}"


def _kubernetes_extra(runner: Runner) -> Mapping[str, Any]:
    table = runner.extra_config.get("kubernetes")
    return table if isinstance(table, Mapping) else {}


def autoset(runner: Runner) -> bool:
    """extraConfig sets helper_image_autoset_arch_and_os: the helper takes the manager's architecture."""
    return _kubernetes_extra(runner).get("helper_image_autoset_arch_and_os") is True


def helper_arch(runner: Runner, kubernetes: KubernetesTarget | None) -> str | None:
    """The node architecture whose helper the runner pulls for this runner's jobs, as the runner picks it:
    the job pods' pinned one, else (with autoset) the manager pods' pinned one, else amd64. None when it
    depends on where a manager pod happens to run."""
    pinned = (runner.job_pods or JobPods()).node_selector.get(ARCH_LABEL)
    if pinned is not None:
        return pinned
    if autoset(runner):
        return kubernetes.manager_pods.node_selector.get(ARCH_LABEL) if kubernetes is not None else None
    return DEFAULT_ARCH


def split_image(reference: str) -> tuple[str, str | None]:
    """(repository, tag or @digest or None)."""
    if "@" in reference:
        repository, digest = reference.split("@", 1)
        return repository, f"@{digest}"
    head, _, last = reference.rpartition("/")
    if ":" in last:
        name, tag = last.split(":", 1)
        return f"{head}/{name}" if head else name, tag
    return reference, None


def helper_tag(arch: str, flavor: str | None) -> str:
    """The tag the runner pulls for an architecture and flavour; the runner fills in its own version."""
    prefix = "" if flavor in (None, "alpine") else f"{flavor}-"
    return f"{prefix}{HELPER_ARCH[arch]}-v${{CI_RUNNER_VERSION}}"


def helper_image(pods: JobPods, arch: str) -> str | None:
    """config.toml's helper_image: a repository gets the tag for `arch`, a full reference stays as it is."""
    if pods.helper_image is None:
        return None
    repository, tag = split_image(pods.helper_image)
    if tag is not None:
        return pods.helper_image
    return f"{repository}:{helper_tag(arch, pods.helper_image_flavor)}"


def resolve_job_pods(runner: Runner, kubernetes: KubernetesTarget | None) -> JobPods:
    """A Kubernetes runner's job pods with the architecture pinned and the helper image rendered."""
    pods = runner.job_pods or JobPods()
    arch = helper_arch(runner, kubernetes) or DEFAULT_ARCH  # None was refused by `problems`
    return pods.model_copy(
        update={
            "node_selector": {**pods.node_selector, ARCH_LABEL: pods.node_selector.get(ARCH_LABEL, arch)},
            "helper_image": helper_image(pods, arch),
        }
    )


def _arch_problem(key: str, value: str, known: tuple[str, ...], what: str) -> Problem:
    suggestion = ARCH_ALIASES.get(value.lower(), known[0])
    return Problem(key, f"is {show(value)}, {what} ({', '.join(known)})", f"{ARCH_LABEL}: {suggestion}")


def _affinity_arches(runner: Runner) -> tuple[set[str] | None, set[str]]:
    """The architectures extraConfig's required node affinity allows (None: any) and excludes."""
    node = _kubernetes_extra(runner).get("affinity")
    node = node.get("node_affinity") if isinstance(node, Mapping) else None
    required = node.get("required_during_scheduling_ignored_during_execution") if isinstance(node, Mapping) else None
    terms = required.get("node_selector_terms") if isinstance(required, Mapping) else None
    allowed: set[str] | None = None
    excluded: set[str] = set()
    if not isinstance(terms, list):
        return allowed, excluded
    # Terms are ORed: an architecture is allowed if some term allows it.
    term_allows: list[set[str] | None] = []
    for term in terms:
        expressions = term.get("match_expressions") if isinstance(term, Mapping) else None
        allows: set[str] | None = None
        for expression in expressions if isinstance(expressions, list) else []:
            if not isinstance(expression, Mapping) or expression.get("key") != ARCH_LABEL:
                continue
            values = {str(v) for v in expression.get("values") or [] if isinstance(v, str)}
            if expression.get("operator") == "In":
                allows = values if allows is None else allows & values
            elif expression.get("operator") == "NotIn":
                excluded |= values
        term_allows.append(allows)
    if term_allows and all(a is not None for a in term_allows):
        allowed = set().union(*(a for a in term_allows if a is not None))
    return allowed, excluded


def _overwrite_moves_arch(runner: Runner, arch: str) -> bool:
    """A job's KUBERNETES_NODE_SELECTOR_* may set kubernetes.io/arch to another architecture (the runner
    matches node_selector_overwrite_allowed, unanchored, against `key=value`)."""
    pattern = _kubernetes_extra(runner).get("node_selector_overwrite_allowed")
    if not isinstance(pattern, str) or not pattern:
        return False
    try:
        compiled = re.compile(pattern)
    except re.error:
        return True  # cannot tell: assume it may
    return any(compiled.search(f"{ARCH_LABEL}={other}") for other in HELPER_ARCH if other != arch)


def _runner_problems(index: int, runner: Runner, config: StackConfig) -> Iterator[Problem]:
    at = f"runners[{index}]"
    pods = runner.job_pods or JobPods()
    pinned = pods.node_selector.get(ARCH_LABEL)
    if pinned is not None and pinned not in HELPER_ARCH:
        yield _arch_problem(
            _key(f"{at}.jobPods.nodeSelector.{ARCH_LABEL}"),
            pinned,
            tuple(HELPER_ARCH),
            "a name no node is labelled with and no helper image exists for: nodes carry the Go names",
        )
        return
    arch = helper_arch(runner, config.kubernetes)
    if arch is None:
        yield Problem(
            _key(f"{at}.extraConfig.kubernetes.helper_image_autoset_arch_and_os"),
            "makes the helper image follow the architecture of whichever node a manager pod lands on, "
            "while the job pods may land on any: pin one of them",
            f"jobPods: {{nodeSelector: {{{ARCH_LABEL}: arm64}}}}",
        )
        return
    flavor = pods.helper_image_flavor
    if flavor in FLAVOR_ARCHES and arch not in FLAVOR_ARCHES[flavor]:
        yield Problem(
            _key(f"{at}.jobPods.helperImageFlavor"),
            f'"{flavor}" is published for {", ".join(FLAVOR_ARCHES[flavor])} only, '
            f"but the job pods run on {arch} nodes",
            "helperImageFlavor: ubuntu",
        )
    if pods.helper_image is not None:
        repository, tag = split_image(pods.helper_image)
        found = TAG_ARCH.search(tag or "")
        if tag is not None and found is not None and found.group(1) != HELPER_ARCH[arch]:
            yield Problem(
                _key(f"{at}.jobPods.helperImage"),
                f"is the {found.group(1)} helper, but the job pods run on {arch} nodes "
                f"(jobPods.nodeSelector {ARCH_LABEL}, default {DEFAULT_ARCH}) and the runner uses this image there",
                f"helperImage: {repository}  (the stack adds the {HELPER_ARCH[arch]} tag)",
            )
        version = TAG_VERSION.search(tag or "")
        chart = config.kubernetes.chart if config.kubernetes is not None else None
        default_chart = chart is None or (chart.path is None and chart.version in (None, CHART_VERSION))
        if version is not None and default_chart and version.group(1) != RUNNER_VERSION:
            yield Problem(
                _key(f"{at}.jobPods.helperImage"),
                f"is the helper of runner {version.group(1)}, but the chart runs runner {RUNNER_VERSION}: "
                "the helper must be the runner's own release",
                f"helperImage: {repository}  (the stack adds the tag of the runner's release)",
            )
        if tag is not None and flavor is not None:
            yield Problem(
                _key(f"{at}.jobPods.helperImageFlavor"),
                "has no effect with a helperImage that has a tag (the runner uses that image as it is)",
                f"helperImage: {repository}  (the stack adds the {flavor} tag)",
            )
        if (tag is None or found is not None) and _overwrite_moves_arch(runner, arch):
            yield Problem(
                _key(f"{at}.extraConfig.kubernetes.node_selector_overwrite_allowed"),
                f"lets a job move its pod to another architecture ({ARCH_LABEL}), while helperImage stays the "
                f"{HELPER_ARCH[arch]} helper",
                "node_selector_overwrite_allowed: ^disktype=.*  (a pattern that never matches kubernetes.io/arch)",
            )
    allowed, excluded = _affinity_arches(runner)
    if (allowed is not None and arch not in allowed) or arch in excluded:
        yield Problem(
            _key(f"{at}.extraConfig.kubernetes.affinity"),
            f"keeps the job pods off {arch} nodes, but the runner picks the helper image from jobPods.nodeSelector "
            f"({arch}) alone, never from an affinity",
            f"jobPods: {{nodeSelector: {{{ARCH_LABEL}: {sorted(allowed)[0] if allowed else 'arm64'}}}}}  "
            "(and no architecture in the affinity)",
        )


def problems(config: StackConfig) -> Iterator[Problem]:
    if config.target != "kubernetes":
        return
    manager = (config.kubernetes or KubernetesTarget()).manager_pods
    manager_arch = manager.node_selector.get(ARCH_LABEL)
    if manager_arch is not None and manager_arch not in RUNNER_IMAGE_ARCHES:
        yield _arch_problem(
            _key(f"kubernetes.managerPods.nodeSelector.{ARCH_LABEL}"),
            manager_arch,
            RUNNER_IMAGE_ARCHES,
            "an architecture the runner image is not published for: it is for",
        )
    for index, runner in enumerate(config.runners or ()):
        if (runner.executor or EXECUTORS[config.target][0]) == "kubernetes":
            yield from _runner_problems(index, runner, config)

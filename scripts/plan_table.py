#!/usr/bin/env python3
"""A short table of a stack's runners, read from `pulumi preview --json` output (never recomputed):
where each runs, its executor, its tags, and whether the stack creates it in GitLab or it brings its
own token; then each runner container the plan replaces (it drains its running jobs first), with the
settings that cause that (components/replacement.py). Used by scripts/preview and the merge-request
job of ci/gitlab-ci.yml.

    scripts/plan_table.py plan.json                 # the table
    scripts/plan_table.py --steps plan.json         # the resources that change, warnings, then the table
    scripts/plan_table.py --diagnostics plan.json   # a failed preview's errors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from components.replacement import settings_replacing  # the project is on the path now

CONTAINER = "docker:index/container:Container"
VOLUME = "docker:index/volume:Volume"


def component_inputs(plan: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The inputs of the project's components of one kind (they describe the runners)."""
    found = []
    for step in plan.get("steps") or []:
        state = step.get("newState") or {}
        if state.get("type") == f"gitlab-runners:index:{kind}" and step.get("op") != "delete":
            found.append(state.get("inputs") or {})
    return found


def show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(show(v) for v in value) or "(none)"
    return str(value)


def table(plan: dict[str, Any]) -> str:
    runners: dict[str, dict[str, Any]] = {}
    for registration in component_inputs(plan, "RunnerRegistration"):
        for runner in registration.get("runners") or []:
            runners[runner["name"]] = {**runner, "where": []}
    if not runners:
        return "(the plan shows no runners)"
    for manager in component_inputs(plan, "DockerRunner"):
        for name in manager.get("runners") or []:
            if name in runners:
                runners[name]["where"].append(f"{manager.get('host')}: container {manager.get('container')}")
    for cluster in component_inputs(plan, "KubernetesRunner"):
        for name, release in (cluster.get("releases") or {}).items():
            if name in runners:
                runners[name]["where"].append(f"release {release} in namespace {cluster.get('namespace')}")
    lines = ["| runner | runs on | executor | tags | in GitLab |", "|---|---|---|---|---|"]
    for name, runner in sorted(runners.items()):
        # "created", "existing token", each possibly followed by ", one per host" and the like.
        how, _, detail = str(runner.get("registration") or "").partition(", ")
        created = how == "created"
        tags = show(runner.get("tags")) if created else "(kept in GitLab)"
        gitlab = "created by the stack" if created else "brings its own token"
        if detail:
            gitlab += f" ({detail})"
        where = "; ".join(runner["where"]) or "(nowhere yet)"
        lines.append(f"| {name} | {where} | {show(runner.get('executor'))} | {tags} | {gitlab} |")
    summary = plan.get("changeSummary") or {}
    if summary:
        lines.append("changes: " + ", ".join(f"{count} to {op}" for op, count in sorted(summary.items())))
    return "\n".join(lines)


def table_and_replacements(plan: dict[str, Any]) -> str:
    return "\n".join([table(plan), *replacements(plan)])


def _in_docker_runner(urn: str) -> bool:
    return "gitlab-runners:index:DockerRunner$" in urn


def replacements(plan: dict[str, Any]) -> list[str]:
    """A line for each runner container (and config volume) the plan replaces, with why."""
    lines = []
    for step in plan.get("steps") or []:
        urn = str(step.get("urn", ""))
        if step.get("op") != "replace" or not _in_docker_runner(urn):
            continue
        kind, name = urn.rsplit("::", 2)[-2:]
        kind = kind.rsplit("$", 1)[-1]
        if kind == CONTAINER and not name.endswith("-sync"):
            causes = ", ".join(settings_replacing(list(step.get("replaceReasons") or [])))
            lines.append(
                f"replaces runner container {name}: it stops taking jobs and drains its running ones (up to "
                f"docker.stopTimeout) before the new one starts; a change of {causes} does this"
            )
        elif kind == VOLUME:
            lines.append(
                f"replaces config volume {name}: the runners start again from the stack's tokens, and lose "
                "the ones they rotated themselves"
            )
    return lines


def steps(plan: dict[str, Any]) -> str:
    """The plan, a line per resource that changes, then the warnings and the runner table."""
    symbols = {"create": "+", "update": "~", "delete": "-", "replace": "+-", "create-replacement": "+-"}
    lines = []
    for step in plan.get("steps") or []:
        op = step.get("op", "")
        if op in ("same", "read", "refresh", "delete-replaced", "discard-replaced"):
            continue
        kind, name = step.get("urn", "::").rsplit("::", 2)[-2:]
        lines.append(f"{symbols.get(op, op):>2} {kind.rsplit('$', 1)[-1]} {name}")
    lines += [f"note: {line}" for line in replacements(plan)]
    warnings = [d.get("message", "").strip() for d in plan.get("diagnostics") or [] if d.get("severity") == "warning"]
    return "\n".join([*lines, *(f"warning: {w}" for w in warnings), "", table(plan)])


def diagnostics(plan: dict[str, Any]) -> str:
    found = [d.get("message", "").strip() for d in plan.get("diagnostics") or [] if d.get("severity") == "error"]
    return "\n".join(found) or "(no diagnostics in the plan)"


def main(argv: list[str]) -> int:
    errors_only = "--diagnostics" in argv
    with_steps = "--steps" in argv
    paths = [a for a in argv if not a.startswith("--")]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(paths[0]) as handle:
            plan = json.load(handle)
    except (OSError, ValueError) as error:
        print(f"cannot read the plan {paths[0]}: {error}", file=sys.stderr)
        return 1
    print(diagnostics(plan) if errors_only else steps(plan) if with_steps else table_and_replacements(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Test-session reporting shared by every suite, and the groups the integration tests run in."""

from __future__ import annotations

import json
from typing import Any

import pytest

# scripts/test runs the tests in several processes (pytest-xdist): each group below on
# one worker, in file order, its session fixtures (an engine, the cluster and its node) started once
# there. The cluster and its node (kube-proxy's iptables rules) exist once on the machine, so every test
# that uses them is in one group; the Docker tests, each worker on an engine of its own, are in two
# groups of about the same length (README, "Test run times"). Unit and policy tests go to any worker.
GROUPS = {
    "test_kubernetes_node.py": "kubernetes",
    "test_kubernetes_target.py": "kubernetes",
    "test_chart_render.py": "kubernetes",
    "test_faults.py": "docker-a",
    "test_docker_replacement.py": "docker-a",
    "test_docker_ops.py": "docker-a",
    "test_engine_preview.py": "docker-a",
    "test_gitlab_ci.py": "docker-a",
    "test_template.py": "docker-a",
    "test_main_job.py": "docker-a",
    "test_docker_features.py": "docker-b",
    "test_docker_fleet.py": "docker-b",
    "test_docker_target.py": "docker-b",
}

# What the real-engine tests ran on ("docker engine under test: …", "kubernetes node under test: …"),
# said again at the end of the run: fixtures print these lines, which pytest would otherwise hide.
UNDER_TEST: list[str] = []


def under_test(line: str) -> None:
    """Say what a test runs on, now and in the run's summary."""
    print(line)
    if line not in UNDER_TEST:
        UNDER_TEST.append(line)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Each group of GROUPS is one unit of work, given whole to one worker; every other test is a unit of
    its own. (xdist's `loadgroup` does this by renaming the tests, which pytest 9 no longer lets it.)"""
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class ByGroup(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            if not path.startswith("tests/integration/"):
                return nodeid
            name = path.rsplit("/", 1)[-1]
            if name not in GROUPS:
                raise pytest.UsageError(f"{name} has no group in tests/conftest.py GROUPS")
            return GROUPS[name]

    return ByGroup(config, log)


def pytest_sessionfinish(session: pytest.Session) -> None:
    # On a worker: its engine and node lines travel to the controller, which prints the summary.
    output = getattr(session.config, "workeroutput", None)
    if output is not None:
        output["under_test"] = json.dumps(UNDER_TEST)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    for line in json.loads(getattr(node, "workeroutput", {}).get("under_test", "[]")):
        if line not in UNDER_TEST:
            UNDER_TEST.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Which real-engine tests ran and which were skipped, and why (scripts/test's last lines)."""
    ran: list[str] = []
    skipped: list[str] = []
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "tests/integration/" not in getattr(report, "nodeid", ""):
                continue
            name = report.nodeid.split("::", 1)[-1]
            if outcome == "skipped":
                reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
                skipped.append(f"  {name}: {reason.removeprefix('Skipped: ')}")
            elif report.when == "call" or outcome == "error":
                ran.append(f"  {name}: {outcome}")
    if ran or skipped:
        terminalreporter.section("real-engine tests")
        for line in UNDER_TEST:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"ran ({len(ran)}):")
        for line in ran:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"skipped ({len(skipped)}):")
        for line in skipped:
            terminalreporter.write_line(line)

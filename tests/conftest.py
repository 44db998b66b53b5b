"""Test-session reporting shared by every suite."""

from __future__ import annotations

import pytest

# What the real-engine tests ran on ("docker engine under test: …", "kubernetes node under test: …"),
# said again at the end of the run: fixtures print these lines, which pytest would otherwise hide.
UNDER_TEST: list[str] = []


def under_test(line: str) -> None:
    """Say what a test runs on, now and in the run's summary."""
    print(line)
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

"""Pins agree: Python packages, provider plugins, chart and runner versions, and nothing unpinned."""

from __future__ import annotations

import json
import re
from importlib import metadata, resources
from pathlib import Path

from components.settings import CHART_VERSION, RUNNER_VERSION

ROOT = Path(__file__).resolve().parents[2]


def versions_env() -> dict[str, str]:
    pairs = (
        line.split("=", 1)
        for line in (ROOT / "scripts" / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    return {key: value for key, value in pairs}


def requirement_pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-r"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", line)
        assert match, f"{name}: {line!r} is not pinned with =="
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_every_requirement_is_pinned_and_installed_at_its_pin() -> None:
    for name in ("requirements.txt", "requirements-dev.txt", "policy/requirements.txt"):
        for package, version in requirement_pins(name).items():
            assert metadata.version(package) == version, f"{package} installed != {name} pin"


def test_kubernetes_plugin_built_is_the_one_the_sdk_asks_for() -> None:
    plugin = json.loads(resources.files("pulumi_kubernetes").joinpath("pulumi-plugin.json").read_text())
    assert plugin["version"] == versions_env()["KUBERNETES_PROVIDER_VERSION"]
    assert requirement_pins("requirements.txt")["pulumi-kubernetes"] == plugin["version"]


def test_policy_pack_uses_the_programs_pulumi() -> None:
    assert requirement_pins("policy/requirements.txt")["pulumi"] == requirement_pins("requirements.txt")["pulumi"]


def test_chart_and_runner_versions_move_together() -> None:
    # The chart's minor is the runner's 18.x minor plus 77 (chart 0.77 shipped runner 18.0).
    major, minor, _ = (int(p) for p in RUNNER_VERSION.split("."))
    chart_minor = int(CHART_VERSION.split(".")[1])
    assert major == 18 and chart_minor == minor + 77
    for stack in ("Pulumi.dev.yaml", "Pulumi.prod.yaml", "images/runner/Dockerfile"):
        text = (ROOT / stack).read_text()
        # Any runner version written there is the pinned one.
        assert set(re.findall(r"\b1[0-9]\.[0-9]+\.[0-9]+\b", text)) <= {RUNNER_VERSION}, stack

"""Pins agree: Python packages, provider plugins, chart and runner versions, and nothing unpinned."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from importlib import metadata, resources
from pathlib import Path

import pytest
import yaml

from components.settings import CHART_VERSION, RUNNER_VERSION
from tests.charts import official_chart_path

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
    for name in ("requirements.txt", "requirements-dev.txt", "policy/requirements.txt", "constraints.txt"):
        for package, version in requirement_pins(name).items():
            assert metadata.version(package) == version, f"{package} installed != {name} pin"


def test_kubernetes_plugin_built_is_the_one_the_sdk_asks_for() -> None:
    plugin = json.loads(resources.files("pulumi_kubernetes").joinpath("pulumi-plugin.json").read_text())
    assert plugin["version"] == versions_env()["KUBERNETES_PROVIDER_VERSION"]
    assert requirement_pins("requirements.txt")["pulumi-kubernetes"] == plugin["version"]


def test_policy_pack_uses_the_programs_pulumi() -> None:
    assert requirement_pins("policy/requirements.txt")["pulumi"] == requirement_pins("requirements.txt")["pulumi"]


def test_the_runner_is_the_one_the_pinned_chart_ships() -> None:
    # The pairing is the chart's own appVersion (recorded in versions.env), never a formula.
    pins = versions_env()
    assert pins["CHART_VERSION"] == CHART_VERSION
    assert pins["CHART_APP_VERSION"] == RUNNER_VERSION
    written = ("Pulumi.dev.yaml", "Pulumi.prod.yaml", "images/runner/Dockerfile", "benchmarks/baseline/__main__.py")
    for path in written:
        text = (ROOT / path).read_text()
        # Any runner or chart version written there is the pinned one.
        assert set(re.findall(r"\b1[0-9]\.[0-9]+\.[0-9]+\b", text)) <= {RUNNER_VERSION}, path
        assert set(re.findall(r"\b0\.[0-9]{2}\.[0-9]+\b", text)) <= {CHART_VERSION}, path


def test_the_chart_archive_on_disk_is_the_published_one_and_names_the_runner() -> None:
    archive = official_chart_path()
    if not archive.is_file():
        pytest.skip(f"the chart archive gitlab-runner-{CHART_VERSION}.tgz is not on disk (README: the chart offline)")
    pins = versions_env()
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == pins["CHART_ARCHIVE_SHA256"]
    with tarfile.open(archive) as tar:
        member = tar.extractfile("gitlab-runner/Chart.yaml")
        assert member is not None
        chart = yaml.safe_load(member.read())
    assert chart["version"] == CHART_VERSION
    assert chart["appVersion"] == RUNNER_VERSION == pins["CHART_APP_VERSION"]


def test_the_ci_image_is_the_pinned_pulumi() -> None:
    pipeline = yaml.safe_load((ROOT / "ci" / "gitlab-ci.yml").read_text())
    assert pipeline["variables"]["GITLAB_RUNNERS_IMAGE"] == f"pulumi/pulumi-python:{versions_env()['PULUMI_VERSION']}"

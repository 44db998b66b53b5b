"""Which gitlab-runner chart the tests and benchmarks use: the official archive at the pinned version
where it is on disk (GITLAB_RUNNERS_CHART_ARCHIVE, else $CACHE/charts/gitlab-runner-<version>.tgz;
never committed), else the stand-in chart in tests/fixtures/chart."""

from __future__ import annotations

import os
from pathlib import Path

from components.settings import CHART_VERSION

ROOT = Path(__file__).resolve().parents[1]
STAND_IN_CHART = ROOT / "tests" / "fixtures" / "chart"
CACHE = Path(os.environ.get("GITLAB_RUNNERS_CACHE") or Path.home() / ".cache" / "gitlab-runners")


def official_chart_path() -> Path:
    """Where the official archive is expected."""
    given = os.environ.get("GITLAB_RUNNERS_CHART_ARCHIVE")
    return Path(given) if given else CACHE / "charts" / f"gitlab-runner-{CHART_VERSION}.tgz"


def official_chart() -> Path | None:
    archive = official_chart_path()
    return archive if archive.is_file() else None


def chart_under_test() -> tuple[Path, bool]:
    """The chart to deploy, and whether it is the official one (said in the test output)."""
    archive = official_chart()
    print(f"chart under test: {archive or f'the stand-in {STAND_IN_CHART} (no official archive on disk)'}")
    return (archive, True) if archive else (STAND_IN_CHART, False)

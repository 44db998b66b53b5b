"""Builds the runner stand-in (tests/runner_standin, a test double of gitlab-runner) for tests that run
it on this machine rather than in the base image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.settings import RUNNER_VERSION

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "tests" / "runner_standin"


def build_standin(dest: Path, version: str = RUNNER_VERSION) -> Path:
    if shutil.which("go") is None:
        pytest.skip("go is needed to build the runner stand-in")
    binary = dest / "gitlab-runner"
    subprocess.run(
        ["go", "build", "-trimpath", "-ldflags", f"-X main.version={version}", "-o", str(binary), "."],
        cwd=STANDIN,
        env={**os.environ, "CGO_ENABLED": "0"},
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary

"""Unit tests run under Pulumi mocks, installed once for this process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from components import config_drift, docker_health
from tests.unit.mocks import RecordingMocks, install

# scripts/ is a folder of commands, not a package: its Python ones are importable as modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

MOCKS = RecordingMocks()
install(MOCKS)
# The readiness gate asks a host's Docker API; under mocks there is no container to ask. The answer
# "healthy" is recorded so tests can see the gate ran.
GATE_ASKED: list[tuple[str, str]] = []


def _healthy(engine: docker_health.Engine, container: str, timeout: float = 10) -> dict[str, Any]:
    GATE_ASKED.append((engine.host, container))
    return {"State": {"Running": True, "Health": {"Status": "healthy", "Log": []}}}


REAL_INSPECT = docker_health.inspect
docker_health.inspect = _healthy
# Nor is there a config volume to read: what the drift check observes is a host with nothing on it.
REAL_OBSERVE = config_drift.observe
config_drift.observe = lambda engine, container_name: config_drift.Observation(None, None)


@pytest.fixture()
def mocks() -> RecordingMocks:
    MOCKS.resources.clear()
    return MOCKS

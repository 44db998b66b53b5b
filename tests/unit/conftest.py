"""Unit tests run under Pulumi mocks, installed once for this process."""

from __future__ import annotations

import pytest

from tests.unit.mocks import RecordingMocks, install

MOCKS = RecordingMocks()
install(MOCKS)


@pytest.fixture()
def mocks() -> RecordingMocks:
    MOCKS.resources.clear()
    return MOCKS

"""Committed stack files: one per target at least, and no secret material in them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
STACKS = sorted(ROOT.glob("Pulumi.*.yaml"))


def test_an_example_stack_per_target() -> None:
    targets = {yaml.safe_load(p.read_text())["config"]["gitlab-runners:target"] for p in STACKS}
    assert targets == {"docker", "kubernetes"}


def test_no_secret_material_is_committed() -> None:
    for path in STACKS:
        text = path.read_text()
        # A salt ties the file to one person's passphrase; secure values are someone's secrets.
        assert "encryptionsalt" not in text, path.name
        assert "secure:" not in text, path.name
        assert not re.search(r"(glrt|glpat)-[A-Za-z0-9_-]{8,}", text), path.name

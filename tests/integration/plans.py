"""A real plan as users read it: `pulumi preview --json --show-sames` (as scripts/preview runs it), then
scripts/plan_table.py --steps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shown_plan(project_dir: Path, env: dict[str, str], stack: str, work: Path) -> tuple[str, str]:
    """What scripts/plan_table.py --steps shows of a preview of `stack` as configured, and the plan's JSON."""
    command = ["pulumi", "preview", "--stack", stack, "--json", "--show-sames", "--non-interactive"]
    plan = subprocess.run(
        [*command, "--cwd", str(project_dir)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    plan_file = work / "plan.json"
    plan_file.write_text(plan.stdout)
    shown = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "plan_table.py"), "--steps", str(plan_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return shown, plan.stdout

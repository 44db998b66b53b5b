"""`pulumi new` from this repository: the template section of Pulumi.yaml scaffolds a working project.

Run as a user would from the checkout (its committed files), with the prompts answered on the command
line; then the generated project's own settings tests run, and the answers make valid settings."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import ROOT, copy_tracked

ANSWERS = {
    "gitlab-runners:target": "kubernetes",
    "gitlab-runners:gitlabUrl": "https://git.example.com",
    "gitlab-runners:runners": json.dumps([{"name": "first", "executor": "kubernetes"}]),
}


@pytest.fixture()
def template(tmp_path: Path) -> Path:
    """The checkout's committed files (what `pulumi new <repository URL>` would clone)."""
    folder = tmp_path / "template"
    copy_tracked(folder)
    return folder


def test_pulumi_new_scaffolds_a_project_whose_settings_work(template: Path, tmp_path: Path) -> None:
    project = tmp_path / "my-runners"
    project.mkdir()
    config = [arg for key, value in ANSWERS.items() for arg in ("--config", f"{key}={value}")]
    done = subprocess.run(
        [
            "pulumi",
            "new",
            str(template),
            "--generate-only",
            "--yes",
            "--non-interactive",
            "--name",
            "my-runners",
            "--stack",
            "staging",
            *config,
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PULUMI_BACKEND_URL": f"file://{tmp_path}", "PULUMI_CONFIG_PASSPHRASE": "template"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    generated = yaml.safe_load((project / "Pulumi.yaml").read_text())
    assert generated["name"] == "my-runners" and "template" not in generated
    assert (project / "__main__.py").exists() and (project / "components" / "settings" / "model.py").exists()
    # The template asks for exactly what it documents, with defaults that are themselves valid.
    prompts = yaml.safe_load((template / "Pulumi.yaml").read_text())["template"]["config"]
    assert set(prompts) == set(ANSWERS)
    (project / ".venv").symlink_to(ROOT / ".venv")
    python = str(project / ".venv" / "bin" / "python")
    check = (
        "import json, sys; from components.settings import parse_settings, secrets\n"
        "for values in json.loads(sys.argv[1]):\n"
        "    values = {k.split(':', 1)[1]: secrets.decode(k.split(':', 1)[1], v) for k, v in values.items()}\n"
        "    s = parse_settings(values, stack='staging', has_gitlab_token=True)\n"
        "    print(s.target, [(r.name, r.executor) for r in s.runners])\n"
    )
    defaults = {key: str(spec["default"]) for key, spec in prompts.items()}
    answered = subprocess.run(
        [python, "-c", check, json.dumps([ANSWERS, defaults])], cwd=project, capture_output=True, text=True, check=False
    )
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.splitlines() == ["kubernetes [('first', 'kubernetes')]", "docker [('runner-1', 'docker')]"]
    # The generated project's own settings tests.
    tests = subprocess.run(
        [
            python,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/unit/test_settings.py",
            "tests/unit/test_settings_model.py",
        ],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-3000:]

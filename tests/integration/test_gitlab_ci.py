"""The GitLab CI pipeline template (ci/gitlab-ci.yml), run by gitlab-ci-local on this machine with the
shell executor: which jobs a merge request and the default branch get, and the merge-request preview
job for real (the engine on a file backend, the docker provider, the local Docker engine) on a stack
whose runners bring their own tokens, with its plan as an artifact and no secret in the job log."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, copy_tracked
from tests.integration.docker_engine import docker_provider_or_skip, start_engine

PASSPHRASE = "ci-passphrase-" + secrets.token_hex(8)
API_TOKEN = "glpat-ci-" + secrets.token_hex(10)
RUNNER_TOKEN = "glrt-ci-" + secrets.token_hex(10)
# The variables GitLab sets that the tests set themselves, to play a merge request or a push.
PREDEFINED = ("CI_PIPELINE_SOURCE", "CI_COMMIT_BRANCH", "CI_DEFAULT_BRANCH", "CI_MERGE_REQUEST_DIFF_BASE_SHA")


def gitlab_ci_local() -> str:
    done = subprocess.run([str(ROOT / "scripts" / "gitlab-ci-local")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.environ.get("GITLAB_RUNNERS_REQUIRE_ENGINE") == "1" and shutil.which("npm"):
            pytest.fail(f"gitlab-ci-local could not be installed: {done.stderr[-500:]}")
        pytest.skip(f"gitlab-ci-local is not available: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


@dataclass
class Repo:
    path: Path
    state: Path
    main_sha: str
    tool: str

    def run(self, *args: str, variables: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = [self.tool, "--force-shell-executor", "--ignore-predefined-vars", ",".join(PREDEFINED)]
        for key, value in (variables or {}).items():
            command += ["--variable", f"{key}={value}"]
        return subprocess.run(
            [*command, *args], cwd=self.path, capture_output=True, text=True, timeout=900, check=False
        )

    def jobs(self, variables: dict[str, str]) -> dict[str, dict[str, Any]]:
        done = self.run("--list-json", variables=variables)
        assert done.returncode == 0, done.stderr
        listing = done.stdout[done.stdout.index("[") :]  # after the tool's own notes, if any
        return {job["name"]: job for job in json.loads(listing)}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    tool = gitlab_ci_local()
    work = tmp_path_factory.mktemp("gitlab-ci")
    path, state = work / "repo", work / "state"
    state.mkdir()
    # The project as committed, in a repository of its own.
    copy_tracked(path)
    (path / ".venv").symlink_to(ROOT / ".venv")  # the same pinned packages; git ignores it
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "ci@example.invalid")
    git(path, "config", "user.name", "ci test")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "the project")
    # An origin to compare a merge request's changes with, as GitLab does.
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(work / "origin.git")], check=True)
    git(path, "remote", "add", "origin", str(work / "origin.git"))
    git(path, "push", "-q", "origin", "main")
    git(path, "remote", "set-head", "origin", "main")
    return Repo(path, state, git(path, "rev-parse", "HEAD"), tool)


def test_merge_requests_preview_and_the_default_branch_deploys(repo: Repo) -> None:
    git(repo.path, "checkout", "-q", "-b", "a-change")
    (repo.path / "Pulumi.dev.yaml").write_text((repo.path / "Pulumi.dev.yaml").read_text() + "# a change\n")
    git(repo.path, "commit", "-q", "-am", "a change to the dev stack")
    merge_request = repo.jobs({"CI_PIPELINE_SOURCE": "merge_request_event", "CI_COMMIT_BRANCH": ""})
    assert set(merge_request) >= {"preview"}
    assert merge_request["preview"]["when"] != "never"
    for deploy in ("deploy", "deploy-production"):
        assert deploy not in merge_request or merge_request[deploy]["when"] == "never"
    git(repo.path, "checkout", "-q", "main")
    default = repo.jobs({"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"})
    deploys = {name: job for name, job in default.items() if name.startswith("deploy")}
    assert any(job["when"] == "on_success" for name, job in deploys.items() if "production" not in name)
    assert all(job["when"] == "manual" for name, job in deploys.items() if "production" in name)
    assert any("production" in name for name in deploys)
    assert "preview" not in default or default["preview"]["when"] == "never"


def test_the_merge_request_preview_runs_on_the_touched_stack_and_keeps_secrets(repo: Repo) -> None:
    docker_provider_or_skip()
    engine = start_engine()
    environment = {
        **os.environ,
        "PULUMI_BACKEND_URL": f"file://{repo.state}",
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
    }

    def pulumi(*args: str, stdin: str | None = None) -> None:
        subprocess.run(
            ["pulumi", *args, "--cwd", str(repo.path), "--non-interactive"],
            input=stdin,
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )

    # A stack that runs here: the Docker target on this engine, a runner that brings its own token.
    git(repo.path, "checkout", "-q", "main")
    git(repo.path, "checkout", "-q", "-b", "ci-stack")
    pulumi("stack", "init", "ci")
    pulumi("config", "set", "gitlab-runners:target", "docker", "--stack", "ci")
    pulumi("config", "set", "--path", "gitlab-runners:docker.hosts[0].host", engine.host, "--stack", "ci")
    pulumi("config", "set", "--path", "gitlab-runners:runners[0].name", "ci-shell", "--stack", "ci")
    pulumi("config", "set", "--path", "gitlab-runners:runners[0].executor", "shell", "--stack", "ci")
    pulumi(
        "config",
        "set",
        "--secret",
        "--path",
        "gitlab-runners:runnerTokens.ci-shell",
        "--stack",
        "ci",
        stdin=RUNNER_TOKEN,
    )
    git(repo.path, "add", "Pulumi.ci.yaml")
    git(repo.path, "commit", "-q", "-m", "a stack for CI")
    done = repo.run(
        "preview",
        variables={
            "CI_PIPELINE_SOURCE": "merge_request_event",
            "CI_MERGE_REQUEST_DIFF_BASE_SHA": repo.main_sha,
            "PULUMI_BACKEND_URL": f"file://{repo.state}",
            "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
            "GITLAB_API_TOKEN": API_TOKEN,
        },
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "== preview of stack ci" in log
    assert "preview of stack dev" not in log and "preview of stack prod" not in log  # untouched stacks
    assert (
        "| ci-shell | local: container gitlab-runner-ci-shell | shell | (kept in GitLab) | brings its own token |"
        in log
    )
    plan = json.loads((repo.path / "plans" / "ci.json").read_text())
    assert plan["changeSummary"]
    for secret in (PASSPHRASE, API_TOKEN, RUNNER_TOKEN):
        assert secret not in log
        assert secret not in (repo.path / "plans" / "ci.json").read_text()

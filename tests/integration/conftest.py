"""Integration tests run the real Pulumi engine (Automation API, `file://` backend in a temp folder).

The toolchain comes from scripts/toolchain (scripts/test sources its env). Where it is missing the
tests skip, except under scripts/test and CI (GITLAB_RUNNERS_REQUIRE_ENGINE=1), where they fail.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.conftest import under_test
from tests.integration.docker_engine import (
    CURRENT_MIN_API,
    Engine,
    ExtraEngine,
    current_engine_binaries,
    docker_provider_or_skip,
    start_engine,
)
from tests.integration.local_cluster import Cluster, local_cluster

ROOT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("Pulumi.yaml", "Pulumi.dev.yaml", "Pulumi.prod.yaml", "__main__.py", "requirements.txt")
PROJECT_DIRS = ("components", "images")


def _engine_missing() -> str | None:
    if shutil.which("pulumi") is None:
        return 'the pulumi CLI is not on PATH (run: source "$(scripts/toolchain)")'
    if shutil.which("pulumi-language-python") is None:
        return "pulumi-language-python is not on PATH"
    if not (ROOT / ".venv" / "bin" / "python").exists():
        return ".venv is missing (run scripts/venv)"
    return None


@pytest.fixture(scope="session", autouse=True)
def engine_available() -> None:
    missing = _engine_missing()
    if missing is None:
        return
    if os.environ.get("GITLAB_RUNNERS_REQUIRE_ENGINE") == "1":
        pytest.fail(f"the real engine is required here: {missing}")
    pytest.skip(f"real engine not available: {missing}")


@dataclass
class Project:
    """A throw-away copy of the project, so stack files written by the engine never touch the repo."""

    dir: Path
    env: dict[str, str]


def copy_project(source: Path, files: tuple[str, ...], dirs: tuple[str, ...], work: Path) -> None:
    work.mkdir(parents=True)
    for name in files:
        shutil.copy2(source / name, work / name)
    for name in dirs:
        shutil.copytree(source / name, work / name)


def copy_tracked(dest: Path) -> None:
    """The checkout's committed files (what a clone of it holds), copied to `dest`."""
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
    for name in tracked.stdout.split():
        if (ROOT / name).exists():  # a file deleted and not yet committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)


def new_project(work: Path) -> Project:
    """A copy of the project in work/project with its own `file://` backend in work/state."""
    folder = work / "project"
    copy_project(ROOT, PROJECT_FILES, PROJECT_DIRS, folder)
    (folder / ".venv").symlink_to(ROOT / ".venv")
    state = work / "state"
    state.mkdir()
    env = {
        "PULUMI_BACKEND_URL": f"file://{state}",
        "PULUMI_CONFIG_PASSPHRASE": secrets.token_hex(16),
        "PULUMI_SKIP_UPDATE_CHECK": "true",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    }
    return Project(folder, env)


def exported_state(project: Project, stack: str) -> str:
    """`pulumi stack export` as a user runs it: without --show-secrets (the Automation API's
    export_stack always passes that flag, so it cannot tell)."""
    done = subprocess.run(
        ["pulumi", "stack", "export", "--stack", stack, "--cwd", str(project.dir)],
        env={**os.environ, **project.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


@pytest.fixture()
def project(tmp_path: Path) -> Project:
    return new_project(tmp_path)


@pytest.fixture()
def unsafe_project(tmp_path: Path, project: Project) -> Project:
    """The unsafe fixture program, in the same backend as `project`."""
    work = tmp_path / "unsafe"
    copy_project(ROOT / "tests" / "fixtures" / "unsafe_stack", ("Pulumi.yaml", "__main__.py"), (), work)
    # Its Pulumi.yaml points three folders up for the virtualenv; give it one next to it instead.
    pulumi_yaml = work / "Pulumi.yaml"
    pulumi_yaml.write_text(pulumi_yaml.read_text().replace("../../../.venv", ".venv"))
    (work / ".venv").symlink_to(ROOT / ".venv")
    return Project(work, project.env)


@pytest.fixture(scope="session")
def legacy_engine() -> Engine:
    """Debian's Docker 20.10 (scripts/docker-engine starts it): the oldest engine the README claims."""
    docker_provider_or_skip()
    engine = start_engine()
    under_test(f"docker engine under test: {engine.describe()}")
    return engine


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory, legacy_engine: Engine) -> Iterator[Engine]:
    """The current Docker engine (scripts/docker-current builds it; started here with
    DOCKER_MIN_API_VERSION=1.44), for the Docker target's tests. Where it was not built (no moby source
    on the machine) the tests run on 20.10 alone and say so; under scripts/test with the source at
    hand a failure to start it fails the tests."""
    binaries = current_engine_binaries()
    if binaries is None:
        under_test("docker engine under test: 20.10 only (scripts/docker-current found no moby source to build 29)")
        yield legacy_engine
        return
    current = ExtraEngine(tmp_path_factory.mktemp("docker-current"), binaries=binaries, min_api=CURRENT_MIN_API)
    try:
        engine = current.start()
        under_test(f"docker engine under test: {engine.describe()}")
        yield engine
    finally:
        current.close()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The local Kubernetes cluster, with a node that runs pods where its parts are on the machine
    (under scripts/test, where containerd could be built, a node that fails to start fails)."""
    bin_dir = os.environ.get("GITLAB_RUNNERS_CLUSTER_BIN")
    if not bin_dir or not (Path(bin_dir) / "kube-apiserver").exists():
        message = "no local control plane: set GITLAB_RUNNERS_CLUSTER_BIN=$(scripts/cluster-binaries)"
        if os.environ.get("GITLAB_RUNNERS_REQUIRE_ENGINE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    require = os.environ.get("GITLAB_RUNNERS_REQUIRE_ENGINE") == "1" and current_engine_binaries() is not None
    with local_cluster(Path(bin_dir), tmp_path_factory.mktemp("cluster"), require_node=require) as running:
        under_test(f"kubernetes node under test: {running.node}")
        yield running


# What a runner that brings its own token may set: the rest is kept in GitLab (settings refuse it).
LOCAL_RUNNER_KEYS = (
    "name",
    "executor",
    "image",
    "limit",
    "requestConcurrency",
    "privileged",
    "volumes",
    "pullPolicy",
    "jobResources",
    "hosts",
)


def with_existing_tokens(target: auto.Stack, tokens: dict[str, str]) -> None:
    """Give the stack's runners existing tokens, keeping only the settings such runners may have."""
    runners = json.loads(target.get_config("gitlab-runners:runners").value)
    local = [{k: v for k, v in r.items() if k in LOCAL_RUNNER_KEYS} for r in runners]
    target.set_config("gitlab-runners:runners", auto.ConfigValue(json.dumps(local)))
    target.set_config("gitlab-runners:runnerTokens", auto.ConfigValue(json.dumps(tokens), secret=True))


def stack(project: Project, name: str) -> auto.Stack:
    """The project's stack `name` in the test's own backend."""
    return auto.create_or_select_stack(
        stack_name=name, work_dir=str(project.dir), opts=auto.LocalWorkspaceOptions(env_vars=project.env)
    )

"""A Docker-target stack of the real program for the integration tests: a throw-away copy of the
project, a file backend, a stack config built from Python values, and a clean-up that destroys it and
removes whatever the test left on the Docker engines."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from components.settings import RUNNER_VERSION
from tests.gitlab_double.server import GitLabDouble
from tests.integration.conftest import Project, new_project
from tests.integration.docker_engine import Engine
from tests.integration.local_cluster import free_port_block


@dataclass
class DockerStack:
    project: Project
    stack: auto.Stack
    engines: list[Engine]
    gitlab: GitLabDouble
    prefix: str
    repository: str
    outputs: list[str] = field(default_factory=list)

    @property
    def image(self) -> str:
        return f"{self.repository}:ubuntu-v{RUNNER_VERSION}"

    def container(self, kind: str) -> str:
        return f"{self.prefix}-{kind}"

    def config(self, key: str) -> Any:
        return json.loads(self.stack.get_config(f"gitlab-runners:{key}").value)

    def set(self, key: str, value: Any, secret: bool = False) -> None:
        text = value if isinstance(value, str) else json.dumps(value)
        self.stack.set_config(f"gitlab-runners:{key}", auto.ConfigValue(text, secret=secret))

    def up(self, **kwargs: Any) -> auto.UpResult:
        result = self.stack.up(color="never", **kwargs)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def config_toml(self, kind: str, engine: Engine | None = None) -> str:
        return (
            (engine or self.engines[0])
            .run("exec", self.container(kind), "cat", "/etc/gitlab-runner/config.toml")
            .stdout
        )


@contextmanager
def docker_stack(
    work: Path,
    engines: list[Engine],
    gitlab: GitLabDouble,
    base_image: str,
    runners: list[dict[str, Any]],
    tokens: dict[str, Any],
    hosts: list[dict[str, Any]] | None = None,
    **config: Any,
) -> Iterator[DockerStack]:
    """A deployed-or-not stack; every engine is cleaned of the stack's containers and volumes after.
    `tokens` is runnerTokens: runner name -> token, or -> {host -> token}."""
    project = new_project(work)
    suffix = secrets.token_hex(3)
    prefix = f"gr-test-{suffix}"
    repository = f"gitlab-runners/test-{suffix}"
    stack = auto.create_or_select_stack(
        stack_name="test", work_dir=str(project.dir), opts=auto.LocalWorkspaceOptions(env_vars=project.env)
    )
    deployed = DockerStack(project, stack, engines, gitlab, prefix, repository)
    values: dict[str, Any] = {
        "target": "docker",
        "gitlabUrl": gitlab.base_url,
        "checkInterval": "1",
        "runners": runners,
        # Host networking: the runners reach the API double on this machine's 127.0.0.1.
        "docker": {
            "hosts": hosts or [{"name": "local", "host": engines[0].host, "networkMode": "host"}],
            "containerName": prefix,
            "image": {"flavor": "ubuntu", "baseImage": base_image, "repository": repository},
            "stopTimeout": 120,
        },
        # A free port: host networking shares the machine's ports between the stacks of a test run.
        "metrics": {"port": free_port_block()},
        **config,
    }
    settings = {
        f"gitlab-runners:{k}": auto.ConfigValue(v if isinstance(v, str) else json.dumps(v)) for k, v in values.items()
    }
    settings["gitlab-runners:runnerTokens"] = auto.ConfigValue(json.dumps(tokens), secret=True)
    stack.set_all_config(settings)
    try:
        yield deployed
    finally:
        try:
            stack.destroy(color="never", continue_on_error=True)
        except auto.CommandError:
            pass  # a test left a host unreachable: what remains is removed from the engines below
        finally:
            stack.workspace.remove_stack("test", force=True)
            for engine in engines:
                leftovers = [name for name in engine.names("container") if name.startswith(prefix)]
                if leftovers:
                    engine.run("rm", "-f", *leftovers, check=False)
                volumes = [name for name in engine.names("volume") if name.startswith(prefix)]
                if volumes:
                    engine.run("volume", "rm", "-f", *volumes, check=False)
                engine.run("image", "rm", "-f", deployed.image, check=False)

"""Both example stacks end to end through __main__.py, under mocks, each in a process of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.settings import CHART_VERSION
from tests.unit.mocks import SECRET_SIG

ROOT = Path(__file__).resolve().parents[2]
FAKE_API_TOKEN = "glpat-unit-fake-api-token"


def stack_config(stack: str) -> dict[str, str]:
    """What the engine hands the program: the stack file's values (and Pulumi.yaml's defaults), as strings."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    values: dict[str, Any] = {
        key: spec["default"] for key, spec in project.get("config", {}).items() if "default" in spec
    }
    values.update(yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"])
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in values.items()}


def run_program(
    stack: str,
    config: dict[str, str] | None = None,
    secret_keys: tuple[str, ...] = ("gitlab:token",),
    preview: bool = False,
    program: Path = ROOT,
    token_scopes: tuple[str, ...] = ("api",),
) -> dict[str, Any]:
    """Run a Pulumi program under mocks in a fresh process; what it registered, and its exports."""
    if config is None:
        config = {**stack_config(stack), "gitlab:token": FAKE_API_TOKEN}
    request = {
        "stack": stack,
        "config": config,
        "secret_keys": list(secret_keys),
        "preview": preview,
        "program": str(program),
        "token_scopes": list(token_scopes),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.unit.program_harness", json.dumps(request)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    result["stderr"] = done.stderr
    return result


def types(result: dict[str, Any]) -> list[str]:
    return sorted(r["typ"] for r in result["resources"])


def tokens_of(result: dict[str, Any]) -> list[str]:
    return [r["name"] for r in result["resources"] if r["typ"] == "gitlab:index/userRunner:UserRunner"]


def test_dev_stack_docker_target() -> None:
    result = run_program("dev")
    assert result["error"] is None
    assert types(result) == sorted(
        [
            "pulumi:providers:gitlab",
            "gitlab-runners:index:RunnerRegistration",
            "gitlab:index/userRunner:UserRunner",
            "gitlab:index/userRunner:UserRunner",
            "gitlab-runners:index:DockerHost",
            "pulumi:providers:docker",
            "gitlab-runners:index:RunnerImage",
            "docker:index/image:Image",
            # One runner container per executor kind, each with its volume and config sync container.
            *["gitlab-runners:index:DockerRunner", "docker:index/volume:Volume"] * 2,
            *["docker:index/container:Container"] * 4,
        ]
    )
    # Every resource of a provider package goes through an explicit provider.
    for resource in result["resources"]:
        if resource["typ"].split(":")[0] in ("gitlab", "docker"):
            assert "pulumi:providers:" in resource["provider"], resource["name"]
    syncs = [
        r for r in result["resources"] if r["typ"] == "docker:index/container:Container" and "uploads" in r["inputs"]
    ]
    assert len(syncs) == 2 and all(s["secret_inputs"] for s in syncs), "config.toml must travel as a secret"
    for sync in syncs:
        config_toml = next(u["content"] for u in sync["inputs"]["uploads"] if u["file"].endswith("config.toml"))
        assert config_toml.count("[[runners]]") == 1 and "glrt-mock-" in config_toml
    image = next(r for r in result["resources"] if r["typ"] == "docker:index/image:Image")
    assert image["inputs"]["build"]["args"]["EXTRA_PACKAGES"] == "python3 py3-pip"
    runners = result["exports"]["runners"]
    assert set(runners["value"]) == {"dev-docker", "dev-shell"}
    assert runners["value"]["dev-docker"]["local"]["container"] == "gitlab-runner-dev-docker"
    assert runners["value"]["dev-shell"]["local"]["container"] == "gitlab-runner-dev-shell"
    assert all(v["gitlabId"] for v in runners["value"].values())
    exported = json.dumps(result["exports"])
    assert "glrt-" not in exported and FAKE_API_TOKEN not in exported


def test_prod_stack_kubernetes_target() -> None:
    result = run_program("prod")
    assert result["error"] is None
    assert types(result) == sorted(
        [
            "pulumi:providers:gitlab",
            "pulumi:providers:kubernetes",
            "gitlab-runners:index:RunnerRegistration",
            "gitlab:index/userRunner:UserRunner",
            "gitlab-runners:index:KubernetesRunner",
            # No Namespace: the prod stack uses the existing `gitlab` namespace and never deletes it.
            "kubernetes:core/v1:Secret",
            "kubernetes:helm.sh/v3:Release",
        ]
    )
    user_runner = next(r for r in result["resources"] if r["typ"] == "gitlab:index/userRunner:UserRunner")
    assert user_runner["inputs"]["runnerType"] == "group_type" and user_runner["inputs"]["groupId"] == 42
    secret = next(r for r in result["resources"] if r["typ"] == "kubernetes:core/v1:Secret")
    assert secret["inputs"]["metadata"]["namespace"] == "gitlab"
    assert any(p.startswith("stringData") for p in secret["secret_inputs"])
    release = next(r for r in result["resources"] if r["typ"] == "kubernetes:helm.sh/v3:Release")
    assert release["inputs"]["version"] == CHART_VERSION and release["inputs"]["namespace"] == "gitlab"
    assert "glrt-" not in json.dumps(release["inputs"])
    assert result["exports"]["runners"]["value"]["prod-k8s"]["namespace"] == "gitlab"


def without_gitlab_attributes(config: dict[str, str]) -> dict[str, str]:
    """The stack's runners with only what a runner that brings its own token may set."""
    runners = json.loads(config["gitlab-runners:runners"])
    keep = ("name", "executor", "image", "limit", "requestConcurrency", "privileged", "volumes", "pullPolicy")
    config["gitlab-runners:runners"] = json.dumps([{k: v for k, v in r.items() if k in keep} for r in runners])
    return config


def test_existing_token_stack_creates_no_gitlab_resource() -> None:
    config = without_gitlab_attributes(stack_config("dev"))
    config["gitlab-runners:runnerTokens"] = json.dumps(
        {"dev-docker": "glrt-unit-existing-docker", "dev-shell": "glrt-unit-existing-shell"}
    )
    result = run_program("dev", config=config, secret_keys=("gitlab-runners:runnerTokens",))
    assert result["error"] is None
    assert tokens_of(result) == []
    assert not any(r["typ"].startswith("pulumi:providers:gitlab") for r in result["resources"])
    sync = next(r for r in result["resources"] if r["name"] == "docker-local-shell-sync")
    assert "glrt-unit-existing-shell" in json.dumps(sync["inputs"]["uploads"])
    assert sync["secret_inputs"]
    assert "glrt-unit-existing" not in json.dumps(result["exports"])


def test_plain_text_runner_tokens_are_refused() -> None:
    config = stack_config("dev")
    config["gitlab-runners:runnerTokens"] = json.dumps({"dev-docker": "glrt-unit-plain-text-token"})
    result = run_program("dev", config=config, secret_keys=())
    assert "gitlab-runners:runnerTokens must be stored as a secret" in result["error"]
    assert "glrt-unit-plain-text-token" not in result["error"] + result["stderr"]
    assert result["resources"] == []


def test_bad_config_stops_before_any_resource() -> None:
    config = stack_config("prod")
    config["gitlab-runners:target"] = "dokcer"
    result = run_program("prod", config=config)
    assert 'gitlab-runners:target must be "docker" or "kubernetes", got "dokcer"' in result["error"]
    assert result["resources"] == []


def test_preview_without_gitlab_token_warns_and_plans() -> None:
    result = run_program("dev", config=stack_config("dev"), secret_keys=(), preview=True)
    assert result["error"] is None
    assert "gitlab:token is required" in result["stderr"]
    assert len(tokens_of(result)) == 2


def test_up_without_gitlab_token_fails_clearly() -> None:
    result = run_program("dev", config=stack_config("dev"), secret_keys=(), preview=False)
    assert "gitlab:token is required to create runner(s) dev-docker, dev-shell" in result["error"]
    assert result["resources"] == []


def test_gitlab_api_token_is_secret_on_the_provider() -> None:
    result = run_program("dev")
    provider = next(r for r in result["resources"] if r["typ"] == "pulumi:providers:gitlab")
    assert provider["inputs"]["token"] == FAKE_API_TOKEN
    assert "token" in provider["secret_inputs"]
    assert SECRET_SIG not in json.dumps(result["exports"])


@pytest.mark.parametrize(
    ("stack", "loaded"),
    [("dev", ["pulumi_docker", "pulumi_gitlab"]), ("prod", ["pulumi_gitlab", "pulumi_kubernetes"])],
)
def test_a_preview_loads_only_the_libraries_its_target_needs(stack: str, loaded: list[str]) -> None:
    # Every preview pays for what it imports: not the other target's SDK, not pydantic for a valid stack.
    result = run_program(stack, preview=True)
    assert result["error"] is None and result["libraries"] == loaded

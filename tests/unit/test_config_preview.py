"""The plan's config.toml per runner manager (issue 20 item 2): the components carry the file with its
secrets masked, and scripts/plan_table.py shows its diff against the deployed one."""

from __future__ import annotations

import json
import tomllib
from typing import Any

from plan_table import config_diffs, steps, table_and_replacements

from components.runner_config import MASKED
from tests.unit.test_program import ROOT, run_program, stack_config, without_gitlab_attributes

EXISTING = {"dev-docker": "glrt-unit-existing-docker", "dev-shell": "glrt-unit-existing-shell"}
CREDENTIALS = {"accessKey": "AKIAUNITPREVIEWKEY", "secretKey": "unit-preview-secret-key"}
S3 = {"type": "s3", "shared": True, "s3": {"serverAddress": "minio.local:9000", "bucketName": "runner-cache"}}
SECRET_VALUES = [*EXISTING.values(), *CREDENTIALS.values()]


def uploaded_config(sync: dict[str, Any]) -> str:
    uploads = sync["inputs"]["uploads"]
    return str(next(u["content"] for u in uploads if u["file"].endswith("/config.toml")))


def test_each_docker_runner_manager_carries_its_config_toml_with_the_secrets_masked() -> None:
    config = {
        **without_gitlab_attributes(stack_config("dev")),
        "gitlab-runners:runnerTokens": json.dumps(EXISTING),
        "gitlab-runners:cache": json.dumps(S3),
        "gitlab-runners:cacheCredentials": json.dumps(CREDENTIALS),
    }
    secret_keys = ("gitlab-runners:runnerTokens", "gitlab-runners:cacheCredentials")
    result = run_program("dev", config=config, secret_keys=secret_keys)
    assert result["error"] is None, result["error"]
    managers = [r for r in result["resources"] if r["typ"] == "gitlab-runners:index:DockerRunner"]
    assert managers
    for manager in managers:
        shown = manager["inputs"]["configToml"]
        assert "configToml" not in manager["secret_inputs"]
        assert not any(value in shown for value in SECRET_VALUES), shown
        # The deployed file (the sync container's secret upload) is this one with its secrets filled in.
        sync = next(r for r in result["resources"] if r["name"] == f"{manager['name']}-sync")
        deployed = uploaded_config(sync)
        for value in SECRET_VALUES:
            deployed = deployed.replace(value, MASKED)
        assert deployed == shown
        document = tomllib.loads(shown)
        for runner in document["runners"]:
            assert runner["token"] == MASKED
            assert runner["cache"]["s3"]["AccessKey"] == runner["cache"]["s3"]["SecretKey"] == MASKED


def test_each_chart_release_carries_the_config_toml_the_stack_renders_for_it() -> None:
    result = run_program("prod")
    assert result["error"] is None, result["error"]
    (cluster,) = [r for r in result["resources"] if r["typ"] == "gitlab-runners:index:KubernetesRunner"]
    files = cluster["inputs"]["configTomls"]
    releases = [r for r in result["resources"] if r["typ"] == "kubernetes:helm.sh/v3:Release"]
    assert sorted(files) == sorted(r["inputs"]["name"] for r in releases)
    for release in releases:
        document = tomllib.loads(files[release["inputs"]["name"]])
        values = release["inputs"]["values"]
        assert document["concurrent"] == values["concurrent"]
        assert document["check_interval"] == values["checkInterval"]
        (runner,) = document["runners"]
        assert runner["token"] == MASKED
        assert runner["url"] == values["gitlabUrl"]
        # The chart's template, with the url and token the registration adds.
        (template,) = tomllib.loads(values["runners"]["config"])["runners"]
        assert {k: v for k, v in runner.items() if k not in ("url", "token")} == template


def component(op: str, name: str, old: str | None, new: str | None, **inputs: Any) -> dict[str, Any]:
    urn = f"urn:pulumi:dev::gitlab-runners::gitlab-runners:index:DockerHost$gitlab-runners:index:DockerRunner::{name}"
    kind = "gitlab-runners:index:DockerRunner"
    described = {"host": "local", "container": f"gitlab-runner-{name}", **inputs}
    step: dict[str, Any] = {"op": op, "urn": urn}
    if old is not None or op in ("same", "update", "delete"):
        step["oldState"] = {"type": kind, "inputs": {**described, **({"configToml": old} if old is not None else {})}}
    if op != "delete":
        step["newState"] = {"type": kind, "inputs": {**described, "configToml": new}}
    return step


DEPLOYED = 'concurrent = 1\n\n[[runners]]\nname = "a"\ntoken = "[MASKED]"\nlimit = 1\n'
PLANNED = DEPLOYED.replace("limit = 1", "limit = 4")


def test_the_plan_shows_each_config_toml_diff_and_names_the_unchanged_ones() -> None:
    plan = {
        "steps": [
            component("update", "changed", DEPLOYED, PLANNED),
            component("same", "kept", DEPLOYED, DEPLOYED),
            component("create", "added", None, DEPLOYED),
            component("delete", "gone", DEPLOYED, None),
            component("update", "older", None, PLANNED),
        ]
    }
    lines = config_diffs(plan)
    text = "\n".join(lines)
    changed = lines.index("config.toml of container gitlab-runner-changed on host local (changes; secrets masked):")
    assert lines[changed + 1 : changed + 3] == ["    --- deployed", "    +++ planned"]
    assert "    -limit = 1" in lines and "    +limit = 4" in lines
    assert "config.toml of container gitlab-runner-kept on host local: unchanged" in lines
    assert "config.toml of container gitlab-runner-added on host local (new; secrets masked):" in lines
    assert '    +token = "[MASKED]"' in lines
    assert "config.toml of container gitlab-runner-gone on host local: removed with it" in lines
    assert (
        "config.toml of container gitlab-runner-older on host local: the deployed one is not recorded "
        "(deployed by an earlier version)"
    ) in lines
    # Both views of the plan show it, after the runner table.
    assert text in steps(plan) and text in table_and_replacements(plan)


def test_a_chart_release_config_toml_diff_is_named_by_release_and_namespace() -> None:
    kind = "gitlab-runners:index:KubernetesRunner"
    old = {"type": kind, "inputs": {"namespace": "gitlab", "configTomls": {"prod-k8s-runner": DEPLOYED}}}
    new = {"type": kind, "inputs": {"namespace": "gitlab", "configTomls": {"prod-k8s-runner": PLANNED}}}
    lines = config_diffs({"steps": [{"op": "update", "urn": "u", "oldState": old, "newState": new}]})
    assert lines[0] == "config.toml of release prod-k8s-runner in namespace gitlab (changes; secrets masked):"
    assert "    +limit = 4" in lines


def dev_runner_managers(limit: int) -> list[dict[str, Any]]:
    config = stack_config("dev")
    runners = json.loads(config["gitlab-runners:runners"])
    runners[0]["limit"] = limit
    config = {**config, "gitlab-runners:runners": json.dumps(runners), "gitlab:token": "glpat-unit-fake"}
    result = run_program("dev", config=config)
    assert result["error"] is None, result["error"]
    return [r for r in result["resources"] if r["typ"] == "gitlab-runners:index:DockerRunner"]


def test_the_readme_example_is_what_the_plan_shows() -> None:
    before, after = dev_runner_managers(2), dev_runner_managers(4)
    plan = {
        "steps": [
            {
                "op": "update",
                "urn": old["name"],
                "oldState": {"type": old["typ"], "inputs": old["inputs"]},
                "newState": {"type": new["typ"], "inputs": new["inputs"]},
            }
            for old, new in zip(before, after, strict=True)
        ]
    }
    shown = "\n".join(config_diffs(plan)) + "\n"
    readme = (ROOT / "README.md").read_text()
    example = readme.split("### The config.toml in the plan", 1)[1].split("```\n", 2)[1]
    assert example == shown

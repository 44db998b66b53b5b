"""A fleet of Docker hosts, the autoscaling executors and the bounds of Kubernetes job pods: settings
and what they render, under mocks."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from components.kubernetes_runner import rbac_rules
from components.runner_config import render_chart_runner_toml, render_config_toml
from components.settings import SettingsError, parse_settings
from components.settings.model import Autoscaler, Runner
from tests.standin_build import build_standin
from tests.unit.test_program import FAKE_API_TOKEN, run_program, stack_config

ROOT = Path(__file__).resolve().parents[2]

AUTOSCALER = {
    "plugin": "aws:1.0.0",
    "capacityPerInstance": 2,
    "maxUseCount": 10,
    "maxInstances": 5,
    "pluginConfig": {"name": "runner-asg", "region": "eu-west-1"},
    "connectorConfig": {"username": "ec2-user", "useStaticCredentials": True, "keyPath": "/etc/gitlab-runner/key"},
    "policies": [{"idleCount": 1, "idleTime": "30m", "periods": ["* 8-18 * * mon-fri"], "timezone": "Europe/Berlin"}],
}


def parse(values: dict[str, Any], **kwargs: Any) -> Any:
    return parse_settings(values, stack="unit", has_gitlab_token=True, **kwargs)


def problems(values: dict[str, Any]) -> str:
    with pytest.raises(SettingsError) as caught:
        parse(values)
    return str(caught.value)


def test_docker_autoscaler_renders_its_autoscaler_section() -> None:
    s = parse(
        {"target": "docker", "runners": [{"name": "a", "executor": "docker-autoscaler", "autoscaler": AUTOSCALER}]}
    )
    config = tomllib.loads(render_config_toml(s.global_, s.runners, "https://gl", {"a": "glrt-x"}))
    runner = config["runners"][0]
    assert runner["executor"] == "docker-autoscaler" and runner["docker"]["image"]  # jobs in containers
    autoscaler = runner["autoscaler"]
    assert (autoscaler["plugin"], autoscaler["capacity_per_instance"], autoscaler["max_instances"]) == (
        "aws:1.0.0",
        2,
        5,
    )
    assert autoscaler["plugin_config"] == {"name": "runner-asg", "region": "eu-west-1"}
    assert autoscaler["connector_config"]["key_path"] == "/etc/gitlab-runner/key"
    (policy,) = autoscaler["policy"]
    assert policy == {
        "periods": ["* 8-18 * * mon-fri"],
        "timezone": "Europe/Berlin",
        "idle_count": 1,
        "idle_time": "30m",
        "scale_factor": 0.0,
        "scale_factor_limit": 0,
    }


def test_instance_executor_runs_jobs_on_the_vm() -> None:
    s = parse({"target": "docker", "runners": [{"name": "a", "executor": "instance", "autoscaler": AUTOSCALER}]})
    runner = tomllib.loads(render_config_toml(s.global_, s.runners, "https://gl", {"a": "glrt-x"}))["runners"][0]
    assert "docker" not in runner and runner["autoscaler"]["max_use_count"] == 10


@pytest.mark.parametrize(
    ("runner", "expected"),
    [
        ({"executor": "docker-autoscaler"}, "runners[0].autoscaler is required by the docker-autoscaler executor"),
        ({"executor": "shell", "autoscaler": AUTOSCALER}, "autoscaler only applies to the docker-autoscaler"),
        ({"executor": "instance", "autoscaler": {**AUTOSCALER, "policies": []}}, "policies must not be empty"),
        ({"executor": "instance", "autoscaler": {**AUTOSCALER, "maxInstances": 0}}, "maxInstances must be at least 1"),
        (
            {"executor": "instance", "autoscaler": {**AUTOSCALER, "plugin": "aws:latest"}},
            "plugin must be a fleeting plugin pinned to an exact release",
        ),
        (
            {"executor": "instance", "autoscaler": {k: v for k, v in AUTOSCALER.items() if k != "maxInstances"}},
            "autoscaler.maxInstances is required but not set",
        ),
        (
            {"executor": "instance", "autoscaler": {**AUTOSCALER, "policies": [{"idleTime": "soon"}]}},
            "idleTime must be a duration",
        ),
        (
            {
                "executor": "instance",
                "autoscaler": {**AUTOSCALER, "connectorConfig": {"username": "u", "useStaticCredentials": True}},
            },
            "connectorConfig.keyPath is required with useStaticCredentials",
        ),
        ({"executor": "instance", "autoscaler": AUTOSCALER, "image": "alpine:3.20.3"}, "no meaning for the instance"),
        ({"executor": "docker+machine"}, 'its successor is "docker-autoscaler"'),
    ],
)
def test_autoscaling_is_validated(runner: dict[str, Any], expected: str) -> None:
    assert expected in problems({"target": "docker", "runners": [{"name": "a", **runner}]})


def test_fleeting_plugins_go_into_each_hosts_image() -> None:
    config = stack_config("dev")
    config["gitlab-runners:docker"] = json.dumps(
        {"hosts": [{"name": "a", "host": "unix:///a.sock"}, {"name": "b", "host": "ssh://ci@b"}]}
    )
    config["gitlab-runners:runners"] = json.dumps(
        [
            {"name": "x", "executor": "shell", "hosts": ["a"]},
            {"name": "y", "executor": "docker-autoscaler", "hosts": ["b"], "autoscaler": AUTOSCALER},
        ]
    )
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN})
    assert result["error"] is None
    images = {r["name"]: r for r in result["resources"] if r["typ"] == "docker:index/image:Image"}
    assert images["docker-a-image-image"]["inputs"]["build"]["args"]["FLEETING_PLUGINS"] == ""
    assert images["docker-b-image-image"]["inputs"]["build"]["args"]["FLEETING_PLUGINS"] == AUTOSCALER["plugin"]
    containers = {r["inputs"]["name"] for r in result["resources"] if r["typ"] == "docker:index/container:Container"}
    assert containers == {
        "gitlab-runner-dev-shell",
        "gitlab-runner-dev-shell-sync",
        "gitlab-runner-dev-autoscaler",
        "gitlab-runner-dev-autoscaler-sync",
    }
    providers = sorted(r["inputs"]["host"] for r in result["resources"] if r["typ"] == "pulumi:providers:docker")
    assert providers == ["ssh://ci@b", "unix:///a.sock"]  # each host its own provider
    assert set(result["exports"]["runners"]["value"]["y"]) == {"gitlabId", "registration", "executor", "tags", "b"}


@pytest.mark.parametrize(
    ("docker", "runners", "expected"),
    [
        ({"hosts": [{"name": "a"}, {"name": "a", "host": "unix:///b.sock"}]}, None, 'hosts[1].name "a" is used twice'),
        ({"hosts": [{"name": "a"}]}, [{"name": "r", "hosts": ["b"]}], "runners[0].hosts[0] names no host"),
        ({"hosts": [{"name": "a"}, {"name": "b"}]}, [{"name": "r", "hosts": ["a"]}], "(host b) serves no runner"),
        ({"hosts": [{"name": "a", "host": "tcp://h:2376"}]}, None, "is tcp:// without TLS"),
        ({"hosts": [{"name": "a", "certPath": "/x"}]}, None, "certPath only applies to a tcp:// host"),
        ({"hosts": [{"name": "a", "sshOpts": ["-v"]}]}, None, "sshOpts only applies to an ssh:// host"),
        ({"hosts": []}, None, "docker.hosts must not be empty"),
    ],
)
def test_fleet_rules(docker: dict[str, Any], runners: list[dict[str, Any]] | None, expected: str) -> None:
    values: dict[str, Any] = {"target": "docker", "docker": docker}
    if runners is not None:
        values["runners"] = runners
    assert expected in problems(values)


def test_tls_material_for_a_tcp_host_comes_from_the_secret() -> None:
    s = parse(
        {"target": "docker", "docker": {"hosts": [{"name": "a", "host": "tcp://h:2376"}]}},
        docker_tls_names=frozenset({"a"}),
    )
    assert s.docker is not None and s.docker.hosts[0].host == "tcp://h:2376"


def test_job_pod_bounds_render_into_the_chart_template() -> None:
    pods = {
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "tolerations": {"ci=true": "NoSchedule"},
        "serviceAccount": "ci-jobs",
        "maxCpuLimit": "4",
        "maxMemoryLimit": "8Gi",
    }
    s = parse({"target": "kubernetes", "runners": [{"name": "k", "jobPods": pods}]})
    section = tomllib.loads(render_chart_runner_toml(s.runners[0], "gitlab"))["runners"][0]["kubernetes"]
    assert section["node_selector"] == {"kubernetes.io/arch": "amd64"}
    assert section["node_tolerations"] == {"ci=true": "NoSchedule"}
    assert section["service_account"] == "ci-jobs"
    assert (section["cpu_limit_overwrite_max_allowed"], section["memory_limit_overwrite_max_allowed"]) == ("4", "8Gi")
    assert section["namespace"] == "gitlab"


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        ({"namespace": "elsewhere"}, "jobPods.namespace is not the runners' namespace (gitlab)"),
        ({"namespacePerJob": True}, "namespacePerJob creates namespaces"),
        ({"maxCpuLimit": "lots"}, "maxCpuLimit must be a Kubernetes quantity"),
        ({"tolerations": {"ci=true": "Sometimes"}}, "must be"),
    ],
)
def test_job_pod_bounds_are_validated(pods: dict[str, Any], expected: str) -> None:
    assert expected in problems({"target": "kubernetes", "runners": [{"name": "k", "jobPods": pods}]})


def test_another_job_namespace_with_cluster_wide_rbac() -> None:
    s = parse(
        {
            "target": "kubernetes",
            "kubernetes": {"rbac": {"clusterWideAccess": True}},
            "runners": [{"name": "k", "jobPods": {"namespace": "ci-jobs", "namespacePerJob": False}}],
        }
    )
    section = tomllib.loads(render_chart_runner_toml(s.runners[0], "gitlab"))["runners"][0]["kubernetes"]
    assert section["namespace"] == "ci-jobs"


def test_namespace_per_job_gets_the_namespaces_rule_and_only_that_runner() -> None:
    """The kubernetes executor creates and deletes each job's namespace when namespacePerJob is on
    (gitlab-runner docs, executors/kubernetes, API permissions); the other runners get no such rule."""
    s = parse(
        {
            "target": "kubernetes",
            "kubernetes": {"rbac": {"clusterWideAccess": True}},
            "runners": [{"name": "per-job", "jobPods": {"namespacePerJob": True}}, {"name": "plain"}],
        }
    )
    per_job, plain = (rbac_rules(runner) for runner in s.runners)
    namespaces = [rule for rule in per_job if "namespaces" in rule["resources"]]
    assert namespaces == [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create", "delete"]}]
    assert not [rule for rule in plain if "namespaces" in rule["resources"]]


# ---- fleeting plugin references ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin"))


def fleeting_install(standin: Path, plugins: list[str], where: Path) -> subprocess.CompletedProcess[str]:
    """`gitlab-runner fleeting install` as images/runner/Dockerfile runs it: one runner per plugin."""
    config = where / "plugins.toml"
    config.write_text(
        "".join(
            f'[[runners]]\nname = "{p}"\nurl = "https://gitlab.invalid"\ntoken = "none"\nexecutor = "instance"\n'
            f'[runners.autoscaler]\nplugin = "{p}"\n\n'
            for p in plugins
        )
    )
    env = {**os.environ, "FLEETING_PLUGIN_PATH": str(where / "plugins")}
    return subprocess.run(
        [str(standin), "fleeting", "--config", str(config), "install"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def documented_plugins() -> set[str]:
    """Every plugin reference the model, the error hints and the README show a user."""
    found = {Autoscaler.model_fields["plugin"].examples[0]}
    found.add(Runner.model_fields["autoscaler"].examples[0]["plugin"])
    hint = problems({"target": "docker", "runners": [{"name": "a", "executor": "instance"}]})
    readme = (ROOT / "README.md").read_text()
    for text in (hint, readme):
        found.update(re.findall(r"plugin: `?([a-z0-9][a-z0-9./-]*:[0-9.]+)", text))
        found.update(re.findall(r"`autoscaler\.plugin`.*e\.g\. `([^`]+)`", text))
    return found


def test_the_documented_plugins_are_ones_fleeting_install_resolves(standin: Path, tmp_path: Path) -> None:
    plugins = documented_plugins()
    assert len(plugins) >= 1 and all(":" in p for p in plugins), plugins
    done = fleeting_install(standin, sorted(plugins), tmp_path)
    assert done.returncode == 0, done.stderr


def test_a_name_outside_gitlabs_plugin_repository_is_not_the_aws_plugin(standin: Path, tmp_path: Path) -> None:
    # Resolved with the default registry, this is registry.gitlab.com/gitlab/fleeting-plugin-aws: no plugin is there.
    done = fleeting_install(standin, ["gitlab/fleeting-plugin-aws:1.0.0"], tmp_path)
    assert done.returncode == 1
    assert "registry.gitlab.com/gitlab/fleeting-plugin-aws: repository not found" in done.stderr

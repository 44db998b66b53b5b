"""Each component's resources and their inputs, under mocks."""

from __future__ import annotations

import tomllib
from typing import Any

import pulumi

from components.docker_runner import DockerRunner, DockerRunnerArgs
from components.kubernetes_runner import KubernetesRunner, KubernetesRunnerArgs
from components.runner_image import RunnerImage, RunnerImageArgs
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import Settings, parse_settings
from tests.unit.helpers import resolve, run
from tests.unit.mocks import RecordingMocks


def settings(target: str, **values: Any) -> Settings:
    """Settings for one target; the target's own section is always present."""
    return parse_settings({"target": target, **values}, stack="unit", has_gitlab_token=True)


def test_registration_creates_user_runners_with_gitlab_attributes(mocks: RecordingMocks) -> None:
    s = settings(
        "docker",
        runners=[
            {
                "name": "grp",
                "scope": "group",
                "groupId": 9,
                "tags": ["x"],
                "locked": True,
                "accessLevel": "ref_protected",
                "paused": True,
                "maximumTimeout": 900,
                "maintenanceNote": "n",
            },
            {"name": "prj", "scope": "project", "projectId": 5},
        ],
    )
    reg = run(lambda: RunnerRegistration("reg", RunnerRegistrationArgs(runners=s.runners)))
    grp = next(r for r in mocks.by_type("gitlab:index/userRunner:UserRunner") if r.name == "reg-grp")
    assert grp.inputs == {
        "runnerType": "group_type",
        "groupId": 9,
        "description": "unit-grp",
        "tagLists": ["x"],
        "untagged": False,
        "locked": True,
        "accessLevel": "ref_protected",
        "paused": True,
        "maximumTimeout": 900,
        "maintenanceNote": "n",
    }
    prj = next(r for r in mocks.by_type("gitlab:index/userRunner:UserRunner") if r.name == "reg-prj")
    assert prj.inputs["runnerType"] == "project_type" and prj.inputs["projectId"] == 5
    token = resolve(reg.tokens["grp"])
    assert token.value.startswith("glrt-") and token.secret
    assert resolve(reg.runner_ids["prj"]).value


def test_registration_with_existing_token_creates_nothing_in_gitlab(mocks: RecordingMocks) -> None:
    s = settings("docker", runners=[{"name": "a"}])
    reg = run(
        lambda: RunnerRegistration(
            "reg", RunnerRegistrationArgs(runners=s.runners, existing_tokens={"a": pulumi.Output.from_input("glrt-x")})
        )
    )
    assert mocks.by_type("gitlab:index/userRunner:UserRunner") == []
    token = resolve(reg.tokens["a"])
    # Even a token handed in as a plain Output leaves the component as a secret.
    assert token.value == "glrt-x" and token.secret


def test_runner_image_build(mocks: RecordingMocks) -> None:
    s = settings("docker", docker={"image": {"flavor": "ubuntu", "extraPackages": ["python3", "python3-pip"]}})
    assert s.docker is not None
    build = s.docker.build
    assert build is not None
    image = run(lambda: RunnerImage("img", RunnerImageArgs(build=build)))
    built = mocks.one("docker:index/image:Image")
    assert built.inputs["skipPush"] is True
    assert built.inputs["imageName"] == "gitlab-runners/unit-runner:ubuntu-v18.5.0"
    args = built.inputs["build"]["args"]
    assert args["BASE_IMAGE"] == "gitlab/gitlab-runner:ubuntu-v18.5.0"
    assert args["EXTRA_PACKAGES"] == "python3 python3-pip"
    assert built.inputs["build"]["dockerfile"] == "images/runner/Dockerfile"
    assert resolve(image.image_ref).value.startswith("sha256:")


def _docker_runner(mocks: RecordingMocks, runners: list[dict[str, Any]], **docker: Any) -> Any:
    s = settings("docker", runners=runners, docker=docker)
    docker_settings = s.docker
    assert docker_settings is not None
    # A token handed in as a plain Output: the component must still upload config.toml as a secret.
    tokens = {r.name: pulumi.Output.from_input(f"glrt-{r.name}-unit") for r in s.runners}
    run(
        lambda: DockerRunner(
            "dr",
            DockerRunnerArgs(
                settings=docker_settings,
                runners=s.runners,
                image="sha256:abc",
                global_=s.global_,
                gitlab_url="https://gl.example",
                tokens=tokens,
            ),
        )
    )
    return mocks.one("docker:index/container:Container")


def test_docker_runner_container(mocks: RecordingMocks) -> None:
    container = _docker_runner(mocks, [{"name": "d", "executor": "docker"}])
    volume = mocks.one("docker:index/volume:Volume")
    inputs = container.inputs
    assert inputs["restart"] == "unless-stopped"
    assert inputs["stopSignal"] == "SIGQUIT" and inputs["stopTimeout"] == 3600
    assert inputs["privileged"] is False
    assert {
        "target": "/etc/gitlab-runner",
        "type": "volume",
        "readOnly": False,
        "source": volume.inputs["name"],
    } in inputs["mounts"]
    assert any(m["target"] == "/var/run/docker.sock" for m in inputs["mounts"])
    assert inputs["healthcheck"]["tests"] == ["CMD", "gitlab-runner", "list"]
    assert container.secret_inputs, "config.toml must travel as a secret"
    (upload,) = inputs["uploads"]
    assert upload["file"] == "/etc/gitlab-runner/config.toml" and upload["permissions"] == "0600"
    config = tomllib.loads(upload["content"])
    assert config["runners"][0]["token"] == "glrt-d-unit" and config["runners"][0]["url"] == "https://gl.example"


def test_shell_only_runner_gets_no_docker_socket(mocks: RecordingMocks) -> None:
    container = _docker_runner(mocks, [{"name": "s", "executor": "shell"}])
    assert [m["target"] for m in container.inputs["mounts"]] == ["/etc/gitlab-runner"]


def test_rootless_socket_is_the_one_mounted(mocks: RecordingMocks) -> None:
    container = _docker_runner(mocks, [{"name": "d"}], host="unix:///run/user/1000/docker.sock", networkMode="host")
    sock = next(m for m in container.inputs["mounts"] if m["target"] == "/var/run/docker.sock")
    assert sock["source"] == "/run/user/1000/docker.sock"
    assert container.inputs["networkMode"] == "host"


def test_kubernetes_runner(mocks: RecordingMocks) -> None:
    s = settings(
        "kubernetes",
        runners=[{"name": "k1", "limit": 4}, {"name": "k2"}],
        kubernetes={"namespace": "ci-runners", "replicas": 2},
    )
    kube = s.kubernetes
    assert kube is not None
    tokens = {"k1": pulumi.Output.secret("glrt-k1"), "k2": pulumi.Output.secret("glrt-k2")}
    component = run(
        lambda: KubernetesRunner(
            "kr",
            KubernetesRunnerArgs(
                settings=kube, global_=s.global_, gitlab_url="https://gl", runners=s.runners, tokens=tokens
            ),
        )
    )
    namespace = mocks.one("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == "ci-runners"
    secrets = mocks.by_type("kubernetes:core/v1:Secret")
    assert len(secrets) == 2
    secret = next(x for x in secrets if x.name == "kr-k1-token")
    assert set(secret.inputs["stringData"]) == {"runner-token", "runner-registration-token"}
    assert secret.inputs["stringData"]["runner-registration-token"] == ""
    assert any(p.startswith("stringData") for p in secret.secret_inputs)
    releases = mocks.by_type("kubernetes:helm.sh/v3:Release")
    assert len(releases) == 2
    release = next(x for x in releases if x.name == "kr-k1")
    inputs = release.inputs
    assert inputs["chart"] == "gitlab-runner" and inputs["version"] == "0.82.0"
    assert inputs["repositoryOpts"]["repo"] == "https://charts.gitlab.io"
    assert inputs["namespace"] == "ci-runners"
    values = inputs["values"]
    assert values["gitlabUrl"] == "https://gl" and values["replicas"] == 2 and values["concurrent"] == 4
    assert values["runners"]["secret"] == secret.inputs["metadata"]["name"]
    assert values["securityContext"]["runAsNonRoot"] is True
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert values["resources"]["limits"] and values["resources"]["requests"]
    assert values["rbac"] == {"create": True, "clusterWideAccess": False}
    assert "glrt-k1" not in str(values)
    template = tomllib.loads(values["runners"]["config"])["runners"][0]
    assert template["executor"] == "kubernetes" and template["kubernetes"]["namespace"] == "ci-runners"
    assert release.secret_inputs == []  # nothing secret in the values: the token lives in the Secret
    assert resolve(component.namespace).value == "ci-runners"

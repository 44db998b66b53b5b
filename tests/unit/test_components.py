"""Each component's resources and their inputs, under mocks."""

from __future__ import annotations

import tomllib
from typing import Any

import pulumi
import pytest

from components.docker_host import DockerHost, DockerHostArgs
from components.docker_runner import LISTEN_ADDRESS_LABEL
from components.kubernetes_runner import SECRETS_FINGERPRINT, KubernetesRunner, KubernetesRunnerArgs, fingerprint
from components.runner_image import RunnerImage, RunnerImageArgs
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import CHART_VERSION, RUNNER_VERSION, ManagerSettings, Settings, parse_settings
from tests.unit.helpers import resolve, run
from tests.unit.mocks import RecordingMocks

RELEASE = "kubernetes:helm.sh/v3:Release"


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
    assert built.inputs["imageName"] == f"gitlab-runners/unit-runner:ubuntu-v{RUNNER_VERSION}"
    args = built.inputs["build"]["args"]
    assert args["BASE_IMAGE"] == f"gitlab/gitlab-runner:ubuntu-v{RUNNER_VERSION}"
    assert args["EXTRA_PACKAGES"] == "python3 python3-pip"
    assert built.inputs["build"]["dockerfile"] == "images/runner/Dockerfile"
    assert resolve(image.image_ref).value.startswith("sha256:")


def _docker_host(mocks: RecordingMocks, runners: list[dict[str, Any]], **docker: Any) -> Any:
    s = settings("docker", runners=runners, docker=docker)
    target = s.docker
    assert target is not None
    # Tokens handed in as plain Outputs: the component must still upload config.toml as a secret.
    tokens = {r.name: pulumi.Output.from_input(f"glrt-{r.name}-unit") for r in s.runners}
    return run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=target.hosts[0],
                target=target,
                runners=s.runners,
                manager=ManagerSettings(gitlab_url="https://gl.example", global_=s.global_),
                tokens=tokens,
            ),
        )
    )


def _containers(mocks: RecordingMocks) -> dict[str, Any]:
    return {c.inputs["name"]: c for c in mocks.by_type("docker:index/container:Container")}


def test_docker_runner_container_never_carries_the_config(mocks: RecordingMocks) -> None:
    _docker_host(mocks, [{"name": "d", "executor": "docker"}])
    containers = _containers(mocks)
    assert set(containers) == {"gitlab-runner-unit-docker", "gitlab-runner-unit-docker-sync"}
    runner = containers["gitlab-runner-unit-docker"].inputs
    assert runner["restart"] == "unless-stopped"
    assert runner["stopSignal"] == "SIGQUIT" and runner["stopTimeout"] == 3600
    assert runner["destroyGraceSeconds"] == 3600
    assert runner["privileged"] is False
    # In the form the engine reads back, or `pulumi up --refresh` would replace the container.
    assert runner["capabilities"] == {"drops": ["CAP_NET_RAW"]}
    # Nothing that changes with the settings: config.toml reaches the volume through the sync container.
    assert "uploads" not in runner and "envs" not in runner and "command" not in runner
    assert {"volumeName": "gitlab-runner-unit-docker-config", "containerPath": "/etc/gitlab-runner"} in runner[
        "volumes"
    ]
    assert {"hostPath": "/var/run/docker.sock", "containerPath": "/var/run/docker.sock"} in runner["volumes"]
    # The health check reads the metrics on 127.0.0.1, never `gitlab-runner list` (it prints tokens).
    test = runner["healthcheck"]["tests"]
    assert test[0] == "CMD-SHELL" and "127.0.0.1:9252/metrics" in test[1] and "list" not in test[1].split()
    assert containers["gitlab-runner-unit-docker"].secret_inputs == []


def test_the_sync_container_carries_config_toml_as_a_secret(mocks: RecordingMocks) -> None:
    _docker_host(mocks, [{"name": "d", "executor": "docker"}])
    sync = _containers(mocks)["gitlab-runner-unit-docker-sync"]
    inputs = sync.inputs
    # Its output is kept (the script masks every token), as a secret, so that `up` tells a failure itself.
    assert inputs["attach"] is True and inputs["mustRun"] is False and inputs["logs"] is True
    assert inputs["rm"] is False
    assert inputs["entrypoints"] == ["/bin/sh", "/gitlab-runners/sync-config"]
    assert any(p.startswith("uploads") for p in sync.secret_inputs), "config.toml must travel as a secret"
    staged = next(u for u in inputs["uploads"] if u["file"] == "/gitlab-runners/config.toml")
    assert staged["permissions"] == "0600"
    config = tomllib.loads(staged["content"])
    assert config["runners"][0]["token"] == "glrt-d-unit" and config["runners"][0]["url"] == "https://gl.example"
    assert config["listen_address"] == "127.0.0.1:9252"


def test_a_failed_sync_is_told_with_what_it_said() -> None:
    from components.docker_runner import _check_sync

    _check_sync(0, "gr-shell", "config sync: config.toml installed (1 runner(s))")
    logs = (
        "INFO:   Waiting before making the next call duration=1s method=POST status=502\n"
        "config sync: the check of the new config.toml failed: GitLab answered 502 Bad Gateway (after the "
        "runner's retries); nothing was changed\n"
    )
    with pytest.raises(pulumi.RunError) as caught:
        _check_sync(1, "gr-shell", logs)
    message = str(caught.value)
    assert message.startswith(
        "the config sync of gr-shell exited 1: the check of the new config.toml failed: GitLab answered 502 Bad "
        "Gateway (after the runner's retries); nothing was changed. Once GitLab answers"
    )
    assert "run `pulumi up` again" in message and "`gr-shell-sync`" in message
    with pytest.raises(pulumi.RunError, match="`docker logs gr-shell-sync` says why"):
        _check_sync(1, "gr-shell", None)
    lost = "config sync: GitLab refuses the stack's token of runner a (403 Forbidden) and ... set runnerTokens.a\n"
    with pytest.raises(pulumi.RunError) as caught:
        _check_sync(3, "gr-shell", lost)
    assert str(caught.value).startswith("runner container gr-shell: GitLab refuses the stack's token of runner a")
    assert "exited" not in str(caught.value)


def test_up_says_what_a_failed_check_of_the_new_ca_said() -> None:
    from components.docker_runner import _check_sync

    _check_sync(0, "gr-shell", "config sync: config.toml installed (1 runner(s))")
    said = (
        "config sync: runner a: POST https://gl.example/api/v4/runners/verify: no answer (curl: (60) SSL "
        "certificate problem: unable to get local issuer certificate): a gitlabUrl this host cannot reach, or "
        "TLS failed; nothing was changed (config.toml and the CA in use stay as they were)\n"
    )
    with pytest.raises(pulumi.RunError) as caught:
        _check_sync(1, "gr-shell", "glrt-[MASKED] verify log\n" + said)
    message = str(caught.value)
    assert message.startswith("the config sync of gr-shell exited 1: runner a: POST")
    assert "SSL certificate problem" in message and "`gr-shell-sync`" in message


def _runner_labels(mocks: RecordingMocks, name: str) -> dict[str, str]:
    return {label["label"]: label["value"] for label in _containers(mocks)[name].inputs["labels"]}


def test_a_new_metrics_address_replaces_the_runner_container_and_nothing_else(mocks: RecordingMocks) -> None:
    """The runner binds listen_address only at start: the address is a label of the runner container (a
    label change replaces a Docker container), never of its sync container or config volume."""
    _docker_host(mocks, [{"name": "d", "executor": "docker"}, {"name": "s", "executor": "shell"}])
    assert _runner_labels(mocks, "gitlab-runner-unit-docker")[LISTEN_ADDRESS_LABEL] == "127.0.0.1:9252"
    assert _runner_labels(mocks, "gitlab-runner-unit-shell")[LISTEN_ADDRESS_LABEL] == "127.0.0.1:9253"
    assert LISTEN_ADDRESS_LABEL not in _runner_labels(mocks, "gitlab-runner-unit-docker-sync")
    volume = mocks.by_type("docker:index/volume:Volume")[0]
    assert LISTEN_ADDRESS_LABEL not in {label["label"] for label in volume.inputs["labels"]}
    mocks.resources.clear()
    _docker_host(mocks, [{"name": "d", "executor": "docker"}], hosts=[{"metricsPort": 9400}])
    assert _runner_labels(mocks, "gitlab-runner-unit-docker")[LISTEN_ADDRESS_LABEL] == "127.0.0.1:9400"
    mocks.resources.clear()
    _docker_host(mocks, [{"name": "d", "executor": "docker"}], hosts=[{"networkMode": "host"}])
    assert _runner_labels(mocks, "gitlab-runner-unit-docker")[LISTEN_ADDRESS_LABEL] == "127.0.0.1:9252"


def test_shell_runners_get_a_container_of_their_own_without_the_socket(mocks: RecordingMocks) -> None:
    _docker_host(mocks, [{"name": "d", "executor": "docker", "limit": 2}, {"name": "s", "executor": "shell"}])
    containers = _containers(mocks)
    shell = containers["gitlab-runner-unit-shell"].inputs
    assert [v["containerPath"] for v in shell["volumes"]] == ["/etc/gitlab-runner"]
    docker_sync = containers["gitlab-runner-unit-docker-sync"].inputs
    shell_sync = containers["gitlab-runner-unit-shell-sync"].inputs
    docker_config = tomllib.loads(next(u["content"] for u in docker_sync["uploads"] if u["file"].endswith(".toml")))
    shell_config = tomllib.loads(next(u["content"] for u in shell_sync["uploads"] if u["file"].endswith(".toml")))
    assert [r["name"] for r in docker_config["runners"]] == ["d"]
    assert [r["name"] for r in shell_config["runners"]] == ["s"]
    # Each manager's concurrency is its own runners' limits; each has a metrics port of its own.
    assert (docker_config["concurrent"], shell_config["concurrent"]) == (2, 1)
    assert (docker_config["listen_address"], shell_config["listen_address"]) == ("127.0.0.1:9252", "127.0.0.1:9253")


def test_rootless_socket_is_the_one_mounted(mocks: RecordingMocks) -> None:
    _docker_host(mocks, [{"name": "d"}], hosts=[{"host": "unix:///run/user/1000/docker.sock", "networkMode": "host"}])
    runner = _containers(mocks)["gitlab-runner-unit-docker"].inputs
    sock = next(v for v in runner["volumes"] if v["containerPath"] == "/var/run/docker.sock")
    assert sock["hostPath"] == "/run/user/1000/docker.sock"
    assert runner["networkMode"] == "host"


def test_published_metrics(mocks: RecordingMocks) -> None:
    s = settings("docker", runners=[{"name": "d"}], metrics={"enabled": True, "port": 9400})
    assert s.docker is not None
    run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=s.docker.hosts[0],  # type: ignore[union-attr]
                target=s.docker,  # type: ignore[arg-type]
                runners=s.runners,
                manager=ManagerSettings(gitlab_url="https://gl", global_=s.global_),
                tokens={"d": pulumi.Output.secret("glrt-d")},
            ),
        )
    )
    runner = _containers(mocks)["gitlab-runner-unit-docker"].inputs
    assert runner["ports"] == [{"internal": 9400, "external": 9400, "ip": "127.0.0.1"}]


def test_the_host_has_its_own_provider(mocks: RecordingMocks) -> None:
    _docker_host(mocks, [{"name": "d"}], hosts=[{"name": "build-1", "host": "ssh://ci@build-1.example.com"}])
    provider = mocks.one("pulumi:providers:docker")
    assert provider.inputs["host"] == "ssh://ci@build-1.example.com"
    for resource in mocks.resources:
        if resource.typ.startswith("docker:"):
            assert resource.provider and "pulumi:providers:docker" in resource.provider, resource.name


def _kubernetes(mocks: RecordingMocks, **kubernetes: Any) -> Any:
    s = settings("kubernetes", runners=[{"name": "k1", "limit": 4}, {"name": "k2"}], kubernetes=kubernetes)
    kube = s.kubernetes
    assert kube is not None
    tokens = {"k1": pulumi.Output.secret("glrt-k1"), "k2": pulumi.Output.secret("glrt-k2")}
    return run(
        lambda: KubernetesRunner(
            "kr",
            KubernetesRunnerArgs(
                settings=kube,
                manager=ManagerSettings(gitlab_url="https://gl", global_=s.global_),
                runners=s.runners,
                tokens=tokens,
            ),
        )
    )


def test_kubernetes_runner(mocks: RecordingMocks) -> None:
    component = _kubernetes(mocks, namespace="ci-runners", replicas=2)
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
    assert inputs["chart"] == "gitlab-runner" and inputs["version"] == CHART_VERSION
    assert inputs["repositoryOpts"]["repo"] == "https://charts.gitlab.io"
    assert inputs["namespace"] == "ci-runners"
    values = inputs["values"]
    assert values["gitlabUrl"] == "https://gl" and values["replicas"] == 2
    assert values["runners"]["secret"] == secret.inputs["metadata"]["name"]
    assert values["securityContext"]["runAsNonRoot"] is True
    assert values["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert values["resources"]["limits"] and values["resources"]["requests"]
    assert "unregisterRunners" not in values  # the chart's default: a leaving pod removes its runner manager
    assert "glrt-k1" not in str(values)
    template = tomllib.loads(values["runners"]["config"])["runners"][0]
    assert template["executor"] == "kubernetes" and template["kubernetes"]["namespace"] == "ci-runners"
    # The runner must not rotate a token the Secret keeps: the stack owns it on Kubernetes.
    assert template["feature_flags"] == {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}
    assert release.secret_inputs == []  # nothing secret in the values: the token lives in the Secret
    assert resolve(component.namespace).value == "ci-runners"


def test_an_oci_chart_is_pulled_by_its_reference_not_through_an_index(mocks: RecordingMocks) -> None:
    # Helm pulls an OCI chart by its full reference; a repository URL would make it fetch an index.yaml.
    _kubernetes(mocks, chart={"repository": "oci://registry.example.com/charts/", "version": "0.85.0"})
    for release in mocks.by_type("kubernetes:helm.sh/v3:Release"):
        assert release.inputs["chart"] == "oci://registry.example.com/charts/gitlab-runner"
        assert release.inputs["version"] == "0.85.0"
        assert "repositoryOpts" not in release.inputs


def test_a_chart_archive_on_disk_has_no_repository(mocks: RecordingMocks) -> None:
    _kubernetes(mocks, chart={"path": "./charts/gitlab-runner-0.86.0.tgz"})
    for release in mocks.by_type("kubernetes:helm.sh/v3:Release"):
        assert release.inputs["chart"] == "./charts/gitlab-runner-0.86.0.tgz"
        assert "repositoryOpts" not in release.inputs and "version" not in release.inputs


def test_concurrency_is_per_manager_pod(mocks: RecordingMocks) -> None:
    _kubernetes(mocks, replicas=3)
    values = {r.name: r.inputs["values"] for r in mocks.by_type("kubernetes:helm.sh/v3:Release")}
    # k1 (limit 4): 4 jobs per pod, 12 across its 3 pods; k2 (no limit): one per pod, not the others' sum.
    assert (values["kr-k1"]["concurrent"], values["kr-k2"]["concurrent"]) == (4, 1)


def test_a_token_change_rolls_the_pods_without_revealing_the_token(mocks: RecordingMocks) -> None:
    _kubernetes(mocks)
    first = {r.name: r.inputs["values"]["podAnnotations"][SECRETS_FINGERPRINT] for r in mocks.by_type(RELEASE)}
    assert first["kr-k1"] == fingerprint("glrt-k1") != first["kr-k2"]
    assert "glrt-k1" not in first["kr-k1"]
    mocks.resources.clear()
    s = settings("kubernetes", runners=[{"name": "k1"}])
    assert s.kubernetes is not None
    run(
        lambda: KubernetesRunner(
            "kr",
            KubernetesRunnerArgs(
                settings=s.kubernetes,  # type: ignore[arg-type]
                manager=ManagerSettings(gitlab_url="https://gl", global_=s.global_),
                runners=s.runners,
                tokens={"k1": pulumi.Output.secret("glrt-k1-rotated")},
            ),
        )
    )
    (release,) = mocks.by_type(RELEASE)
    assert release.inputs["values"]["podAnnotations"][SECRETS_FINGERPRINT] != first["kr-k1"]
    assert release.secret_inputs == []


def test_minimal_rbac_rules_never_a_wildcard(mocks: RecordingMocks) -> None:
    _kubernetes(mocks)
    rbac = mocks.by_type(RELEASE)[0].inputs["values"]["rbac"]
    assert rbac["create"] is True and rbac["rules"]
    for rule in rbac["rules"]:
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    assert {r for rule in rbac["rules"] for r in rule["resources"]} >= {"pods", "pods/exec", "secrets"}


def test_existing_namespace_is_used_not_managed(mocks: RecordingMocks) -> None:
    _kubernetes(mocks, namespace="ci-runners")
    assert mocks.by_type("kubernetes:core/v1:Namespace") == []  # nothing the stack would delete
    assert {s.inputs["metadata"]["namespace"] for s in mocks.by_type("kubernetes:core/v1:Secret")} == {"ci-runners"}


def test_namespace_created_when_asked(mocks: RecordingMocks) -> None:
    _kubernetes(mocks, namespace="ci-runners", createNamespace=True)
    (namespace,) = mocks.by_type("kubernetes:core/v1:Namespace")
    assert namespace.inputs["metadata"]["name"] == "ci-runners"

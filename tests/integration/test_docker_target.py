"""The Docker target end to end, for real: the Pulumi engine on a file backend, the docker provider
built from its source, a real Docker engine, the GitLab API double on 127.0.0.1 and the runner stand-in
(a test double of gitlab-runner) in a base image laid out like the official one.

The tests share one stack (module fixtures) but each gets the state it needs from the `running`
fixture, which brings the stack up when it is not, so they pass in any order and any selection; the
fixture destroys whatever is left even when a test failed. The whole module runs twice: on the
current engine (Docker 29, refusing API versions below 1.44) and on Debian's 20.10, the oldest engine
the README claims.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from pulumi import automation as auto

from components.settings import RUNNER_VERSION
from tests.gitlab_double.server import serve
from tests.integration.conftest import exported_state, new_project
from tests.integration.docker_engine import Engine, base_image, wait_for
from tests.integration.docker_stack import DockerStack
from tests.integration.local_cluster import free_port_block

API_TOKEN = "glpat-" + secrets.token_hex(10)


@dataclass(kw_only=True)
class Deployment(DockerStack):
    """The module's stack on one engine, with the runners the API double made for it."""

    tokens: dict[str, str]
    base: str
    """The runner base image, also the docker runner's job image."""
    replaced_images: list[str] = field(default_factory=list)
    deployed: bool = False

    def up(self, **kwargs: Any) -> auto.UpResult:
        result = super().up(**kwargs)
        self.deployed = True
        return result

    def ensure_up(self) -> Deployment:
        """The stack as the tests expect it: deployed with the tokens GitLab knows, every runner polling."""
        if not self.deployed:
            self.set("runnerTokens", self.tokens, secret=True)
            self.up()
        return self

    @property
    def engine(self) -> Engine:
        return self.engines[0]

    @property
    def docker_container(self) -> str:
        return self.container("docker")

    @property
    def shell_container(self) -> str:
        return self.container("shell")


@pytest.fixture(scope="module", params=["current", "20.10"])
def target_engine(request: pytest.FixtureRequest) -> Engine:
    current: Engine = request.getfixturevalue("engine")
    legacy: Engine = request.getfixturevalue("legacy_engine")
    if request.param == "20.10":
        if current == legacy:
            pytest.skip("the current engine is not built here: the module ran on 20.10 already")
        return legacy
    return current


@pytest.fixture(scope="module")
def deployment(target_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    engine = target_engine
    print(f"docker engine under test: {engine.describe()}")
    base = base_image(engine)
    work = tmp_path_factory.mktemp("docker-target")
    project = new_project(work)
    suffix = secrets.token_hex(3)
    prefix = f"gr-e2e-{suffix}"
    # Something on the host that is not the stack's, which destroy must leave alone.
    bystander = f"bystander-{suffix}"
    engine.run("volume", "create", bystander)
    engine.run("run", "-d", "--name", bystander, "--entrypoint", "sleep", base, "3600")
    with serve(API_TOKEN) as gitlab:
        created = {name: gitlab.create_runner(description=name) for name in ("e2e-docker", "e2e-shell")}
        tokens = {name: runner.token for name, runner in created.items()}
        stack = auto.create_or_select_stack(
            stack_name="e2e", work_dir=str(project.dir), opts=auto.LocalWorkspaceOptions(env_vars=project.env)
        )
        metrics_port = free_port_block()
        stack.set_all_config(
            {
                "gitlab-runners:target": auto.ConfigValue("docker"),
                "gitlab-runners:gitlabUrl": auto.ConfigValue(gitlab.base_url),
                "gitlab-runners:checkInterval": auto.ConfigValue("1"),
                "gitlab-runners:metrics": auto.ConfigValue(json.dumps({"port": metrics_port})),
                "gitlab-runners:runnerTokens": auto.ConfigValue(json.dumps(tokens), secret=True),
            }
        )
        repository = f"gitlab-runners/e2e-{suffix}"
        deployed = Deployment(
            project=project,
            stack=stack,
            engines=[engine],
            gitlab=gitlab,
            prefix=prefix,
            repository=repository,
            tokens=tokens,
            base=base,
        )
        deployed.set(
            "docker",
            {
                # host networking: the runners reach the API double on this machine's 127.0.0.1.
                "hosts": [{"name": "local", "host": engine.host, "networkMode": "host"}],
                "containerName": prefix,
                "image": {"flavor": "ubuntu", "baseImage": base, "extraPackages": ["jq"], "repository": repository},
                "stopTimeout": 120,
            },
        )
        deployed.set(
            "runners",
            [
                # Job images come from the engine's own store: no registry is reachable here.
                {
                    "name": "e2e-docker",
                    "executor": "docker",
                    "limit": 2,
                    "image": base,
                    "pullPolicy": ["if-not-present"],
                },
                {"name": "e2e-shell", "executor": "shell"},
            ],
        )
        try:
            yield deployed
        finally:
            stack.destroy(color="never")
            stack.workspace.remove_stack("e2e")
            for container in (f"{prefix}-docker", f"{prefix}-shell", f"{prefix}-docker-sync", f"{prefix}-shell-sync"):
                engine.run("rm", "-f", container, check=False)
            engine.run("rm", "-f", bystander, check=False)
            engine.run(
                "volume", "rm", "-f", bystander, f"{prefix}-docker-config", f"{prefix}-shell-config", check=False
            )
            engine.run("image", "rm", "-f", deployed.image, check=False)
            for image in deployed.replaced_images:
                engine.run("image", "rm", image, check=False)


@pytest.fixture()
def running(deployment: Deployment) -> Deployment:
    """The module's stack, brought up if no test has done so (or the last one destroyed it)."""
    return deployment.ensure_up()


def is_healthy(engine: Engine, container: str) -> bool:
    inspected = engine.inspect("container", container) or {}
    return bool(inspected.get("State", {}).get("Health", {}).get("Status") == "healthy")


def test_up_builds_the_image_and_each_runner_polls_with_its_own_token(deployment: Deployment) -> None:
    d = deployment
    started = time.time()
    up = d.up()
    assert up.summary.result == "succeeded"
    # Time from `pulumi up` to each runner's first poll: printed, not asserted (see scripts/bench).
    for name, token in d.tokens.items():

        def first_poll(token: str = token) -> Any:
            return d.gitlab.first_poll(token)

        first = wait_for(f"{name} to poll", first_poll, seconds=60)
        print(f"first poll of {name}: {first.timestamp() - started:.1f} s after the start of pulumi up")
    # The image: built from images/runner/Dockerfile on the stand-in base, jq installed.
    image = d.engine.inspect("image", d.image)
    assert image is not None
    assert image["Config"]["Labels"]["org.opencontainers.image.version"] == RUNNER_VERSION
    assert d.engine.run("run", "--rm", "--entrypoint", "jq", d.image, "--version").stdout
    # One container per executor kind; the Docker socket only where the docker executor runs.
    docker_runner = d.engine.inspect("container", d.docker_container)
    shell_runner = d.engine.inspect("container", d.shell_container)
    assert docker_runner is not None and shell_runner is not None
    assert docker_runner["State"]["Running"] and shell_runner["State"]["Running"]
    docker_mounts = {m["Destination"]: m for m in docker_runner["Mounts"]}
    shell_mounts = {m["Destination"]: m for m in shell_runner["Mounts"]}
    assert "/var/run/docker.sock" in docker_mounts and "/var/run/docker.sock" not in shell_mounts
    assert docker_mounts["/etc/gitlab-runner"]["Name"] == f"{d.docker_container}-config"
    assert docker_runner["Config"]["StopSignal"] == "SIGQUIT"
    assert docker_runner["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert docker_runner["HostConfig"]["Privileged"] is False
    # Each runner polls with its own token, from its own container (own system id).
    assert d.gitlab.tokens_that_polled() >= set(d.tokens.values())
    with d.gitlab.lock:
        systems = {p.token: p.system_id for p in d.gitlab.polls}
    assert systems[d.tokens["e2e-docker"]] != systems[d.tokens["e2e-shell"]]
    # The containers become healthy: the health check sees answered job requests.
    for container in (d.docker_container, d.shell_container):
        wait_for(f"{container} healthy", functools.partial(is_healthy, d.engine, container))


def test_a_shell_job_runs_and_succeeds(running: Deployment) -> None:
    d = running
    marker = f"marker-{secrets.token_hex(4)}"
    job = d.gitlab.enqueue_job(d.tokens["e2e-shell"], [f"echo {marker}", "id -un", "jq --version"])
    wait_for("the shell job to finish", lambda: job.state in ("success", "failed"), seconds=60)
    trace = bytes(job.trace).decode()
    assert job.state == "success", trace
    assert marker in trace and "gitlab-runner" in trace  # run as the unprivileged user
    assert "jq-1.6" in trace  # the extra package is in the image


def test_a_docker_job_runs_in_a_job_container_through_the_socket(running: Deployment) -> None:
    """The docker executor's job runs in a container of its own on the host's engine, labelled as the
    real runner labels it, and the container is removed afterwards."""
    d = running
    marker = f"marker-{secrets.token_hex(4)}"
    script = [f"echo {marker}", "cat /etc/debian_version", "sleep 3"]
    # The base image's own entrypoint is the runner's: cleared as users clear one in .gitlab-ci.yml.
    job = d.gitlab.enqueue_job(d.tokens["e2e-docker"], script, image=d.base, entrypoint=[""])
    seen: dict[str, str] = {}

    def job_container() -> bool:
        for line in d.engine.run(
            "ps", "-a", "--filter", f"label=com.gitlab.gitlab-runner.job.id={job.id}", "--format", "{{.Names}}"
        ).stdout.split():
            seen["name"] = line
        return bool(seen) or job.state in ("success", "failed")

    wait_for("the job container", job_container, seconds=60, every=0.1)
    wait_for("the docker job to finish", lambda: job.state in ("success", "failed"), seconds=90)
    trace = bytes(job.trace).decode()
    assert job.state == "success", trace
    assert marker in trace and "Using Docker executor with image" in trace
    assert seen.get("name", "").startswith("runner-") and seen["name"].endswith("-build"), seen
    labelled = d.engine.run("ps", "-a", "--filter", f"label=com.gitlab.gitlab-runner.job.id={job.id}", "-q").stdout
    assert labelled.strip() == "", "the job container is left behind"
    # The shell runner has no socket, and its jobs still run (test_a_shell_job_runs_and_succeeds).
    mounts = (d.engine.inspect("container", d.shell_container) or {}).get("Mounts", [])
    assert not [m for m in mounts if m.get("Source", "").endswith("docker.sock")]


def test_a_second_up_changes_nothing(running: Deployment) -> None:
    d = running
    preview = d.stack.preview(color="never", expect_no_changes=True)
    assert preview.change_summary.get(auto.OpType.SAME)
    up = d.up(expect_no_changes=True)
    assert set(up.summary.resource_changes or {}) == {"same"}


def test_a_settings_change_reaches_the_running_runner_without_replacing_it(running: Deployment) -> None:
    d = running
    ids = {c: d.engine.inspect("container", c)["Id"] for c in (d.docker_container, d.shell_container)}  # type: ignore[index]
    # A job in flight on the shell runner must not be interrupted.
    job = d.gitlab.enqueue_job(d.tokens["e2e-shell"], ["sleep 8", "echo still-here"])
    wait_for("the long job to start", lambda: job.state == "running", seconds=30)
    runners = d.config("runners")
    runners[0]["limit"] = 3
    runners[1]["limit"] = 1
    d.set("runners", runners)
    d.set("checkInterval", "2")
    up = d.up()
    assert up.summary.result == "succeeded"
    changes: dict[str, int] = dict(up.summary.resource_changes or {})  # type: ignore[arg-type]
    assert "delete" not in changes and changes.get("replace", 0) == 2, changes  # the two sync containers
    for container, container_id in ids.items():
        assert d.engine.inspect("container", container)["Id"] == container_id  # type: ignore[index]
    assert "limit = 3" in d.config_toml("docker")
    assert "check_interval = 2" in d.config_toml("shell")
    wait_for("the long job to finish", lambda: job.state in ("success", "failed"), seconds=60)
    assert job.state == "success" and "still-here" in bytes(job.trace).decode()
    # The runner reloaded: still polling with the same token after the change.
    since = time.time()
    wait_for("a poll after the reload", lambda: d.gitlab.polled_since(d.tokens["e2e-shell"], since), seconds=30)


def test_a_token_gitlab_refuses_fails_up_and_changes_nothing(running: Deployment) -> None:
    d = running
    before = d.config_toml("shell")
    tokens = {**d.tokens, "e2e-shell": "glrt-not-known-to-gitlab-12345"}
    d.set("runnerTokens", tokens, secret=True)
    with pytest.raises(auto.CommandError) as caught:
        d.up()
    output = str(caught.value)
    assert f"the config sync of {d.shell_container} exited 1" in output
    assert "glrt-not-known-to-gitlab-12345" not in output
    assert d.config_toml("shell") == before  # the runner keeps its working config
    since = time.time()
    wait_for("the runner to go on polling", lambda: d.gitlab.polled_since(d.tokens["e2e-shell"], since), seconds=30)
    # Put right, the next up installs it.
    d.set("runnerTokens", d.tokens, secret=True)
    assert d.up().summary.result == "succeeded"


def test_a_killed_runner_is_restarted_and_polls_again(running: Deployment) -> None:
    d = running
    before = d.engine.inspect("container", d.shell_container)
    assert before is not None
    subprocess.run(["kill", "-9", str(before["State"]["Pid"])], check=True)

    def restarted() -> bool:
        restarts = int((d.engine.inspect("container", d.shell_container) or {}).get("RestartCount", 0))
        return restarts > int(before["RestartCount"])

    wait_for("docker to restart the runner", restarted, seconds=60)
    since = time.time()
    wait_for("a poll after the restart", lambda: d.gitlab.polled_since(d.tokens["e2e-shell"], since), seconds=60)


def test_a_new_image_waits_for_the_running_job_then_takes_over(running: Deployment) -> None:
    d = running
    old_id = d.engine.inspect("container", d.shell_container)["Id"]  # type: ignore[index]
    job = d.gitlab.enqueue_job(d.tokens["e2e-shell"], ["sleep 10", "echo finished-before-replacement"])
    wait_for("the job to start", lambda: job.state == "running", seconds=30)
    # The image it replaces loses its tag and stays, as with `docker build` by hand: the fixture removes it.
    d.replaced_images.append(d.engine.inspect("image", d.image)["Id"])  # type: ignore[index]
    docker = d.config("docker")
    # A different image (jq stays, as the other tests expect): the runner containers are replaced.
    packages = docker["image"]["extraPackages"]
    docker["image"]["extraPackages"] = ["jq"] if "libonig5" in packages else ["jq", "libonig5"]
    d.set("docker", docker)
    up = d.up()
    assert up.summary.result == "succeeded"
    assert job.state == "success", bytes(job.trace).decode()
    assert "finished-before-replacement" in bytes(job.trace).decode()
    new = d.engine.inspect("container", d.shell_container)
    assert new is not None and new["Id"] != old_id and new["State"]["Running"]
    since = time.time()
    wait_for("the new container to poll", lambda: d.gitlab.polled_since(d.tokens["e2e-shell"], since), seconds=60)


def test_no_token_in_outputs_state_inspect_history_or_engine_output(running: Deployment) -> None:
    d = running
    tokens = list(d.tokens.values())
    outputs = json.dumps({k: v.value for k, v in d.stack.outputs().items()})
    exported = exported_state(d.project, "e2e")
    inspected = d.engine.run(
        "inspect", d.docker_container, d.shell_container, f"{d.docker_container}-sync", f"{d.shell_container}-sync"
    ).stdout
    history = d.engine.run("history", "--no-trunc", d.image).stdout
    image = d.engine.run("image", "inspect", d.image).stdout
    logs = ""
    for c in (d.docker_container, d.shell_container, f"{d.docker_container}-sync", f"{d.shell_container}-sync"):
        done = d.engine.run("logs", c)
        logs += done.stdout + done.stderr
    for token in tokens:
        encoded = base64.b64encode(token.encode()).decode()
        for place, text in (
            ("outputs", outputs),
            ("stack export", exported),
            ("docker inspect", inspected),
            ("docker history", history),
            ("image inspect", image),
            ("container logs", logs),
            ("engine output", "".join(d.outputs)),
        ):
            assert token not in text and encoded not in text, place
    # The staged copy is gone from the exited sync containers; the tokens live in the volumes only.
    for sync in (f"{d.docker_container}-sync", f"{d.shell_container}-sync"):
        copied = d.engine.run("cp", f"{sync}:/gitlab-runners/config.toml", "-", check=False)
        assert copied.returncode != 0, sync
    assert "ciphertext" in exported


def test_destroy_removes_what_the_stack_created_and_nothing_else(running: Deployment) -> None:
    d = running
    result = d.stack.destroy(color="never")
    d.deployed = False
    assert result.summary.result == "succeeded"
    containers = d.engine.names("container")
    volumes = d.engine.names("volume")
    for name in (d.docker_container, d.shell_container, f"{d.docker_container}-sync", f"{d.shell_container}-sync"):
        assert name not in containers
    assert f"{d.docker_container}-config" not in volumes and f"{d.shell_container}-config" not in volumes
    suffix = d.prefix.rsplit("-", 1)[1]
    assert f"bystander-{suffix}" in containers and f"bystander-{suffix}" in volumes
    # The built image stays, as an image built by hand does (README: "What destroy leaves").
    assert d.engine.exists("image", d.image)

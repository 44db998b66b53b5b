"""Operating Docker hosts, for real (engine, docker provider, dockerd, the GitLab API double and the
runner stand-in, a test double of gitlab-runner): the web terminal's session port published with its
config.toml section, and the housekeeping container removing what jobs left, and nothing else."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gitlab_double.server import serve
from tests.integration.docker_engine import Engine, base_image, wait_for
from tests.integration.docker_stack import docker_stack
from tests.integration.local_cluster import free_port_block

API_TOKEN = "glpat-" + secrets.token_hex(10)
MANAGED = "com.gitlab.gitlab-runner.managed=true"
CACHE = "com.gitlab.gitlab-runner.type=cache"


@pytest.fixture(scope="module")
def base(engine: Engine) -> str:
    return base_image(engine)


def gateway(engine: Engine) -> str:
    """This machine's address on the engine's bridge: where bridge-networked runners reach the double
    (the bridge's own address: an engine given a bridge it did not make records no gateway)."""
    bridge = engine.run(
        "network", "inspect", "bridge", "--format", '{{index .Options "com.docker.network.bridge.name"}}'
    ).stdout.strip()
    shown = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True, check=True
    )
    address = shown.stdout.split()[3].split("/")[0]
    assert address, f"no IPv4 address on the engine's bridge {bridge}"
    return address


def session_port(avoid: int) -> int:
    """A free port whose next one is not `avoid`'s neighbourhood (the metrics ports)."""
    while True:
        port = free_port_block(2)
        if not {port, port + 1} & set(range(avoid, avoid + 3)):
            return port


def test_the_session_port_is_published_and_config_toml_has_the_section(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # The stand-in serves no terminal: what is checked is what the stack sets up for one.
    with serve(API_TOKEN, host=gateway(engine)) as gitlab:
        shell, docker_runner = gitlab.create_runner(), gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("session"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "term-shell", "executor": "shell"}, {"name": "term-docker", "executor": "docker"}],
            tokens={"term-shell": shell.token, "term-docker": docker_runner.token},
            hosts=[
                {"name": "local", "host": engine.host, "networkMode": "bridge", "sessionAddress": "ci-1.example.com"}
            ],
        ) as stack:
            port = session_port(stack.config("metrics")["port"])
            stack.set("sessionServer", {"enabled": True, "port": port, "hostAddress": "127.0.0.1"})
            assert stack.up().summary.result == "succeeded"
            for kind, published in (("docker", port), ("shell", port + 1)):
                container = engine.inspect("container", stack.container(kind))
                assert container is not None
                bindings = container["HostConfig"]["PortBindings"]
                assert bindings[f"{published}/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(published)}]
                toml = stack.config_toml(kind)
                assert "[session_server]" in toml
                assert f'listen_address = "0.0.0.0:{published}"' in toml
                assert f'advertise_address = "ci-1.example.com:{published}"' in toml
                assert "session_timeout = 1800" in toml
            # The runner binds its session server at start only: a new address is a new runner container.
            before = engine.inspect("container", stack.container("shell"))
            assert before is not None
            docker = stack.config("docker")
            docker["hosts"][0]["sessionAddress"] = "ci-2.example.com"
            stack.set("docker", docker)
            assert stack.up().summary.result == "succeeded"
            after = engine.inspect("container", stack.container("shell"))
            assert after is not None and after["Id"] != before["Id"]
            assert f'advertise_address = "ci-2.example.com:{port + 1}"' in stack.config_toml("shell")


@pytest.fixture()
def docker_cli_image(engine: Engine, base: str, tmp_path: Path) -> Iterator[str]:
    """An image with sh and the engine's own docker CLI, standing in for the official docker:<v>-cli
    (no registry here): the test base image plus the CLI binary."""
    cli = shutil.which(engine.cli) if engine.cli == "docker" else engine.cli
    assert cli is not None, "no docker CLI for the housekeeping image"
    context = tmp_path / "docker-cli"
    context.mkdir()
    shutil.copy2(cli, context / "docker")
    (context / "Dockerfile").write_text(f"FROM {base}\nCOPY docker /usr/local/bin/docker\n")
    tag = f"gitlab-runners-test/docker-cli:{secrets.token_hex(3)}"
    engine.run("build", "-q", "-t", tag, str(context), timeout=300)
    try:
        yield tag
    finally:
        engine.run("image", "rm", "-f", tag, check=False)


def test_housekeeping_removes_old_job_leftovers_and_nothing_else(
    engine: Engine, base: str, docker_cli_image: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    suffix = secrets.token_hex(3)

    def name(what: str) -> str:
        return f"hk-{suffix}-{what}"

    created: dict[str, list[str]] = {"container": [], "volume": [], "network": []}

    # Each is listed before it is made, so the clean-up finds it even if making it failed half-way.
    def volume(what: str, *labels: str) -> None:
        created["volume"].append(name(what))
        engine.run("volume", "create", *(f"--label={label}" for label in labels), name(what))

    def container(what: str, *args: str, labels: tuple[str, ...] = (), command: tuple[str, ...] = ("true",)) -> None:
        # The base image's entrypoint is the runner's: each container runs its command instead.
        program, *rest = command
        created["container"].append(name(what))
        engine.run(
            "run",
            "--name",
            name(what),
            *(f"--label={label}" for label in labels),
            *args,
            "--entrypoint",
            program,
            base,
            *rest,
        )

    def network(what: str, *labels: str) -> None:
        created["network"].append(name(what))
        engine.run("network", "create", *(f"--label={label}" for label in labels), name(what))

    def job(number: int) -> tuple[str, ...]:
        return (MANAGED, f"com.gitlab.gitlab-runner.job.id={number}", "com.gitlab.gitlab-runner.type=build")

    max_age = 12
    with serve(API_TOKEN) as gitlab:
        runner = gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("housekeeping"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "hk-shell", "executor": "shell"}],
            tokens={"hk-shell": runner.token},
        ) as stack:
            docker = stack.config("docker")
            docker["housekeeping"] = {
                "enabled": True,
                "every": "2s",
                "maxAge": f"{max_age}s",
                "image": docker_cli_image,
            }
            stack.set("docker", docker)
            try:
                assert stack.up().summary.result == "succeeded"
                housekeeping = stack.container("housekeeping")
                wait_for("a first housekeeping pass", lambda: "pass done" in logs(engine, housekeeping))
                # Bystanders: not the runner's, however old.
                volume("bystander-volume")
                container("bystander-container")
                volume("cache-in-use", MANAGED, CACHE)  # the runner's, but a container uses it
                container("cache-user", "-v", f"{name('cache-in-use')}:/cache")
                # The runner's leftovers, soon old.
                volume("old-cache", MANAGED, CACHE)
                container("old-job", labels=job(1))
                network("old-network", MANAGED)
                # A job still running: its stopped container waits for the next stage.
                container("running-job-helper", labels=job(2))
                container("running-job-build", "-d", labels=job(2), command=("sleep", "600"))
                time.sleep(max_age + 2)
                # The runner's leftovers, recent.
                volume("recent-cache", MANAGED, CACHE)
                container("recent-job", labels=job(3))
                network("recent-network", MANAGED)
                passes = logs(engine, housekeeping).count("pass done")
                wait_for(
                    "two more housekeeping passes",
                    lambda: logs(engine, housekeeping).count("pass done") >= passes + 2,
                    seconds=30,
                )
                text = logs(engine, housekeeping)
                gone = {kind: [n for n in names if not engine.exists(kind, n)] for kind, names in created.items()}
                assert gone == {
                    "container": [name("old-job")],
                    "volume": [name("old-cache")],
                    "network": [name("old-network")],
                }, text
                assert f"removed job container {name('old-job')} (job 1, exited" in text
                assert f"removed cache volume {name('old-cache')}" in text
                assert f"removed job network {name('old-network')}" in text
                # The stack's own containers and volumes, the exited config sync among them, stay.
                for own in (stack.container("shell"), f"{stack.container('shell')}-sync"):
                    assert engine.exists("container", own)
                assert engine.exists("volume", f"{stack.container('shell')}-config")
            finally:
                for kind in ("container", "network", "volume"):
                    for leftover in created[kind]:
                        if kind == "container":
                            engine.run("rm", "-f", "-v", leftover, check=False)
                        else:
                            engine.run(kind, "rm", leftover, check=False)
            stack.stack.destroy(color="never")
            assert not engine.exists("container", housekeeping)


def logs(engine: Engine, container: str) -> str:
    done = engine.run("logs", container, check=False)
    return done.stdout + done.stderr

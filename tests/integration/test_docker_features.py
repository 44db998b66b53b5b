"""Production features on the Docker target, for real (engine, docker provider, dockerd, the GitLab API
double and the runner stand-in, a test double of gitlab-runner): a self-hosted GitLab with a private
CA, the readiness gate, token rotation by the runner and by the stack, and the distributed cache."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pulumi import automation as auto

from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.conftest import exported_state
from tests.integration.docker_engine import Engine, base_image, wait_for
from tests.integration.docker_stack import docker_stack
from tests.integration.tls import make_ca

API_TOKEN = "glpat-" + secrets.token_hex(10)


@pytest.fixture(scope="module")
def base(engine: Engine) -> str:
    return base_image(engine)


def test_a_private_ca_is_delivered_and_used_and_a_wrong_one_fails(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    certs = tmp_path_factory.mktemp("certs")
    ca, cert, key = make_ca(certs, "gitlab")
    other_ca, _, _ = make_ca(certs, "other")
    with serve(API_TOKEN, tls=(str(cert), str(key))) as gitlab:
        assert gitlab.base_url.startswith("https://127.0.0.1:")
        runner = gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("ca"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "ca-shell", "executor": "shell"}],
            tokens={"ca-shell": runner.token},
            gitlabCa={"file": str(ca)},
        ) as stack:
            started = time.time()
            assert stack.up().summary.result == "succeeded"
            wait_for("a poll over HTTPS", lambda: gitlab.polled_since(runner.token, started), seconds=60)
            # The runner verifies GitLab with exactly the CA the program delivered.
            delivered = engine.run("exec", stack.container("shell"), "cat", "/etc/gitlab-runner/certs/127.0.0.1.crt")
            assert delivered.stdout == ca.read_text()
            assert 'tls-ca-file = "/etc/gitlab-runner/certs/127.0.0.1.crt"' in stack.config_toml("shell")
            # Another CA: the sync's verification of the token fails (TLS), and up says so.
            stack.set("gitlabCa", {"file": str(other_ca)})
            with pytest.raises(auto.CommandError) as caught:
                stack.up()
            assert f"the config sync of {stack.container('shell')} exited 1" in str(caught.value)


def test_the_readiness_gate_names_the_runner_and_what_it_saw(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serve(API_TOKEN) as gitlab:
        runner = gitlab.create_runner()
        gitlab.unavailable = True  # GitLab answers every job request 503
        with docker_stack(
            tmp_path_factory.mktemp("gate"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "gate-shell", "executor": "shell"}],
            tokens={"gate-shell": runner.token},
            readiness={"timeoutSeconds": 20},
        ) as stack:
            with pytest.raises(auto.CommandError) as caught:
                stack.up()
            message = str(caught.value)
            assert f"runner container {stack.container('shell')}" in message
            assert "(runners gate-shell)" in message
            assert "GitLab has answered none of the runner's job requests yet" in message
            # GitLab back: the same stack comes up.
            gitlab.unavailable = False
            assert stack.up().summary.result == "succeeded"


@pytest.fixture()
def expiring_gitlab() -> Iterator[GitLabDouble]:
    # An instance whose runner tokens live 30 s: the runner rotates them at 75% of that.
    with serve(API_TOKEN, token_lifetime=timedelta(seconds=30)) as gitlab:
        yield gitlab


def test_the_runner_rotates_its_token_and_up_never_writes_the_old_one_back(
    engine: Engine, base: str, expiring_gitlab: GitLabDouble, tmp_path_factory: pytest.TempPathFactory
) -> None:
    gitlab = expiring_gitlab
    runner = gitlab.create_runner()
    original = runner.token
    with docker_stack(
        tmp_path_factory.mktemp("rotation"),
        [engine],
        gitlab,
        base,
        runners=[{"name": "rot-shell", "executor": "shell"}],
        tokens={"rot-shell": original},
    ) as stack:
        assert stack.up().summary.result == "succeeded"
        config = stack.config_toml("shell")
        assert "token_expires_at = " in config and "token_obtained_at = " in config
        wait_for("the runner to rotate its token", lambda: gitlab.resets, seconds=60)
        wait_for("the rotated token in config.toml", lambda: original not in stack.config_toml("shell"), seconds=30)
        # A settings change: config.toml is synced again, with the runner's current token kept.
        container_id = engine.inspect("container", stack.container("shell"))["Id"]  # type: ignore[index]
        stack.set("checkInterval", "2")
        assert stack.up().summary.result == "succeeded"
        config = stack.config_toml("shell")
        assert "check_interval = 2" in config and original not in config
        assert engine.inspect("container", stack.container("shell"))["Id"] == container_id  # type: ignore[index]
        since = time.time()
        wait_for("a poll with the current token", lambda: gitlab.polled_since(runner.token, since), seconds=30)
        assert original in runner.revoked


def test_a_new_token_from_the_stack_reaches_the_running_runner(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with serve(API_TOKEN) as gitlab:
        old, new = gitlab.create_runner(), gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("stack-rotation"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "swap-shell", "executor": "shell"}],
            tokens={"swap-shell": old.token},
        ) as stack:
            assert stack.up().summary.result == "succeeded"
            container_id = engine.inspect("container", stack.container("shell"))["Id"]  # type: ignore[index]
            job = gitlab.enqueue_job(old.token, ["sleep 6", "echo old-token-job-done"])
            wait_for("the job on the old token to start", lambda: job.state == "running", seconds=30)
            stack.set("runnerTokens", {"swap-shell": new.token}, secret=True)
            assert stack.up().summary.result == "succeeded"
            since = time.time()
            wait_for("a poll with the new token", lambda: gitlab.polled_since(new.token, since), seconds=30)
            # No gap: the same container, and the job in flight finished.
            assert engine.inspect("container", stack.container("shell"))["Id"] == container_id  # type: ignore[index]
            wait_for("the job to finish", lambda: job.state in ("success", "failed"), seconds=30)
            assert job.state == "success"
            time.sleep(3)
            assert not gitlab.polled_since(old.token, time.time() - 2)  # the old runner can now be deleted


def test_cache_credentials_reach_config_toml_and_nothing_else(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secret_key = "cache-secret-" + secrets.token_hex(8)
    with serve(API_TOKEN) as gitlab:
        runner = gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("cache"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "cache-docker", "executor": "docker"}],
            tokens={"cache-docker": runner.token},
            cache={
                "type": "s3",
                "s3": {"serverAddress": "127.0.0.1:9000", "bucketName": "runner-cache", "insecure": True},
            },
        ) as stack:
            stack.set("cacheCredentials", {"accessKey": "AKIAE2ECACHE", "secretKey": secret_key}, secret=True)
            up = stack.up()
            config = stack.config_toml("docker")
            assert "[runners.cache.s3]" in config and f'SecretKey = "{secret_key}"' in config
            inspected = engine.run("inspect", stack.container("docker"), stack.container("docker") + "-sync").stdout
            exported = exported_state(stack.project, "test")
            for place, text in (("inspect", inspected), ("state", exported), ("engine", up.stdout + up.stderr)):
                assert secret_key not in text, place

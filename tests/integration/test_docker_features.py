"""Production features on the Docker target, for real (engine, docker provider, dockerd, the GitLab API
double and the runner stand-in, a test double of gitlab-runner): a self-hosted GitLab with a private
CA, the readiness gate, token rotation by the runner and by the stack, and the distributed cache."""

from __future__ import annotations

import secrets
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

import pytest
from pulumi import automation as auto

from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.conftest import exported_state
from tests.integration.docker_engine import Engine, base_image, wait_for
from tests.integration.docker_stack import docker_stack
from tests.integration.local_cluster import free_port_block
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
            container = stack.container("shell")
            ca_path = "/etc/gitlab-runner/certs/127.0.0.1.crt"
            # The runner verifies GitLab with exactly the CA the program delivered.
            delivered = engine.run("exec", container, "cat", ca_path)
            assert delivered.stdout == ca.read_text()
            assert f'tls-ca-file = "{ca_path}"' in stack.config_toml("shell")

            def live() -> tuple[str, str, str]:
                """config.toml, and the CA in use with its mtime (the runner reloads a CA whose mtime changed)."""
                in_use = engine.run("exec", container, "cat", ca_path).stdout
                mtime = engine.run("exec", container, "stat", "-c", "%y", ca_path).stdout
                return stack.config_toml("shell"), in_use, mtime

            def refused() -> str:
                with pytest.raises(auto.CommandError) as caught:
                    stack.up()
                message = str(caught.value)
                said = f"the config sync of {container} exited 1: runner ca-shell: "
                assert said in message and runner.token not in message
                return message

            before = live()
            verify = f"POST {gitlab.base_url}/api/v4/runners/verify"
            # Each of these passes the runner's own `verify` (it fails only on a 403); the sync's check
            # refuses it, up says why, and neither config.toml nor the CA in use changes.
            stack.set("gitlabCa", {"file": str(other_ca)})
            message = refused()
            assert f"{verify}: no answer (" in message and "with the CA 127.0.0.1.crt" in message
            assert live() == before
            stack.set("gitlabCa", {"file": str(ca)})
            stack.set("gitlabUrl", gitlab.base_url + "/gitlab")
            message = refused()
            wrong = f"POST {gitlab.base_url}/gitlab/api/v4/runners/verify"
            assert f"{wrong}: it answered 401 where GitLab answers 200" in message
            assert live() == before
            stack.set("gitlabUrl", gitlab.base_url)
            stack.set("checkInterval", "2")
            # GitLab's outage also turns the runner unhealthy: the gate need not wait long for it.
            stack.set("readiness", {"timeoutSeconds": 20})
            gitlab.outage = 502
            message = refused()
            assert f"{verify}: GitLab answered 502 Bad Gateway (after 5 tries): it is down or failing" in message
            assert live() == before
            # GitLab back: with nothing else to change, the sync runs again when replaced (as up says), and
            # the change goes through, the CA untouched.
            gitlab.outage = None
            resources = (stack.stack.export_stack().deployment or {})["resources"]
            sync = next(r["urn"] for r in resources if r.get("outputs", {}).get("name") == f"{container}-sync")
            assert stack.up(replace=[sync]).summary.result == "succeeded"
            after = live()
            assert "check_interval = 2" in after[0] and after[1:] == before[1:]
            assert runner.token not in "".join(stack.outputs)


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
            assert "runner gate-shell: its last job requests failed (503 x" in message
            assert "GitLab is failing or down (0 of 1 runners healthy)" in message
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


def test_a_new_metrics_port_is_bound_and_checked_after_a_restart(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The runner binds listen_address only when it starts: a new port replaces its container, so the
    runner serves its metrics where its health check looks, on this run and after any restart."""
    with serve(API_TOKEN) as gitlab:
        runner = gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("metrics-port"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "port-shell", "executor": "shell"}],
            tokens={"port-shell": runner.token},
            readiness={"timeoutSeconds": 40},
        ) as stack:
            assert stack.up().summary.result == "succeeded"
            container = stack.container("shell")
            first = engine.inspect("container", container)["Id"]  # type: ignore[index]
            stack.set("metrics", {"port": free_port_block()})
            assert stack.up().summary.result == "succeeded"
            address = tomllib.loads(stack.config_toml("shell"))["listen_address"]
            assert engine.inspect("container", container)["Id"] != first  # type: ignore[index]
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as served:
                assert b"gitlab_runner_api_request_statuses_total" in served.read()
            # After a restart the runner binds what config.toml says, and the health check looks there.
            engine.run("restart", container)
            wait_for("the restarted runner to be healthy", lambda: is_healthy(engine, container), seconds=60)
            assert stack.up().summary.result == "succeeded"


def test_a_token_revoked_after_it_polled_makes_the_container_unhealthy_naming_its_runner(
    engine: Engine, base: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The health check judges each runner by its recent job requests: one runner beside it that still
    works does not hide it, nor do the requests GitLab answered before."""
    with serve(API_TOKEN) as gitlab:
        kept, revoked = gitlab.create_runner(), gitlab.create_runner()
        with docker_stack(
            tmp_path_factory.mktemp("revoked"),
            [engine],
            gitlab,
            base,
            runners=[{"name": "ok-shell", "executor": "shell"}, {"name": "gone-shell", "executor": "shell"}],
            tokens={"ok-shell": kept.token, "gone-shell": revoked.token},
            readiness={"timeoutSeconds": 20},
        ) as stack:
            assert stack.up().summary.result == "succeeded"
            container = stack.container("shell")
            assert is_healthy(engine, container)
            old_token = revoked.token
            gitlab.reset_token(revoked)  # reset in GitLab: the token the runner holds is refused from now on
            wait_for("the container to turn unhealthy", lambda: health(engine, container) == "unhealthy", seconds=60)
            since = time.time()
            wait_for("a poll by the runner beside it", lambda: gitlab.polled_since(kept.token, since), seconds=30)
            with pytest.raises(auto.CommandError) as caught:
                stack.up()
            message = str(caught.value)
            assert f"runner container {container}" in message
            assert "runner gone-shell: its last job requests failed (403 x" in message
            assert "(1 of 2 runners healthy)" in message and "runner ok-shell:" not in message
            assert old_token not in message and revoked.token not in message


def health(engine: Engine, container: str) -> str | None:
    state = (engine.inspect("container", container) or {}).get("State", {})
    return (state.get("Health") or {}).get("Status")


def is_healthy(engine: Engine, container: str) -> bool:
    return health(engine, container) == "healthy"

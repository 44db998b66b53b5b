"""Production features under mocks and against small doubles: the distributed cache, a private CA,
the readiness gate, explicit token rotation and metrics scraping."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components import docker_health
from components.docker_health import Engine, wait_healthy
from components.docker_host import DockerHost, DockerHostArgs
from components.kubernetes_runner import CACHE_SECRET, CERTS_SECRET, KubernetesRunner, KubernetesRunnerArgs
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import ManagerSettings, Secrets, Settings, SettingsError, manager_settings, parse_settings
from tests.unit.conftest import GATE_ASKED, REAL_INSPECT
from tests.unit.helpers import run
from tests.unit.mocks import RecordingMocks

PEM = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
S3 = {
    "type": "s3",
    "path": "ci",
    "shared": True,
    "s3": {"serverAddress": "minio.local:9000", "bucketName": "runner-cache"},
}
CREDENTIALS = {"accessKey": "AKIAUNITTESTKEY", "secretKey": "unit-secret-key-value"}


def settings(target: str, credentials: frozenset[str] | None = None, **values: Any) -> Settings:
    return parse_settings(
        {"target": target, **values}, stack="unit", has_gitlab_token=True, cache_credential_keys=credentials
    )


def manager(s: Settings, cache_credentials: dict[str, str] | None) -> ManagerSettings:
    """What the program hands each runner manager, the cache's credentials as secret Outputs."""
    secrets = Secrets(
        gitlab_token=None, cache_credentials={k: pulumi.Output.secret(v) for k, v in (cache_credentials or {}).items()}
    )
    return manager_settings(s, secrets)


def docker_host(s: Settings, cache_credentials: dict[str, str] | None = None) -> DockerHost:
    assert s.docker is not None
    host: DockerHost = run(
        lambda: DockerHost(
            "host",
            DockerHostArgs(
                host=s.docker.hosts[0],  # type: ignore[union-attr]
                target=s.docker,  # type: ignore[arg-type]
                runners=s.runners,
                manager=manager(s, cache_credentials),
                tokens={r.name: pulumi.Output.secret(f"glrt-{r.name}-unit-token") for r in s.runners},
            ),
        )
    )
    return host


def kubernetes(s: Settings, cache_credentials: dict[str, str] | None = None) -> KubernetesRunner:
    assert s.kubernetes is not None
    component: KubernetesRunner = run(
        lambda: KubernetesRunner(
            "kr",
            KubernetesRunnerArgs(
                settings=s.kubernetes,  # type: ignore[arg-type]
                manager=manager(s, cache_credentials),
                runners=s.runners,
                tokens={r.name: pulumi.Output.secret(f"glrt-{r.name}-unit-token") for r in s.runners},
                service_monitor=s.kubernetes.service_monitor,  # type: ignore[union-attr]
            ),
        )
    )
    return component


def staged(mocks: RecordingMocks, kind: str = "docker") -> dict[str, str]:
    sync = next(c for c in mocks.by_type("docker:index/container:Container") if c.name == f"host-{kind}-sync")
    return {u["file"]: u["content"] for u in sync.inputs["uploads"]}


# ---- the distributed cache ------------------------------------------------------------------------


def test_docker_cache_section_with_its_credentials_only_in_the_secret_config(mocks: RecordingMocks) -> None:
    docker_host(settings("docker", frozenset(CREDENTIALS), cache=S3), CREDENTIALS)
    config = tomllib.loads(staged(mocks)["/gitlab-runners/config.toml"])
    cache = config["runners"][0]["cache"]
    assert (cache["Type"], cache["Path"], cache["Shared"]) == ("s3", "ci", True)
    assert cache["s3"] == {
        "BucketName": "runner-cache",
        "Insecure": False,
        "AuthenticationType": "access-key",
        "ServerAddress": "minio.local:9000",
        "AccessKey": "AKIAUNITTESTKEY",
        "SecretKey": "unit-secret-key-value",
    }
    for resource in mocks.resources:
        text = json.dumps(resource.inputs)
        if "unit-secret-key-value" in text:
            # Only the config sync's uploads carry it, and they travel as a secret.
            assert resource.name == "host-docker-sync" and any(p.startswith("uploads") for p in resource.secret_inputs)


def test_kubernetes_cache_secret_and_a_template_without_credentials(mocks: RecordingMocks) -> None:
    kubernetes(settings("kubernetes", frozenset(CREDENTIALS), cache=S3), CREDENTIALS)
    secret = next(s for s in mocks.by_type("kubernetes:core/v1:Secret") if s.name == "kr-cache")
    assert secret.inputs["metadata"]["name"] == CACHE_SECRET
    assert secret.inputs["stringData"] == {"accesskey": "AKIAUNITTESTKEY", "secretkey": "unit-secret-key-value"}
    assert any(p.startswith("stringData") for p in secret.secret_inputs)
    (release,) = mocks.by_type("kubernetes:helm.sh/v3:Release")
    values = release.inputs["values"]
    assert values["runners"]["cache"] == {"secretName": CACHE_SECRET}
    template = tomllib.loads(values["runners"]["config"])["runners"][0]["cache"]
    assert template["s3"]["BucketName"] == "runner-cache" and "AccessKey" not in template["s3"]
    assert "unit-secret-key-value" not in json.dumps(values) and release.secret_inputs == []


def test_new_cache_credentials_roll_the_pods(mocks: RecordingMocks) -> None:
    s = settings("kubernetes", frozenset(CREDENTIALS), cache=S3)
    kubernetes(s, CREDENTIALS)
    first = mocks.by_type("kubernetes:helm.sh/v3:Release")[0].inputs["values"]["podAnnotations"]
    mocks.resources.clear()
    kubernetes(s, {**CREDENTIALS, "secretKey": "rotated-secret-key"})
    second = mocks.by_type("kubernetes:helm.sh/v3:Release")[0].inputs["values"]["podAnnotations"]
    key = "gitlab-runners.io/secrets-fingerprint"
    assert first[key] != second[key] and "rotated-secret-key" not in second[key]


@pytest.mark.parametrize(
    ("values", "credentials", "expected"),
    [
        ({"cache": S3}, None, "gitlab-runners:cacheCredentials must hold accessKey and secretKey for a s3 cache"),
        ({"cache": {"type": "gcs"}}, None, 'gitlab-runners:cache.gcs is required with type "gcs"'),
        ({"cache": {**S3, "azure": {"containerName": "abc"}}}, frozenset(CREDENTIALS), "cache.azure does not apply"),
        (
            {"cache": {**S3, "s3": {**S3["s3"], "authenticationType": "iam"}}},  # type: ignore[dict-item]
            frozenset(CREDENTIALS),
            "gitlab-runners:cacheCredentials is not used with authenticationType iam",
        ),
        ({}, frozenset(CREDENTIALS), "gitlab-runners:cacheCredentials is set but gitlab-runners:cache is not"),
    ],
)
def test_cache_rules(values: dict[str, Any], credentials: frozenset[str] | None, expected: str) -> None:
    with pytest.raises(SettingsError, match=expected):
        settings("docker", credentials, **values)


# ---- a private CA ------------------------------------------------------------------------------------


def test_docker_ca_reaches_the_runner_certs_folder(mocks: RecordingMocks) -> None:
    docker_host(settings("docker", gitlabUrl="https://git.internal:8443", gitlabCa={"pem": PEM}))
    files = staged(mocks)
    assert files["/gitlab-runners/certs/git.internal.crt"] == PEM  # host without the port, as the runner looks
    config = tomllib.loads(files["/gitlab-runners/config.toml"])
    assert config["runners"][0]["tls-ca-file"] == "/etc/gitlab-runner/certs/git.internal.crt"


def test_kubernetes_ca_secret_for_the_chart(mocks: RecordingMocks) -> None:
    kubernetes(settings("kubernetes", gitlabUrl="https://git.internal", gitlabCa={"pem": PEM}))
    secret = next(s for s in mocks.by_type("kubernetes:core/v1:Secret") if s.name == "kr-certs")
    assert secret.inputs["stringData"] == {"git.internal.crt": PEM}
    assert mocks.by_type("kubernetes:helm.sh/v3:Release")[0].inputs["values"]["certsSecretName"] == CERTS_SECRET


def test_ca_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM)
    s = settings("docker", gitlabUrl="https://git.internal", gitlabCa={"file": str(tmp_path / "ca.pem")})
    assert s.gitlab_ca == PEM
    with pytest.raises(SettingsError, match=r"gitlab-runners:gitlabCa\.file cannot be read"):
        settings("docker", gitlabUrl="https://git.internal", gitlabCa={"file": str(tmp_path / "missing.pem")})
    (tmp_path / "not.pem").write_text("hello")
    with pytest.raises(SettingsError, match=r"gitlab-runners:gitlabCa\.file holds no PEM certificate"):
        settings("docker", gitlabUrl="https://git.internal", gitlabCa={"file": str(tmp_path / "not.pem")})
    with pytest.raises(SettingsError, match="gitlab-runners:gitlabCa only applies to an https:// gitlabUrl"):
        settings("docker", gitlabUrl="http://git.internal", gitlabCa={"pem": PEM})


# ---- the readiness gate ----------------------------------------------------------------------------


def test_docker_gate_asks_the_host_and_can_be_turned_off(mocks: RecordingMocks) -> None:
    GATE_ASKED.clear()
    docker_host(settings("docker", runners=[{"name": "a"}]))
    assert GATE_ASKED and GATE_ASKED[0][0] == "unix:///var/run/docker.sock"
    runner = next(c for c in mocks.by_type("docker:index/container:Container") if c.name == "host-docker-runner")
    assert runner.inputs.get("wait") is False  # the gate asks the API itself: no provider wait
    GATE_ASKED.clear()
    mocks.resources.clear()
    docker_host(settings("docker", runners=[{"name": "a"}], readiness={"enabled": False}))
    assert GATE_ASKED == []


def test_ssh_hosts_use_the_providers_wait(mocks: RecordingMocks) -> None:
    GATE_ASKED.clear()
    docker_host(settings("docker", docker={"hosts": [{"host": "ssh://ci@build-1"}]}, readiness={"timeoutSeconds": 42}))
    runner = next(c for c in mocks.by_type("docker:index/container:Container") if c.name == "host-docker-runner")
    assert runner.inputs["wait"] is True and runner.inputs["waitTimeout"] == 42
    assert GATE_ASKED == []


def _release_wait(mocks: RecordingMocks) -> tuple[Any, Any, Any]:
    (release,) = mocks.by_type("kubernetes:helm.sh/v3:Release")
    return release.inputs.get("atomic"), release.inputs.get("skipAwait"), release.inputs.get("timeout")


def test_kubernetes_gate_is_the_release_wait(mocks: RecordingMocks) -> None:
    kubernetes(settings("kubernetes", readiness={"timeoutSeconds": 120}))
    # Waits for ready pods, rolls back a release that does not get there, and uninstall waits too.
    assert _release_wait(mocks) == (True, False, 120)


def test_kubernetes_gate_off_waits_for_nothing(mocks: RecordingMocks) -> None:
    # Helm's atomic turns its wait back on, and the provider's uninstall waits while atomic is set:
    # skipping the await alone would change nothing.
    kubernetes(settings("kubernetes", readiness={"enabled": False, "timeoutSeconds": 120}))
    assert _release_wait(mocks) == (False, True, None)


def _api(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor)


class _FakeDockerApi(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture()
def docker_api(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A Docker Engine API double on a unix socket, answering container inspects from `state`."""
    state: dict[str, Any] = {
        "State": {"Running": True, "Health": {"Status": "starting", "Log": []}},
        # What the engine speaks (Docker 20.10 by default; tests set others), and the versions asked.
        "api": ("1.12", "1.41"),
        "asked": [],
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            oldest, newest = state["api"]
            if self.path == "/version":
                self._answer(200, {"Version": "test", "ApiVersion": newest, "MinAPIVersion": oldest})
                return
            version, _, rest = self.path[2:].partition("/")
            state["asked"].append(version)
            # As dockerd's version middleware answers a client outside its range.
            if _api(version) < _api(oldest):
                too_old = f"client version {version} is too old. Minimum supported API version is {oldest}"
                self._answer(400, {"message": f"{too_old}, please upgrade your client to a newer version"})
            elif _api(version) > _api(newest):
                self._answer(
                    400, {"message": f"client version {version} is too new. Maximum supported API version is {newest}"}
                )
            elif rest.startswith("containers/"):
                self._answer(200, {"State": state["State"]})
            else:
                self._answer(404, {"message": "page not found"})

        def _answer(self, status: int, answer: Any) -> None:
            body = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

    path = tmp_path / "docker.sock"
    server = _FakeDockerApi(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["socket"] = f"unix://{path}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_the_gate_fails_naming_the_runners_and_what_it_saw(
    docker_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_health, "inspect", REAL_INSPECT)  # this test has a Docker API double
    docker_api["State"]["Health"] = {
        "Status": "unhealthy",
        "Log": [{"Output": "unhealthy: GitLab has answered none of the runner's job requests yet"}],
    }
    with pytest.raises(pulumi.RunError) as caught:
        wait_healthy(Engine(docker_api["socket"]), "gitlab-runner-x-shell", ["a", "b"], timeout=1, every=0.2)
    message = str(caught.value)
    assert "gitlab-runner-x-shell" in message and "runners a, b" in message
    assert "GitLab has answered none of the runner's job requests yet" in message
    docker_api["State"]["Health"] = {"Status": "healthy", "Log": []}
    wait_healthy(Engine(docker_api["socket"]), "gitlab-runner-x-shell", ["a"], timeout=1, every=0.2)


def test_a_runner_that_keeps_exiting_is_said_to_be_restarting(
    docker_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # As Docker shows a container between two restarts: running, restarting, and no health check yet.
    monkeypatch.setattr(docker_health, "inspect", REAL_INSPECT)
    docker_api["State"] = {"Running": True, "Restarting": True, "ExitCode": 1, "Health": {"Status": "starting"}}
    with pytest.raises(pulumi.RunError) as caught:
        wait_healthy(Engine(docker_api["socket"]), "gitlab-runner-x-shell", ["a"], timeout=0.5, every=0.2)
    message = str(caught.value)
    assert "restarting: it exited with code 1 and Docker keeps starting it again" in message
    assert "no health check has run yet" not in message


@pytest.mark.parametrize(
    ("engine_api", "spoken"),
    [
        (("1.12", "1.41"), "1.41"),  # Docker 20.10
        (("1.44", "1.52"), "1.52"),  # Docker 29.0-29.2, or DOCKER_MIN_API_VERSION=1.44
        (("1.40", "1.54"), "1.54"),  # Docker 29.7
        (("1.44", "1.60"), "1.54"),  # an engine newer than this gate: the newest version both know
    ],
)
def test_the_gate_negotiates_the_api_version_with_each_engine(
    docker_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch, engine_api: tuple[str, str], spoken: str
) -> None:
    monkeypatch.setattr(docker_health, "inspect", REAL_INSPECT)
    docker_api["api"] = engine_api
    docker_api["State"]["Health"] = {"Status": "healthy", "Log": []}
    wait_healthy(Engine(docker_api["socket"]), "gitlab-runner-x-shell", ["a"], timeout=2, every=0.2)
    assert docker_api["asked"] == [spoken]


def test_an_engine_whose_api_the_gate_cannot_speak_is_named(
    docker_api: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(docker_health, "inspect", REAL_INSPECT)
    docker_api["api"] = ("1.12", "1.39")  # Docker 19.03
    with pytest.raises(pulumi.RunError, match=r"the engine speaks Docker API 1.12-1.39, this gate 1.40-1.54"):
        wait_healthy(Engine(docker_api["socket"]), "gitlab-runner-x-shell", ["a"], timeout=0.5, every=0.2)


# ---- explicit token rotation -----------------------------------------------------------------------


def test_a_new_token_generation_replaces_the_runner_create_before_delete(mocks: RecordingMocks) -> None:
    s = settings("docker", runners=[{"name": "a", "tokenGeneration": 3}])
    run(lambda: RunnerRegistration("reg", RunnerRegistrationArgs(runners=s.runners)))
    (runner,) = mocks.by_type("gitlab:index/userRunner:UserRunner")
    assert runner.options["replacementTrigger"] == 3
    assert runner.options["deleteBeforeReplace"] is False


def test_rotation_of_a_runner_with_its_own_token_is_done_by_replacing_the_token() -> None:
    with pytest.raises(SettingsError, match=r"runners\[0\].tokenGeneration is an attribute GitLab keeps"):
        parse_settings(
            {"target": "docker", "runners": [{"name": "a", "tokenGeneration": 2}]},
            stack="unit",
            existing_token_names=frozenset({"a"}),
        )


# ---- metrics scraping ---------------------------------------------------------------------------------


def test_service_monitor_values(mocks: RecordingMocks) -> None:
    kubernetes(
        settings(
            "kubernetes",
            metrics={"enabled": True, "port": 9300},
            kubernetes={"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}},
        )
    )
    values = mocks.by_type("kubernetes:helm.sh/v3:Release")[0].inputs["values"]
    assert values["metrics"] == {
        "enabled": True,
        "port": 9300,
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
    }
    assert values["service"] == {"enabled": True}


def test_a_service_monitor_needs_metrics() -> None:
    with pytest.raises(SettingsError, match=r"kubernetes.serviceMonitor.enabled needs gitlab-runners:metrics.enabled"):
        settings("kubernetes", kubernetes={"serviceMonitor": {"enabled": True}})

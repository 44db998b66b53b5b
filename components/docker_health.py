"""The readiness gate of the Docker target: `pulumi up` succeeds only when each runner container is healthy.

The docker provider can wait for a healthy container, but only when it creates one, and its failure
says nothing but "container failed to be in healthy state". This gate asks the Docker Engine API
itself (the container's health and the last health-check output, which never holds a secret) on every
`pulumi up`, and a failure names the container, its runners and what the health check saw. It reaches
unix:// hosts and tcp:// hosts with a certPath; for the others (ssh://, TLS material given as secrets)
the provider's own wait is used instead.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from pathlib import Path
from typing import Any, NamedTuple

import pulumi

# The Engine API versions this gate speaks, as a client negotiates them: the newest version both sides
# know. The fields it reads (State.Running, Status, ExitCode, Health) are the same in all of them. A
# fixed version fails somewhere: Docker 20.10 knows nothing past 1.41, and Docker 29.0-29.2 (or any
# engine started with DOCKER_MIN_API_VERSION) refuse everything below 1.44.
OLDEST_API = (1, 40)
NEWEST_API = (1, 54)


class Engine(NamedTuple):
    """How to reach one Docker host's API: a unix socket, or tcp:// with the client certificates in
    `cert_path` (ca.pem, cert.pem, key.pem, as the docker CLI reads them)."""

    host: str
    cert_path: str | None = None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _tls_context(cert_path: str) -> ssl.SSLContext:
    base = Path(cert_path).expanduser()
    context = ssl.create_default_context(cafile=str(base / "ca.pem"))
    context.load_cert_chain(str(base / "cert.pem"), str(base / "key.pem"))
    return context


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


def negotiate(server: dict[str, Any]) -> str:
    """The API version to speak with an engine, from its unversioned `GET /version` answer."""
    newest = min(_version(str(server.get("ApiVersion", "1.40"))), NEWEST_API)
    oldest = _version(str(server.get("MinAPIVersion", "1.12")))
    if newest < oldest or newest < OLDEST_API:
        raise OSError(
            f"the engine speaks Docker API {server.get('MinAPIVersion')}-{server.get('ApiVersion')}, "
            f"this gate {OLDEST_API[0]}.{OLDEST_API[1]}-{NEWEST_API[0]}.{NEWEST_API[1]}"
        )
    return f"{newest[0]}.{newest[1]}"


def _get(connection: http.client.HTTPConnection, path: str, raw: bool = False, missing_ok: bool = False) -> Any:
    connection.request("GET", path)
    response = connection.getresponse()
    body = response.read()
    if missing_ok and response.status == 404:
        return None
    if response.status != 200:
        message = body.decode(errors="replace").strip()[:200]
        raise OSError(f"the Docker API answered {response.status} to GET {path}: {message}")
    return body if raw else json.loads(body)


def _connect(engine: Engine, timeout: float) -> http.client.HTTPConnection:
    if engine.host.startswith("unix://"):
        return _UnixConnection(engine.host[len("unix://") :], timeout)
    address = engine.host[len("tcp://") :].split("/", 1)[0]
    host, _, port = address.rpartition(":")
    if engine.cert_path is None:
        raise OSError(f"{engine.host} has no certPath to reach its API with")
    context = _tls_context(engine.cert_path)
    return http.client.HTTPSConnection(host, int(port or 2376), timeout=timeout, context=context)


def request(engine: Engine, path: str, raw: bool = False, timeout: float = 10) -> Any:
    """GET one Engine API path (`/containers/x/json`) at the version negotiated with the engine: its
    JSON, or its bytes with `raw`; None where the engine answers 404 (no such container)."""
    connection = _connect(engine, timeout)
    try:
        version = negotiate(_get(connection, "/version"))
        return _get(connection, f"/v{version}{path}", raw=raw, missing_ok=True)
    finally:
        connection.close()


def inspect(engine: Engine, container: str, timeout: float = 10) -> dict[str, Any]:
    """`docker inspect` of one container, through the Engine API at the version negotiated with it."""
    connection = _connect(engine, timeout)
    try:
        version = negotiate(_get(connection, "/version"))
        found: dict[str, Any] = _get(connection, f"/v{version}/containers/{container}/json")
        return found
    finally:
        connection.close()


def seen(state: dict[str, Any]) -> str:
    """What the container's state says, in a line."""
    health = state.get("Health") or {}
    log = health.get("Log") or []
    last = str(log[-1].get("Output", "")).strip() if log else "no health check has run yet"
    # Docker counts a container waiting to be restarted as running (daemon/container/state.go), and its
    # health checks start again with each start: a runner that exits at once never gets one.
    if state.get("Restarting"):
        return (
            f"restarting: it exited with code {state.get('ExitCode')} and Docker keeps starting it again "
            "(`docker logs` on it says why)"
        )
    if not state.get("Running"):
        return f"{state.get('Status', 'not running')} (exit code {state.get('ExitCode')}): {last}"
    status = str(health.get("Status", "no health check"))
    return last if last.startswith(status) else f"{status}: {last}"


def wait_healthy(
    engine: Engine, container: str, runners: list[str], timeout: float, every: float = 2, name: str | None = None
) -> None:
    """Return once the container is healthy; raise naming it, its runners and what was seen."""
    deadline = time.monotonic() + timeout
    last = "not inspected yet"
    while True:
        try:
            state = inspect(engine, container)["State"]
            if (state.get("Health") or {}).get("Status") == "healthy":
                return
            last = seen(state)
        except (OSError, ValueError, KeyError, ssl.SSLError) as error:
            last = f"the Docker API could not be asked: {error}"
        if time.monotonic() >= deadline:
            raise pulumi.RunError(
                f"runner container {name or container} on {engine.host} (runners {', '.join(runners)}) is not healthy "
                f"after {timeout:.0f} s: {last}. Set gitlab-runners:readiness.enabled: false to deploy anyway."
            )
        time.sleep(every)

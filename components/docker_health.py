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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

API = "/v1.41"  # Docker 20.10, the oldest engine the project supports


@dataclass(frozen=True)
class Engine:
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


def inspect(engine: Engine, container: str, timeout: float = 10) -> dict[str, Any]:
    """`docker inspect` of one container, through the Engine API."""
    connection: http.client.HTTPConnection
    if engine.host.startswith("unix://"):
        connection = _UnixConnection(engine.host[len("unix://") :], timeout)
    else:
        address = engine.host[len("tcp://") :].split("/", 1)[0]
        host, _, port = address.rpartition(":")
        if engine.cert_path is None:
            raise OSError(f"{engine.host} has no certPath to reach its API with")
        context = _tls_context(engine.cert_path)
        connection = http.client.HTTPSConnection(host, int(port or 2376), timeout=timeout, context=context)
    try:
        connection.request("GET", f"{API}/containers/{container}/json")
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise OSError(f"the Docker API answered {response.status}")
        found: dict[str, Any] = json.loads(body)
        return found
    finally:
        connection.close()


def seen(state: dict[str, Any]) -> str:
    """What the container's state says, in a line."""
    health = state.get("Health") or {}
    log = health.get("Log") or []
    last = str(log[-1].get("Output", "")).strip() if log else "no health check has run yet"
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

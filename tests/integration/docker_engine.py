"""The real Docker engines for the Docker-target tests, a base image from scripts/runner-base-image
(holding the runner stand-in, a test double), and `docker` CLI helpers.

Two engines: the current one (Docker 29, built by scripts/docker-current and started here on a socket,
data root and bridge of its own with DOCKER_MIN_API_VERSION=1.44, as Docker 29.0-29.2 ship and as
hardened hosts run), which every Docker-target test uses, and Debian's 20.10 (scripts/docker-engine),
the oldest engine the README claims, on which the main tests run again. Each is driven by its own
release's CLI. Where a part is missing the tests skip and say which; under scripts/test with the
docker provider built (GITLAB_RUNNERS_REQUIRE_DOCKER=1) they fail instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The oldest Engine API the current engine is started to accept (scripts/versions.env).
CURRENT_MIN_API = "1.44"


def missing(message: str) -> None:
    if os.environ.get("GITLAB_RUNNERS_REQUIRE_DOCKER") == "1":
        pytest.fail(f"required for the Docker target tests: {message}")
    pytest.skip(f"Docker target tests skipped: {message}")


def docker_provider_or_skip() -> None:
    plugin = os.environ.get("GITLAB_RUNNERS_DOCKER_PROVIDER")
    if not plugin or not Path(plugin).exists():
        missing(
            "the docker provider plugin was not built (scripts/docker-provider needs the pulumi-docker "
            "source; README, 'The docker provider offline')"
        )


@dataclass(frozen=True)
class Engine:
    host: str
    cli: str = "docker"
    """The docker CLI of the engine's own release (a 20.10 CLI cannot speak to an engine needing 1.44)."""

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.cli, "-H", self.host, *args], capture_output=True, text=True, check=check, timeout=timeout
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment in which `docker` is this engine's CLI (for scripts that call it)."""
        folder = str(Path(self.cli).parent)
        return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"} if self.cli != "docker" else dict(os.environ)

    def describe(self) -> str:
        """`<version> (API <min>-<max>)`, from the engine itself."""
        fields = "{{.Server.Version}} {{.Server.MinAPIVersion}} {{.Server.APIVersion}}"
        version, oldest, newest = self.run("version", "--format", fields).stdout.split()
        return f"{version} (API {oldest}-{newest})"

    def inspect(self, kind: str, name: str) -> dict[str, Any] | None:
        done = self.run(kind, "inspect", name, check=False)
        if done.returncode != 0:
            return None
        found: list[dict[str, Any]] = json.loads(done.stdout)
        return found[0]

    def exists(self, kind: str, name: str) -> bool:
        return self.inspect(kind, name) is not None

    def names(self, kind: str) -> set[str]:
        if kind == "container":
            return set(self.run("ps", "-a", "--format", "{{.Names}}").stdout.split())
        return set(self.run(kind, "ls", "--format", "{{.Name}}").stdout.split())


def start_engine() -> Engine:
    """Debian's 20.10 on the default socket (scripts/docker-engine)."""
    done = subprocess.run([str(ROOT / "scripts" / "docker-engine")], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        missing(f"no Docker engine: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return Engine(done.stdout.strip())


def current_engine_binaries() -> Path | None:
    """The folder scripts/docker-current built (scripts/test exports it), or None."""
    given = os.environ.get("GITLAB_RUNNERS_DOCKER_CURRENT")
    return Path(given) if given and (Path(given) / "dockerd").exists() else None


def base_image(engine: Engine) -> str:
    done = subprocess.run(
        [str(ROOT / "scripts" / "runner-base-image"), engine.host],
        capture_output=True,
        text=True,
        check=False,
        env=engine.env,
    )
    if done.returncode != 0:
        missing(f"the runner base image could not be built: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def wait_for(what: str, check: Callable[[], Any], seconds: float = 90, every: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def free_subnet(prefix: str) -> str:
    """`<prefix>.<n>` for a /24 no interface on the machine has an address in: engines started side by
    side (tests in several workers, a fleet's second host) each get their own."""
    taken = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    choices = list(range(20, 220))
    secrets.SystemRandom().shuffle(choices)
    for octet in choices:
        if f" {prefix}.{octet}." not in taken:
            return f"{prefix}.{octet}"
    raise RuntimeError(f"no free /24 left in {prefix}.0.0/16")


class ExtraEngine:
    """Another dockerd on this machine, with its own data root, socket and bridge (the test makes the
    bridge: a dockerd told to use none removes the first engine's docker0): a second Docker host for
    the fleet tests, or the current engine (`binaries`: scripts/docker-current's folder, whose dockerd
    starts its own containerd 2 from there). Its containers use host networking to reach the API double
    on 127.0.0.1; its image builds use its bridge, which has no route out. Started and stopped by the
    test; its bridge and files are removed at the end."""

    def __init__(self, folder: Path, binaries: Path | None = None, min_api: str | None = None) -> None:
        if (binaries is None and shutil.which("dockerd") is None) or shutil.which("ip") is None:
            missing("dockerd and ip are needed for a second engine (scripts/docker-engine installs docker.io)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.binaries = binaries
        self.min_api = min_api
        cli = str(binaries / "docker") if binaries else "docker"
        self.engine = Engine(f"unix://{folder / 'docker.sock'}", cli=cli)
        self.process: subprocess.Popen[bytes] | None = None
        suffix = secrets.token_hex(3)
        self.bridge = f"grbr{suffix}"
        subprocess.run(["ip", "link", "add", "name", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{free_subnet('10.213')}.1/24", "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)

    def start(self) -> Engine:
        env = dict(os.environ)
        if self.binaries is not None:
            env["PATH"] = f"{self.binaries}:{env['PATH']}"  # its containerd, shim and docker-proxy
        if self.min_api is not None:
            env["DOCKER_MIN_API_VERSION"] = self.min_api
        with (self.folder / "dockerd.log").open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binaries / "dockerd") if self.binaries else "dockerd",
                    f"--data-root={self.folder / 'data'}",
                    f"--exec-root={self.folder / 'exec'}",
                    f"--pidfile={self.folder / 'docker.pid'}",
                    f"--host={self.engine.host}",
                    f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--ip-forward=false",
                    *(["--ip6tables=false"] if self.binaries else []),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        wait_for(
            f"dockerd at {self.engine.host} (log: {self.folder / 'dockerd.log'})",
            lambda: self.engine.run("version", check=False).returncode == 0,
            seconds=90,
        )
        return self.engine

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)
        # dockerd leaves its network namespace mounted under its exec root.
        subprocess.run(["umount", str(self.folder / "exec" / "netns" / "default")], check=False, capture_output=True)
        for part in ("data", "exec"):
            shutil.rmtree(self.folder / part, ignore_errors=True)

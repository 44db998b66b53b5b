"""config.toml edited by hand is noticed (components/config_drift.py), and only then: not when the
runner rotated its token, nor when it saved its config with every default filled in."""

from __future__ import annotations

import io
import json
import socketserver
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from components import config_drift
from components.docker_health import Engine
from tests.unit.conftest import REAL_OBSERVE

RENDERED = """concurrent = 2
check_interval = 3
listen_address = "127.0.0.1:9252"

[[runners]]
name = "a"
url = "https://gitlab.example"
token = "glrt-from-the-stack"
executor = "shell"
limit = 0
environment = ["A=1"]

[[runners]]
name = "b"
url = "https://gitlab.example"
token = "glrt-b"
executor = "docker"
limit = 2

[runners.docker]
image = "alpine:3"
pull_policy = ["if-not-present"]
"""


def edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


def test_the_installed_file_and_the_runners_own_rewrites_are_no_drift() -> None:
    assert not config_drift.drifted(RENDERED, RENDERED)
    # The sync writes the runner's credentials; the runner rotates its token and saves the file with
    # keys of its own and in another order.
    saved = edit(
        RENDERED,
        'token = "glrt-from-the-stack"',
        'id = 7\ntoken = "glrt-rotated"\ntoken_expires_at = 2026-12-01T00:00:00Z',
    )
    saved = edit(saved, "[runners.docker]\n", "[runners.docker]\ntls_verify = false\nshm_size = 0\n")
    saved = edit(saved, "concurrent = 2\n", 'log_format = "runner"\nconcurrent = 2\n')
    assert not config_drift.drifted(saved, RENDERED)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("concurrent = 2", "concurrent = 20"),  # a value changed
        ("limit = 2", "limit = 5"),  # in a runner
        ('image = "alpine:3"', 'image = "ubuntu:latest"'),  # in a runner's table
        ('environment = ["A=1"]', 'environment = ["A=1", "B=2"]'),  # a list
        ("check_interval = 3\n", ""),  # a key removed
        ('name = "b"', 'name = "c"'),  # a runner renamed
        ("concurrent = 2", "concurrent = "),  # no longer TOML
    ],
)
def test_a_value_the_stack_owns_changed_by_hand_is_drift(old: str, new: str) -> None:
    assert config_drift.drifted(edit(RENDERED, old, new), RENDERED)


def test_a_runner_added_by_hand_is_drift() -> None:
    added = (
        RENDERED
        + '\n[[runners]]\nname = "extra"\nurl = "https://gitlab.example"\ntoken = "glrt-x"\nexecutor = "shell"\n'
    )
    assert config_drift.drifted(added, RENDERED)


def test_the_label_is_new_on_drift_and_kept_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine("unix:///nowhere.sock")
    seen = config_drift.Observation(RENDERED, "1700000000-abc")
    monkeypatch.setattr(config_drift, "observe", lambda engine, name: seen)
    assert config_drift.restore_label(engine, "gr-shell", RENDERED) == "1700000000-abc"
    seen = config_drift.Observation(edit(RENDERED, "limit = 2", "limit = 9"), "1700000000-abc")
    label = config_drift.restore_label(engine, "gr-shell", RENDERED)
    assert label is not None and label != "1700000000-abc"
    # Nothing to read (no container yet, an engine that cannot be asked): the label it has stays.
    seen = config_drift.Observation(None, None)
    assert config_drift.restore_label(engine, "gr-shell", RENDERED) is None


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture()
def engine_api(tmp_path: Path) -> Iterator[tuple[Engine, list[str]]]:
    """A Docker Engine API on a unix socket holding a runner container and its sync container."""
    asked: list[str] = []
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = RENDERED.encode()
        member = tarfile.TarInfo("config.toml")
        member.size = len(data)
        tar.addfile(member, io.BytesIO(data))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body: Any
            if self.path == "/version":
                body = json.dumps({"ApiVersion": "1.54", "MinAPIVersion": "1.44"}).encode()
            elif self.path == "/v1.54/containers/gr-shell-sync/json":
                body = json.dumps({"Config": {"Labels": {config_drift.RESTORED_LABEL: "7-abc"}}}).encode()
            elif self.path == "/v1.54/containers/gr-shell/archive?path=/etc/gitlab-runner/config.toml":
                body = archive.getvalue()
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    path = tmp_path / "docker.sock"
    server = _UnixServer(str(path), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Engine(f"unix://{path}"), asked
    finally:
        server.shutdown()
        server.server_close()


def test_observe_reads_the_file_from_the_runner_container_and_the_label_from_its_sync(
    engine_api: tuple[Engine, list[str]],
) -> None:
    engine, asked = engine_api
    seen = REAL_OBSERVE(engine, "gr-shell")
    assert seen == config_drift.Observation(RENDERED, "7-abc")
    assert "/v1.54/containers/gr-shell/archive?path=/etc/gitlab-runner/config.toml" in asked
    # No such containers: nothing observed, no error.
    assert REAL_OBSERVE(engine, "gr-other") == config_drift.Observation(None, None)
    assert REAL_OBSERVE(Engine("unix:///nonexistent/docker.sock"), "gr-shell") == config_drift.Observation(None, None)


def test_an_archive_without_a_readable_config_is_nothing_observed() -> None:
    # What Docker sends is a tar of the one file; anything else reads as no config.toml (the sync then
    # installs the stack's), never as an error that stops the run.
    assert config_drift._unpacked(b"not a tar archive") is None
    other = io.BytesIO()
    with tarfile.open(fileobj=other, mode="w") as tar:
        member = tarfile.TarInfo("other.toml")
        member.size = 1
        tar.addfile(member, io.BytesIO(b"x"))
    assert config_drift._unpacked(other.getvalue()) is None

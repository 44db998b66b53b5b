"""components/files/healthcheck.sh, run as Docker runs it in the runner container (`/bin/sh -c`), against
a metrics endpoint serving what the runner serves (gitlab_runner_api_request_statuses_total with the
runner's labels, process_start_time_seconds) and the config.toml it reads the runners' names from.
Where busybox is installed the same cases run under busybox's sh and awk, as on the official alpine
image."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from components.docker_runner import FILES

SHELLS = ["sh", *(["busybox"] if shutil.which("busybox") else [])]
TOKENS = {"a": "glrt-t1_AAAAAAAAAaaaaaaaa", "b": "glrt-t1_BBBBBBBBBbbbbbbbb"}
TOOLS = ("awk", "dirname", "mv", "wget")


def short(token: str) -> str:
    return token.removeprefix("glrt-t1_")[:9]


@dataclass
class Runner:
    """The runner process as its metrics show it."""

    started: str = "1.76452e+09"
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    serving: bool = True

    def answer(self, name: str, status: str, times: int = 1, token: str | None = None) -> None:
        key = (short(token or TOKENS[name]), status)
        self.counts[key] = self.counts.get(key, 0) + times

    def metrics(self) -> str:
        lines = [
            "# HELP gitlab_runner_api_request_statuses_total The total number of API requests made by GitLab Runner.",
            "# TYPE gitlab_runner_api_request_statuses_total counter",
        ]
        for (label, status), value in sorted(self.counts.items()):
            for endpoint, count in (("request_job", value), ("update_job", 7)):
                lines.append(
                    f'gitlab_runner_api_request_statuses_total{{endpoint="{endpoint}",method="post",'
                    f'runner="{label}",status="{status}",system_id="s_0123456789ab"}} {count}'
                )
        lines += ["# TYPE process_start_time_seconds gauge", f"process_start_time_seconds {self.started}"]
        return "\n".join(lines) + "\n"


@dataclass
class Container:
    """The runner container as its health check sees it."""

    dir: Path
    shell: str
    runner: Runner
    port: int

    def config(self, tokens: dict[str, str]) -> None:
        lines = ["concurrent = 2", ""]
        for name, token in tokens.items():
            lines += ["[[runners]]", f'  name = "{name}"', '  url = "https://gl.example"', f'  token = "{token}"']
            lines += ['  executor = "shell"', "  [runners.cache]", '    token = "not-this-one"', ""]
        (self.dir / "config.toml").write_text("\n".join(lines))

    def check(self) -> subprocess.CompletedProcess[str]:
        script = (FILES / "healthcheck.sh").read_text()
        script = script.replace("__ADDRESS__", "127.0.0.1").replace("__PORT__", str(self.port))
        tools = self.dir.parent / "tools"
        tools.mkdir(exist_ok=True)
        for tool in TOOLS:
            if not (tools / tool).exists():
                # Debian's busybox wget lacks -T (alpine's has it): GNU wget fetches in both variants.
                applet = self.shell == "busybox" and tool != "wget"
                target = shutil.which("busybox") if applet else shutil.which(tool)
                (tools / tool).symlink_to(target or tool)
        busybox = [shutil.which("busybox") or "busybox", "sh"]
        shell = busybox if self.shell == "busybox" else [shutil.which("sh") or "sh"]
        env = {"PATH": str(tools), "CONFIG_FILE": str(self.dir / "config.toml")}
        return subprocess.run([*shell, "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(params=SHELLS)
def container(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Container]:
    runner = Runner()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not runner.serving or self.path != "/metrics":
                self.send_error(404)
                return
            body = runner.metrics().encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config_dir = tmp_path / "etc-gitlab-runner"
    config_dir.mkdir()
    made = Container(config_dir, request.param, runner, int(server.server_address[1]))
    made.config({"a": TOKENS["a"]})
    try:
        yield made
    finally:
        server.shutdown()
        server.server_close()


def healthy(done: subprocess.CompletedProcess[str]) -> bool:
    assert done.stdout.startswith(("healthy: ", "unhealthy: ")), done
    assert done.returncode == (0 if done.stdout.startswith("healthy") else 1), done
    # Names and counts only: never a token, nor the short form the runner's metrics label it with.
    for token in TOKENS.values():
        assert token not in done.stdout + done.stderr and short(token) not in done.stdout + done.stderr
    return done.returncode == 0


def test_answered_job_requests_are_healthy(container: Container) -> None:
    container.runner.answer("a", "204", 3)
    done = container.check()
    assert healthy(done) and done.stdout == "healthy: GitLab answers the job requests of a\n"


def test_a_token_refused_after_it_worked_is_unhealthy_at_once(container: Container) -> None:
    """The counter of answered requests never falls: what counts is what came since the check before."""
    container.runner.answer("a", "201")
    container.runner.answer("a", "204", 5)
    assert healthy(container.check())
    container.runner.answer("a", "403", 2)
    done = container.check()
    assert not healthy(done)
    assert done.stdout == (
        "unhealthy: runner a: its last job requests failed (403 x2): GitLab refuses its token (revoked, expired, "
        "or reset elsewhere) (0 of 1 runners healthy)\n"
    )
    # No job request since (the runner holds back after 403s): the verdict stands.
    assert not healthy(container.check())
    # Answered again (a new token through the stack): healthy again.
    container.runner.answer("a", "204")
    assert healthy(container.check())


def test_one_working_runner_does_not_hide_a_broken_one(container: Container) -> None:
    container.config(TOKENS)
    container.runner.answer("a", "204", 4)
    container.runner.answer("b", "204", 1)
    assert healthy(container.check())
    container.runner.answer("a", "204", 4)
    container.runner.answer("b", "403", 3)
    done = container.check()
    assert not healthy(done)
    assert done.stdout.startswith("unhealthy: runner b: its last job requests failed (403 x3)")
    assert done.stdout.endswith("(1 of 2 runners healthy)\n") and "runner a" not in done.stdout


@pytest.mark.parametrize(
    ("status", "why"),
    [("-1", "no answer from GitLab (unreachable, or TLS failed)"), ("503", "GitLab is failing or down")],
)
def test_an_outage_is_unhealthy(container: Container, status: str, why: str) -> None:
    container.runner.answer("a", "204", 2)
    assert healthy(container.check())
    container.runner.answer("a", status, 4)
    done = container.check()
    assert not healthy(done) and f"runner a: its last job requests failed ({status} x4): {why}" in done.stdout


def test_a_runner_that_never_polled_is_unhealthy(container: Container) -> None:
    done = container.check()
    assert not healthy(done)
    none_yet = "runner a: GitLab has answered none of its job requests yet (0 of 1 runners healthy)"
    assert done.stdout == f"unhealthy: {none_yet}\n"


def test_a_busy_runner_keeps_its_verdict_and_a_new_process_starts_afresh(container: Container) -> None:
    container.runner.answer("a", "204", 2)
    assert healthy(container.check())
    # Every job slot busy: no job request for a while.
    assert healthy(container.check())
    # The runner restarted: its counters began again, and the verdict of the old process is not its own.
    container.runner.started, container.runner.counts = "1.76453e+09", {}
    done = container.check()
    assert not healthy(done) and "GitLab has answered none of its job requests yet" in done.stdout
    container.runner.answer("a", "204")
    assert healthy(container.check())


def test_a_rotated_token_keeps_the_runners_verdict(container: Container) -> None:
    container.runner.answer("a", "204", 2)
    assert healthy(container.check())
    rotated = "glrt-t1_CCCCCCCCCcccccccc"
    container.config({"a": rotated})  # the runner reset its token and wrote it back
    assert healthy(container.check())
    container.runner.answer("a", "403", token=rotated)
    done = container.check()
    assert not healthy(done) and rotated not in done.stdout and short(rotated) not in done.stdout


def test_no_metrics_is_unhealthy(container: Container) -> None:
    container.runner.serving = False
    done = container.check()
    assert not healthy(done)
    assert done.stdout.startswith(f"unhealthy: no metrics at http://127.0.0.1:{container.port}/metrics")


def test_the_state_is_root_s_own_next_to_config_toml(container: Container) -> None:
    container.runner.answer("a", "204")
    container.check()
    state = container.dir / ".gitlab-runners-health"
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert not (container.dir / ".gitlab-runners-health.next").exists()

"""components/files/sync-config.sh, run as the config sync container runs it: with a POSIX shell, awk
and the runner (here the stand-in, a test double of gitlab-runner, whose `register` verifies a glrt-
token with the GitLab API double on 127.0.0.1). Where busybox is installed the same cases run under
busybox's sh and awk, as on the official alpine image."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.tls import make_ca
from tests.standin_build import build_standin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "components" / "files" / "sync-config.sh"
SHELLS = ["sh", *(["busybox"] if shutil.which("busybox") else [])]


# What the script may call (besides the runner): a POSIX shell's builtins and these. Each test runs it
# with exactly these on PATH, so a tool the images lack fails here first.
TOOLS = (
    "awk", "sed", "sha256sum", "grep", "cut", "sort", "mktemp", "cp", "mv", "rm", "mkdir", "touch", "cat",
    "cmp", "chmod", "dirname", "basename", "head", "tail", "sleep",
)  # fmt: skip
# The HTTP client of the sync's own check: curl (the official alpine and ubuntu images) or GNU wget
# (the ubuntu image, and the tests' Debian base image).
CLIENTS = [c for c in ("curl", "wget") if shutil.which(c)]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin"))


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(GitLab's CA, its certificate, its key, another CA)."""
    folder = tmp_path_factory.mktemp("certs")
    ca, cert, key = make_ca(folder, "gitlab")
    other, _, _ = make_ca(folder, "other")
    return ca, cert, key, other


@dataclass
class Volume:
    """A config volume as the sync container sees it, and a way to run the sync against it."""

    dir: Path
    staged: Path
    standin: Path
    shell: str
    client: str
    gitlab: GitLabDouble
    argv_log: Path | None = None

    def sync(
        self,
        runners: dict[str, str],
        concurrent: int = 2,
        url: str | None = None,
        ca: str | None = None,
        extra: tuple[str, ...] = (),
        rotation_off: frozenset[str] = frozenset(),
    ) -> subprocess.CompletedProcess[str]:
        """Stage a config.toml (and the CA, as docker_runner.py uploads it) and run the sync; `extra`
        lines go into every [[runners]] entry."""
        ca_file = self.dir / "certs" / "127.0.0.1.crt"
        lines = [f"concurrent = {concurrent}", ""]
        for name, token in runners.items():
            lines += ["[[runners]]", f'name = "{name}"', f'url = "{url or self.gitlab.base_url}"', f'token = "{token}"']
            lines += [f'tls-ca-file = "{ca_file}"'] if ca is not None else []
            lines += [*extra, 'executor = "shell"', ""]
            if name in rotation_off:
                # As runner_config.py renders it for a token several runner managers hold.
                lines += ["[runners.feature_flags]", "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true", ""]
        self.staged.write_text("\n".join(lines))
        self.staged.chmod(0o600)
        staged_certs = self.staged.parent / "certs"
        shutil.rmtree(staged_certs, ignore_errors=True)
        if ca is not None:
            staged_certs.mkdir()
            (staged_certs / ca_file.name).write_text(ca)
        return self.run()

    def run(self) -> subprocess.CompletedProcess[str]:
        tools = self.dir.parent / "tools"
        tools.mkdir(exist_ok=True)
        for tool in (*TOOLS, self.client):
            if not (tools / tool).exists():
                (tools / tool).symlink_to(shutil.which(tool) or tool)
        path = str(tools)
        if self.shell == "busybox":
            # busybox's own applets first on PATH, as on alpine.
            applets = self.dir.parent / "applets"
            applets.mkdir(exist_ok=True)
            for applet in TOOLS:
                if not (applets / applet).exists():
                    (applets / applet).symlink_to(shutil.which("busybox") or "busybox")
            path = f"{applets}:{path}"
        if self.argv_log is not None:
            path = f"{self.argv_log.parent}:{path}"
        busybox = [shutil.which("busybox") or "busybox", "sh"]
        shell = busybox if self.shell == "busybox" else [shutil.which("sh") or "sh"]
        env = {
            "PATH": path,
            "STAGED_CONFIG": str(self.staged),
            "CONFIG_DIR": str(self.dir),
            "GITLAB_RUNNER": str(self.standin),
            "HOME": str(self.dir.parent),
        }
        return subprocess.run([*shell, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)

    def config(self) -> dict[str, object]:
        return tomllib.loads((self.dir / "config.toml").read_text())

    def runner(self, name: str) -> dict[str, object]:
        runners = self.config()["runners"]
        assert isinstance(runners, list)
        return next(r for r in runners if r["name"] == name)

    def live(self) -> tuple[bytes, bytes | None, float | None]:
        """config.toml, and the CA in use with its mtime (the runner reloads a CA whose mtime changed)."""
        ca = self.dir / "certs" / "127.0.0.1.crt"
        return (
            (self.dir / "config.toml").read_bytes(),
            ca.read_bytes() if ca.exists() else None,
            ca.stat().st_mtime_ns if ca.exists() else None,
        )


def _volume(request: pytest.FixtureRequest, tmp_path: Path, standin: Path, gitlab: GitLabDouble) -> Volume:
    shell, client = request.param
    config_dir = tmp_path / "etc-gitlab-runner"
    config_dir.mkdir()
    return Volume(config_dir, tmp_path / "staged.toml", standin, shell, client, gitlab)


VARIANTS = [(shell, client) for shell in SHELLS for client in CLIENTS]


@pytest.fixture(params=VARIANTS, ids=lambda v: "-".join(v))
def volume(request: pytest.FixtureRequest, tmp_path: Path, standin: Path) -> Iterator[Volume]:
    with serve("glpat-sync", token_lifetime=timedelta(hours=4)) as gitlab:
        yield _volume(request, tmp_path, standin, gitlab)


@pytest.fixture(params=VARIANTS, ids=lambda v: "-".join(v))
def https_volume(
    request: pytest.FixtureRequest, tmp_path: Path, standin: Path, cas: tuple[Path, Path, Path, Path]
) -> Iterator[Volume]:
    """The same against GitLab over HTTPS with a private CA."""
    _, cert, key, _ = cas
    with serve("glpat-sync", tls=(str(cert), str(key))) as gitlab:
        yield _volume(request, tmp_path, standin, gitlab)


def test_first_sync_writes_the_credentials_the_runner_needs_to_rotate(volume: Volume) -> None:
    runner = volume.gitlab.create_runner()
    done = volume.sync({"a": runner.token})
    assert done.returncode == 0, done.stderr
    entry = volume.runner("a")
    assert entry["token"] == runner.token and entry["id"] == runner.id
    # What makes the runner rotate its token in time: when it was obtained and when it expires.
    assert entry["token_expires_at"] and entry["token_obtained_at"]
    # Verified with the system id the runner will use (one runner manager, not a phantom one).
    system_id = (volume.dir / ".runner_system_id").read_text().strip()
    assert re.fullmatch(r"s_[0-9a-f]{12}", system_id)
    # register, then the check of the new file: both with the system id the runner will use (one runner
    # manager in GitLab, not phantom ones).
    assert {p.system_id for p in volume.gitlab.verified} == {system_id}
    assert oct((volume.dir / "config.toml").stat().st_mode & 0o777) == "0o600"
    assert not volume.staged.exists()  # the staged copy is removed


def test_a_token_the_runner_rotated_is_kept_and_settings_still_change(volume: Volume) -> None:
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}).returncode == 0
    # The runner rotates its token and writes it back (as the real one does before expiry).
    delivered = runner.token
    volume.gitlab.reset_token(runner)
    rotated = (volume.dir / "config.toml").read_text().replace(delivered, runner.token)
    (volume.dir / "config.toml").write_text(rotated)
    registered = len(volume.gitlab.verified)
    done = volume.sync({"a": delivered}, concurrent=5)
    assert done.returncode == 0, done.stderr
    assert volume.runner("a")["token"] == runner.token != delivered
    assert volume.config()["concurrent"] == 5
    # No register (the stack's token is not new); the checks of the new file (the sync's own request, then
    # the runner's verify) with the rotated token.
    assert [p.token for p in volume.gitlab.verified[registered:]] == [runner.token, runner.token]


def test_a_new_token_from_the_stack_replaces_the_old_one(volume: Volume) -> None:
    first, second = volume.gitlab.create_runner(), volume.gitlab.create_runner()
    assert volume.sync({"a": first.token}).returncode == 0
    done = volume.sync({"a": second.token})
    assert done.returncode == 0, done.stderr
    assert volume.runner("a")["token"] == second.token and volume.runner("a")["id"] == second.id


def test_a_token_gitlab_refuses_changes_nothing_and_is_not_printed(volume: Volume) -> None:
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}).returncode == 0
    before = (volume.dir / "config.toml").read_text()
    done = volume.sync({"a": runner.token, "b": "glrt-not-a-token-gitlab-knows"})
    assert done.returncode == 1
    assert "config sync: the check of runner b's token at " in done.stderr
    assert "failed: GitLab answered 403 Forbidden; nothing was changed" in done.stderr
    assert "glrt-not-a-token-gitlab-knows" not in done.stdout + done.stderr
    assert (volume.dir / "config.toml").read_text() == before


def test_a_new_volume_and_a_token_gitlab_refuses_names_the_way_out(volume: Volume) -> None:
    """The volume removed by hand after the runner rotated its token: the stack's token is revoked and
    the runner's own went with the volume. The sync says so (exit 3), and that a new token is the way."""
    runner = volume.gitlab.create_runner()
    delivered = runner.token
    volume.gitlab.reset_token(runner)
    done = volume.sync({"a": delivered})
    assert done.returncode == 3, done.stderr
    said = done.stderr.strip().splitlines()[-1]
    assert said.startswith("config sync: GitLab refuses the stack's token of runner a (403 Forbidden)")
    assert "set runnerTokens.a" in said and "tokenGeneration" in said
    assert delivered not in done.stdout + done.stderr
    assert not (volume.dir / "config.toml").exists()


def test_gitlab_answering_5xx_or_429_changes_nothing_and_names_the_answer(volume: Volume) -> None:
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}).returncode == 0
    before = (volume.dir / "config.toml").read_text()
    for status, named in ((500, "500 Internal Server Error"), (502, "502 Bad Gateway"), (429, "429 Too Many Requests")):
        volume.gitlab.fault(["verify"], seconds=30, status=status, retry_after=1)
        done = volume.sync({"a": runner.token}, concurrent=7)
        volume.gitlab.heal()
        assert done.returncode == 1, done.stderr
        endpoint = f"{volume.gitlab.base_url}/api/v4/runners/verify"
        said = f"config sync: runner a: POST {endpoint}: GitLab answered {named} (after 5"
        assert said in done.stderr
        assert (volume.dir / "config.toml").read_text() == before
        # Asked five times, as the runner's retry requester asks.
        assert len(volume.gitlab.answered_with_faults("verify")) % 5 == 0
    assert volume.sync({"a": runner.token}, concurrent=7).returncode == 0
    assert volume.config()["concurrent"] == 7


def test_a_removed_runner_leaves_the_config(volume: Volume) -> None:
    a, b = volume.gitlab.create_runner(), volume.gitlab.create_runner()
    assert volume.sync({"a": a.token, "b": b.token}).returncode == 0
    assert volume.sync({"a": a.token}).returncode == 0
    runners = volume.config()["runners"]
    assert isinstance(runners, list) and [r["name"] for r in runners] == ["a"]
    assert "b " not in (volume.dir / ".gitlab-runners-tokens").read_text()


def test_a_runner_whose_rotation_is_off_gets_no_expiry(volume: Volume) -> None:
    shared, own = volume.gitlab.create_runner(), volume.gitlab.create_runner()
    done = volume.sync({"shared": shared.token, "own": own.token}, rotation_off=frozenset({"shared"}))
    assert done.returncode == 0, done.stderr
    # No expiry: the runner never schedules a reset of the token other hosts hold (and its reset loop
    # goes on for the runner next to it, which keeps its expiry and rotates).
    assert "token_expires_at" not in volume.runner("shared") and volume.runner("shared")["token_obtained_at"]
    assert volume.runner("shared")["feature_flags"] == {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}
    assert volume.runner("own")["token_expires_at"]
    # Delivered before: kept as the runner holds it, still without an expiry; and a runner that held
    # one (it ran on one host before) loses it once it is shared.
    done = volume.sync({"shared": shared.token, "own": own.token}, rotation_off=frozenset({"shared", "own"}))
    assert done.returncode == 0, done.stderr
    assert "token_expires_at" not in volume.runner("shared") and "token_expires_at" not in volume.runner("own")
    assert volume.runner("own")["token"] == own.token
    # Back on one host: its expiry again, from GitLab, for the token it holds, so it rotates again.
    done = volume.sync({"shared": shared.token, "own": own.token})
    assert done.returncode == 0, done.stderr
    assert own.token_expires_at is not None
    assert volume.runner("own")["token_expires_at"] == own.token_expires_at.replace(microsecond=0)
    assert volume.runner("own")["token"] == own.token and volume.runner("own")["id"] == own.id


def _closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_ca_goes_live_with_the_config_it_was_checked_with(
    https_volume: Volume, cas: tuple[Path, Path, Path, Path]
) -> None:
    volume, (ca, _, _, _) = https_volume, cas
    runner = volume.gitlab.create_runner()
    done = volume.sync({"a": runner.token}, ca=ca.read_text())
    assert done.returncode == 0, done.stderr
    config, live_ca, mtime = volume.live()
    assert live_ca == ca.read_bytes()
    assert oct((volume.dir / "certs" / "127.0.0.1.crt").stat().st_mode & 0o777) == "0o644"
    # Checked with that CA: the sync's own request and the runner's verify reached GitLab over TLS.
    assert len(volume.gitlab.verified) == 3  # register, the sync's check, the runner's verify
    # The same CA again with another setting: config.toml changes, the CA file is not touched (the
    # runner would rebuild its TLS client for a new mtime).
    done = volume.sync({"a": runner.token}, concurrent=4, ca=ca.read_text())
    assert done.returncode == 0, done.stderr
    assert volume.config()["concurrent"] == 4 and volume.live()[1:] == (live_ca, mtime)
    assert config != volume.live()[0]


def test_a_wrong_ca_changes_neither_the_config_nor_the_ca(
    https_volume: Volume, cas: tuple[Path, Path, Path, Path]
) -> None:
    volume, (ca, _, _, other) = https_volume, cas
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}, ca=ca.read_text()).returncode == 0
    before = volume.live()
    # The runner's own verify passes this (it fails only on 403); the sync's check does not.
    done = volume.sync({"a": runner.token}, concurrent=7, ca=other.read_text())
    assert done.returncode == 1, done.stdout
    assert "runner a: POST https://127.0.0.1:" in done.stderr and "/api/v4/runners/verify: no answer" in done.stderr
    assert "with the CA 127.0.0.1.crt (is it the CA that signed the certificate of GitLab?)" in done.stderr
    assert "nothing was changed" in done.stderr and runner.token not in done.stdout + done.stderr
    assert volume.live() == before


@pytest.mark.parametrize("wrong", ["unreachable", "mistyped"])
def test_a_wrong_url_changes_nothing(volume: Volume, wrong: str) -> None:
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}).returncode == 0
    before = volume.live()
    url = f"http://127.0.0.1:{_closed_port()}" if wrong == "unreachable" else volume.gitlab.base_url + "/gitlab"
    done = volume.sync({"a": runner.token}, concurrent=7, url=url)
    assert done.returncode == 1, done.stdout
    if wrong == "unreachable":
        assert f"runner a: POST {url}/api/v4/runners/verify: no answer (" in done.stderr
    else:
        # The double answers an unknown path 401, as GitLab's API does without a user token.
        assert re.search(r"it answered 40\d where GitLab answers 200: is gitlabUrl the address of", done.stderr)
    assert volume.live() == before


def test_a_gitlab_answering_5xx_changes_nothing(volume: Volume) -> None:
    runner = volume.gitlab.create_runner()
    assert volume.sync({"a": runner.token}).returncode == 0
    before = volume.live()
    volume.gitlab.outage = 502
    done = volume.sync({"a": runner.token}, concurrent=7)
    assert done.returncode == 1, done.stdout
    assert "GitLab answered 502 Bad Gateway (after 5 tries): it is down or failing" in done.stderr
    assert volume.live() == before
    volume.gitlab.outage = None
    assert volume.sync({"a": runner.token}, concurrent=7).returncode == 0
    assert volume.config()["concurrent"] == 7


def test_no_token_is_ever_a_process_argument(volume: Volume) -> None:
    """Arguments are visible to every process of the host (ps, /proc): the tokens travel in files and the
    runner's environment. Shims in front of the HTTP client and the runner record every argument list."""
    shims = volume.dir.parent / "shims"
    shims.mkdir()
    volume.argv_log = shims / "argv.log"
    for name, real in ((volume.client, shutil.which(volume.client)), ("gitlab-runner", str(volume.standin))):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nprintf "%s\\n" "{name} $*" >> "{volume.argv_log}"\nexec "{real}" "$@"\n')
        shim.chmod(0o755)
    volume.standin = shims / "gitlab-runner"
    first, second = volume.gitlab.create_runner(), volume.gitlab.create_runner()
    assert volume.sync({"a": first.token, "b": second.token}).returncode == 0
    assert volume.sync({"a": first.token, "b": second.token}, concurrent=3).returncode == 0
    logged = volume.argv_log.read_text()
    # Both syncs ran the check and the runner (register for the new tokens, verify each time).
    checks = [line for line in logged.splitlines() if line.startswith(volume.client) and "/runners/verify" in line]
    assert len(checks) == 4 and logged.count("gitlab-runner register") == 2
    assert logged.count("gitlab-runner verify") == 2
    assert first.token not in logged and second.token not in logged


@pytest.fixture(params=VARIANTS, ids=lambda v: "-".join(v))
def mtls_volume(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    standin: Path,
    cas: tuple[Path, Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Volume, Path, Path]]:
    """GitLab behind mutual TLS, and a client certificate (and key) it accepts."""
    _, cert, key, _ = cas
    client_ca, client_cert, client_key = make_ca(tmp_path_factory.mktemp("client"), "client")
    with serve("glpat-sync", tls=(str(cert), str(key)), client_ca=str(client_ca)) as gitlab:
        yield _volume(request, tmp_path, standin, gitlab), client_cert, client_key


def test_a_client_certificate_is_presented_as_the_runner_presents_it(
    mtls_volume: tuple[Volume, Path, Path], cas: tuple[Path, Path, Path, Path]
) -> None:
    """tls-cert-file and tls-key-file (extraConfig) make the runner present a client certificate; the
    sync's check presents the same one, so a GitLab behind mutual TLS is not refused by mistake."""
    volume, client_cert, client_key = mtls_volume
    ca = cas[0].read_text()
    runner = volume.gitlab.create_runner()
    # A volume synced before (the stand-in's register knows no client certificate): the runner's token
    # is kept, so the sync checks the new file without registering.
    (volume.dir / ".runner_system_id").write_text("s_0123456789ab")
    (volume.dir / "config.toml").write_text(
        f'concurrent = 1\n\n[[runners]]\nname = "a"\nurl = "{volume.gitlab.base_url}"\ntoken = "{runner.token}"\n'
        'executor = "shell"\n'
    )
    (volume.dir / ".gitlab-runners-tokens").write_text(f"a {hashlib.sha256(runner.token.encode()).hexdigest()}\n")
    before = volume.live()
    done = volume.sync({"a": runner.token}, concurrent=3, ca=ca)
    assert done.returncode == 1 and "runner a: POST https://127.0.0.1:" in done.stderr and "no answer" in done.stderr
    assert volume.live() == before
    mtls = (f'tls-cert-file = "{client_cert}"', f'tls-key-file = "{client_key}"')
    done = volume.sync({"a": runner.token}, concurrent=3, ca=ca, extra=mtls)
    assert done.returncode == 0, done.stderr
    assert volume.config()["concurrent"] == 3 and [p.token for p in volume.gitlab.verified] == [runner.token]

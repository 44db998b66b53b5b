"""components/files/sync-config.sh, run as the config sync container runs it: with a POSIX shell, awk
and the runner (here the stand-in, a test double of gitlab-runner, whose `register` verifies a glrt-
token with the GitLab API double on 127.0.0.1). Where busybox is installed the same cases run under
busybox's sh and awk, as on the official alpine image."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from tests.gitlab_double.server import GitLabDouble, serve
from tests.standin_build import build_standin

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "components" / "files" / "sync-config.sh"
SHELLS = ["sh", *(["busybox"] if shutil.which("busybox") else [])]


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_standin(tmp_path_factory.mktemp("standin"))


@dataclass
class Volume:
    """A config volume as the sync container sees it, and a way to run the sync against it."""

    dir: Path
    staged: Path
    standin: Path
    shell: str
    gitlab: GitLabDouble

    def sync(self, runners: dict[str, str], concurrent: int = 2) -> subprocess.CompletedProcess[str]:
        lines = [f"concurrent = {concurrent}", ""]
        for name, token in runners.items():
            lines += ["[[runners]]", f'name = "{name}"', f'url = "{self.gitlab.base_url}"', f'token = "{token}"']
            lines += ['executor = "shell"', ""]
        self.staged.write_text("\n".join(lines))
        self.staged.chmod(0o600)
        command = ["busybox", "sh", str(SCRIPT)] if self.shell == "busybox" else ["sh", str(SCRIPT)]
        env = {
            **os.environ,
            "STAGED_CONFIG": str(self.staged),
            "CONFIG_DIR": str(self.dir),
            "GITLAB_RUNNER": str(self.standin),
        }
        if self.shell == "busybox":
            # busybox's own awk, sed and sha256sum first on PATH, as on alpine.
            applets = self.dir.parent / "applets"
            applets.mkdir(exist_ok=True)
            for applet in (
                "awk",
                "sed",
                "sha256sum",
                "grep",
                "cut",
                "sort",
                "mktemp",
                "cp",
                "mv",
                "rm",
                "mkdir",
                "touch",
                "cat",
            ):
                target = applets / applet
                if not target.exists():
                    target.symlink_to(shutil.which("busybox") or "busybox")
            env["PATH"] = f"{applets}:{env['PATH']}"
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    def config(self) -> dict[str, object]:
        return tomllib.loads((self.dir / "config.toml").read_text())

    def runner(self, name: str) -> dict[str, object]:
        runners = self.config()["runners"]
        assert isinstance(runners, list)
        return next(r for r in runners if r["name"] == name)


@pytest.fixture(params=SHELLS)
def volume(request: pytest.FixtureRequest, tmp_path: Path, standin: Path) -> Iterator[Volume]:
    with serve("glpat-sync", token_lifetime=timedelta(hours=4)) as gitlab:
        config_dir = tmp_path / "etc-gitlab-runner"
        config_dir.mkdir()
        yield Volume(config_dir, tmp_path / "staged.toml", standin, request.param, gitlab)


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
    # No register (the stack's token is not new); one check of the new file, with the rotated token.
    assert [p.token for p in volume.gitlab.verified[registered:]] == [runner.token]


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
        said = f"config sync: the check of the new config.toml failed: GitLab answered {named} (after the runner's"
        assert said in done.stderr
        assert (volume.dir / "config.toml").read_text() == before
        # The runner's retry requester asked five times.
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

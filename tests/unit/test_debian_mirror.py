"""scripts/lib.sh helpers, run by bash against fake inputs: where Debian comes from."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "scripts" / "debian-mirror.sh"

DEBIAN_SOURCES = """\
Types: deb
# a comment inside the stanza
URIs: http://mirror.example.net/debian/ http://second.example.net/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example.net/debian-security
Suites: bookworm-security
Components: main
"""


def debian_mirror(apt: Path, suite: str = "bookworm", **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GITLAB_RUNNERS_DEBIAN_MIRROR"}
    environment.update({"GITLAB_RUNNERS_APT_DIR": str(apt), **env})
    return subprocess.run(
        ["bash", "-c", f'source "{LIB}" && debian_mirror "$1"', "debian_mirror", suite],
        env=environment,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture()
def apt(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_the_mirror_comes_from_the_deb822_sources(apt: Path) -> None:
    (apt / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    (apt / "sources.list.d" / "zz-other.sources.disabled").write_text("Types: deb\nURIs: http://other/debian\n")
    done = debian_mirror(apt)
    assert (done.returncode, done.stdout) == (0, "http://mirror.example.net/debian\n")


def test_the_first_debian_archive_wins_and_others_are_skipped(apt: Path) -> None:
    (apt / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb-src http://src.example/debian bookworm main\n"
        # Docker's repository: its path ends in /debian and it serves bookworm, but it is no Debian archive.
        "deb [arch=amd64 signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian "
        "bookworm stable\n"
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb https://deb.nodesource.com/node_20.x nodistro main\n"
    )
    (apt / "sources.list.d" / "a-disabled.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    (apt / "sources.list.d" / "b-local.list").write_text("deb http://apt.internal:3142/archive bookworm main contrib\n")
    (apt / "sources.list.d" / "c-debian.sources").write_text(DEBIAN_SOURCES)
    assert debian_mirror(apt).stdout == "http://apt.internal:3142/archive\n"
    # A machine on another release: the archive is the one under /debian.
    assert debian_mirror(apt, suite="trixie").stdout == "http://mirror.example.net/debian\n"


def test_the_override_wins_and_no_source_is_an_error(apt: Path) -> None:
    (apt / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    done = debian_mirror(apt, GITLAB_RUNNERS_DEBIAN_MIRROR="http://override.example/debian/")
    assert done.stdout == "http://override.example/debian\n"
    (apt / "sources.list.d" / "debian.sources").unlink()
    (apt / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu noble main\n")
    done = debian_mirror(apt)
    assert (done.returncode, done.stdout) == (1, "")


def test_versions_env_names_no_host() -> None:
    pins = (ROOT / "scripts" / "versions.env").read_text()
    assert not [line for line in pins.splitlines() if "://" in line and not line.startswith("#")]

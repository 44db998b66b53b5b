"""A config.toml edited by hand on a Docker host is put back by the next `pulumi up`.

config.toml lives in the runner's config volume, where no resource of the docker provider can see it:
`pulumi refresh` reads containers and volumes, never a file inside one. So on every run the program
reads it itself, through the host's Docker API (from the runner container, as `docker cp` does), and
compares it with what the stack renders: every value the stack renders must be there, unchanged, and
no runner added. The runner's own credentials (id, token, token_obtained_at, token_expires_at) are
left out, as are keys the runner writes on its own (the real runner saves every default when it saves
a rotated token). A difference gives the config sync container a new `io.gitlab-runners.restored`
label, which replaces it: the sync installs the stack's file again, keeping the runner's credentials,
and the runner reloads it. Without a difference the label the existing sync container carries is kept,
so the next run changes nothing.

Hosts the program cannot reach itself (ssh://, TLS material given as secrets) are not checked.
"""

from __future__ import annotations

import hashlib
import io
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

from components import docker_health

RESTORED_LABEL = "io.gitlab-runners.restored"
CONFIG_FILE = "/etc/gitlab-runner/config.toml"
# Written by the runner (its registration and its token rotation), not by the stack.
CREDENTIALS = frozenset({"id", "token", "token_obtained_at", "token_expires_at"})


class Observation(NamedTuple):
    """What a host holds: the config.toml its runner container sees (None: not there, or no container),
    and the restore label of the current sync container (None: none, or no sync container)."""

    config: str | None
    restored: str | None


def _without_credentials(document: Mapping[str, Any]) -> dict[str, Any]:
    stripped = dict(document)
    runners = stripped.get("runners")
    if isinstance(runners, list):
        stripped["runners"] = [
            {k: v for k, v in r.items() if k not in CREDENTIALS} if isinstance(r, Mapping) else r for r in runners
        ]
    return stripped


def _holds(observed: Any, rendered: Any) -> bool:
    """Every value of `rendered` is in `observed`, unchanged (tables key by key, [[runners]] by name)."""
    if isinstance(rendered, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(key in observed and _holds(observed[key], value) for key, value in rendered.items())
    if isinstance(rendered, list) and rendered and all(isinstance(r, Mapping) for r in rendered):
        if not isinstance(observed, list) or len(observed) != len(rendered):
            return False
        if all("name" in r for r in rendered):  # [[runners]]: by name, whatever the order
            by_name = {o.get("name"): o for o in observed if isinstance(o, Mapping)}
            return len(by_name) == len(rendered) and all(
                r["name"] in by_name and _holds(by_name[r["name"]], r) for r in rendered
            )
        return all(_holds(o, r) for o, r in zip(observed, rendered, strict=True))
    return bool(observed == rendered)


def drifted(observed: str, rendered: str) -> bool:
    """config.toml as found differs from the stack's in a value the stack owns (or does not load)."""
    import tomllib  # here: only a host that holds a config.toml needs the parser

    try:
        found = tomllib.loads(observed)
    except tomllib.TOMLDecodeError:
        return True
    return not _holds(_without_credentials(found), _without_credentials(tomllib.loads(rendered)))


def observe(engine: docker_health.Engine, container_name: str) -> Observation:
    """Read config.toml from the runner container and the label from its sync container."""
    config = None
    restored = None
    try:
        sync = docker_health.request(engine, f"/containers/{container_name}-sync/json")
        if isinstance(sync, dict):
            restored = ((sync.get("Config") or {}).get("Labels") or {}).get(RESTORED_LABEL)
        path = urllib.parse.quote(CONFIG_FILE)
        archive = docker_health.request(engine, f"/containers/{container_name}/archive?path={path}", raw=True)
        if isinstance(archive, bytes):
            config = _unpacked(archive)
    except (OSError, ValueError, KeyError):
        pass
    return Observation(config, restored)


def _unpacked(archive: bytes) -> str | None:
    """config.toml out of the archive Docker sends (a tar of the one file); None when it is not in it."""
    import tarfile  # here: only a host that holds a config.toml sends one

    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.extractfile("config.toml")
            return member.read().decode() if member is not None else None
    except (KeyError, tarfile.TarError):
        return None


def restore_label(engine: docker_health.Engine, container_name: str, rendered: str) -> str | None:
    """The sync container's restore label for this run: a new one when config.toml drifted, else the
    one it carries (None: it carries none)."""
    seen = observe(engine, container_name)
    if seen.config is None or not drifted(seen.config, rendered):
        return seen.restored
    digest = hashlib.sha256(seen.config.encode()).hexdigest()[:12]
    return f"{int(time.time())}-{digest}"

"""extraConfig and extraGlobalConfig: any other config.toml key, checked against the runner's own key tree.

Raw TOML passed through is what other tools offer, and there a misspelt key is silently ignored by the
runner. Here every key is looked up in config_keys.json, the key tree of config.toml at the pinned
runner release, generated from the runner's source (scripts/config-keys; tools/config-keys says how).
A key the tree lacks is an error naming the nearest known one; a value of the wrong type is an error
naming the type; a key the typed settings render is an error naming the typed key; a credential is
refused, since the stack file keeps these in plain text.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from components.settings.model import EXECUTORS, SECRET_KEYS, StackConfig
from components.settings.problems import Problem, example_for, flow, key_path, looks_like_credential, show

KEYS_PATH = Path(__file__).with_name("config_keys.json")

# A Go duration as time.ParseDuration reads it ("90s", "1h30m", "1.5h").
GO_DURATION = re.compile(r"^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$")
INT64 = (-(2**63), 2**63 - 1)

# What each value type of the tree is called in a message, and a right value of it.
EXPECTED = {
    "string": ("a string", "text"),
    "integer": ("an integer", 1),
    "unsigned": ("an integer of 0 or more", 1),
    "float": ("a number", 1.5),
    "boolean": ("true or false", True),
    "duration": ('a duration string such as "30m" or "1h30m"', "30m"),
    "datetime": ('an RFC 3339 date-time string such as "2025-01-31T12:00:00Z"', "2025-01-31T12:00:00Z"),
    "string-or-array": ("a string or a list of strings", ["if-not-present"]),
    "any": ("any value", "value"),
}

# Key names that hold a credential (compared lower-case, without `_` and `-`).
SECRET_NAMES = re.compile(
    r"^(token|password|secretkey|accesskey|accountkey|privatekey)$|token$|secret|password|credential"
)
# Keys whose names say secret but that only name one (a Kubernetes Secret to mount or pull with).
NAMES_A_SECRET = {
    ("kubernetes", "image_pull_secrets"),
    ("kubernetes", "use_service_account_image_pull_secrets"),
    ("kubernetes", "volumes", "secret"),
}


class Owner(NamedTuple):
    """The typed setting that renders a config.toml key."""

    loc: tuple[str, ...] = ()
    """The typed key, from the top of the stack config; `runners` stands for the runner's own entry."""
    why: str = ""
    """Said instead, when no typed key sets it."""
    executors: tuple[str, ...] = ()
    """Only for these executors (all when empty)."""


def _runner(*alias: str) -> Owner:
    return Owner(("runners", *alias))


REGISTRATION = Owner(
    why="is written by the runner's registration (created by the stack, or runnerTokens), never by hand"
)
# `[[runners]]` keys runner_config.py renders from typed settings, by path inside the runner's entry.
RUNNER_OWNED: dict[tuple[str, ...], Owner] = {
    ("name",): _runner("name"),
    ("url",): Owner(("gitlabUrl",)),
    ("executor",): _runner("executor"),
    ("request_concurrency",): _runner("requestConcurrency"),
    ("limit",): _runner("limit"),
    ("tls-ca-file",): Owner(("gitlabCa",)),
    ("cache",): Owner(("cache",)),
    ("id",): REGISTRATION,
    ("token_obtained_at",): REGISTRATION,
    ("token_expires_at",): REGISTRATION,
    ("feature_flags", "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION"): Owner(
        ("runners", "tokenGeneration"),
        "is set by the stack on Kubernetes, where the stack owns the token: rotate it with tokenGeneration",
        executors=("kubernetes",),
    ),
    ("docker", "image"): _runner("image"),
    ("docker", "privileged"): _runner("privileged"),
    ("docker", "volumes"): _runner("volumes"),
    ("docker", "pull_policy"): _runner("pullPolicy"),
    ("kubernetes", "image"): _runner("image"),
    ("kubernetes", "privileged"): _runner("privileged"),
    ("kubernetes", "pull_policy"): _runner("pullPolicy"),
    ("kubernetes", "namespace"): _runner("jobPods", "namespace"),
    ("kubernetes", "namespace_per_job"): _runner("jobPods", "namespacePerJob"),
    ("kubernetes", "service_account"): _runner("jobPods", "serviceAccount"),
    ("kubernetes", "node_selector"): _runner("jobPods", "nodeSelector"),
    ("kubernetes", "node_tolerations"): _runner("jobPods", "tolerations"),
    ("kubernetes", "helper_image"): _runner("jobPods", "helperImage"),
    ("kubernetes", "helper_image_flavor"): _runner("jobPods", "helperImageFlavor"),
    ("kubernetes", "cpu_limit_overwrite_max_allowed"): _runner("jobPods", "maxCpuLimit"),
    ("kubernetes", "memory_limit_overwrite_max_allowed"): _runner("jobPods", "maxMemoryLimit"),
    ("kubernetes", "cpu_request_overwrite_max_allowed"): _runner("jobPods", "maxCpuRequest"),
    ("kubernetes", "memory_request_overwrite_max_allowed"): _runner("jobPods", "maxMemoryRequest"),
    ("kubernetes", "cpu_request"): _runner("jobResources", "cpuRequest"),
    ("kubernetes", "memory_request"): _runner("jobResources", "memoryRequest"),
    ("kubernetes", "cpu_limit"): _runner("jobResources", "cpuLimit"),
    ("kubernetes", "memory_limit"): _runner("jobResources", "memoryLimit"),
    ("autoscaler", "plugin"): _runner("autoscaler", "plugin"),
    ("autoscaler", "capacity_per_instance"): _runner("autoscaler", "capacityPerInstance"),
    ("autoscaler", "max_use_count"): _runner("autoscaler", "maxUseCount"),
    ("autoscaler", "max_instances"): _runner("autoscaler", "maxInstances"),
    ("autoscaler", "plugin_config"): _runner("autoscaler", "pluginConfig"),
    ("autoscaler", "policy"): _runner("autoscaler", "policies"),
    **{
        ("autoscaler", "connector_config", name): _runner("autoscaler", "connectorConfig", alias)
        for name, alias in (
            ("os", "os"),
            ("arch", "arch"),
            ("protocol", "protocol"),
            ("username", "username"),
            ("use_static_credentials", "useStaticCredentials"),
            ("use_external_addr", "useExternalAddr"),
            ("key_path", "keyPath"),
            ("timeout", "timeout"),
            ("keepalive", "keepalive"),
        )
    },
}
# Global keys runner_config.py (and the chart, from the same settings) renders.
GLOBAL_OWNED: dict[tuple[str, ...], Owner] = {
    ("concurrent",): Owner(("concurrent",)),
    ("check_interval",): Owner(("checkInterval",)),
    ("shutdown_timeout",): Owner(("shutdownTimeout",)),
    ("log_level",): Owner(("logLevel",)),
    ("listen_address",): Owner(("metrics",)),
    ("session_server",): Owner(("sessionServer",)),
    ("runners",): Owner(
        ("runners",), "are the stack's runners: set them there, and each one's keys in its extraConfig"
    ),
}


@functools.cache
def config_keys() -> dict[str, Any]:
    """The committed key tree: {runner_version, source, keys, tree}."""
    document: dict[str, Any] = json.loads(KEYS_PATH.read_text())
    return document


def global_tree() -> dict[str, Any]:
    table: dict[str, Any] = config_keys()["tree"]
    return table


def runner_tree() -> dict[str, Any]:
    runners: dict[str, Any] = global_tree()["table"]["runners"]["array"]
    return runners


def count_keys(node: Any) -> int:
    """Keys in every table under a node (what the generator records as `keys`)."""
    if isinstance(node, dict) and "table" in node:
        return sum(1 + count_keys(child) for child in node["table"].values())
    if isinstance(node, dict):
        return count_keys(next(iter(node.values())))
    return 0


def type_name(node: Any) -> str:
    """A value type in a message's words."""
    if isinstance(node, str):
        return EXPECTED[node][0]
    if "array" in node:
        return f"a list of {_plural(node['array'])}"
    if "map" in node:
        return f"a table of {_plural(node['map'])} under keys of your choice"
    return "a table"


def _plural(node: Any) -> str:
    words = {"a string": "strings", "an integer": "integers", "true or false": "true/false values", "a table": "tables"}
    name = type_name(node)
    return words.get(name, name)


def example_value(node: Any, depth: int = 0) -> Any:
    """A right value of a type, for a message's example."""
    if isinstance(node, str):
        return EXPECTED[node][1]
    if "array" in node:
        return [example_value(node["array"], depth + 1)]
    if "map" in node:
        return {"key": example_value(node["map"], depth + 1)}
    if depth > 2 or not node["table"]:
        return {}
    name, child = sorted(node["table"].items())[0]
    return {name: example_value(child, depth + 1)}


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_NAMES.search(re.sub(r"[_-]", "", name.lower())))


class _Walk(NamedTuple):
    """One extraConfig (or extraGlobalConfig) being checked."""

    at: tuple[str | int, ...]
    """Where it is in the stack config, for key paths."""
    owned: Mapping[tuple[str, ...], Owner]
    executor: str | None
    runner_index: int | None
    """The runner's index, for the typed keys of `runners`."""
    scope: str
    """How config.toml calls the top of it."""

    def key(self, path: Sequence[str | int]) -> str:
        shown = [
            p if isinstance(p, int) or not looks_like_credential(p) else "(a key shaped like a credential)"
            for p in path
        ]
        return key_path((*self.at, *shown))

    def table(self, names: Sequence[str]) -> str:
        if not names:
            return self.scope
        if self.scope == "[[runners]]":
            return "[runners." + ".".join(names) + "]"
        return "[" + ".".join(names) + "]"

    def owner(self, names: tuple[str, ...]) -> Owner | None:
        """The typed setting that renders this key for this runner, if one does."""
        owner = self.owned.get(names)
        if owner is None or (owner.executors and self.executor not in owner.executors):
            return None
        return owner

    def typed(self, owner: Owner) -> tuple[str | int, ...]:
        if owner.loc[:1] == ("runners",) and self.runner_index is not None:
            return ("runners", self.runner_index, *owner.loc[1:])
        return owner.loc


def _names(path: Sequence[str | int]) -> tuple[str, ...]:
    return tuple(p for p in path if isinstance(p, str))


def _credential_value(walk: _Walk, path: tuple[str | int, ...]) -> Problem:
    return Problem(
        walk.key(path),
        "holds a value shaped like a credential, which the stack file would keep in plain text",
        "remove it",
    )


def _string_keys(walk: _Walk, value: Mapping[Any, Any], path: tuple[str | int, ...]) -> Iterator[Problem]:
    for name in value:
        if not isinstance(name, str):
            yield Problem(walk.key(path), f"has a key that is not a string: {show(name)}", f"{show(str(name))}: ...")


def _check(walk: _Walk, node: Any, value: Any, path: tuple[str | int, ...]) -> Iterator[Problem]:
    """Problems of one value against its type in the tree."""
    names = _names(path)
    example = flow(example_value(node))
    if path and isinstance(path[-1], int):  # an item: the example is the list
        example = f"[{example}]"
    wrong = Problem(walk.key(path), f"must be {type_name(node)}, got {show(value)}", f"{names[-1]}: {example}")
    if isinstance(value, str) and looks_like_credential(value):
        yield _credential_value(walk, path)
        return
    if isinstance(value, dict) and any(not isinstance(name, str) for name in value):
        yield from _string_keys(walk, value, path)
        return
    if isinstance(node, dict) and "table" in node:
        if not isinstance(value, dict):
            yield wrong
            return
        yield from _check_table(walk, node["table"], value, path)
        return
    if isinstance(node, dict) and "array" in node:
        if not isinstance(value, list):
            yield wrong
            return
        for position, item in enumerate(value):
            yield from _check(walk, node["array"], item, (*path, position))
        return
    if isinstance(node, dict) and "map" in node:
        if not isinstance(value, dict):
            yield wrong
            return
        for name, item in value.items():
            owner = walk.owner((*_names(path), name))
            if owner is not None:
                yield from _owned(walk, owner, (*path, name))
            elif node["map"] == "any" and _is_secret_name(name):  # a plugin's own settings
                yield _secret(walk, (*path, name))
            else:
                yield from _check(walk, node["map"], item, (*path, name))
        return
    if node == "any":
        yield from _check_any(walk, value, path)
        return
    if not _fits(node, value):
        yield wrong


def _fits(kind: str, value: Any) -> bool:
    integer = isinstance(value, int) and not isinstance(value, bool)
    if kind == "string" or kind == "datetime":
        return isinstance(value, str)
    if kind == "integer":
        return integer and INT64[0] <= value <= INT64[1]
    if kind == "unsigned":
        return integer and 0 <= value <= INT64[1]
    if kind == "float":
        return (integer and abs(value) <= 2**53) or isinstance(value, float)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "duration":
        return (isinstance(value, str) and bool(GO_DURATION.match(value))) or (
            integer and INT64[0] <= value <= INT64[1]
        )
    if kind == "string-or-array":
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    return False


def _check_any(walk: _Walk, value: Any, path: tuple[str | int, ...]) -> Iterator[Problem]:
    """A free value (a plugin's own settings): no key is unknown, but credentials stay out."""
    if value is None:
        yield Problem(walk.key(path), "must be a value (TOML has no null)", f"{_names(path)[-1]}: value")
    elif isinstance(value, str) and looks_like_credential(value):
        yield _credential_value(walk, path)
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _check_any(walk, item, (*path, position))
    elif isinstance(value, dict) and any(not isinstance(name, str) for name in value):
        yield from _string_keys(walk, value, path)
    elif isinstance(value, dict):
        for name, item in value.items():
            if _is_secret_name(name):
                yield _secret(walk, (*path, name))
            else:
                yield from _check_any(walk, item, (*path, name))


def _check_table(
    walk: _Walk, keys: Mapping[str, Any], value: Mapping[str, Any], path: tuple[str | int, ...]
) -> Iterator[Problem]:
    names = _names(path)
    for name, item in value.items():
        at = (*path, name)
        if name not in keys:
            nearest = difflib.get_close_matches(name, list(keys), n=1, cutoff=0.0)
            hint = f'; the nearest known key there is "{nearest[0]}"' if nearest else ""
            version = config_keys()["runner_version"]
            yield Problem(
                walk.key(at),
                f"is not a key of {walk.table(names)} in config.toml of gitlab-runner {version}{hint}",
                f"{nearest[0]}: {flow(example_value(keys[nearest[0]]))}" if nearest else "remove it",
            )
            continue
        if _is_secret_name(name) and (*names, name) not in NAMES_A_SECRET:
            yield _secret(walk, at)
            continue
        owner = walk.owner((*names, name))
        if owner is not None:
            yield from _owned(walk, owner, at)
            continue
        yield from _check(walk, keys[name], item, at)


def _secret(walk: _Walk, path: tuple[str | int, ...]) -> Problem:
    typed = ", ".join(SECRET_KEYS)
    return Problem(
        walk.key(path),
        "is a credential, which the stack file would keep in plain text: use the typed secret settings "
        f"({typed}; pulumi config set --secret), or masked CI/CD variables for jobs",
        "remove it",
    )


def _owned(walk: _Walk, owner: Owner, path: tuple[str | int, ...]) -> Iterator[Problem]:
    if not owner.loc:
        yield Problem(walk.key(path), owner.why, "remove it")
        return
    typed = walk.typed(owner)
    why = owner.why or f"is rendered by the stack from {key_path(typed)}: set that instead"
    yield Problem(walk.key(path), why, example_for(typed))


def problems(config: StackConfig) -> Iterator[Problem]:
    """Every problem of the stack's extraGlobalConfig and of each runner's extraConfig."""
    walk = _Walk(("extraGlobalConfig",), GLOBAL_OWNED, None, None, "the global part")
    yield from _check_table(walk, global_tree()["table"], config.extra_global_config, ())
    for index, runner in enumerate(config.runners or ()):
        executor = runner.executor or EXECUTORS[config.target][0]
        walk = _Walk(("runners", index, "extraConfig"), RUNNER_OWNED, executor, index, "[[runners]]")
        yield from _check_table(walk, runner_tree()["table"], runner.extra_config, ())

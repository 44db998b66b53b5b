"""Reading the stack's config from the engine, and its secrets, which never enter the model.

Secrets are checked for where they are stored (a credential in plain text in a stack file is refused)
and handed on only as secret Outputs; no message ever echoes one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType, UnionType
from typing import Any, Literal, NamedTuple, Union, get_args, get_origin

import pulumi
from pulumi.runtime import config as runtime_config

from components.settings.model import PROJECT, StackConfig
from components.settings.problems import Problem

RUNNER_TOKENS = "runnerTokens"
DOCKER_TLS = "dockerTls"
CACHE_CREDENTIALS = "cacheCredentials"
TLS_PARTS = ("caCert", "cert", "key")


class DockerTls(NamedTuple):
    """PEM material for a tcp:// Docker host, each part a secret Output."""

    ca_cert: pulumi.Output[str]
    cert: pulumi.Output[str]
    key: pulumi.Output[str]


class Secrets(NamedTuple):
    """Secret inputs, only ever held as secret Outputs."""

    gitlab_token: pulumi.Output[str] | None
    gitlab_token_is_secret: bool = True
    runner_tokens: Mapping[str, pulumi.Output[str]] = MappingProxyType({})
    """Runner name -> the one token of a runner created outside the stack."""
    runner_host_tokens: Mapping[str, Mapping[str, pulumi.Output[str]]] = MappingProxyType({})
    """Runner name -> Docker host -> token: one GitLab runner per host, created outside the stack."""
    docker_tls: Mapping[str, DockerTls] = MappingProxyType({})
    cache_credentials: dict[str, pulumi.Output[str]] | None = None
    """The cache service's credentials by key (accessKey, secretKey, ...), None when not set."""


def _is_text(annotation: Any) -> bool:
    """A key whose value is a string: the engine's string is the value itself, not JSON text."""
    if annotation is str:
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        return all(_is_text(a) or a is type(None) for a in get_args(annotation))
    # Annotated[str, ...]
    metadata = getattr(annotation, "__metadata__", None)
    return metadata is not None and _is_text(get_args(annotation)[0])


_TEXT_KEYS = {(f.alias or n) for n, f in StackConfig.model_fields.items() if _is_text(f.annotation)}


def decode(name: str, raw: Any) -> Any:
    """Stack config arrives as strings: structured values, numbers and booleans as JSON text."""
    if not isinstance(raw, str) or name in _TEXT_KEYS:
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def stack_values() -> dict[str, Any]:
    """Every `gitlab-runners:*` value the engine (or a test) provided, decoded."""
    raw: dict[str, Any] = dict(runtime_config.get_config_env() or {})
    raw.update(runtime_config.CONFIG.get())
    prefix = f"{PROJECT}:"
    return {k[len(prefix) :]: decode(k[len(prefix) :], v) for k, v in raw.items() if k.startswith(prefix)}


def _pop_secret(
    values: dict[str, Any], name: str, is_secret: bool, holds: str, example: str
) -> tuple[Any, list[Problem]]:
    """The raw value of a secret key, popped from `values`: None when unset, or when stored in plain
    text (then a problem, which never echoes the value)."""
    raw = values.pop(name, None)
    if raw is None or is_secret:
        return raw, []
    return None, [Problem(f"{PROJECT}:{name}", f"must be stored as a secret (it holds {holds})", example)]


def _is_runner_token(token: Any) -> bool:
    return isinstance(token, str) and token.startswith("glrt-") and len(token) > 10


def runner_tokens(values: dict[str, Any], is_secret: bool) -> tuple[dict[str, str | dict[str, str]], list[Problem]]:
    """The existing runner tokens (popped from `values`): a secret object of runner name -> glrt- token,
    or runner name -> {Docker host -> glrt- token} for one GitLab runner per host."""
    key = f"{PROJECT}:{RUNNER_TOKENS}"
    example = f"pulumi config set --secret --path '{key}.docker-1'  (then paste the glrt- token)"
    raw, stored = _pop_secret(values, RUNNER_TOKENS, is_secret, "runner tokens", example)
    if raw is None:
        return {}, stored
    if not isinstance(raw, dict):
        return {}, [Problem(key, "must be an object mapping runner names to tokens", example)]
    found: dict[str, str | dict[str, str]] = {}
    problems = []
    for name, token in raw.items():
        if isinstance(token, dict) and token:
            host_example = f"pulumi config set --secret --path '{key}.{name}.<host>'  (one glrt- token per host)"
            bad = [h for h, t in token.items() if not _is_runner_token(t)]
            problems += [
                Problem(f"{key}.{name}.{h}", "must be a runner authentication token starting with glrt-", host_example)
                for h in bad
            ]
            found[str(name)] = {str(h): str(t) for h, t in token.items()}
            continue
        # Kept even when wrong: the runner brings a token, so nothing more is reported about it.
        found[str(name)] = str(token)
        if not _is_runner_token(token):
            problems.append(
                Problem(
                    f"{key}.{name}",
                    "must be a runner authentication token starting with glrt- (or an object of one per Docker host)",
                    example,
                )
            )
    return found, problems


def docker_tls(values: dict[str, Any], is_secret: bool) -> tuple[dict[str, dict[str, str]], list[Problem]]:
    """TLS material of tcp:// Docker hosts (popped from `values`): a secret object host -> PEM parts."""
    key = f"{PROJECT}:{DOCKER_TLS}"
    example = f"pulumi config set --secret --path '{key}.build-1.key' < key.pem  (likewise caCert and cert)"
    raw, stored = _pop_secret(values, DOCKER_TLS, is_secret, "private keys", example)
    if raw is None:
        return {}, stored
    if not isinstance(raw, dict):
        return {}, [Problem(key, "must be an object mapping Docker host names to {caCert, cert, key}", example)]
    found: dict[str, dict[str, str]] = {}
    problems = []
    for host, parts in raw.items():
        if not isinstance(parts, dict) or set(parts) != set(TLS_PARTS):
            problems.append(Problem(f"{key}.{host}", "must hold exactly caCert, cert and key", example))
            continue
        bad = [p for p in TLS_PARTS if not (isinstance(parts[p], str) and "-----BEGIN" in parts[p])]
        if bad:
            problems.append(Problem(f"{key}.{host}.{bad[0]}", "must be PEM text (-----BEGIN ...)", example))
            continue
        found[str(host)] = {p: str(parts[p]) for p in TLS_PARTS}
    return found, problems


def cache_credentials(values: dict[str, Any], is_secret: bool) -> tuple[dict[str, str] | None, list[Problem]]:
    """The distributed cache's credentials (popped from `values`): a secret object of strings."""
    key = f"{PROJECT}:{CACHE_CREDENTIALS}"
    example = f"pulumi config set --secret --path '{key}.accessKey'  (likewise secretKey)"
    raw, stored = _pop_secret(values, CACHE_CREDENTIALS, is_secret, "the cache's credentials", example)
    if raw is None:
        return None, stored
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) and v for k, v in raw.items()):
        return None, [Problem(key, "must be an object of non-empty strings", example)]
    return dict(raw), []


def read_secrets(values: dict[str, Any]) -> tuple[Secrets, list[Problem]]:
    """Take the secrets out of `values` (they never reach the model) and check how they are stored."""
    tokens, problems = runner_tokens(values, runtime_config.is_config_secret(f"{PROJECT}:{RUNNER_TOKENS}"))
    tls, tls_problems = docker_tls(values, runtime_config.is_config_secret(f"{PROJECT}:{DOCKER_TLS}"))
    cache, cache_problems = cache_credentials(values, runtime_config.is_config_secret(f"{PROJECT}:{CACHE_CREDENTIALS}"))
    gitlab_token = pulumi.Config("gitlab").get_secret("token")
    secrets = Secrets(
        gitlab_token=gitlab_token,
        gitlab_token_is_secret=runtime_config.is_config_secret("gitlab:token"),
        runner_tokens={name: pulumi.Output.secret(t) for name, t in tokens.items() if isinstance(t, str)},
        runner_host_tokens={
            name: {host: pulumi.Output.secret(token) for host, token in t.items()}
            for name, t in tokens.items()
            if isinstance(t, dict)
        },
        docker_tls={
            host: DockerTls(*(pulumi.Output.secret(parts[p]) for p in TLS_PARTS)) for host, parts in tls.items()
        },
        cache_credentials=None if cache is None else {k: pulumi.Output.secret(v) for k, v in cache.items()},
    )
    return secrets, problems + tls_problems + cache_problems

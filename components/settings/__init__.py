"""Stack settings: read once, typed, validated.

This package is the only reader of `pulumi.Config`. `parse_settings` is a pure function over plain
data, so every rule can be unit-tested; `load_settings` feeds it the stack's config and turns the
secrets into secret Outputs. Any problem stops the program before a single resource is registered,
with one line per problem naming the key, what is wrong, and a right value.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from components.settings import rules
from components.settings.manager import ManagerSettings, manager_settings
from components.settings.model import (
    CHART_REPOSITORY,
    CHART_VERSION,
    DEFAULT_JOB_IMAGE,
    EXECUTORS,
    PROJECT,
    RUNNER_VERSION,
    DockerHost,
    DockerTarget,
    ImageBuild,
    KubernetesTarget,
    Runner,
    StackConfig,
)
from components.settings.problems import Problem, SettingsError, from_validation_error
from components.settings.resolve import (
    GlobalSettings,
    Settings,
    read_gitlab_ca,
    resolve_docker,
    resolve_global,
    resolve_kubernetes,
    resolve_runners,
)
from components.settings.secrets import DockerTls, Secrets, read_secrets, stack_values
from components.settings.section import validate

__all__ = [
    "CHART_REPOSITORY",
    "CHART_VERSION",
    "DEFAULT_JOB_IMAGE",
    "PROJECT",
    "RUNNER_VERSION",
    "DockerHost",
    "DockerTarget",
    "DockerTls",
    "GlobalSettings",
    "ImageBuild",
    "KubernetesTarget",
    "ManagerSettings",
    "Problem",
    "Runner",
    "Secrets",
    "Settings",
    "SettingsError",
    "load_settings",
    "manager_settings",
    "parse_settings",
]


def parse_settings(
    values: Mapping[str, Any],
    stack: str,
    existing_token_names: frozenset[str] = frozenset(),
    host_tokens: Mapping[str, frozenset[str]] | None = None,
    has_gitlab_token: bool = False,
    extra_problems: tuple[Problem, ...] = (),
    dry_run: bool = False,
    gitlab_token_is_secret: bool = True,
    docker_tls_names: frozenset[str] = frozenset(),
    cache_credential_keys: frozenset[str] | None = None,
) -> Settings:
    """Validate the project's config values (keys without the `gitlab-runners:` prefix).

    `existing_token_names` are the runners that bring their own token (runnerTokens); `host_tokens`
    says, for those that bring one per Docker host, which hosts. Raises SettingsError listing every
    root-cause problem found.
    """
    host_tokens = dict(host_tokens or {})
    existing_token_names = existing_token_names | frozenset(host_tokens)
    data = dict(values)
    problems = list(extra_problems)
    problems += rules.other_target_problems(data)
    raw_target = data.get("target")
    target = raw_target if isinstance(raw_target, str) and raw_target in EXECUTORS else None
    for section in ("docker", "kubernetes"):
        if target is not None and section != target:
            data.pop(section, None)
    config = validate(StackConfig, data)
    if config is None:
        # Not a config the quick check accepts: pydantic decides, and its report names the keys.
        from pydantic import ValidationError

        from components.settings import pydantic_model

        try:
            config = pydantic_model.validate(StackConfig, data)
        except ValidationError as error:
            raise SettingsError([*problems, *from_validation_error(error, target)]) from None
    context = rules.Context(
        existing_token_names=existing_token_names,
        host_tokens=host_tokens,
        has_gitlab_token=has_gitlab_token,
        gitlab_token_is_secret=gitlab_token_is_secret,
        docker_tls_names=docker_tls_names,
        cache_credential_keys=cache_credential_keys,
        dry_run=dry_run,
    )
    problems += rules.problems(config, context)
    warnings: list[str] = []
    missing = rules.missing_api_token(config, context)
    if missing is not None:
        # A preview contacts no GitLab, so it can show the plan; `up` stops here.
        if dry_run:
            warnings.append(f"{missing} (preview continues; `pulumi up` will stop here)")
        else:
            problems.append(missing)
    gitlab_ca, ca_problem = read_gitlab_ca(config)
    if ca_problem is not None:
        problems.append(ca_problem)
    if problems:
        raise SettingsError(problems)

    runners = resolve_runners(config, stack)
    global_ = resolve_global(config, runners)
    warnings += rules.warnings(config, global_.concurrent)
    warnings += rules.shared_token_warnings(runners, context)
    return Settings(
        stack=stack,
        target=config.target,
        gitlab_url=config.gitlab_url,
        runners=runners,
        global_=global_,
        allow_privileged=config.allow_privileged,
        existing_token_names=existing_token_names,
        cache=config.cache,
        gitlab_ca=gitlab_ca,
        readiness=config.readiness,
        docker=resolve_docker(config.docker or DockerTarget(), stack) if config.target == "docker" else None,
        kubernetes=resolve_kubernetes(config.kubernetes or KubernetesTarget())
        if config.target == "kubernetes"
        else None,
        warnings=tuple(warnings),
    )


def load_settings() -> tuple[Settings, Secrets]:
    """Read and validate the stack's config. Raises SettingsError before any resource exists."""
    values = stack_values()
    secrets, secret_problems = read_secrets(values)
    settings = parse_settings(
        values,
        stack=pulumi.get_stack(),
        existing_token_names=frozenset(secrets.runner_tokens),
        host_tokens={name: frozenset(hosts) for name, hosts in secrets.runner_host_tokens.items()},
        has_gitlab_token=secrets.gitlab_token is not None,
        gitlab_token_is_secret=secrets.gitlab_token_is_secret,
        docker_tls_names=frozenset(secrets.docker_tls),
        cache_credential_keys=None if secrets.cache_credentials is None else frozenset(secrets.cache_credentials),
        extra_problems=tuple(secret_problems),
        dry_run=pulumi.runtime.is_dry_run(),
    )
    for warning in settings.warnings:
        pulumi.log.warn(warning)
    return settings, secrets

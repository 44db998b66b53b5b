"""RunnerRegistration: the runners' existence in GitLab, and their authentication tokens.

One token is held by one runner manager wherever that can be: a runner manager resets its token at
0.75 of its lifetime (where the instance sets one), and the reset revokes the old token for every
manager that holds it. So on the Docker target a runner that runs on several hosts is one GitLab runner
per host (the host in its description), each with its own token that its host rotates alone.

A runner that brings its own token (runnerTokens) brings either one token per host, which behaves the
same, or one token for all its hosts: then nobody may rotate it but the user, and `shared_tokens` names
it so the Docker target turns the runner's automatic rotation off (components/docker_runner.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, NamedTuple

import pulumi

from components.settings import Runner

COMPONENT_TYPE = "gitlab-runners:index:RunnerRegistration"
USER_RUNNER_TYPE = "gitlab:index/userRunner:UserRunner"


class RunnerRegistrationArgs(NamedTuple):
    runners: Sequence[Runner]
    """The runners to register; each becomes a `gitlab.UserRunner` (one per Docker host it runs on)
    unless it brings its own token."""

    existing_tokens: Mapping[str, pulumi.Output[str]] = MappingProxyType({})
    """Runner name -> glrt- token for runners created outside this stack; no GitLab resource for them."""

    existing_host_tokens: Mapping[str, Mapping[str, pulumi.Output[str]]] = MappingProxyType({})
    """Runner name -> Docker host -> glrt- token: one runner per host, created outside this stack."""


def per_host(runner: Runner, existing_tokens: Mapping[str, object]) -> bool:
    """Whether the stack creates one GitLab runner per Docker host for `runner`."""
    return runner.name not in existing_tokens and len(runner.hosts or ()) > 1


def child_urn(
    component_type: str, child_type: str, child_name: str, stack: str | None = None, project: str | None = None
) -> str:
    """The URN of a resource of `child_type` named `child_name` whose parent is a component of
    `component_type` at the stack's root (the engine leaves the root stack's type out of URNs), in this
    program's stack and project unless given."""
    stack, project = stack or pulumi.get_stack(), project or pulumi.get_project()
    return f"urn:pulumi:{stack}::{project}::{component_type}${child_type}::{child_name}"


class RunnerRegistration(pulumi.ComponentResource):
    """Creates runners through GitLab's API (the `glrt-` token workflow); never `gitlab-runner register`."""

    runner_ids: dict[str, pulumi.Output[Any]]
    """Runner name -> GitLab runner id, or {host: id} for a runner registered once per Docker host
    (None for runners that brought their own tokens)."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> authentication token, for runners with one token; always a secret Output."""

    host_tokens: dict[str, dict[str, pulumi.Output[str]]]
    """Runner name -> Docker host -> token, for runners with a token per host; secret Outputs."""

    shared_tokens: frozenset[str]
    """Runners whose one token several Docker hosts hold: their automatic rotation must be off."""

    descriptions: dict[str, dict[str, object]]
    """Runner name -> how it is registered, its executor and (for runners created here) its tags."""

    def __init__(
        self,
        name: str,
        args: RunnerRegistrationArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        existing = {**args.existing_tokens, **args.existing_host_tokens}
        self.shared_tokens = frozenset(
            r.name for r in args.runners if r.name in args.existing_tokens and len(r.hosts or ()) > 1
        )
        # How each runner is registered: shown in the plan (scripts/plan_table.py reads the component's
        # inputs from `pulumi preview --json`) and in the stack's outputs. A runner that brought its
        # own token has its tags in GitLab, not here.
        self.descriptions = {
            r.name: {
                "registration": _registration(r, args, self.shared_tokens),
                "executor": r.executor,
                "tags": None if r.name in existing else list(r.tags),
            }
            for r in args.runners
        }
        described = [{"name": n, **d} for n, d in self.descriptions.items()]
        super().__init__(COMPONENT_TYPE, name, {"runners": described}, opts)
        # Aliases as the URNs they name where this component sits at the stack's root: the SDK turns an
        # Alias(name=...) into a URN through some eight Outputs (0.6 ms a runner, a tenth of the program's
        # time at 100 runners); a URN it sends as it is. Under another parent, the SDK works it out.
        self._at_root = opts is None or opts.parent is None
        self.runner_ids = {}
        self.tokens = {}
        self.host_tokens = {}
        for runner in args.runners:
            if runner.name in args.existing_host_tokens:
                given = args.existing_host_tokens[runner.name]
                self.host_tokens[runner.name] = {host: pulumi.Output.secret(t) for host, t in given.items()}
                self.runner_ids[runner.name] = pulumi.Output.from_input(None)
            elif runner.name in args.existing_tokens:
                self.tokens[runner.name] = pulumi.Output.secret(args.existing_tokens[runner.name])
                self.runner_ids[runner.name] = pulumi.Output.from_input(None)
            elif per_host(runner, existing):
                hosts = list(runner.hosts or ())
                created = {
                    host: self._user_runner(
                        f"{name}-{runner.name}@{host}",
                        runner,
                        f"{runner.description} ({host})",
                        # The runner before it ran on several hosts: its GitLab runner stays, on the first.
                        alias=f"{name}-{runner.name}" if host == hosts[0] else None,
                    )
                    for host in hosts
                }
                self.host_tokens[runner.name] = {h: pulumi.Output.secret(r.token) for h, r in created.items()}
                self.runner_ids[runner.name] = pulumi.Output.all(**{h: r.id for h, r in created.items()})
            else:
                hosts = list(runner.hosts or ())
                # The runner before it left its other hosts: the GitLab runner of the one it kept stays.
                alias = f"{name}-{runner.name}@{hosts[0]}" if hosts else None
                user_runner = self._user_runner(f"{name}-{runner.name}", runner, runner.description, alias=alias)
                self.tokens[runner.name] = pulumi.Output.secret(user_runner.token)
                self.runner_ids[runner.name] = user_runner.id
        self.register_outputs({"runnerIds": self.runner_ids})

    def _user_runner(self, resource_name: str, runner: Runner, description: str | None, alias: str | None) -> Any:
        # Imported only where a runner is created (see components/providers.py).
        import pulumi_gitlab as gitlab

        return gitlab.UserRunner(
            resource_name,
            runner_type=f"{runner.scope}_type",
            group_id=runner.group_id,
            project_id=runner.project_id,
            description=description,
            tag_lists=list(runner.tags),
            untagged=runner.run_untagged,
            locked=runner.locked,
            access_level=runner.access_level,
            paused=runner.paused,
            maximum_timeout=runner.maximum_timeout,
            maintenance_note=runner.maintenance_note,
            opts=pulumi.ResourceOptions(
                parent=self,
                additional_secret_outputs=["token"],
                # A new generation is a new runner with a new token: created first, delivered to the
                # runner managers, and only then the old one deleted (its token revoked).
                replacement_trigger=runner.token_generation,
                delete_before_replace=False,
                aliases=[self._alias(alias)] if alias else None,
            ),
        )

    def _alias(self, resource_name: str) -> str | pulumi.Alias:
        """The UserRunner this component had under `resource_name`."""
        if self._at_root:
            return child_urn(COMPONENT_TYPE, USER_RUNNER_TYPE, resource_name)
        return pulumi.Alias(name=resource_name)

    def tokens_on(self, host: str, runners: Iterable[Runner]) -> dict[str, pulumi.Output[str]]:
        """Runner name -> the token the runner manager on Docker host `host` holds, for `runners`."""
        return {
            r.name: self.host_tokens[r.name][host] if r.name in self.host_tokens else self.tokens[r.name]
            for r in runners
        }


def _registration(runner: Runner, args: RunnerRegistrationArgs, shared: frozenset[str]) -> str:
    if runner.name in args.existing_host_tokens:
        return "existing token, one per host"
    if runner.name in shared:
        return f"existing token, shared by {len(runner.hosts or ())} hosts: rotation off"
    if runner.name in args.existing_tokens:
        return "existing token"
    return "created, one per host" if per_host(runner, args.existing_tokens) else "created"

"""RunnerRegistration: the runners' existence in GitLab, and their authentication tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi

from components.settings import Runner

COMPONENT_TYPE = "gitlab-runners:index:RunnerRegistration"


@dataclass(frozen=True)
class RunnerRegistrationArgs:
    runners: Sequence[Runner]
    """The runners to register; each becomes a `gitlab.UserRunner` unless it has an existing token."""

    existing_tokens: Mapping[str, pulumi.Output[str]] = field(default_factory=dict)
    """Runner name -> glrt- token for runners created outside this stack; no GitLab resource for them."""


class RunnerRegistration(pulumi.ComponentResource):
    """Creates runners through GitLab's API (the `glrt-` token workflow); never `gitlab-runner register`."""

    runner_ids: dict[str, pulumi.Output[str | None]]
    """Runner name -> GitLab runner id (None for runners that brought their own token)."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> authentication token, always a secret Output."""

    descriptions: dict[str, dict[str, object]]
    """Runner name -> how it is registered, its executor and (for runners created here) its tags."""

    def __init__(
        self,
        name: str,
        args: RunnerRegistrationArgs,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        # How each runner is registered: shown in the plan (scripts/plan_table.py reads the component's
        # inputs from `pulumi preview --json`) and in the stack's outputs. A runner that brought its
        # own token has its tags in GitLab, not here.
        self.descriptions = {
            r.name: {
                "registration": "existing token" if r.name in args.existing_tokens else "created",
                "executor": r.executor,
                "tags": None if r.name in args.existing_tokens else list(r.tags),
            }
            for r in args.runners
        }
        described = [{"name": n, **d} for n, d in self.descriptions.items()]
        super().__init__(COMPONENT_TYPE, name, {"runners": described}, opts)
        self.runner_ids = {}
        self.tokens = {}
        for runner in args.runners:
            existing = args.existing_tokens.get(runner.name)
            if existing is not None:
                self.tokens[runner.name] = pulumi.Output.secret(existing)
                self.runner_ids[runner.name] = pulumi.Output.from_input(None)
                continue
            # Imported only where a runner is created (see components/providers.py).
            import pulumi_gitlab as gitlab

            created = gitlab.UserRunner(
                f"{name}-{runner.name}",
                runner_type=f"{runner.scope}_type",
                group_id=runner.group_id,
                project_id=runner.project_id,
                description=runner.description,
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
                    # A new generation is a new runner with a new token: created first, delivered to
                    # the runner managers, and only then the old one deleted (its token revoked).
                    replacement_trigger=runner.token_generation,
                    delete_before_replace=False,
                ),
            )
            self.tokens[runner.name] = pulumi.Output.secret(created.token)
            self.runner_ids[runner.name] = created.id
        self.register_outputs({"runnerIds": self.runner_ids})

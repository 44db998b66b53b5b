"""The gitlab-runners security baseline: `pulumi preview --policy-pack policy`.

Resource policies see one resource at a time; stack policies see them all (a Docker runner's
config.toml is uploaded by its config sync container, not by the runner container itself).
"""

from pulumi_policy import EnforcementLevel, PolicyPack
from runner_policies import POLICIES

PolicyPack(
    name="gitlab-runners-security",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)

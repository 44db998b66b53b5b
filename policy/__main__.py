"""The gitlab-runners security baseline: `pulumi preview --policy-pack policy`."""

from pulumi_policy import EnforcementLevel, PolicyPack
from runner_policies import POLICIES

PolicyPack(name="gitlab-runners-security", enforcement_level=EnforcementLevel.MANDATORY, policies=POLICIES)

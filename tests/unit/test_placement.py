"""Kubernetes placement: the manager pods apart from the job pods, and job pods whose helper image agrees
with the architecture of the nodes they are pinned to."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.kubernetes_runner import chart_values, manager_placement
from components.runner_config import render_chart_runner_toml
from components.settings import RUNNER_VERSION, Settings, SettingsError, parse_settings
from components.settings.model import ManagerPods
from components.settings.placement import HELPER_ARCH

ROOT = Path(__file__).resolve().parents[2]
HELPER = "registry.gitlab.com/gitlab-org/gitlab-runner/gitlab-runner-helper"
MIRROR = "registry.example.com:5000/mirror/gitlab-runner-helper"
AFFINITY = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {}}},
            }
        ]
    }
}


def parse(runners: list[dict[str, Any]] | None = None, **values: Any) -> Settings:
    config: dict[str, Any] = {"target": "kubernetes", **values}
    if runners is not None:
        config["runners"] = runners
    return parse_settings(config, stack="unit", has_gitlab_token=True)


def values_of(settings: Settings, index: int = 0) -> dict[str, Any]:
    assert settings.kubernetes is not None
    return chart_values(
        settings.runners[index], settings.kubernetes, settings.global_, settings.gitlab_url, "secret", "fingerprint"
    )


def job_section(settings: Settings, index: int = 0) -> dict[str, Any]:
    template = tomllib.loads(render_chart_runner_toml(settings.runners[index], "gitlab"))
    section: dict[str, Any] = template["runners"][0]["kubernetes"]
    return section


def problems(runners: list[dict[str, Any]] | None = None, **values: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(runners, **values)
    return [str(p) for p in caught.value.problems]


# ---- the manager pods ---------------------------------------------------------------------------


def test_manager_pods_are_placed_with_the_charts_own_values() -> None:
    settings = parse(
        [{"name": "k", "jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "tolerations": {"ci": ""}}}],
        kubernetes={
            "replicas": 2,
            "managerPods": {
                "nodeSelector": {"node-role.kubernetes.io/ci-control": "true", "kubernetes.io/arch": "amd64"},
                "tolerations": {"dedicated=ci": "NoSchedule", "spot": ""},
                "affinity": AFFINITY,
                "priorityClassName": "ci-critical",
                "topologySpreadConstraints": [
                    {"topologyKey": "topology.kubernetes.io/zone"},
                    {"topologyKey": "kubernetes.io/hostname", "maxSkew": 2, "whenUnsatisfiable": "ScheduleAnyway"},
                ],
            },
        },
    )
    values = values_of(settings)
    # The keys of the chart's values.yaml that deployment.yaml puts into the manager's pod spec.
    assert values["nodeSelector"] == {"node-role.kubernetes.io/ci-control": "true", "kubernetes.io/arch": "amd64"}
    assert values["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"},
        {"key": "spot", "operator": "Exists"},
    ]
    assert values["affinity"] == AFFINITY
    assert values["priorityClassName"] == "ci-critical"
    assert values["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "DoNotSchedule",
            # The chart labels its pods with the release: each runner's managers are spread on their own.
            "labelSelector": {"matchLabels": {"release": "k-runner"}},
        },
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"release": "k-runner"}},
        },
    ]
    # The job pods keep their own placement: the manager's never reaches config.toml, nor theirs the chart.
    section = job_section(settings)
    assert section["node_selector"] == {"kubernetes.io/arch": "arm64"}
    assert section["node_tolerations"] == {"ci": ""}
    assert "affinity" not in section and "priority_class_name" not in section


def test_without_manager_placement_the_chart_keeps_its_defaults() -> None:
    values = values_of(parse())
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "topologySpreadConstraints"):
        assert key not in values
    assert manager_placement(ManagerPods(), "r-runner") == {}


def test_a_spread_can_count_other_pods() -> None:
    settings = parse(
        kubernetes={
            "managerPods": {
                "topologySpreadConstraints": [
                    {"topologyKey": "kubernetes.io/hostname", "matchLabels": {"app.kubernetes.io/part-of": "ci"}}
                ]
            }
        }
    )
    (spread,) = values_of(settings)["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": {"app.kubernetes.io/part-of": "ci"}}


@pytest.mark.parametrize(
    ("manager", "expected"),
    [
        (
            {"nodeSelector": {"kubernetes.io/arch": "arm"}},
            'gitlab-runners:kubernetes.managerPods.nodeSelector.kubernetes.io/arch is "arm", an architecture the '
            "runner image is not published for: it is for (amd64, arm64, s390x, ppc64le, riscv64). "
            "Example: kubernetes.io/arch: amd64",
        ),
        (
            {"affinity": {"nodeAffinty": {}}},
            "gitlab-runners:kubernetes.managerPods.affinity.nodeAffinty is not a known key "
            "(known keys here: nodeAffinity, podAffinity, podAntiAffinity). Example: remove it",
        ),
        (
            {"priorityClassName": "CI Critical"},
            "gitlab-runners:kubernetes.managerPods.priorityClassName must be a Kubernetes object name",
        ),
        (
            {"topologySpreadConstraints": [{"maxSkew": 1}]},
            "gitlab-runners:kubernetes.managerPods.topologySpreadConstraints[0].topologyKey is required but not set. "
            "Example: topologyKey: topology.kubernetes.io/zone",
        ),
        (
            {"tolerations": {"dedicated=ci": "NoScheduleX"}},
            "gitlab-runners:kubernetes.managerPods.tolerations.dedicated=ci must be",
        ),
    ],
)
def test_manager_placement_mistakes_are_named(manager: dict[str, Any], expected: str) -> None:
    found = problems(kubernetes={"managerPods": manager})
    assert any(p.startswith(expected) for p in found), found


def test_manager_pods_are_for_the_kubernetes_target_only() -> None:
    found = problems(target="docker", kubernetes={"managerPods": {"priorityClassName": "x"}})
    assert found == [
        'gitlab-runners:kubernetes is set but target is "docker". Example: remove gitlab-runners:kubernetes'
    ]


# ---- job pods and the helper image ---------------------------------------------------------------


def runner_helper_image(section: dict[str, Any], manager_arch: str = "amd64") -> str:
    """The helper image gitlab-runner 18.9.0 runs a job pod with, from its [runners.kubernetes] table
    (executors/kubernetes/kubernetes.go prepareHelperImage and getHelperImage;
    helpers/container/helperimage/linux_info.go): written out here from the source, so the test
    checks the rendered config against the runner's rule, not against the stack's own code."""
    if section.get("helper_image"):
        return str(section["helper_image"]).replace("${CI_RUNNER_VERSION}", RUNNER_VERSION)
    arch = manager_arch if section.get("helper_image_autoset_arch_and_os") else "amd64"
    arch = section.get("node_selector", {}).get("kubernetes.io/arch") or arch
    arch = {"armv6l": "arm", "armv7l": "arm", "aarch64": "arm64", "amd64": "x86_64"}.get(arch, arch)
    flavor = section.get("helper_image_flavor") or "alpine"
    prefix = "" if flavor == "alpine" else f"{flavor}-"
    return f"{HELPER}:{prefix}{arch}-v{RUNNER_VERSION}"


@pytest.mark.parametrize(
    ("runner", "manager", "image"),
    [
        ({}, {}, f"{HELPER}:x86_64-v{RUNNER_VERSION}"),
        ({"jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}}}, {}, f"{HELPER}:arm64-v{RUNNER_VERSION}"),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "helperImageFlavor": "ubuntu"}},
            {},
            f"{HELPER}:ubuntu-arm64-v{RUNNER_VERSION}",
        ),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "helperImage": MIRROR}},
            {},
            f"{MIRROR}:arm64-v{RUNNER_VERSION}",
        ),
        (
            {"jobPods": {"helperImage": MIRROR, "helperImageFlavor": "alpine3.21"}},
            {},
            f"{MIRROR}:alpine3.21-x86_64-v{RUNNER_VERSION}",
        ),
        ({"jobPods": {"helperImage": f"{MIRROR}:x86_64-v{RUNNER_VERSION}"}}, {}, f"{MIRROR}:x86_64-v{RUNNER_VERSION}"),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "s390x"}, "helperImage": MIRROR}},
            {},
            f"{MIRROR}:s390x-v{RUNNER_VERSION}",
        ),
        (
            # The helper follows the manager, which the stack pins: so are the job pods.
            {"extraConfig": {"kubernetes": {"helper_image_autoset_arch_and_os": True}}},
            {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
            f"{HELPER}:arm64-v{RUNNER_VERSION}",
        ),
    ],
)
def test_the_helper_the_runner_pulls_runs_on_the_nodes_its_pods_are_pinned_to(
    runner: dict[str, Any], manager: dict[str, Any], image: str
) -> None:
    settings = parse([{"name": "k", **runner}], kubernetes={"managerPods": manager})
    section = job_section(settings)
    manager_arch = manager.get("nodeSelector", {}).get("kubernetes.io/arch", "amd64")
    pulled = runner_helper_image(section, manager_arch)
    assert pulled == image
    pinned = section["node_selector"]["kubernetes.io/arch"]
    assert re.search(rf"(^|[:-]){HELPER_ARCH[pinned]}-v", pulled.rsplit(":", 1)[1]), (pulled, pinned)


def test_a_runner_per_architecture_on_a_mixed_cluster() -> None:
    settings = parse(
        [
            {"name": "amd", "tags": ["amd64"]},
            {"name": "arm", "tags": ["arm64"], "jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}}},
        ]
    )
    amd, arm = job_section(settings, 0), job_section(settings, 1)
    assert amd["node_selector"] == {"kubernetes.io/arch": "amd64"} and "helper_image" not in amd
    assert arm["node_selector"] == {"kubernetes.io/arch": "arm64"} and "helper_image" not in arm
    assert runner_helper_image(amd).endswith(":x86_64-v18.9.0")
    assert runner_helper_image(arm).endswith(":arm64-v18.9.0")


def test_the_charts_template_keeps_the_runners_variable_for_the_runner() -> None:
    settings = parse([{"name": "k", "jobPods": {"helperImage": MIRROR}}])
    config = values_of(settings)["runners"]["config"]
    # The chart passes runners.config through tpl: ${...} is not a template action and reaches the runner.
    assert "helper_image = " in config and "${CI_RUNNER_VERSION}" in config and "{{" not in config


@pytest.mark.parametrize(
    ("runner", "manager", "expected"),
    [
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "aarch64"}}},
            {},
            'gitlab-runners:runners[0].jobPods.nodeSelector.kubernetes.io/arch is "aarch64", a name no node is '
            "labelled with and no helper image exists for: nodes carry the Go names (amd64, arm64, arm, s390x, "
            "ppc64le, riscv64). Example: kubernetes.io/arch: arm64",
        ),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "x86_64"}}},
            {},
            "Example: kubernetes.io/arch: amd64",
        ),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "helperImage": f"{MIRROR}:x86_64-v18.9.0"}},
            {},
            "gitlab-runners:runners[0].jobPods.helperImage is the x86_64 helper, but the job pods run on arm64 nodes "
            "(jobPods.nodeSelector kubernetes.io/arch, default amd64) and the runner uses this image there. "
            f"Example: helperImage: {MIRROR}  (the stack adds the arm64 tag)",
        ),
        (
            {"jobPods": {"helperImage": f"{MIRROR}:arm64-v18.9.0"}},
            {},
            "gitlab-runners:runners[0].jobPods.helperImage is the arm64 helper, but the job pods run on amd64 nodes",
        ),
        (
            {"jobPods": {"helperImage": f"{MIRROR}:x86_64-v17.11.0"}},
            {},
            "gitlab-runners:runners[0].jobPods.helperImage is the helper of runner 17.11.0, but the chart runs "
            "runner 18.9.0: the helper must be the runner's own release",
        ),
        (
            {"jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}, "helperImageFlavor": "ubi-fips"}},
            {},
            'gitlab-runners:runners[0].jobPods.helperImageFlavor "ubi-fips" is published for amd64 only, but the job '
            "pods run on arm64 nodes. Example: helperImageFlavor: ubuntu",
        ),
        (
            {"jobPods": {"helperImage": f"{MIRROR}:x86_64-v18.9.0", "helperImageFlavor": "ubuntu"}},
            {},
            "gitlab-runners:runners[0].jobPods.helperImageFlavor has no effect with a helperImage that has a tag",
        ),
        (
            {"extraConfig": {"kubernetes": {"helper_image_autoset_arch_and_os": True}}},
            {},
            "gitlab-runners:runners[0].extraConfig.kubernetes.helper_image_autoset_arch_and_os makes the helper "
            "image follow the architecture of whichever node a manager pod lands on",
        ),
        (
            {
                "jobPods": {"helperImage": MIRROR},
                "extraConfig": {"kubernetes": {"node_selector_overwrite_allowed": "kubernetes.io/.*"}},
            },
            {},
            "gitlab-runners:runners[0].extraConfig.kubernetes.node_selector_overwrite_allowed lets a job move its "
            "pod to another architecture (kubernetes.io/arch), while helperImage stays the x86_64 helper",
        ),
        (
            {
                "extraConfig": {
                    "kubernetes": {
                        "affinity": {
                            "node_affinity": {
                                "required_during_scheduling_ignored_during_execution": {
                                    "node_selector_terms": [
                                        {
                                            "match_expressions": [
                                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}
                                            ]
                                        }
                                    ]
                                }
                            }
                        }
                    }
                }
            },
            {},
            "gitlab-runners:runners[0].extraConfig.kubernetes.affinity keeps the job pods off amd64 nodes, but the "
            "runner picks the helper image from jobPods.nodeSelector (amd64) alone, never from an affinity. "
            "Example: jobPods: {nodeSelector: {kubernetes.io/arch: arm64}}",
        ),
        (
            {"extraConfig": {"kubernetes": {"helper_image": f"{MIRROR}:x86_64-v18.9.0"}}},
            {},
            "gitlab-runners:runners[0].extraConfig.kubernetes.helper_image is rendered by the stack from "
            "gitlab-runners:runners[0].jobPods.helperImage: set that instead",
        ),
        (
            {"jobPods": {"helperImage": "registry.example.com/helper:latest latest"}},
            {},
            "gitlab-runners:runners[0].jobPods.helperImage must be an image repository (the stack adds the tag) "
            "or a reference with a tag or digest",
        ),
    ],
)
def test_helper_and_nodes_that_could_disagree_are_refused(
    runner: dict[str, Any], manager: dict[str, Any], expected: str
) -> None:
    found = problems([{"name": "k", **runner}], kubernetes={"managerPods": manager})
    assert any(p.startswith(expected) or expected in p for p in found), found


@pytest.mark.parametrize(
    "runner",
    [
        # A pattern that cannot reach kubernetes.io/arch, with a fixed helper: fine.
        {
            "jobPods": {"helperImage": MIRROR},
            "extraConfig": {"kubernetes": {"node_selector_overwrite_allowed": "^disk"}},
        },
        # Without a helper image of the stack's, an overwrite moves the helper with the pod (the runner's rule).
        {"extraConfig": {"kubernetes": {"node_selector_overwrite_allowed": ".*"}}},
        # An affinity that allows the pinned architecture.
        {
            "jobPods": {"nodeSelector": {"kubernetes.io/arch": "arm64"}},
            "extraConfig": {
                "kubernetes": {
                    "affinity": {
                        "node_affinity": {
                            "required_during_scheduling_ignored_during_execution": {
                                "node_selector_terms": [
                                    {
                                        "match_expressions": [
                                            {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]},
                                            {"key": "disktype", "operator": "In", "values": ["ssd"]},
                                        ]
                                    }
                                ]
                            }
                        }
                    }
                }
            },
        },
        # A digest: the stack cannot tell its architecture and takes it as given.
        {"jobPods": {"helperImage": f"{MIRROR}@sha256:{'a' * 64}"}},
        # Another chart version: another runner, so the helper's version is not the stack's to check.
    ],
)
def test_settings_under_which_helper_and_nodes_agree_pass(runner: dict[str, Any]) -> None:
    parse([{"name": "k", **runner}])


def test_a_helper_of_another_release_is_fine_with_another_chart() -> None:
    parse(
        [{"name": "k", "jobPods": {"helperImage": f"{MIRROR}:x86_64-v18.8.0"}}],
        kubernetes={"chart": {"version": "0.85.0"}},
    )


# ---- documented ----------------------------------------------------------------------------------


def test_the_readme_placement_example_is_a_valid_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Where the pods run", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = {k.removeprefix("gitlab-runners:"): v for k, v in yaml.safe_load(block)["config"].items()}
    settings = parse_settings(config, stack="unit", has_gitlab_token=True)
    assert settings.kubernetes is not None and settings.kubernetes.manager_pods.node_selector
    arches = {job_section(settings, i)["node_selector"]["kubernetes.io/arch"] for i in range(len(settings.runners))}
    assert arches == {"amd64", "arm64"}

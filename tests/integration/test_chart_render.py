"""The official chart rendered by helm with the values the stack builds: what lands in the manager's
Deployment, its ConfigMap and the session server's Service (no cluster needed: `helm template`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.kubernetes_runner import chart_values, release_name
from components.settings import Settings, parse_settings
from tests.charts import official_chart, official_chart_path


@pytest.fixture(scope="module")
def chart() -> Path:
    if shutil.which("helm") is None:
        pytest.skip('helm is not on PATH (source "$(scripts/toolchain)")')
    archive = official_chart()
    if archive is None:
        pytest.skip(f"the official chart archive is not on disk ({official_chart_path()})")
    return archive


def render(chart: Path, settings: Settings, tmp_path: Path, index: int = 0) -> dict[tuple[str, str], Any]:
    """The manifests `helm template` renders for one runner's release, by (kind, name)."""
    assert settings.kubernetes is not None
    runner = settings.runners[index]
    values = chart_values(runner, settings.kubernetes, settings.global_, settings.gitlab_url, "tok", "fp")
    (tmp_path / "values.json").write_text(json.dumps(values))
    done = subprocess.run(
        [
            "helm",
            "template",
            release_name(runner),
            str(chart),
            "--namespace",
            "gitlab",
            "-f",
            str(tmp_path / "values.json"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}


def only(manifests: dict[tuple[str, str], Any], kind: str) -> Any:
    (found,) = [m for (k, _), m in manifests.items() if k == kind]
    return found


def test_manager_placement_reaches_the_pod_spec_and_job_placement_the_runner(chart: Path, tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "target": "kubernetes",
            "gitlabUrl": "https://gitlab.example.com",
            "kubernetes": {
                "managerPods": {
                    "nodeSelector": {"node-role.kubernetes.io/ci-control": "true"},
                    "tolerations": {"dedicated=ci": "NoSchedule"},
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "priorityClassName": "ci-critical",
                    "topologySpreadConstraints": [{"topologyKey": "topology.kubernetes.io/zone"}],
                }
            },
            "runners": [
                {
                    "name": "arm",
                    "jobPods": {
                        "nodeSelector": {"kubernetes.io/arch": "arm64"},
                        "helperImage": "registry.example.com/mirror/gitlab-runner-helper",
                    },
                }
            ],
        },
        stack="render",
        has_gitlab_token=True,
    )
    manifests = render(chart, settings, tmp_path)
    pod = only(manifests, "Deployment")["spec"]["template"]
    spec = pod["spec"]
    assert spec["nodeSelector"] == {"node-role.kubernetes.io/ci-control": "true"}
    assert spec["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}]
    assert spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert spec["priorityClassName"] == "ci-critical"
    (spread,) = spec["topologySpreadConstraints"]
    # The spread's selector counts exactly this release's manager pods.
    assert spread["labelSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    # The job pods' placement is the runner's, in the template the chart registers the runner with.
    template = tomllib.loads(only(manifests, "ConfigMap")["data"]["config.template.toml"])
    section = template["runners"][0]["kubernetes"]
    assert section["node_selector"] == {"kubernetes.io/arch": "arm64"}
    assert section["helper_image"] == "registry.example.com/mirror/gitlab-runner-helper:arm64-v${CI_RUNNER_VERSION}"


def test_the_session_server_gets_its_service_port_and_address(chart: Path, tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "target": "kubernetes",
            "gitlabUrl": "https://gitlab.example.com",
            "sessionServer": {"enabled": True, "sessionTimeout": 900},
            "kubernetes": {
                "sessionService": {"type": "NodePort", "nodePort": 30093, "publicAddress": "ci.example.com"}
            },
            "runners": [{"name": "term"}],
        },
        stack="render",
        has_gitlab_token=True,
    )
    manifests = render(chart, settings, tmp_path)
    service = manifests[("Service", f"{release_name(settings.runners[0])}-gitlab-runner-session-server")]
    assert service["spec"]["type"] == "NodePort"
    assert service["spec"]["ports"] == [{"protocol": "TCP", "port": 9000, "targetPort": 8093, "nodePort": 30093}]
    container = only(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "session-server", "containerPort": 8093, "protocol": "TCP"} in container["ports"]
    assert {"name": "SESSION_SERVER_ADDRESS", "value": "ci.example.com"} in container["env"]
    global_part = only(manifests, "ConfigMap")["data"]["config.toml"]
    session = tomllib.loads(global_part)["session_server"]
    # The chart's scripts put the address and node port in place of these at start.
    assert session == {
        "session_timeout": 900,
        "listen_address": "0.0.0.0:8093",
        "advertise_address": "SESSION_SERVER_ADDRESS:SESSION_SERVER_PORT",
    }

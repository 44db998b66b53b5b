"""The Kubernetes target for real: `pulumi up`, a second preview, and `pulumi destroy` of the prod
example stack against a local control plane (tests/integration/local_cluster.py), with the
chart on disk (tests/fixtures/chart) since no chart repository is reachable here."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pulumi import automation as auto

from tests.integration.conftest import ROOT, Project, stack
from tests.integration.local_cluster import Cluster, local_cluster

FAKE_TOKEN = "glrt-integration-fake-cluster-token"
LOCAL_CHART = ROOT / "tests" / "fixtures" / "chart"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = os.environ.get("GITLAB_RUNNERS_CLUSTER_BIN")
    if not bin_dir or not (Path(bin_dir) / "kube-apiserver").exists():
        message = "no local control plane: set GITLAB_RUNNERS_CLUSTER_BIN=$(scripts/cluster-binaries)"
        if os.environ.get("GITLAB_RUNNERS_REQUIRE_ENGINE") == "1":
            pytest.fail(message)
        pytest.skip(message)
    with local_cluster(Path(bin_dir), tmp_path_factory.mktemp("cluster")) as running:
        yield running


def exported_state(project: Project, stack: str) -> str:
    """`pulumi stack export` as a user runs it: without --show-secrets (the Automation API's
    export_stack always passes that flag, so it cannot tell)."""
    done = subprocess.run(
        ["pulumi", "stack", "export", "--stack", stack, "--cwd", str(project.dir)],
        env={**os.environ, **project.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return done.stdout


def test_prod_stack_up_preview_destroy(project: Project, cluster: Cluster) -> None:
    # Something that is not ours, which destroy must leave alone.
    status, _ = cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": "bystander"}})
    assert status == 201

    prod = stack(project, "prod")
    prod.set_config("gitlab-runners:runnerTokens", auto.ConfigValue(json.dumps({"prod-k8s": FAKE_TOKEN}), secret=True))
    kubernetes = {"namespace": "gitlab", "chart": {"path": str(LOCAL_CHART)}, "kubeconfig": str(cluster.kubeconfig)}
    prod.set_config("gitlab-runners:kubernetes", auto.ConfigValue(json.dumps(kubernetes)))
    try:
        up = prod.up(color="never")
        assert up.summary.result == "succeeded"
        assert up.summary.resource_changes == {"create": 7}

        # What landed in the cluster.
        assert cluster.get("/api/v1/namespaces/gitlab")["metadata"]["labels"]["app.kubernetes.io/part-of"] == (
            "gitlab-runners"
        )
        secret = cluster.get("/api/v1/namespaces/gitlab/secrets/prod-k8s-runner-token")
        assert base64.b64decode(secret["data"]["runner-token"]).decode() == FAKE_TOKEN
        assert base64.b64decode(secret["data"].get("runner-registration-token", "")) == b""
        values = cluster.get("/api/v1/namespaces/gitlab/configmaps/prod-k8s-runner-values")["data"]
        assert values["gitlabUrl"] == "https://gitlab.example.com"
        assert values["runnerSecret"] == "prod-k8s-runner-token"
        assert "[runners.kubernetes]" in values["config.toml"] and FAKE_TOKEN not in values["config.toml"]

        # Outputs, state and engine output: no token in plain text.
        outputs = prod.outputs()
        assert outputs["runners"].value["prod-k8s"] == {
            "gitlabId": None,
            "release": "prod-k8s-runner",
            "namespace": "gitlab",
        }
        state = exported_state(project, "prod")
        assert FAKE_TOKEN not in state
        assert base64.b64encode(FAKE_TOKEN.encode()).decode() not in state
        assert "ciphertext" in state
        assert FAKE_TOKEN not in up.stdout + up.stderr

        # A second run changes nothing.
        prod.preview(color="never", expect_no_changes=True)

        # A settings change updates the release in place: no resource is replaced, the token's
        # Secret is left alone.
        secret_uid = secret["metadata"]["uid"]
        runners = json.loads(prod.get_config("gitlab-runners:runners").value)
        runners[0]["limit"] = 3
        prod.set_config("gitlab-runners:runners", auto.ConfigValue(json.dumps(runners)))
        changed = prod.up(color="never")
        assert changed.summary.resource_changes == {"same": 6, "update": 1}
        values = cluster.get("/api/v1/namespaces/gitlab/configmaps/prod-k8s-runner-values")["data"]
        assert values["concurrent"] == "3"
        again = cluster.get("/api/v1/namespaces/gitlab/secrets/prod-k8s-runner-token")
        assert again["metadata"]["uid"] == secret_uid
    finally:
        destroyed = prod.destroy(color="never")
        prod.workspace.remove_stack("prod")
    assert destroyed.summary.result == "succeeded"
    assert cluster.wait_gone("/api/v1/namespaces/gitlab")
    assert cluster.get("/api/v1/namespaces/bystander") is not None

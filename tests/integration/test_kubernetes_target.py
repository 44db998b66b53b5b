"""The Kubernetes target for real: `pulumi up`, a token change, a second preview and `pulumi destroy` of
the prod example stack against a local cluster (tests/integration/local_cluster.py) whose node runs the
chart's runner pods (the runner stand-in, registering against the GitLab API double and polling it), or
kwok's fake node where no node can run, and `helm template` of the chart.

The chart is the official gitlab-runner archive where it is on disk (GITLAB_RUNNERS_CHART_ARCHIVE, else
$CACHE/charts/gitlab-runner-<version>.tgz; never committed), else the stand-in chart in
tests/fixtures/chart, which echoes the values into a ConfigMap. Each test says which one ran.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pulumi import automation as auto

from components.kubernetes_runner import (
    RBAC_RULES,
    READINESS_DELAY,
    READINESS_PERIOD,
    SECRETS_FINGERPRINT,
    chart_values,
    fingerprint,
)
from components.settings import CHART_VERSION, parse_settings
from tests.charts import chart_under_test, official_chart
from tests.integration.conftest import ROOT, Project, exported_state, stack, with_existing_tokens
from tests.integration.kubernetes_stack import deployment_of, load_node_images, reachable_gitlab, wait_rolled_out
from tests.integration.local_cluster import Cluster
from tests.integration.plans import shown_plan
from tests.integration.tls import make_ca

API_TOKEN = "glpat-" + secrets.token_hex(10)


@pytest.fixture(scope="module")
def job_image(cluster: Cluster) -> str:
    """The runner image and the job image on the node (nothing to load with kwok)."""
    return load_node_images(cluster)


def prod_values(fingerprint: str = "0123456789abcdef") -> dict[str, Any]:
    """The chart values the program renders for the prod example's runner."""
    config = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    values = {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("gitlab-runners:")}
    settings = parse_settings(values, stack="prod", has_gitlab_token=True)
    assert settings.kubernetes is not None
    runner = settings.runners[0]
    return chart_values(
        runner, settings.kubernetes, settings.global_, settings.gitlab_url, f"{runner.name}-runner-token", fingerprint
    )


def test_the_official_chart_renders_what_the_runner_needs(tmp_path: Path) -> None:
    archive = official_chart()
    if archive is None:
        pytest.skip(f"the official chart archive gitlab-runner-{CHART_VERSION}.tgz is not on disk (README)")
    print(f"chart under test: {archive}")
    values = tmp_path / "values.json"
    values.write_text(json.dumps(prod_values()))
    rendered = subprocess.run(
        ["helm", "template", "prod-k8s-runner", str(archive), "--namespace", "gitlab", "--values", str(values)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    objects = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(rendered) if o}
    deployment = objects[("Deployment", "prod-k8s-runner-gitlab-runner")]
    pod = deployment["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    # The chart's own checksum covers only the secrets it renders (none here: sha256 of ""), so only
    # the program's fingerprint can roll the pods when the token changes.
    assert annotations["checksum/secrets"] == hashlib.sha256(b"").hexdigest()
    assert annotations[SECRETS_FINGERPRINT] == "0123456789abcdef"
    # The token reaches the pod only from the program's Secret, mounted by key.
    projected = next(v for v in pod["spec"]["volumes"] if v["name"] == "projected-secrets")["projected"]["sources"]
    secret = next(s["secret"] for s in projected if s.get("secret", {}).get("name") == "prod-k8s-runner-token")
    assert {i["key"] for i in secret["items"]} == {"runner-token", "runner-registration-token"}
    # Hardened as the policy pack requires.
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["spec"]["securityContext"]["runAsUser"] == 100
    assert deployment["spec"]["replicas"] == 2
    # Ready as soon as the runner runs (the gate waits for it); the liveness probe is the chart's own.
    assert {k: container["readinessProbe"][k] for k in ("initialDelaySeconds", "periodSeconds")} == {
        "initialDelaySeconds": READINESS_DELAY,
        "periodSeconds": READINESS_PERIOD,
    }
    assert container["livenessProbe"]["initialDelaySeconds"] == 60
    # A leaving pod removes its runner manager (the chart's default; the runner itself stays).
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["/entrypoint", "unregister", "--all-runners"]
    # The Role holds the documented rules and no wildcard.
    role = objects[("Role", "prod-k8s-runner-gitlab-runner")]
    rules = [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in role["rules"]]
    assert rules == RBAC_RULES
    assert all("*" not in r["apiGroups"] + r["resources"] + r["verbs"] for r in rules)
    # The runner's config: per-pod concurrency, and no automatic rotation of the Secret's token.
    configmap = objects[("ConfigMap", "prod-k8s-runner-gitlab-runner")]["data"]
    assert "concurrent = 4" in configmap["config.toml"]
    assert "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true" in configmap["config.template.toml"]
    assert "listen_address" not in configmap["config.toml"]  # metrics off in the prod example
    assert not re.search(r"glrt-[A-Za-z0-9_-]{8,}", rendered)  # the chart script mentions the prefix only


def test_prod_stack_up_token_change_preview_destroy(
    project: Project, cluster: Cluster, job_image: str, tmp_path: Path
) -> None:
    chart, official = chart_under_test()
    # Something that is not ours, which destroy must leave alone; and the namespace the stack adopts.
    for name in ("bystander", "gitlab"):
        status, _ = cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
        assert status == 201

    with reachable_gitlab(cluster, API_TOKEN) as gitlab:
        token, rotated = gitlab.create_runner().token, gitlab.create_runner().token
        prod = stack(project, "prod")
        # A runner that brings its own token cannot carry GitLab-side attributes (they are set in GitLab).
        with_existing_tokens(prod, {"prod-k8s": token})
        prod.set_config("gitlab-runners:gitlabUrl", auto.ConfigValue(gitlab.base_url))
        kubernetes = json.loads(prod.get_config("gitlab-runners:kubernetes").value)
        kubernetes["chart"] = {"path": str(chart)}
        kubernetes["kubeconfig"] = str(cluster.kubeconfig)
        prod.set_config("gitlab-runners:kubernetes", auto.ConfigValue(json.dumps(kubernetes)))
        try:
            started = time.time()
            up = prod.up(color="never")
            assert up.summary.result == "succeeded"
            assert up.summary.resource_changes == {"create": 6}, up.summary.resource_changes

            secret = cluster.get("/api/v1/namespaces/gitlab/secrets/prod-k8s-runner-token")
            assert base64.b64decode(secret["data"]["runner-token"]).decode() == token
            assert base64.b64decode(secret["data"].get("runner-registration-token", "")) == b""
            if official:
                # The release waited for the runner pods (on the node: registered and polling).
                rolled = wait_rolled_out(cluster, fingerprint(token), seconds=30)
                assert rolled["spec"]["replicas"] == 2
                role = cluster.get(
                    "/apis/rbac.authorization.k8s.io/v1/namespaces/gitlab/roles/prod-k8s-runner-gitlab-runner"
                )
                assert all("*" not in r["resources"] + r["verbs"] for r in role["rules"])
                if cluster.runs_pods:
                    assert gitlab.polled_since(token, started), "the runner pods never polled GitLab"
            else:
                values = cluster.get("/api/v1/namespaces/gitlab/configmaps/prod-k8s-runner-values")["data"]
                assert values["gitlabUrl"] == gitlab.base_url
                assert values["runnerSecret"] == "prod-k8s-runner-token"
                assert "[runners.kubernetes]" in values["config.toml"] and token not in values["config.toml"]

            # Outputs, state and engine output: no token in plain text.
            outputs = prod.outputs()
            assert outputs["runners"].value["prod-k8s"] == {
                "gitlabId": None,
                "registration": "existing token",
                "executor": "kubernetes",
                "tags": None,
                "release": "prod-k8s-runner",
                "namespace": "gitlab",
            }
            state = exported_state(project, "prod")
            assert token not in state
            assert base64.b64encode(token.encode()).decode() not in state
            assert "ciphertext" in state
            assert token not in up.stdout + up.stderr

            # A second run changes nothing.
            prod.preview(color="never", expect_no_changes=True)
            # The plan shows the release's config.toml diff, token masked (issue 20 item 2).
            runners = json.loads(prod.get_config("gitlab-runners:runners").value)
            limited = [{**runners[0], "limit": 7}, *runners[1:]]
            prod.set_config("gitlab-runners:runners", auto.ConfigValue(json.dumps(limited)))
            try:
                shown, plan = shown_plan(project.dir, project.env, "prod", tmp_path)
            finally:
                prod.set_config("gitlab-runners:runners", auto.ConfigValue(json.dumps(runners)))
            header = "config.toml of release prod-k8s-runner in namespace gitlab (changes; secrets masked):"
            assert header in shown and "    +limit = 7" in shown, shown
            assert token not in shown + plan and 'token = \\"[MASKED]\\"' in plan

            # A new token (a rotation, a runner re-created in GitLab) reaches the pods: they roll.
            secret_uid = secret["metadata"]["uid"]
            prod.set_config(
                "gitlab-runners:runnerTokens", auto.ConfigValue(json.dumps({"prod-k8s": rotated}), secret=True)
            )
            rolled_at = time.time()
            changed = prod.up(color="never")
            changes: dict[str, int] = dict(changed.summary.resource_changes or {})  # type: ignore[arg-type]
            assert changes.get("update") == 2 and not {"replace", "delete", "create"} & set(changes), changes
            again = cluster.get("/api/v1/namespaces/gitlab/secrets/prod-k8s-runner-token")
            assert again["metadata"]["uid"] == secret_uid
            assert base64.b64decode(again["data"]["runner-token"]).decode() == rotated
            if official:
                wait_rolled_out(cluster, fingerprint(rotated), seconds=60)
                if cluster.runs_pods:
                    assert gitlab.polled_since(rotated, rolled_at), "the rolled pods never polled with the new token"
            assert rotated not in changed.stdout + changed.stderr
        finally:
            destroyed = prod.destroy(color="never")
            prod.workspace.remove_stack("prod")
    assert destroyed.summary.result == "succeeded"
    deadline = time.monotonic() + 60
    while deployment_of(cluster, "gitlab", "prod-k8s-runner") is not None and time.monotonic() < deadline:
        time.sleep(1)
    assert deployment_of(cluster, "gitlab", "prod-k8s-runner") is None
    assert cluster.get("/api/v1/namespaces/gitlab/secrets/prod-k8s-runner-token") is None
    # The adopted namespace and the bystander are not the stack's: both stay.
    assert cluster.get("/api/v1/namespaces/gitlab") is not None
    assert cluster.get("/api/v1/namespaces/bystander") is not None


def test_a_namespace_the_stack_creates_goes_with_it(project: Project, cluster: Cluster, job_image: str) -> None:
    chart, _ = chart_under_test()
    prod = stack(project, "prod")
    kubernetes = {
        "namespace": "runners-owned",
        "createNamespace": True,
        "chart": {"path": str(chart)},
        "kubeconfig": str(cluster.kubeconfig),
    }
    with reachable_gitlab(cluster, API_TOKEN) as gitlab:
        token = gitlab.create_runner().token
        prod.set_config("gitlab-runners:runnerTokens", auto.ConfigValue(json.dumps({"prod-k8s": token}), secret=True))
        prod.set_config("gitlab-runners:gitlabUrl", auto.ConfigValue(gitlab.base_url))
        prod.set_config("gitlab-runners:kubernetes", auto.ConfigValue(json.dumps(kubernetes)))
        prod.set_config("gitlab-runners:runners", auto.ConfigValue(json.dumps([{"name": "prod-k8s"}])))
        try:
            prod.up(color="never")
            labels = cluster.get("/api/v1/namespaces/runners-owned")["metadata"]["labels"]
            assert labels["app.kubernetes.io/part-of"] == "gitlab-runners"
        finally:
            prod.destroy(color="never")
            prod.workspace.remove_stack("prod")
    assert cluster.wait_gone("/api/v1/namespaces/runners-owned")


# The Prometheus Operator's ServiceMonitor kind, declared with no schema of its own: enough for the
# chart to see the API (it renders the monitor only when the cluster serves monitoring.coreos.com/v1).
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {
            "kind": "ServiceMonitor",
            "listKind": "ServiceMonitorList",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


def test_cache_ca_and_service_monitor_on_the_cluster(
    project: Project, cluster: Cluster, job_image: str, tmp_path: Path
) -> None:
    """GitLab behind a private CA: the CA and the cache credentials reach the pods as Secrets the chart
    mounts, and on the node the runner verifies GitLab over HTTPS with exactly that CA."""
    chart, official = chart_under_test()
    status, _ = cluster.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", SERVICE_MONITOR_CRD)
    assert status in (201, 409)
    deadline = time.monotonic() + 30
    while cluster.get("/apis/monitoring.coreos.com/v1") is None and time.monotonic() < deadline:
        time.sleep(0.5)
    address = cluster.gateway or "127.0.0.1"
    ca, cert, key = make_ca(tmp_path, "gitlab", ip=address)
    with reachable_gitlab(cluster, API_TOKEN, tls=(str(cert), str(key))) as gitlab:
        token = gitlab.create_runner().token
        prod = stack(project, "prod")
        with_existing_tokens(prod, {"prod-k8s": token})
        kubernetes = json.loads(prod.get_config("gitlab-runners:kubernetes").value)
        kubernetes.update(
            namespace="runners-features",
            createNamespace=True,
            replicas=1,
            chart={"path": str(chart)},
            kubeconfig=str(cluster.kubeconfig),
            serviceMonitor={"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}},
        )
        prod.set_config("gitlab-runners:kubernetes", auto.ConfigValue(json.dumps(kubernetes)))
        prod.set_config("gitlab-runners:gitlabUrl", auto.ConfigValue(gitlab.base_url))
        prod.set_config("gitlab-runners:gitlabCa", auto.ConfigValue(json.dumps({"file": str(ca)})))
        prod.set_config("gitlab-runners:metrics", auto.ConfigValue(json.dumps({"enabled": True})))
        cache = {"type": "s3", "s3": {"bucketName": "runner-cache", "bucketLocation": "eu-west-1"}}
        prod.set_config("gitlab-runners:cache", auto.ConfigValue(json.dumps(cache)))
        secret_key = "k8s-cache-secret-value"
        prod.set_config(
            "gitlab-runners:cacheCredentials",
            auto.ConfigValue(json.dumps({"accessKey": "AKIAK8S", "secretKey": secret_key}), secret=True),
        )
        try:
            started = time.time()
            up = prod.up(color="never")
            assert secret_key not in up.stdout + up.stderr
            base = "/api/v1/namespaces/runners-features"
            cache_secret = cluster.get(f"{base}/secrets/gitlab-runners-cache")
            assert base64.b64decode(cache_secret["data"]["secretkey"]).decode() == secret_key
            certs = cluster.get(f"{base}/secrets/gitlab-runners-certs")
            assert base64.b64decode(certs["data"][f"{address}.crt"]).decode() == ca.read_text()
            assert secret_key not in exported_state(project, "prod")
            if official:
                deployment = cluster.get(
                    "/apis/apps/v1/namespaces/runners-features/deployments/prod-k8s-runner-gitlab-runner"
                )
                volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
                sources = volumes["projected-secrets"]["projected"]["sources"]
                assert any(s.get("secret", {}).get("name") == "gitlab-runners-cache" for s in sources)
                assert volumes["custom-certs"]["secret"]["secretName"] == "gitlab-runners-certs"
                monitors = cluster.get("/apis/monitoring.coreos.com/v1/namespaces/runners-features/servicemonitors")
                (monitor,) = monitors["items"]
                assert monitor["metadata"]["labels"]["release"] == "prometheus"
                assert monitor["spec"]["endpoints"][0]["interval"] == "15s"
                assert cluster.get(f"{base}/services/prod-k8s-runner-gitlab-runner") is not None
                if cluster.runs_pods:
                    # Only a runner that trusts the delivered CA can poll over HTTPS.
                    assert gitlab.polled_since(token, started), "the runner pod never polled GitLab over HTTPS"
        finally:
            prod.destroy(color="never")
            prod.workspace.remove_stack("prod")
    assert cluster.wait_gone("/api/v1/namespaces/runners-features")

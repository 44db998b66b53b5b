"""Kubernetes executor jobs end to end on a node that runs pods: `pulumi up` of a Kubernetes stack with
three runners (jobs in the runners' namespace, in a namespace of their own, in a namespace per job),
the official chart's manager pods running the chart's own scripts with the runner stand-in (register
against the GitLab API double, then run), a job for each runner whose pod runs to success with its log
back in the double, and `pulumi destroy` running the chart's preStop unregister.

The job pods are made by the stand-in's kubernetes executor through the API with the manager pod's
service account, so the RBAC rules the program renders are tested by use: a missing rule fails the job.
"""

from __future__ import annotations

import functools
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pulumi import automation as auto

from components.kubernetes_runner import fingerprint
from tests.charts import chart_under_test
from tests.gitlab_double.server import GitLabDouble
from tests.integration.conftest import Project, new_project, stack
from tests.integration.docker_engine import wait_for
from tests.integration.kubernetes_stack import load_node_images, reachable_gitlab, wait_rolled_out
from tests.integration.local_cluster import Cluster

API_TOKEN = "glpat-" + secrets.token_hex(10)
NAMESPACE = "gitlab-node"
JOB_NAMESPACE = "ci-jobs"
# Each runner and where its job pods go.
RUNNERS: dict[str, dict[str, str | bool]] = {
    "node-k8s": {},
    "node-jobns": {"namespace": JOB_NAMESPACE},
    "node-perjob": {"namespacePerJob": True},
}


@dataclass
class NodeDeployment:
    project: Project
    stack: auto.Stack
    gitlab: GitLabDouble
    tokens: dict[str, str]
    job_image: str
    cluster: Cluster
    deployed: bool = False

    def ensure_up(self) -> NodeDeployment:
        if not self.deployed:
            assert self.stack.up(color="never").summary.result == "succeeded"
            self.deployed = True
        return self


@pytest.fixture()
def running(deployed: NodeDeployment) -> NodeDeployment:
    """The module's stack, brought up if no test has done so (or the last one destroyed it)."""
    return deployed.ensure_up()


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeDeployment]:
    if not cluster.runs_pods:
        pytest.skip(f"no node here runs pods: {cluster.node}")
    chart, official = chart_under_test()
    if not official:
        pytest.skip("the stand-in chart runs no runner: the official archive is not on disk (README)")
    job_image = load_node_images(cluster)
    for namespace in (NAMESPACE, JOB_NAMESPACE):
        status, body = cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": namespace}})
        assert status in (201, 409), body
    project = new_project(tmp_path_factory.mktemp("kubernetes-node"))
    with reachable_gitlab(cluster, API_TOKEN) as gitlab:
        tokens = {name: gitlab.create_runner(description=name).token for name in RUNNERS}
        target = stack(project, "node")
        runners = [
            {
                "name": name,
                "executor": "kubernetes",
                "image": job_image,
                "pullPolicy": ["if-not-present"],
                **({"jobPods": pods} if pods else {}),
            }
            for name, pods in RUNNERS.items()
        ]
        target.set_all_config(
            {
                "gitlab-runners:target": auto.ConfigValue("kubernetes"),
                "gitlab-runners:gitlabUrl": auto.ConfigValue(gitlab.base_url),
                "gitlab-runners:checkInterval": auto.ConfigValue("1"),
                "gitlab-runners:runnerTokens": auto.ConfigValue(json.dumps(tokens), secret=True),
                "gitlab-runners:runners": auto.ConfigValue(json.dumps(runners)),
                "gitlab-runners:kubernetes": auto.ConfigValue(
                    json.dumps(
                        {
                            "namespace": NAMESPACE,
                            "chart": {"path": str(chart)},
                            "kubeconfig": str(cluster.kubeconfig),
                            # Job pods outside the runners' namespace need a ClusterRole.
                            "rbac": {"create": True, "clusterWideAccess": True},
                            "terminationGracePeriodSeconds": 30,
                        }
                    )
                ),
            }
        )
        deployment = NodeDeployment(project, target, gitlab, tokens, job_image, cluster)
        try:
            yield deployment
        finally:
            target.destroy(color="never")
            target.workspace.remove_stack("node")
            for namespace in (NAMESPACE, JOB_NAMESPACE):
                cluster.request("DELETE", f"/api/v1/namespaces/{namespace}")


def test_up_runs_the_charts_scripts_and_every_runner_polls(deployed: NodeDeployment) -> None:
    d = deployed
    started = time.time()
    up = d.stack.up(color="never")
    d.deployed = True
    assert up.summary.result == "succeeded"
    for name, token in d.tokens.items():
        wait_rolled_out(d.cluster, fingerprint(token), namespace=NAMESPACE, release=f"{name}-runner")
        # The chart's register script verified the token, then `run` polled with it.
        assert any(p.token == token for p in d.gitlab.verified), f"{name} never verified its token"
        wait_for(f"{name} polling", functools.partial(d.gitlab.polled_since, token, started), seconds=60)
    # The chart's live check runs in every manager pod: none restarted.
    pods = d.cluster.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    restarts = {p["metadata"]["name"]: [c["restartCount"] for c in p["status"]["containerStatuses"]] for p in pods}
    assert all(count == [0] for count in restarts.values()), restarts


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_a_kubernetes_job_runs_in_a_pod_and_its_log_reaches_gitlab(running: NodeDeployment, runner: str) -> None:
    d = running
    marker = f"marker-{secrets.token_hex(4)}"
    job = d.gitlab.enqueue_job(d.tokens[runner], [f"echo {marker}", "cat /etc/debian_version"], image=d.job_image)
    wait_for(f"the job of {runner} to finish", lambda: job.state in ("success", "failed"), seconds=120)
    trace = bytes(job.trace).decode()
    assert job.state == "success", trace
    assert marker in trace
    where = RUNNERS[runner]
    namespace = f"ci-job-{job.id}" if where.get("namespacePerJob") else str(where.get("namespace", NAMESPACE))

    # Everything the job made goes: its pod (deleted at once, gone after its graceful stop), and with
    # namespacePerJob its namespace.
    def leftover() -> list[str]:
        pods = d.cluster.get(f"/api/v1/namespaces/{namespace}/pods") or {"items": []}
        return [p["metadata"]["name"] for p in pods["items"] if p["metadata"]["name"].startswith("runner-")]

    wait_for(f"the job pods in {namespace} to go", lambda: not leftover(), seconds=90)
    if where.get("namespacePerJob"):
        assert d.cluster.wait_gone(f"/api/v1/namespaces/{namespace}", seconds=60)


def test_destroy_unregisters_the_managers_and_leaves_nothing(running: NodeDeployment) -> None:
    d = running
    managers_before = len(d.gitlab.managers_removed)
    destroyed = d.stack.destroy(color="never")
    d.deployed = False
    assert destroyed.summary.result == "succeeded"
    # The chart's preStop hook ran `unregister --all-runners`: GitLab saw each manager leave.
    removed = {m.token for m in d.gitlab.managers_removed[managers_before:]}
    assert removed >= set(d.tokens.values()), removed
    for name in RUNNERS:
        path = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{name}-runner-gitlab-runner"
        assert d.cluster.wait_gone(path, seconds=60)
    wait_for(
        "the manager pods to go",
        lambda: not (d.cluster.get(f"/api/v1/namespaces/{NAMESPACE}/pods") or {"items": []})["items"],
        seconds=90,
    )

"""What the Kubernetes-target tests share: the GitLab API double where the runner pods reach it, the
images the node runs, and the wait for a runner Deployment to roll out."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from components.kubernetes_runner import RUNNER_UID, SECRETS_FINGERPRINT
from components.settings import RUNNER_VERSION
from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.docker_engine import Engine, base_image, start_engine
from tests.integration.local_cluster import Cluster
from tests.integration.local_node import SANDBOX_IMAGE

# The image the official chart runs (its values' default registry/image and alpine-v<appVersion> tag):
# on the node it is the runner base image holding the stand-in, loaded under that name.
CHART_IMAGE = f"registry.gitlab.com/gitlab-org/gitlab-runner:alpine-v{RUNNER_VERSION}"


def alpine_like(engine: Engine, base: str) -> str:
    """The base image laid out as the official alpine image the chart runs: its `gitlab-runner` user
    is uid 100 (the chart's runAsUser), with its home (the ubuntu image, and the base, use 999; Debian
    gives uid 100 to `_apt`, which moves aside)."""
    dockerfile = (
        f"FROM {base}\n"
        f"RUN usermod --uid 4100 _apt && usermod --uid {RUNNER_UID} gitlab-runner"
        " && chown -R gitlab-runner /home/gitlab-runner\n"
    )
    return _build(engine, f"{base}-uid{RUNNER_UID}", dockerfile)


def _build(engine: Engine, tag: str, dockerfile: str) -> str:
    if engine.run("image", "inspect", tag, check=False).returncode != 0:
        subprocess.run(
            [engine.cli, "-H", engine.host, "build", "--quiet", "--tag", tag, "-"],
            input=dockerfile.encode(),
            check=True,
            capture_output=True,
            timeout=300,
        )
    return tag


def pause_image(engine: Engine, base: str) -> str:
    """The pods' sandbox image (the pause container): waits for a stop signal and exits on it."""
    entrypoint = '["/bin/sh", "-c", "trap \'exit 0\' TERM INT; while :; do sleep 1; done"]'
    return _build(engine, f"{base}-pause", f"FROM {base}\nENTRYPOINT {entrypoint}\nCMD []\n")


def load_node_images(cluster: Cluster) -> str:
    """Put the runner base image on the node as the chart's runner image (laid out as the alpine
    image) and as itself (the job image); returns the job image's name. With kwok nothing runs, so
    nothing is loaded."""
    engine = start_engine()
    base = base_image(engine)
    if cluster.node_handle is not None:
        images = [(pause_image(engine, base), SANDBOX_IMAGE), (alpine_like(engine, base), CHART_IMAGE), (base, base)]
        cluster.node_handle.load_images([engine.cli, "-H", engine.host], images)
    return base


@contextmanager
def reachable_gitlab(cluster: Cluster, api_token: str, tls: tuple[str, str] | None = None) -> Iterator[GitLabDouble]:
    """The API double where the runner pods reach it: this machine's address on the pod network (with
    kwok, whose pods never run, 127.0.0.1)."""
    with serve(api_token, tls=tls, host=cluster.gateway or "127.0.0.1") as gitlab:
        yield gitlab


def deployment_of(cluster: Cluster, namespace: str, release: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = cluster.get(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{release}-gitlab-runner"
    )
    return found


def wait_rolled_out(
    cluster: Cluster,
    fingerprint: str,
    namespace: str = "gitlab",
    release: str = "prod-k8s-runner",
    seconds: float = 120,
) -> dict[str, Any]:
    """The Deployment's pods carry `fingerprint` and are all Ready."""
    deadline = time.monotonic() + seconds
    last: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        last = deployment_of(cluster, namespace, release)
        if last is not None:
            template = last["spec"]["template"]["metadata"].get("annotations", {})
            status = last.get("status", {})
            if (
                template.get(SECRETS_FINGERPRINT) == fingerprint
                and status.get("updatedReplicas") == last["spec"]["replicas"]
                and status.get("readyReplicas") == last["spec"]["replicas"]
                and status.get("replicas") == last["spec"]["replicas"]
            ):
                return last
        time.sleep(1)
    raise AssertionError(f"the runner pods did not roll to fingerprint {fingerprint}: {last and last.get('status')}")

"""A real, local Kubernetes cluster for the integration tests: etcd, kube-apiserver,
kube-controller-manager (namespaces, garbage collection, deployments, replica sets, service accounts,
the root CA published to every namespace) and kube-scheduler, built by scripts/cluster-binaries, and a
node that runs pods (local_node.py: kubelet, kube-proxy, containerd 2, runc, CNI), whose pod network is
a bridge the test makes. Where the node's parts are not on the machine, kwok keeps a fake node instead:
pods scheduled onto it are marked Running and Ready but never run; the test output says which.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tests.integration.local_node import PodNetwork, local_node, node_missing


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


EPHEMERAL_PORTS = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port_block(span: int = 3) -> int:
    """The first of `span` consecutive ports nothing is bound to, below the kernel's ephemeral range.

    A runner container on the host's network binds its metrics port at the stack's port plus an offset
    per executor kind (and its session port likewise). A port in the ephemeral range, free when chosen,
    can meanwhile go to any listener on port 0 (Pulumi's plugins, the cluster's parts, other workers'
    tests): the runner then cannot bind it and restarts until the readiness gate gives up. Below that
    range only an explicit bind takes a port."""
    low = int(EPHEMERAL_PORTS.read_text().split()[0])
    while True:
        base = 10_000 + secrets.randbelow(low - 10_000 - span)
        if all(_bindable(port) for port in range(base, base + span)):
            return base


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - every address: a runner on the host network binds either
        except OSError:
            return False
    return True


@dataclass
class Cluster:
    url: str
    token: str
    kubeconfig: Path
    node: str = "none"
    """What runs the pods: `kubelet <version> (containerd <version>)`, or `kwok (<why>)`."""
    gateway: str | None = None
    """This machine's address on the pod network (None with kwok): where pods reach the tests' servers."""
    node_handle: Any = None
    """The running node (local_node.Node), for loading images; None with kwok."""

    @property
    def runs_pods(self) -> bool:
        return self.node_handle is not None

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        """One API call as the cluster admin (the server's certificate is self-signed)."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)  # noqa: S310
        request.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            request.add_header("Content-Type", content_type)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as response:  # noqa: S310
                return response.status, _body(response.read())
        except urllib.error.HTTPError as error:
            return error.code, _body(error.read())

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        return body if status == 200 else None

    def wait_gone(self, path: str, seconds: float = 90) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.request("GET", path)[0] == 404:
                return True
            time.sleep(1)
        return False


def _body(text: bytes) -> Any:
    """JSON for API objects; plain text for the health endpoints."""
    try:
        return json.loads(text)
    except ValueError:
        return text.decode()


def _wait_ready(cluster: Cluster, processes: dict[str, subprocess.Popen[bytes]], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    last: object = None
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} (see its log)")
        try:
            status, last = cluster.request("GET", "/readyz")
            if status == 200:
                return
        except OSError as error:
            last = error
        time.sleep(0.5)
    raise RuntimeError(f"kube-apiserver not ready after {seconds} s: {last}")


def write_kubeconfig(path: Path, url: str, token: str) -> Path:
    """A kubeconfig for `url` with a bearer token; the server certificate is not checked (self-signed)."""
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": {"server": url, "insecure-skip-tls-verify": True}}],
                "users": [{"name": "admin", "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}],
                "current-context": "local",
            }
        )
    )
    path.chmod(0o600)
    return path


@contextmanager
def local_cluster(bin_dir: Path, work: Path, require_node: bool = False) -> Iterator[Cluster]:
    """The cluster until the block ends. With the node's parts on the machine, a real node; else kwok
    (`require_node`: fail instead, as under scripts/test where the sources are at hand)."""
    work.mkdir(parents=True, exist_ok=True)
    why_not = node_missing(bin_dir)
    if why_not and require_node:
        raise RuntimeError(f"a Kubernetes node is required here, but these are missing: {why_not}")
    network = PodNetwork.create() if why_not is None else None
    etcd_client, etcd_peer, api_port, cm_port, scheduler_port, kwok_port = (free_port() for _ in range(6))
    token = secrets.token_hex(16)
    (work / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    (work / "tokens.csv").chmod(0o600)
    subprocess.run(["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(
        ["openssl", "rsa", "-in", str(work / "sa.key"), "-pubout", "-out", str(work / "sa.pub")],
        check=True,
        capture_output=True,
    )
    url = f"https://127.0.0.1:{api_port}"
    cluster = Cluster(url=url, token=token, kubeconfig=work / "kubeconfig")
    write_kubeconfig(cluster.kubeconfig, url, token)
    etcd_url = f"http://127.0.0.1:{etcd_client}"
    commands = {
        "etcd": [
            str(bin_dir / "etcd"),
            "--name=test",
            f"--data-dir={work / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
            f"--initial-cluster=test=http://127.0.0.1:{etcd_peer}",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--secure-port={api_port}",
            f"--cert-dir={work / 'certs'}",
            # Pods reach the API server through the `kubernetes` Service (kube-proxy) at the advertised
            # address on the pod network; the tests' clients keep 127.0.0.1.
            *(
                [
                    "--bind-address=0.0.0.0",
                    f"--advertise-address={network.gateway}",
                    "--kubelet-preferred-address-types=InternalIP",
                ]
                if network
                else ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
            ),
            f"--token-auth-file={work / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={work / 'sa.pub'}",
            f"--service-account-signing-key-file={work / 'sa.key'}",
            # An allocation range for Service objects; nothing is routed to it.
            "--service-cluster-ip-range=10.96.0.0/24",
        ],
        "kube-controller-manager": [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={cluster.kubeconfig}",
            "--controllers=namespace-controller,garbage-collector-controller,deployment-controller,"
            "replicaset-controller,serviceaccount-controller,root-ca-certificate-publisher-controller",
            # Published as kube-root-ca.crt in every namespace: the CA a pod's service account trusts.
            f"--root-ca-file={work / 'certs' / 'apiserver.crt'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={cm_port}",
        ],
        "kube-scheduler": [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={cluster.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={scheduler_port}",
        ],
        "kwok": [
            str(bin_dir / "kwok"),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--config={Path(__file__).parent / 'fixtures' / 'kwok-stages.yaml'}",
            "--manage-all-nodes",
            "--cidr=10.0.0.0/24",
            "--node-ip=127.0.0.1",
            f"--node-port={kwok_port}",
            "--server-address=127.0.0.1:0",
        ],
    }
    with ExitStack() as stack:
        processes: dict[str, subprocess.Popen[bytes]] = {}
        if network is not None:
            stack.callback(network.remove)

        def start(name: str) -> None:
            log: IO[bytes] = stack.enter_context((work / f"{name}.log").open("wb"))
            process = subprocess.Popen(commands[name], stdout=log, stderr=subprocess.STDOUT)
            processes[name] = process
            stack.callback(_stop, process)

        start("etcd")
        start("kube-apiserver")
        _wait_ready(cluster, processes)
        start("kube-controller-manager")
        start("kube-scheduler")
        if network is not None:
            node = stack.enter_context(local_node(cluster, bin_dir, work / "node", network, free_port))
            cluster.node, cluster.gateway, cluster.node_handle = node.description, network.gateway, node
        elif (bin_dir / "kwok").exists():
            start("kwok")
            _add_fake_node(cluster)
            cluster.node = f"kwok (no node can run here: {why_not} missing)"
        yield cluster


FAKE_NODE = "kwok-node-0"


def _add_fake_node(cluster: Cluster) -> None:
    """A node that kwok manages: Ready, with room for the runner pods."""
    capacity = {"cpu": "32", "memory": "64Gi", "pods": "110"}
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": FAKE_NODE,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            # The labels a kubelet gives its node: the stack pins job pods to kubernetes.io/arch.
            "labels": {
                "kubernetes.io/hostname": FAKE_NODE,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }
    status, body = cluster.request("POST", "/api/v1/nodes", node)
    if status != 201:
        raise RuntimeError(f"could not add the fake node: {status} {body}")
    # The API server taints a new node not-ready; without a node lifecycle controller nobody lifts it
    # once kwok reports the node Ready, so the set-up does.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = (cluster.get(f"/api/v1/nodes/{FAKE_NODE}") or {}).get("status", {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            patch = {"spec": {"taints": None}}
            status, body = cluster.request("PATCH", f"/api/v1/nodes/{FAKE_NODE}", patch, "application/merge-patch+json")
            if status != 200:
                raise RuntimeError(f"could not untaint the fake node: {status} {body}")
            return
        time.sleep(0.5)
    raise RuntimeError("kwok did not make the fake node Ready within 60 s (see kwok.log)")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

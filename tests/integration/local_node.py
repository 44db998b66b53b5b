"""A Kubernetes node that runs pods, for the local control plane (local_cluster.py): containerd 2 with
its CRI plugin and runc (scripts/docker-current builds both), Debian's CNI plugins, and kubelet and
kube-proxy at the control plane's version (scripts/cluster-binaries).

The pod network is a bridge the test creates, with an address of this machine's on it (`gateway`):
the API server advertises it (so the `kubernetes` Service, which kube-proxy maps, reaches it from a
pod), kubelet serves on it, and the tests' GitLab API double listens on it so that runner pods can
reach GitLab. No route leads anywhere else (IP forwarding stays off). No image registry is reachable:
images are imported into containerd from a local Docker engine (`load_images`).

kubelet 1.35 and later refuse cgroup v1 unless told (`failCgroupV1: false`); these machines boot
cgroup v1 in hybrid mode, so the node says so and goes on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tests.integration.docker_engine import free_subnet

if TYPE_CHECKING:
    from tests.integration.local_cluster import Cluster

CNI_BIN = Path("/usr/lib/cni")
# Fully qualified: the CRI plugin looks the pinned sandbox image up by its exact name.
SANDBOX_IMAGE = "localhost/gitlab-runners-test/pause:1"


@dataclass(frozen=True)
class PodNetwork:
    """The bridge pods hang off, and this machine's address on it."""

    bridge: str
    gateway: str
    subnet: str

    @staticmethod
    def create() -> PodNetwork:
        suffix = secrets.token_hex(3)
        subnet = free_subnet("10.244")
        network = PodNetwork(f"grpod{suffix}", f"{subnet}.1", f"{subnet}.0/24")
        subprocess.run(["ip", "link", "add", "name", network.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", f"{network.gateway}/24", "dev", network.bridge], check=True)
        subprocess.run(["ip", "link", "set", network.bridge, "up"], check=True)
        return network

    def remove(self) -> None:
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)


def node_missing(bin_dir: Path) -> str | None:
    """Why a node cannot start here, or None."""
    containerd = os.environ.get("GITLAB_RUNNERS_DOCKER_CURRENT")
    needs = {
        "kubelet and kube-proxy (scripts/cluster-binaries)": (bin_dir / "kubelet").exists()
        and (bin_dir / "kube-proxy").exists(),
        "containerd 2 (scripts/docker-current, which needs moby's source)": bool(containerd)
        and (Path(str(containerd)) / "containerd").exists(),
        "runc (scripts/docker-current)": bool(containerd) and (Path(str(containerd)) / "runc").exists(),
        "the CNI plugins (scripts/system-packages)": (CNI_BIN / "bridge").exists(),
        "root": os.geteuid() == 0,
        "ip and iptables": shutil.which("ip") is not None and shutil.which("iptables") is not None,
    }
    absent = [name for name, present in needs.items() if not present]
    return ", ".join(absent) if absent else None


@dataclass
class Node:
    name: str
    network: PodNetwork
    containerd_socket: Path
    ctr: Path
    description: str

    def load_images(self, docker_cli: list[str], images: list[tuple[str, str]]) -> None:
        """Import images from a Docker engine into the node's containerd, each under the name a pod
        asks for (`(name in the engine, name on the node)` pairs)."""
        for source, target in images:
            if source != target:
                subprocess.run([*docker_cli, "tag", source, target], check=True, capture_output=True)
            archive = subprocess.run([*docker_cli, "save", target], check=True, capture_output=True).stdout
            subprocess.run(
                [
                    str(self.ctr),
                    "--address",
                    str(self.containerd_socket),
                    "--namespace",
                    "k8s.io",
                    "images",
                    "import",
                    # Through the image service, whose events tell the CRI plugin about the image (an
                    # import by the transfer service stores it unseen by the CRI: "not found").
                    "--local",
                    "--platform",
                    "linux/amd64",
                    "-",
                ],
                input=archive,
                check=True,
                capture_output=True,
            )


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _lacks_sys_resource() -> bool:
    """Whether this process lacks CAP_SYS_RESOURCE (bit 24 of its effective capabilities)."""
    status = Path("/proc/self/status").read_text()
    effective = int(status.split("CapEff:")[1].split()[0], 16)
    return not effective >> 24 & 1


def _containerd_config(work: Path, network: PodNetwork) -> Path:
    cni = work / "cni"
    # Every registry resolves to a closed port on 127.0.0.1: an image missing from the node fails at
    # once instead of reaching for the network (images are imported, never pulled).
    registries = work / "registries"
    _write(registries / "_default" / "hosts.toml", 'server = "http://127.0.0.1:9"\n')
    _write(
        cni / "10-pods.conflist",
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "pods",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": network.bridge,
                        "isGateway": True,
                        # A default route to this machine, so the kubernetes Service (kube-proxy DNAT) is reachable.
                        "isDefaultGateway": True,
                        "ipMasq": False,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": network.subnet}]],
                            "dataDir": str(work / "cni-ipam"),
                        },
                    },
                    {"type": "loopback"},
                ],
            }
        ),
    )
    return _write(
        work / "containerd.toml",
        f"""version = 3
root = "{work / "containerd" / "root"}"
state = "{work / "containerd" / "state"}"
[grpc]
  address = "{work / "containerd" / "containerd.sock"}"
[ttrpc]
  address = "{work / "containerd" / "containerd.sock.ttrpc"}"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "{SANDBOX_IMAGE}"
[plugins.'io.containerd.cri.v1.images'.registry]
  config_path = "{registries}"
# Without CAP_SYS_RESOURCE (as on these machines) no process may lower its oom_score_adj, which
# kubelet asks for pod sandboxes: cap every request at containerd's own, as rootless set-ups do.
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = {"true" if _lacks_sys_resource() else "false"}
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["{CNI_BIN}"]
  conf_dir = "{cni}"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
""",
    )


def _kubelet_config(work: Path, network: PodNetwork, socket: Path, ports: tuple[int, int]) -> Path:
    config = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # these machines boot cgroup v1 (hybrid); kubelet warns and runs
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "address": network.gateway,
        "port": ports[0],
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": ports[1],
        # The API server reaches kubelet for logs, exec and attach; the node serves nobody else.
        "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
        "authorization": {"mode": "AlwaysAllow"},
        "failSwapOn": False,
        "resolvConf": "/etc/resolv.conf",
        "podLogsDir": str(work / "pod-logs"),
        "serializeImagePulls": False,
        "maxPods": 40,
        # A shared build machine's disk is not this node's to police: no evictions, no image GC.
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        "podCIDR": network.subnet,
        "registerNode": True,
    }
    return _write(work / "kubelet.json", json.dumps(config))


def _kube_proxy_config(work: Path, kubeconfig: Path, name: str, network: PodNetwork, ports: tuple[int, int]) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables",
        "clusterCIDR": network.subnet,
        "hostnameOverride": name,
        "bindAddress": network.gateway,
        "healthzBindAddress": f"127.0.0.1:{ports[0]}",
        "metricsBindAddress": f"127.0.0.1:{ports[1]}",
        # Leave the machine's conntrack sysctls alone.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }
    return _write(work / "kube-proxy.json", json.dumps(config))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(what: str, check: Callable[[], bool], seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
    raise RuntimeError(f"{what} within {seconds:.0f} s; the end of {log}:\n{tail}")


@contextmanager
def local_node(cluster: Cluster, bin_dir: Path, work: Path, network: PodNetwork, free_port: object) -> Iterator[Node]:
    """containerd, kubelet and kube-proxy for `cluster`, until the block ends; then the node's pods,
    containers, iptables rules and files are gone."""
    assert callable(free_port)
    containerd_bin = Path(os.environ["GITLAB_RUNNERS_DOCKER_CURRENT"])
    name = f"gr-node-{secrets.token_hex(3)}"
    socket = work / "containerd" / "containerd.sock"
    env = {**os.environ, "PATH": f"{containerd_bin}:/usr/sbin:/usr/bin:/sbin:/bin"}
    kubelet_ports = (free_port(), free_port())
    proxy_ports = (free_port(), free_port())
    commands = {
        "containerd": [str(containerd_bin / "containerd"), "--config", str(_containerd_config(work, network))],
        "kubelet": [
            str(bin_dir / "kubelet"),
            f"--config={_kubelet_config(work, network, socket, kubelet_ports)}",
            f"--kubeconfig={cluster.kubeconfig}",
            f"--root-dir={work / 'kubelet'}",
            f"--cert-dir={work / 'kubelet-pki'}",
            f"--hostname-override={name}",
            f"--node-ip={network.gateway}",
            "--v=1",
        ],
        "kube-proxy": [
            str(bin_dir / "kube-proxy"),
            f"--config={_kube_proxy_config(work, cluster.kubeconfig, name, network, proxy_ports)}",
        ],
    }
    with ExitStack() as stack:
        processes: dict[str, subprocess.Popen[bytes]] = {}

        def start(process_name: str) -> None:
            log: IO[bytes] = stack.enter_context((work / f"{process_name}.log").open("wb"))
            process = subprocess.Popen(commands[process_name], stdout=log, stderr=subprocess.STDOUT, env=env)
            processes[process_name] = process
            stack.callback(_stop, process)

        stack.callback(_clean_up, work, bin_dir)
        start("containerd")
        _wait("containerd did not answer", socket.exists, 60, work / "containerd.log")
        node = Node(name, network, socket, containerd_bin / "ctr", "")
        # Once kubelet has stopped (it would start them again), before containerd stops: every pod's
        # containers, so that no shim outlives the node.
        stack.callback(_kill_tasks, node)
        version = subprocess.run(
            [str(containerd_bin / "containerd"), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()
        kubelet_version = subprocess.run(
            [str(bin_dir / "kubelet"), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        node.description = f"kubelet {kubelet_version} (containerd {version[2] if len(version) > 2 else version})"
        start("kubelet")
        start("kube-proxy")

        def ready() -> bool:
            found = cluster.get(f"/api/v1/nodes/{name}") or {}
            conditions = found.get("status", {}).get("conditions") or []
            return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

        _wait(f"node {name} did not become Ready", ready, 120, work / "kubelet.log")
        # Without a node lifecycle controller nobody lifts the not-ready taint the API server put on
        # the new node; the set-up does, once kubelet reports it Ready.
        status, body = cluster.request(
            "PATCH", f"/api/v1/nodes/{name}", {"spec": {"taints": None}}, "application/merge-patch+json"
        )
        if status != 200:
            raise RuntimeError(f"could not untaint node {name}: {status} {body}")
        yield node
        cluster.request("DELETE", f"/api/v1/nodes/{name}")


def _kill_tasks(node: Node) -> None:
    ctr = [str(node.ctr), "--address", str(node.containerd_socket), "--namespace", "k8s.io"]
    listed = subprocess.run([*ctr, "tasks", "ls", "-q"], capture_output=True, text=True, check=False).stdout.split()
    for task in listed:
        subprocess.run([*ctr, "tasks", "kill", "--signal", "SIGKILL", task], capture_output=True, check=False)
    for task in listed:
        for _ in range(20):
            done = subprocess.run([*ctr, "tasks", "delete", task], capture_output=True, check=False)
            if done.returncode == 0:
                break
            time.sleep(0.5)


def _clean_up(work: Path, bin_dir: Path) -> None:
    """What the node leaves on the machine: shims, iptables rules, mounts and files."""
    for process in Path("/proc").glob("[0-9]*"):
        try:
            command = (process / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"containerd-shim" in command and str(work).encode() in command:
            subprocess.run(["kill", "-9", process.name], capture_output=True, check=False)
    subprocess.run([str(bin_dir / "kube-proxy"), "--cleanup"], capture_output=True, check=False, timeout=60)
    for root in (work / "containerd" / "state", work / "kubelet"):
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        for line in sorted((m.split()[1] for m in mounts if m.split()[1].startswith(str(root))), reverse=True):
            subprocess.run(["umount", "-l", line], capture_output=True, check=False)
    shutil.rmtree(work / "containerd", ignore_errors=True)
    shutil.rmtree(work / "kubelet", ignore_errors=True)

"""The benchmarks' baseline: the resources the project's program registers, registered directly.

No settings model, no validation, no components, no derived values beyond what the inputs need: the
stack config is read as plain JSON, and each resource the program would register is registered here
with the same inputs and options (config.toml and chart values built with string formatting and
literals). What the program costs beyond this is the price of its structure.
"""

import json
from typing import Any

import pulumi
import pulumi_docker as docker
import pulumi_gitlab as gitlab
import pulumi_kubernetes as kubernetes

config = pulumi.Config("gitlab-runners")
target = config.require("target")
url = config.require("gitlabUrl")
runners = json.loads(config.require("runners"))
existing = config.get_secret_object("runnerTokens")
LABELS = {"io.gitlab-runners.managed-by": "pulumi", "io.gitlab-runners.allow-privileged": "false"}
HEALTH = "wget -q -O - http://127.0.0.1:9252/metrics | grep -q request_job || exit 1"

tokens: dict[str, pulumi.Output[str]] = {}
ids: dict[str, pulumi.Output[Any]] = {}
if existing is not None:
    # Runners created elsewhere: their tokens, and nothing in GitLab (as the program does).
    given: pulumi.Output[Any] = existing

    def pick(name: str) -> pulumi.Output[str]:
        return given.apply(lambda values: str(values[name]))

    for runner in runners:
        tokens[runner["name"]] = pick(runner["name"])
        ids[runner["name"]] = pulumi.Output.from_input(None)
else:
    provider = gitlab.Provider(
        "gitlab",
        base_url=f"{url}/api/v4/",
        token=pulumi.Config("gitlab").require_secret("token"),
        early_auth_check=False,
    )
    for runner in runners:
        created = gitlab.UserRunner(
            f"runners-{runner['name']}",
            runner_type="instance_type",
            description=f"bench-{runner['name']}",
            tag_lists=runner.get("tags", []),
            untagged=not runner.get("tags"),
            locked=False,
            access_level="not_protected",
            paused=False,
            opts=pulumi.ResourceOptions(
                provider=provider,
                additional_secret_outputs=["token"],
                replacement_trigger=1,
                delete_before_replace=False,
            ),
        )
        tokens[runner["name"]] = created.token
        ids[runner["name"]] = created.id


def render(members: list[dict[str, Any]]) -> pulumi.Output[str]:
    def text(values: list[str]) -> str:
        parts = ['concurrent = 4\ncheck_interval = 3\nshutdown_timeout = 30\nlog_level = "info"\n']
        parts.append('listen_address = "127.0.0.1:9252"\n')
        for runner, token in zip(members, values, strict=True):
            parts.append(
                f'[[runners]]\nname = "{runner["name"]}"\nurl = "{url}"\ntoken = "{token}"\n'
                f'executor = "{runner["executor"]}"\nrequest_concurrency = 1\nlimit = {runner.get("limit", 0)}\n'
            )
            if runner["executor"] == "docker":
                parts.append(
                    '[runners.docker]\nimage = "alpine:3.20.3"\nprivileged = false\nvolumes = ["/cache"]\n'
                    'pull_policy = ["always"]\ntls_verify = false\ndisable_cache = false\nshm_size = 0\n'
                )
        return "".join(parts)

    return pulumi.Output.secret(pulumi.Output.all(*(tokens[r["name"]] for r in members)).apply(text))


targets: dict[str, dict[str, Any]] = {r["name"]: {} for r in runners}
if target == "docker":
    settings = json.loads(config.require("docker"))
    wanted = settings.get("image", {})
    flavor = wanted.get("flavor", "alpine")
    prefix = settings.get("containerName", "gitlab-runner")
    stop_timeout = settings.get("stopTimeout", 3600)
    for host in settings["hosts"]:
        on_host = docker.Provider(f"docker-{host['name']}-provider", host=host["host"])
        options = pulumi.ResourceOptions(provider=on_host)
        network = host.get("networkMode", "bridge")
        image = docker.Image(
            f"docker-{host['name']}-image-image",
            image_name=f"{wanted.get('repository', 'gitlab-runners/runner')}:{flavor}-v18.9.0",
            build=docker.DockerBuildArgs(
                context="images/runner",
                dockerfile="images/runner/Dockerfile",
                args={
                    "BASE_IMAGE": wanted.get("baseImage", f"gitlab/gitlab-runner:{flavor}-v18.9.0"),
                    "RUNNER_VERSION": "18.9.0",
                    "FLAVOR": flavor,
                    "EXTRA_PACKAGES": " ".join(wanted.get("extraPackages", [])),
                    "FLEETING_PLUGINS": "",
                    "SOURCE": "gitlab-runners:images/runner/Dockerfile",
                },
            ),
            skip_push=True,
            opts=options,
        )
        here = [r for r in runners if host["name"] in r.get("hosts", [host["name"]])]
        for kind in ("docker", "shell"):
            members = [r for r in here if r["executor"] == kind]
            if not members:
                continue
            name = f"{prefix}-{kind}"
            labels = [docker.ContainerLabelArgs(label=k, value=v) for k, v in LABELS.items()]
            volume = docker.Volume(
                f"docker-{host['name']}-{kind}-config",
                name=f"{name}-config",
                labels=[docker.VolumeLabelArgs(label=k, value=v) for k, v in LABELS.items()],
                opts=options,
            )
            mount = docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/etc/gitlab-runner")
            sync = docker.Container(
                f"docker-{host['name']}-{kind}-sync",
                name=f"{name}-sync",
                image=image.repo_digest,
                entrypoints=["/bin/sh", "/gitlab-runners/sync-config"],
                command=["sync"],
                network_mode=network,
                volumes=[mount],
                uploads=[
                    docker.ContainerUploadArgs(
                        file="/gitlab-runners/config.toml", content=render(members), permissions="0600"
                    ),
                    docker.ContainerUploadArgs(
                        file="/gitlab-runners/sync-config",
                        content="#!/bin/sh\ninstall -m 0600 /gitlab-runners/config.toml /etc/gitlab-runner/\n",
                        permissions="0755",
                    ),
                ],
                attach=True,
                must_run=False,
                logs=False,
                rm=False,
                restart="no",
                capabilities=docker.ContainerCapabilitiesArgs(drops=["NET_RAW"]),
                security_opts=["no-new-privileges:true"],
                labels=labels,
                opts=pulumi.ResourceOptions(provider=on_host, additional_secret_outputs=["uploads"]),
            )
            volumes = [mount]
            if kind == "docker":
                volumes.append(
                    docker.ContainerVolumeArgs(host_path="/var/run/docker.sock", container_path="/var/run/docker.sock")
                )
            container = docker.Container(
                f"docker-{host['name']}-{kind}-runner",
                name=name,
                image=image.repo_digest,
                restart="unless-stopped",
                must_run=True,
                stop_signal="SIGQUIT",
                stop_timeout=stop_timeout,
                destroy_grace_seconds=stop_timeout,
                network_mode=network,
                volumes=volumes,
                healthcheck=docker.ContainerHealthcheckArgs(
                    tests=["CMD-SHELL", HEALTH], interval="5s", timeout="10s", retries=3, start_period="5s"
                ),
                wait=False,
                capabilities=docker.ContainerCapabilitiesArgs(drops=["NET_RAW"]),
                security_opts=["no-new-privileges:true"],
                privileged=False,
                labels=labels,
                opts=pulumi.ResourceOptions(
                    provider=on_host,
                    depends_on=[sync],
                    custom_timeouts=pulumi.CustomTimeouts(delete=f"{stop_timeout + 300}s"),
                ),
            )
            for member in members:
                targets[member["name"]][host["name"]] = {"container": container.name, "containerId": container.id}
else:
    settings = json.loads(config.require("kubernetes"))
    namespace = settings.get("namespace", "gitlab")
    chart_path = settings.get("chart", {}).get("path")
    cluster = kubernetes.Provider(
        "kubernetes", namespace=namespace, enable_secret_mutable=True, kubeconfig=settings.get("kubeconfig")
    )
    pod_labels = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "gitlab-runners"}
    for runner in runners:
        name = runner["name"]
        secret = kubernetes.core.v1.Secret(
            f"kubernetes-runner-{name}-token",
            metadata=kubernetes.meta.v1.ObjectMetaArgs(
                name=f"{name}-runner-token", namespace=namespace, labels=pod_labels
            ),
            type="Opaque",
            string_data={"runner-token": tokens[name], "runner-registration-token": ""},
            opts=pulumi.ResourceOptions(provider=cluster, additional_secret_outputs=["data", "stringData"]),
        )
        template = (
            f'[[runners]]\nname = "{name}"\nexecutor = "kubernetes"\nrequest_concurrency = 1\n'
            f"limit = {runner.get('limit', 0)}\n"
            f'[runners.kubernetes]\nnamespace = "{namespace}"\nimage = "alpine:3.20.3"\nprivileged = false\n'
            'pull_policy = ["always"]\n[runners.feature_flags]\nFF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true\n'
        )
        release = kubernetes.helm.v3.Release(
            f"kubernetes-runner-{name}",
            name=f"{name}-runner",
            chart=chart_path or "gitlab-runner",
            version=None if chart_path else "0.86.0",
            repository_opts=None
            if chart_path
            else kubernetes.helm.v3.RepositoryOptsArgs(repo="https://charts.gitlab.io"),
            namespace=namespace,
            values={
                "gitlabUrl": url,
                "concurrent": runner.get("limit", 0) or 1,
                "checkInterval": 3,
                "logLevel": "info",
                "replicas": 1,
                "terminationGracePeriodSeconds": 3600,
                "shutdown_timeout": 30,
                "rbac": {
                    "create": True,
                    "clusterWideAccess": False,
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
                },
                "serviceAccount": {"create": True},
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "512Mi"},
                },
                "metrics": {"enabled": False, "port": 9252},
                "service": {"enabled": False},
                "podAnnotations": {"gitlab-runners.io/secrets-fingerprint": name},
                "securityContext": {"runAsNonRoot": True, "privileged": False, "capabilities": {"drop": ["ALL"]}},
                "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 100, "fsGroup": 65533},
                "runners": {"secret": secret.metadata.name, "name": name, "config": template},
            },
            atomic=True,
            cleanup_on_fail=True,
            skip_await=False,
            timeout=300,
            opts=pulumi.ResourceOptions(provider=cluster, depends_on=[secret]),
        )
        targets[name] = {"release": release.name, "namespace": namespace}

pulumi.export("target", target)
pulumi.export("runners", {r["name"]: {"gitlabId": ids[r["name"]], **targets[r["name"]]} for r in runners})

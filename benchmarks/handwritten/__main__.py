"""The hand-written program P1 measures the project against: what someone would write without it.

The runners created in GitLab (one UserRunner each), and on each Docker host the runner image, one
config volume and one runner container with config.toml uploaded into it; on Kubernetes, per runner a
token Secret and a release of the chart with the values a hand-edited values.yaml would hold for the
same deployment (RBAC rules, security contexts, resources: the chart's configuration is the user's
choice, not the program's structure). The stack config is read as plain JSON, nothing is checked,
config.toml is string formatting, and only the SDKs of the chosen target are imported (pulumi_docker
or pulumi_kubernetes, and pulumi_gitlab). What the project costs beyond this is the price of what it
adds: validated settings, the config sync container, components, the readiness gate.
"""

import functools
import json
from typing import Any

import pulumi
import pulumi_gitlab as gitlab

config = pulumi.Config("gitlab-runners")
target = config.require("target")
url = config.require("gitlabUrl")
runners: list[dict[str, Any]] = json.loads(config.require("runners"))

provider = gitlab.Provider("gitlab", base_url=f"{url}/api/v4/", token=pulumi.Config("gitlab").require_secret("token"))
tokens: dict[str, pulumi.Output[str]] = {}
for runner in runners:
    created = gitlab.UserRunner(
        runner["name"],
        runner_type="instance_type",
        description=runner["name"],
        tag_lists=runner.get("tags", []),
        untagged=not runner.get("tags"),
        opts=pulumi.ResourceOptions(provider=provider, additional_secret_outputs=["token"]),
    )
    tokens[runner["name"]] = created.token


def config_toml(members: list[dict[str, Any]], values: list[str]) -> str:
    parts = ["concurrent = 4\ncheck_interval = 3\n"]
    for runner, token in zip(members, values, strict=True):
        parts.append(
            f'[[runners]]\nname = "{runner["name"]}"\nurl = "{url}"\ntoken = "{token}"\n'
            f'executor = "{runner["executor"]}"\nlimit = {runner.get("limit", 0)}\n'
        )
        if runner["executor"] == "docker":
            parts.append('[runners.docker]\nimage = "alpine:3.20.3"\nvolumes = ["/cache"]\n')
    return "".join(parts)


if target == "docker":
    import pulumi_docker as docker

    for host in json.loads(config.require("docker"))["hosts"]:
        name = host["name"]
        here = [r for r in runners if name in r.get("hosts", [name])]
        on_host = pulumi.ResourceOptions(provider=docker.Provider(name, host=host["host"]))
        image = docker.Image(
            f"{name}-runner-image",
            image_name="gitlab-runner-local:alpine-v18.9.0",
            build=docker.DockerBuildArgs(
                context="images/runner", args={"BASE_IMAGE": "gitlab/gitlab-runner:alpine-v18.9.0"}
            ),
            skip_push=True,
            opts=on_host,
        )
        volume = docker.Volume(f"{name}-runner-config", name="gitlab-runner-config", opts=on_host)
        text: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(*(tokens[r["name"]] for r in here)).apply(functools.partial(config_toml, here))
        )
        docker.Container(
            f"{name}-runner",
            name="gitlab-runner",
            image=image.repo_digest,
            restart="unless-stopped",
            volumes=[
                docker.ContainerVolumeArgs(volume_name=volume.name, container_path="/etc/gitlab-runner"),
                docker.ContainerVolumeArgs(host_path="/var/run/docker.sock", container_path="/var/run/docker.sock"),
            ],
            uploads=[docker.ContainerUploadArgs(file="/etc/gitlab-runner/config.toml", content=text)],
            opts=on_host,
        )
else:
    import pulumi_kubernetes as kubernetes

    namespace = json.loads(config.require("kubernetes")).get("namespace", "gitlab")
    cluster = pulumi.ResourceOptions(provider=kubernetes.Provider("kubernetes", namespace=namespace))
    # values.yaml, as one would edit it for the chart.
    chart_values: dict[str, Any] = {
        "gitlabUrl": url,
        "checkInterval": 3,
        "logLevel": "info",
        "replicas": 1,
        "terminationGracePeriodSeconds": 3600,
        "shutdown_timeout": 30,
        "rbac": {
            "create": True,
            "clusterWideAccess": False,
            "rules": [
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods/exec", "pods/attach"],
                    "verbs": ["create", "delete", "get", "patch"],
                },
                {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "update"]},
                {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
                {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
                {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
            ],
        },
        "serviceAccount": {"create": True},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
        "metrics": {"enabled": False, "port": 9252},
        "service": {"enabled": False},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 100, "fsGroup": 65533},
    }
    for runner in runners:
        name = runner["name"]
        secret = kubernetes.core.v1.Secret(
            f"{name}-token",
            metadata=kubernetes.meta.v1.ObjectMetaArgs(name=f"{name}-runner-token", namespace=namespace),
            string_data={"runner-token": tokens[name], "runner-registration-token": ""},
            opts=cluster,
        )
        template = (
            f'[[runners]]\nname = "{name}"\nexecutor = "kubernetes"\nlimit = {runner.get("limit", 0)}\n'
            f'[runners.kubernetes]\nnamespace = "{namespace}"\nimage = "alpine:3.20.3"\n'
        )
        kubernetes.helm.v3.Release(
            name,
            name=f"{name}-runner",
            chart="gitlab-runner",
            version="0.86.0",
            repository_opts=kubernetes.helm.v3.RepositoryOptsArgs(repo="https://charts.gitlab.io"),
            namespace=namespace,
            values={
                **chart_values,
                "concurrent": runner.get("limit", 0) or 1,
                "runners": {"secret": secret.metadata.name, "name": name, "config": template},
            },
            opts=cluster,
        )

pulumi.export("runners", sorted(tokens))

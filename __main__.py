"""gitlab-runners: settings -> registration -> target -> outputs."""

from __future__ import annotations

import pulumi

from components.docker_runner import DockerRunner, DockerRunnerArgs
from components.kubernetes_runner import KubernetesRunner, KubernetesRunnerArgs
from components.providers import docker_provider, gitlab_provider, kubernetes_provider
from components.runner_image import RunnerImage, RunnerImageArgs
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import load_settings

settings, secrets = load_settings()
gitlab = gitlab_provider(settings, secrets)

registration = RunnerRegistration(
    "runners",
    RunnerRegistrationArgs(runners=settings.runners, existing_tokens=secrets.runner_tokens),
    opts=pulumi.ResourceOptions(providers=[gitlab] if gitlab else []),
)

targets: dict[str, dict[str, pulumi.Output[str]]] = {}
if settings.docker is not None:
    docker = docker_provider(settings.docker)
    on_docker = pulumi.ResourceOptions(providers=[docker])
    image_ref: pulumi.Input[str]
    if settings.docker.build is not None:
        image = RunnerImage("runner-image", RunnerImageArgs(build=settings.docker.build), opts=on_docker)
        image_ref = image.image_ref
        pulumi.export("image", image.image_name)
    else:
        image_ref = settings.docker.prebuilt_image or ""
    runner = DockerRunner(
        "docker-runner",
        DockerRunnerArgs(
            settings=settings.docker,
            runners=settings.runners,
            image=image_ref,
            global_=settings.global_,
            gitlab_url=settings.gitlab_url,
            tokens=registration.tokens,
            allow_privileged=settings.allow_privileged,
        ),
        opts=on_docker,
    )
    targets = {
        r.name: {"container": runner.container_name, "containerId": runner.container_id} for r in settings.runners
    }
elif settings.kubernetes is not None:
    cluster = kubernetes_provider(settings.kubernetes)
    release = KubernetesRunner(
        "kubernetes-runner",
        KubernetesRunnerArgs(
            settings=settings.kubernetes,
            global_=settings.global_,
            gitlab_url=settings.gitlab_url,
            runners=settings.runners,
            tokens=registration.tokens,
            allow_privileged=settings.allow_privileged,
        ),
        opts=pulumi.ResourceOptions(providers=[cluster]),
    )
    targets = {
        name: {"release": release_name, "namespace": release.namespace}
        for name, release_name in release.release_names.items()
    }

pulumi.export("target", settings.target)
pulumi.export(
    "runners",
    {r.name: {"gitlabId": registration.runner_ids[r.name], **targets.get(r.name, {})} for r in settings.runners},
)

"""gitlab-runners: settings -> registration -> target -> outputs."""

from __future__ import annotations

import gc

import pulumi

from components.providers import gitlab_provider
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import load_settings, manager_settings

settings, secrets = load_settings()
# Each target's components are imported only for it: the other's provider SDK is not loaded at all.
if settings.docker is not None:
    from components.docker_host import DockerHost, DockerHostArgs, kind_of
elif settings.kubernetes is not None:
    from components.kubernetes_runner import KubernetesRunner, KubernetesRunnerArgs
    from components.providers import kubernetes_provider
gitlab = gitlab_provider(settings, secrets)
# What is loaded by now (the provider SDKs above all, some 100,000 objects) lives as long as the program:
# frozen, full garbage collections no longer rescan it (at 1000 runners that was a fifth of the time).
# What registration makes (resources, Outputs) lives as long too: full collections a tenth as often
# (at 1000 runners they took a third of the time; the peak memory stays within a few MiB).
gc.freeze()
gc.set_threshold(*gc.get_threshold()[:2], 100)

registration = RunnerRegistration(
    "runners",
    RunnerRegistrationArgs(
        runners=settings.runners,
        existing_tokens=secrets.runner_tokens,
        existing_host_tokens=secrets.runner_host_tokens,
    ),
    opts=pulumi.ResourceOptions(providers=[gitlab] if gitlab else []),
)

manager = manager_settings(settings, secrets)
targets: dict[str, dict[str, pulumi.Input[object]]] = {r.name: {} for r in settings.runners}
if settings.docker is not None:
    images = {}
    housekeeping = {}
    for host in settings.docker.hosts:
        runners = [r for r in settings.runners if host.name in (r.hosts or ())]
        on_host = DockerHost(
            f"docker-{host.name}",
            DockerHostArgs(
                host=host,
                target=settings.docker,
                runners=runners,
                manager=manager,
                tokens=registration.tokens_on(host.name, runners),
                shared_tokens=registration.shared_tokens,
                tls=secrets.docker_tls.get(host.name),
            ),
        )
        if on_host.image_name is not None:
            images[host.name] = on_host.image_name
        if on_host.housekeeping is not None:
            housekeeping[host.name] = on_host.housekeeping
        for runner in runners:
            kind = kind_of(runner.executor)
            targets[runner.name][host.name] = {
                "container": on_host.containers[kind],
                "containerId": on_host.container_ids[kind],
            }
    if images:
        pulumi.export("images", images)
    if housekeeping:
        pulumi.export("housekeeping", housekeeping)
elif settings.kubernetes is not None:
    cluster = kubernetes_provider(settings.kubernetes)
    release = KubernetesRunner(
        "kubernetes-runner",
        KubernetesRunnerArgs(
            settings=settings.kubernetes,
            manager=manager,
            runners=settings.runners,
            tokens=registration.tokens,
            service_monitor=settings.kubernetes.service_monitor,
        ),
        opts=pulumi.ResourceOptions(providers=[cluster]),
    )
    for name, release_name in release.release_names.items():
        targets[name] = {"release": release_name, "namespace": release.namespace}

pulumi.export("target", settings.target)
pulumi.export(
    "runners",
    {
        r.name: {"gitlabId": registration.runner_ids[r.name], **registration.descriptions[r.name], **targets[r.name]}
        for r in settings.runners
    },
)

"""Rules that span several keys, checked once every key has the right shape.

Each rule names the key to change and a right value. Rules that depend on a key that is itself wrong
are skipped, so only root causes are reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import NamedTuple

from components.settings.model import (
    AUTOSCALING_EXECUTORS,
    EXAMPLE_PLUGIN,
    EXECUTORS,
    METRICS_PORT,
    PROJECT,
    SESSION_OFFSETS,
    SESSION_PORT,
    DockerTarget,
    KubernetesTarget,
    Runner,
    StackConfig,
    seconds,
)
from components.settings.problems import Problem

# The executors whose jobs have a web terminal (features.Session at v18.9.0): not the autoscaling ones.
TERMINAL_EXECUTORS = ("docker", "shell", "kubernetes")
# Docker: each runner container's metrics port offset (docker, shell, autoscaler).
METRICS_OFFSETS = (0, 1, 2)

# Runner attributes that only the GitLab API sets: a runner that brings its own token never reaches it.
GITLAB_SIDE = (
    "scope",
    "groupId",
    "projectId",
    "description",
    "tags",
    "runUntagged",
    "locked",
    "accessLevel",
    "paused",
    "maximumTimeout",
    "maintenanceNote",
    "tokenGeneration",
)
CACHE_CREDENTIALS = {
    "s3": ("accessKey", "secretKey"),
    "gcs": ("accessId", "privateKey"),
    "azure": ("accountName", "accountKey"),
}
TOKEN_SCOPES = "create_runner and manage_runner (or api)"  # noqa: S105 - scope names


class Context(NamedTuple):
    """What the rules need besides the config."""

    existing_token_names: frozenset[str] = frozenset()
    host_tokens: Mapping[str, frozenset[str]] = MappingProxyType({})
    """Runner name -> the Docker hosts it brings a token of its own for (runnerTokens.<name>.<host>)."""
    has_gitlab_token: bool = False
    gitlab_token_is_secret: bool = True
    docker_tls_names: frozenset[str] = frozenset()
    cache_credential_keys: frozenset[str] | None = None
    """The keys of the secret cacheCredentials, None when it is not set."""
    dry_run: bool = False


def _key(name: str) -> str:
    return f"{PROJECT}:{name}"


def runner_problems(config: StackConfig) -> Iterator[Problem]:
    executors = EXECUTORS[config.target]
    seen: set[str] = set()
    for index, runner in enumerate(config.runners or ()):
        at = f"runners[{index}]"
        if runner.name in seen:
            yield Problem(_key(f"{at}.name"), f'"{runner.name}" is used twice', "give each runner its own name")
        seen.add(runner.name)
        if runner.executor is not None and runner.executor not in executors:
            options = " or ".join(f'"{e}"' for e in executors)
            yield Problem(
                _key(f"{at}.executor"),
                f'must be {options} for target "{config.target}", got "{runner.executor}"',
                f"executor: {executors[0]}",
            )
        executor = runner.executor or executors[0]
        for field, needed in (("group_id", "group"), ("project_id", "project")):
            alias = "groupId" if field == "group_id" else "projectId"
            value = getattr(runner, field)
            if runner.scope == needed and value is None:
                yield Problem(_key(f"{at}.{alias}"), f'is required but not set (scope "{needed}")', f"{alias}: 42")
            elif runner.scope != needed and value is not None:
                yield Problem(_key(f"{at}.{alias}"), f'is only valid with scope "{needed}"', f"scope: {needed}")
        if runner.privileged and executor == "shell":
            yield Problem(_key(f"{at}.privileged"), "has no meaning for the shell executor", "privileged: false")
        elif runner.privileged and not config.allow_privileged:
            yield Problem(
                _key(f"{at}.privileged"),
                f"is true but {_key('allowPrivileged')} is not set: privileged jobs are root on the host",
                "allowPrivileged: true (and say why in the stack file)",
            )
        if executor == "shell" and runner.image is not None:
            yield Problem(_key(f"{at}.image"), "has no meaning for the shell executor", "remove it")
        if runner.job_resources is not None and executor != "kubernetes":
            yield Problem(_key(f"{at}.jobResources"), "only applies to the kubernetes executor", "remove it")
        if runner.job_pods is not None and executor != "kubernetes":
            yield Problem(_key(f"{at}.jobPods"), "only applies to the kubernetes executor", "remove it")
        if runner.volumes is not None and executor not in ("docker", "docker-autoscaler"):
            yield Problem(
                _key(f"{at}.volumes"), "only applies to the docker and docker-autoscaler executors", "remove it"
            )
        if executor == "instance" and runner.image is not None:
            yield Problem(
                _key(f"{at}.image"), "has no meaning for the instance executor (jobs run on the VM)", "remove it"
            )
        if executor in AUTOSCALING_EXECUTORS and runner.autoscaler is None:
            yield Problem(
                _key(f"{at}.autoscaler"),
                f"is required by the {executor} executor",
                f"autoscaler: {{plugin: {EXAMPLE_PLUGIN}, maxInstances: 10, "
                "connectorConfig: {username: ec2-user}, policies: [{idleCount: 1}]}",
            )
        elif executor not in AUTOSCALING_EXECUTORS and runner.autoscaler is not None:
            yield Problem(
                _key(f"{at}.autoscaler"), "only applies to the docker-autoscaler and instance executors", "remove it"
            )
        connector = runner.autoscaler.connector_config if runner.autoscaler is not None else None
        if connector is not None and connector.use_static_credentials and connector.key_path is None:
            yield Problem(
                _key(f"{at}.autoscaler.connectorConfig.keyPath"),
                "is required with useStaticCredentials",
                "keyPath: /etc/gitlab-runner/instance-key",
            )
        pods = runner.job_pods
        kubernetes = config.kubernetes
        cluster_wide = kubernetes is not None and kubernetes.rbac.cluster_wide_access
        namespace = kubernetes.namespace if kubernetes is not None else "gitlab"
        if pods is not None and not cluster_wide:
            if pods.namespace is not None and pods.namespace != namespace:
                yield Problem(
                    _key(f"{at}.jobPods.namespace"),
                    f"is not the runners' namespace ({namespace}): the runner's Role only reaches its own; "
                    f"set {_key('kubernetes.rbac.clusterWideAccess')}: true to allow it",
                    f"namespace: {namespace}",
                )
            if pods.namespace_per_job:
                yield Problem(
                    _key(f"{at}.jobPods.namespacePerJob"),
                    f"creates namespaces, which needs {_key('kubernetes.rbac.clusterWideAccess')}: true",
                    "namespacePerJob: false",
                )


def token_problems(config: StackConfig, context: Context) -> Iterator[Problem]:
    names = [r.name for r in config.runners or ()] or ["runner"]
    for unknown in sorted(context.existing_token_names - set(names)):
        yield Problem(
            _key(f"runnerTokens.{unknown}"),
            "names no runner in gitlab-runners:runners",
            f"one of: {', '.join(sorted(set(names)))}",
        )
    for index, runner in enumerate(config.runners or ()):
        if runner.name not in context.existing_token_names:
            continue
        for alias in GITLAB_SIDE:
            if alias in {type(runner).model_fields[n].alias for n in runner.model_fields_set}:
                yield Problem(
                    _key(f"runners[{index}].{alias}"),
                    f"is an attribute GitLab keeps, but runner {runner.name} brings its own token "
                    f"(runnerTokens.{runner.name}), so the stack never sets it: set it on the runner in GitLab",
                    "remove it",
                )
    if context.has_gitlab_token and not context.gitlab_token_is_secret:
        yield Problem(
            "gitlab:token",
            "is stored in plain text in the stack file; it is a credential",
            "pulumi config set --secret gitlab:token  (then paste the glpat- token)",
        )


def other_target_problems(values: dict[str, object]) -> Iterator[Problem]:
    """The section of the target not chosen: reported once, and its content is not read at all."""
    target = values.get("target")
    if not isinstance(target, str) or target not in EXECUTORS:
        return
    for other in EXECUTORS:
        if other != target and values.get(other) is not None:
            yield Problem(_key(other), f'is set but target is "{target}"', f"remove {_key(other)}")


def target_problems(config: StackConfig) -> Iterator[Problem]:
    docker = config.docker
    if docker is not None and docker.prebuilt_image is not None and docker.image is not None:
        yield Problem(_key("docker.prebuiltImage"), "and docker.image are exclusive", "set only one of them")
    kubernetes = config.kubernetes
    if kubernetes is not None:
        if kubernetes.namespace == "default":
            yield Problem(
                _key("kubernetes.namespace"),
                'must not be "default": runners get a namespace of their own',
                "namespace: gitlab",
            )
        if kubernetes.chart.path is not None and kubernetes.chart.repository is not None:
            yield Problem(_key("kubernetes.chart.path"), "and chart.repository are exclusive", "set only one of them")
        account = kubernetes.service_account
        if kubernetes.rbac.create and not account.create and account.name is None:
            # The chart then binds its Role to, and runs the pods as, an account named after the
            # release, which it does not create: the pods would never start.
            yield Problem(
                _key("kubernetes.serviceAccount.name"),
                "is required with serviceAccount.create: false and rbac.create: true (the chart binds its Role "
                "to a service account of that name and creates none)",
                "serviceAccount: {create: false, name: gitlab-runner}  (an account that exists in the namespace)",
            )
    if config.target == "kubernetes" and "host_address" in config.metrics.model_fields_set:
        yield Problem(
            _key("metrics.hostAddress"),
            "has no effect on Kubernetes: the chart listens on :<metrics.port> in the pod",
            "remove it",
        )


def docker_host_problems(config: StackConfig, context: Context) -> Iterator[Problem]:
    if config.target != "docker":
        for index, runner in enumerate(config.runners or ()):
            if runner.hosts is not None:
                yield Problem(_key(f"runners[{index}].hosts"), "only applies to the docker target", "remove it")
        for name in sorted(context.host_tokens):
            yield Problem(
                _key(f"runnerTokens.{name}"),
                "holds a token per Docker host, but the target is not docker: give the runner one token",
                f"pulumi config set --secret --path '{_key('runnerTokens')}.{name}'  (then paste the glrt- token)",
            )
        return
    hosts = (config.docker.hosts if config.docker is not None else None) or []
    names = [h.name for h in hosts] or ["local"]
    served: set[str] = set()
    for index, runner in enumerate(config.runners or ()):
        for position, name in enumerate(runner.hosts or names):
            served.add(name)
            if name not in names:
                yield Problem(
                    _key(f"runners[{index}].hosts[{position}]"),
                    f"names no host in {_key('docker.hosts')}",
                    f"one of: {', '.join(names)}",
                )
        yield from _host_token_problems(runner.name, runner.hosts or names, names, context)
    if config.runners is None:
        served.update(names)
        yield from _host_token_problems("runner", names, names, context)
    seen: set[str] = set()
    for index, host in enumerate(hosts):
        at = f"docker.hosts[{index}]"
        if host.name in seen:
            yield Problem(_key(f"{at}.name"), f'"{host.name}" is used twice', "give each host its own name")
        seen.add(host.name)
        if host.name not in served:
            yield Problem(_key(at), f"(host {host.name}) serves no runner", "list it in a runner's hosts, or remove it")
        tcp = host.host.startswith("tcp://")
        has_tls = host.cert_path is not None or host.name in context.docker_tls_names
        if tcp and not has_tls:
            yield Problem(
                _key(f"{at}.host"),
                "is tcp:// without TLS: anyone who reaches that port is root on the host",
                f"certPath: ~/.docker/{host.name}  (or the secret {_key('dockerTls')}.{host.name})",
            )
        if not tcp and (host.cert_path is not None or host.name in context.docker_tls_names):
            yield Problem(_key(f"{at}.certPath"), "only applies to a tcp:// host", "remove it")
        if host.ssh_opts and not host.host.startswith("ssh://"):
            yield Problem(_key(f"{at}.sshOpts"), "only applies to an ssh:// host", "remove it")
    for unknown in sorted(context.docker_tls_names - set(names)):
        yield Problem(
            _key(f"dockerTls.{unknown}"), "names no host in gitlab-runners:docker.hosts", f"one of: {', '.join(names)}"
        )


def _host_token_problems(runner: str, hosts: list[str], names: list[str], context: Context) -> Iterator[Problem]:
    """A runner with a token per host (one GitLab runner each) needs exactly one for each host it runs on."""
    given = context.host_tokens.get(runner)
    if given is None:
        return
    at = f"runnerTokens.{runner}"
    for host in hosts:
        if host in names and host not in given:
            yield Problem(
                _key(f"{at}.{host}"),
                f"is missing: runner {runner} runs on host {host} and brings a token per host",
                f"pulumi config set --secret --path '{_key(at)}.{host}'  (the token of its GitLab runner for {host})",
            )
    for host in sorted(given - set(hosts)):
        yield Problem(
            _key(f"{at}.{host}"),
            f"names no host runner {runner} runs on",
            f"one of: {', '.join(hosts)}",
        )


def feature_problems(config: StackConfig, context: Context) -> Iterator[Problem]:
    cache = config.cache
    if cache is not None:
        for kind in ("s3", "gcs", "azure"):
            section = getattr(cache, kind)
            if kind == cache.type and section is None:
                yield Problem(
                    _key(f"cache.{kind}"), f'is required with type "{kind}"', f"{kind}: {{bucketName: runner-cache}}"
                )
            elif kind != cache.type and section is not None:
                yield Problem(_key(f"cache.{kind}"), f'does not apply to type "{cache.type}"', "remove it")
        iam = cache.type == "s3" and cache.s3 is not None and cache.s3.authentication_type == "iam"
        needed = frozenset(CACHE_CREDENTIALS[cache.type])
        example = f"pulumi config set --secret --path '{_key('cacheCredentials')}.{CACHE_CREDENTIALS[cache.type][0]}'"
        keys = context.cache_credential_keys
        if iam and keys is not None:
            yield Problem(_key("cacheCredentials"), "is not used with authenticationType iam", "remove it")
        elif not iam and keys != needed:
            have = "not set" if keys is None else f"has {', '.join(sorted(keys)) or 'nothing'}"
            yield Problem(
                _key("cacheCredentials"),
                f"must hold {' and '.join(CACHE_CREDENTIALS[cache.type])} for a {cache.type} cache ({have})",
                example,
            )
    elif context.cache_credential_keys is not None:
        yield Problem(_key("cacheCredentials"), f"is set but {_key('cache')} is not", "remove it, or set cache")
    ca = config.gitlab_ca
    if ca is not None and (ca.file is None) == (ca.pem is None):
        yield Problem(
            _key("gitlabCa"), "must have exactly one of file and pem", "gitlabCa: {file: ./certs/gitlab-ca.pem}"
        )
    if ca is not None and not config.gitlab_url.startswith("https://"):
        yield Problem(_key("gitlabCa"), "only applies to an https:// gitlabUrl", "remove it")
    if config.kubernetes is not None and config.kubernetes.service_monitor.enabled and not config.metrics.enabled:
        yield Problem(
            _key("kubernetes.serviceMonitor.enabled"),
            f"needs {_key('metrics.enabled')}: true (the monitor scrapes the metrics port)",
            "metrics: {enabled: true}",
        )


def session_problems(config: StackConfig) -> Iterator[Problem]:
    """The web terminal: off by default; where it is on, GitLab must be able to reach every runner
    manager that serves one, at an address of its own."""
    session = config.session_server
    hosts = config.docker.hosts if config.docker is not None else []
    kubernetes = config.kubernetes
    if config.target == "kubernetes" and "host_address" in session.model_fields_set:
        yield Problem(
            _key("sessionServer.hostAddress"),
            "has no effect on Kubernetes: the chart's Service publishes the terminal",
            "remove it",
        )
    if config.target == "docker" and session.enabled is False:
        for index, host in enumerate(hosts):
            if host.session_address is not None:
                yield Problem(
                    _key(f"docker.hosts[{index}].sessionAddress"),
                    f"has no effect without {_key('sessionServer.enabled')}: true",
                    "sessionServer: {enabled: true}",
                )
    if kubernetes is not None and kubernetes.session_service is not None and not session.enabled:
        yield Problem(
            _key("kubernetes.sessionService"),
            f"has no effect without {_key('sessionServer.enabled')}: true",
            "sessionServer: {enabled: true}",
        )
    if not session.enabled:
        return
    executors = [r.executor or EXECUTORS[config.target][0] for r in config.runners or ()] or [
        EXECUTORS[config.target][0]
    ]
    if not any(e in TERMINAL_EXECUTORS for e in executors):
        yield Problem(
            _key("sessionServer.enabled"),
            "is true but no runner's jobs have a web terminal (docker-autoscaler and instance jobs have none)",
            "enabled: false",
        )
        return
    if config.target == "docker":
        yield from _docker_session_problems(config)
    elif config.target == "kubernetes":
        yield from _kubernetes_session_problems(config, kubernetes or KubernetesTarget())


def _docker_session_problems(config: StackConfig) -> Iterator[Problem]:
    session = config.session_server
    hosts = (config.docker or DockerTarget()).hosts
    names = [h.name for h in hosts]
    kinds_on: dict[str, set[str]] = {name: set() for name in names}
    # The default runner (no runners set) is a docker-executor one on every host.
    placed = [(r.executor or "docker", r.hosts or names) for r in config.runners or ()] or [("docker", names)]
    for executor, on in placed:
        for name in on:
            if executor in SESSION_OFFSETS and name in kinds_on:
                kinds_on[name].add(executor)
    owners: dict[str, str] = {}
    for index, host in enumerate(hosts):
        at = f"docker.hosts[{index}]"
        kinds = kinds_on.get(host.name, set())
        if not kinds:
            if host.session_address is not None:
                yield Problem(
                    _key(f"{at}.sessionAddress"),
                    f"has no effect: no docker or shell runner runs on host {host.name}",
                    "remove it",
                )
            continue
        if host.session_address is None:
            yield Problem(
                _key(f"{at}.sessionAddress"),
                f"is required with {_key('sessionServer.enabled')}: the host name or IP GitLab reaches the web "
                f"terminal of host {host.name} on (its runners advertise it; a container cannot know it)",
                f"sessionAddress: {host.name}.example.com",
            )
        elif host.session_address in owners:
            yield Problem(
                _key(f"{at}.sessionAddress"),
                f'"{host.session_address}" is host {owners[host.session_address]}\'s too: GitLab would open '
                f"the terminals of both hosts' jobs on one of them",
                f"sessionAddress: {host.name}.example.com",
            )
        else:
            owners[host.session_address] = host.name
        ports = {session.port + SESSION_OFFSETS[kind]: kind for kind in kinds}
        if max(ports) > 65535:
            yield Problem(
                _key("sessionServer.port"),
                f"is {session.port}, and the shell runners' container takes the next port, {session.port + 1}, "
                "which does not exist",
                f"port: {SESSION_PORT}",
            )
        metrics_base = host.metrics_port or config.metrics.port
        metrics = {metrics_base + offset for offset in METRICS_OFFSETS}
        clash = sorted(set(ports) & metrics)
        if clash:
            yield Problem(
                _key("sessionServer.port"),
                f"is {session.port}: the session port {clash[0]} of host {host.name} is one of its metrics ports "
                f"({min(metrics)}-{max(metrics)})",
                f"port: {SESSION_PORT}",
            )


def _kubernetes_session_problems(config: StackConfig, kubernetes: KubernetesTarget) -> Iterator[Problem]:
    session = config.session_server
    if kubernetes.replicas > 1:
        yield Problem(
            _key("kubernetes.replicas"),
            f"is {kubernetes.replicas}, but the chart serves the web terminal from one manager pod only: with more "
            "it leaves [session_server] out and creates no Service (sessionServer.enabled needs replicas: 1)",
            "replicas: 1",
        )
    if session.port == config.metrics.port:
        yield Problem(
            _key("sessionServer.port"),
            f"is the metrics port ({config.metrics.port}) of the manager pod",
            f"port: {SESSION_PORT if config.metrics.port != SESSION_PORT else METRICS_PORT + 1}",
        )
    service = kubernetes.session_service
    if service is None:
        return
    if service.node_port is not None and service.type != "NodePort":
        yield Problem(
            _key("kubernetes.sessionService.nodePort"),
            f'only applies to type NodePort, not "{service.type}"',
            "sessionService: {type: NodePort, nodePort: 30093}",
        )
    if service.source_ranges and service.type != "LoadBalancer":
        yield Problem(
            _key("kubernetes.sessionService.sourceRanges"),
            f'only applies to type LoadBalancer, not "{service.type}"',
            "remove it",
        )
    if service.public_address is not None and service.type == "ClusterIP":
        yield Problem(
            _key("kubernetes.sessionService.publicAddress"),
            "would be advertised, but a ClusterIP Service is reached at its cluster DNS name only "
            "(GitLab in the same cluster); nothing serves the terminal at another address",
            "sessionService: {type: LoadBalancer, publicAddress: terminal.ci.example.com}",
        )


def housekeeping_problems(config: StackConfig) -> Iterator[Problem]:
    housekeeping = (config.docker or DockerTarget()).housekeeping
    every, max_age = seconds(housekeeping.every), seconds(housekeeping.max_age)
    if not 1 <= every <= 30 * 86_400:
        yield Problem(
            _key("docker.housekeeping.every"),
            f"is {housekeeping.every}: a pass runs every 1s to 30d",
            "every: 6h",
        )
    if max_age > 3650 * 86_400:
        yield Problem(
            _key("docker.housekeeping.maxAge"), f"is {housekeeping.max_age}, more than ten years", "maxAge: 7d"
        )


def problems(config: StackConfig, context: Context) -> list[Problem]:
    return [
        *target_problems(config),
        *runner_problems(config),
        *docker_host_problems(config, context),
        *token_problems(config, context),
        *feature_problems(config, context),
        *session_problems(config),
        *housekeeping_problems(config),
        *extra_config_problems(config),
        *placement_problems(config),
    ]


# The checks of extraConfig (a key tree of some 600 keys) and of Kubernetes placement are imported only
# by the stacks that use them: every preview and up of the others would pay for them.
def extra_config_problems(config: StackConfig) -> Iterable[Problem]:
    if not config.extra_global_config and not any(r.extra_config for r in config.runners or ()):
        return ()
    from components.settings import extra

    return extra.problems(config)


def placement_problems(config: StackConfig) -> Iterable[Problem]:
    if config.target != "kubernetes":
        return ()
    from components.settings import placement

    return placement.problems(config)


def missing_api_token(config: StackConfig, context: Context) -> Problem | None:
    names = [r.name for r in config.runners or ()] or ["runner"]
    to_create = [n for n in names if n not in context.existing_token_names]
    if not to_create or context.has_gitlab_token:
        return None
    return Problem(
        "gitlab:token",
        f"is required to create runner(s) {', '.join(to_create)} through the GitLab API but is not set",
        f"pulumi config set --secret gitlab:token  (then paste a glpat- token with the scopes {TOKEN_SCOPES})",
    )


def shared_token_warnings(runners: Iterable[Runner], context: Context) -> Iterator[str]:
    """A runner that brings one token and runs on several Docker hosts: its rotation is off (README)."""
    for runner in runners:
        hosts = runner.hosts or []
        if runner.name in context.existing_token_names and runner.name not in context.host_tokens and len(hosts) > 1:
            yield (
                f"{_key(f'runnerTokens.{runner.name}')} is one token for {len(hosts)} Docker hosts "
                f"({', '.join(hosts)}): automatic token rotation is off for runner {runner.name}, since a reset by "
                "one host would revoke the token for the others. Where GitLab sets a runner-token lifetime, bring "
                f"a new token before it expires, or one GitLab runner per host ({_key(f'runnerTokens.{runner.name}')}"
                ".<host>)"
            )


def warnings(config: StackConfig, concurrent: int) -> list[str]:
    found = []
    for index, runner in enumerate(config.runners or ()):
        if runner.limit > concurrent:
            found.append(
                f"{_key(f'runners[{index}].limit')} is {runner.limit} but {_key('concurrent')} is {concurrent}: "
                f"the runner manager never runs more than {concurrent} jobs at once"
            )
    return found

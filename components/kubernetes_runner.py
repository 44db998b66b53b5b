"""KubernetesRunner: the official gitlab-runner Helm chart, one release per runner."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pulumi
import pulumi_kubernetes as kubernetes

from components.runner_config import (
    gitlab_host,
    manager_concurrency,
    render_chart_config_toml,
    render_chart_global_toml,
    render_chart_runner_toml,
)
from components.settings import GlobalSettings, KubernetesTarget, ManagerSettings, Runner
from components.settings.model import Cache, ManagerPods, Readiness, ServiceMonitor, SessionServer, SessionService

COMPONENT_TYPE = "gitlab-runners:index:KubernetesRunner"
GLOBAL_CONFIG_SCRIPT = Path(__file__).resolve().parent / "files" / "global-config.sh"
GLOBAL_TOML_END = "GITLAB_RUNNERS_GLOBAL_TOML"
# The chart's image runs as this user (gitlab-runner in the official alpine image).
RUNNER_UID = 100
RUNNER_FS_GROUP = 65533
SECRETS_FINGERPRINT = "gitlab-runners.io/secrets-fingerprint"
# Seconds: the runner manager pods' readiness probe, first look and period (chart_values).
READINESS_DELAY = 5
READINESS_PERIOD = 10
# Secrets shared by the releases of the stack (names of objects, not credentials).
CACHE_SECRET = "gitlab-runners-cache"  # noqa: S105
CERTS_SECRET = "gitlab-runners-certs"  # noqa: S105
# The keys the chart's entrypoint reads from the cache Secret, for each cache type.
CACHE_SECRET_KEYS = {
    "accessKey": "accesskey",
    "secretKey": "secretkey",
    "accessId": "gcs-access-id",
    "privateKey": "gcs-private-key",
    "accountName": "azure-account-name",
    "accountKey": "azure-account-key",
}
# What the kubernetes executor needs in its namespace (gitlab-runner docs, executors/kubernetes):
# without rules the chart would grant "*" on "*", and every runner manager could read every other
# runner's token Secret.
RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete", "get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/exec", "pods/attach"], "verbs": ["create", "delete", "get", "patch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete", "get", "update"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list", "watch"]},
]
# With namespace_per_job the executor creates each job's namespace and deletes it afterwards.
NAMESPACE_PER_JOB_RULE: dict[str, list[str]] = {
    "apiGroups": [""],
    "resources": ["namespaces"],
    "verbs": ["create", "delete"],
}


def release_name(runner: Runner) -> str:
    """The Helm release of a runner; the chart labels its pods `release: <this>`."""
    return f"{runner.name}-runner"


def tolerations(taints: Mapping[str, str]) -> list[dict[str, str]]:
    """`key[=value]: effect` as a pod spec's tolerations: Equal with a value, Exists without; an empty
    effect tolerates every effect (the runner reads node_tolerations the same way)."""
    found = []
    for taint, effect in taints.items():
        name, has_value, value = taint.partition("=")
        toleration = (
            {"key": name, "operator": "Equal", "value": value} if has_value else {"key": name, "operator": "Exists"}
        )
        if effect:
            toleration["effect"] = effect
        found.append(toleration)
    return found


def manager_placement(pods: ManagerPods, release: str) -> dict[str, Any]:
    """The chart's values that place the runner manager pods (deployment.yaml), only those set."""
    values: dict[str, Any] = {}
    if pods.node_selector:
        values["nodeSelector"] = dict(pods.node_selector)
    if pods.tolerations:
        values["tolerations"] = tolerations(pods.tolerations)
    if pods.affinity:
        values["affinity"] = {k: dict(v) for k, v in pods.affinity.items()}
    if pods.priority_class_name:
        values["priorityClassName"] = pods.priority_class_name
    if pods.topology_spread_constraints:
        values["topologySpreadConstraints"] = [
            {
                "maxSkew": spread.max_skew,
                "topologyKey": spread.topology_key,
                "whenUnsatisfiable": spread.when_unsatisfiable,
                # By default each runner's own manager pods, which the chart labels with their release.
                "labelSelector": {"matchLabels": dict(spread.match_labels or {"release": release})},
            }
            for spread in pods.topology_spread_constraints
        ]
    return values


def session_values(session: SessionServer, service: SessionService) -> dict[str, Any]:
    """The chart's sessionServer: it writes [session_server] (listen 0.0.0.0:internalPort) and creates the
    Service; the pod finds the address to advertise at start (the Service's, the node's or publicAddress)."""
    values: dict[str, Any] = {
        "enabled": True,
        "timeout": session.session_timeout,
        "internalPort": session.port,
        "externalPort": service.port,
        "serviceType": service.type,
    }
    if service.node_port is not None:
        values["nodePort"] = service.node_port
    if service.public_address is not None:
        values["publicIP"] = service.public_address
    if service.source_ranges:
        values["loadBalancerSourceRanges"] = list(service.source_ranges)
    return values


def rbac_rules(runner: Runner) -> list[dict[str, list[str]]]:
    """The rules one runner manager's executor needs, and no more."""
    per_job = runner.job_pods is not None and runner.job_pods.namespace_per_job
    return [*RBAC_RULES, NAMESPACE_PER_JOB_RULE] if per_job else list(RBAC_RULES)


class KubernetesRunnerArgs(NamedTuple):
    settings: KubernetesTarget
    """Namespace, chart source and version, replicas, resources, RBAC, service account."""

    manager: ManagerSettings
    """What every runner manager shares: GitLab, config.toml's global part, cache, readiness. The cache's
    credentials go into one Secret the chart mounts (runners.cache.secretName), a private CA into one it
    mounts as its certs (certsSecretName); the privileged allowance is a pod annotation the policy pack reads."""

    runners: Sequence[Runner]
    """One Helm release per runner (the chart serves one runner token)."""

    tokens: dict[str, pulumi.Output[str]]
    """Runner name -> secret glrt- token, stored only in the runner's Secret."""

    service_monitor: ServiceMonitor = ServiceMonitor()
    """The chart's Prometheus Operator ServiceMonitor."""


def global_config_script(global_toml: str) -> str:
    """The chart's pre-entrypoint script that puts config.toml's global part, rendered with
    extraGlobalConfig, in place in the runner pod (components/files/global-config.sh)."""
    # A TOML writer puts no line break inside a value, so no line of it can end the heredoc.
    if GLOBAL_TOML_END in global_toml.splitlines():
        raise ValueError(f"a line of the global TOML is the script's heredoc end, {GLOBAL_TOML_END}")
    return GLOBAL_CONFIG_SCRIPT.read_text().replace("__GLOBAL_TOML__\n", global_toml)


def fingerprint(*secrets: str) -> str:
    """A short hash of secrets: it changes with any of them and says nothing about them."""
    digest = hashlib.sha256()
    for secret in secrets:
        digest.update(hashlib.sha256(secret.encode()).digest())
    return digest.hexdigest()[:16]


class ReleaseWait(NamedTuple):
    """What the readiness gate means for a Helm release.

    On: install and upgrade wait (up to the timeout) for the runner pods to be ready, a release that
    does not get there is rolled back (Helm's atomic), and uninstall waits for its objects to go.
    Off: nothing waits, and a failed release is left as it is. The two switches move together: Helm
    turns its wait back on whenever atomic is set, and the provider's uninstall waits when atomic is
    set or the await is not skipped.
    """

    atomic: bool
    skip_await: bool
    timeout: int | None
    """Seconds; None when nothing waits (the chart has no hooks for a timeout to bound)."""

    @classmethod
    def of(cls, readiness: Readiness) -> ReleaseWait:
        if readiness.enabled:
            return cls(atomic=True, skip_await=False, timeout=readiness.timeout_seconds)
        return cls(atomic=False, skip_await=True, timeout=None)


class ChartExtras(NamedTuple):
    """The optional parts of a release's values."""

    cache: Cache | None = None
    cache_secret: str | None = None
    certs_secret: str | None = None
    service_monitor: ServiceMonitor = ServiceMonitor()


NO_EXTRAS = ChartExtras()


def chart_values(
    runner: Runner,
    settings: KubernetesTarget,
    global_: GlobalSettings,
    gitlab_url: str,
    secret_name: str,
    secrets_fingerprint: str,
    allow_privileged: bool = False,
    extras: ChartExtras = NO_EXTRAS,
) -> dict[str, Any]:
    """The chart's values for one runner. No token: the chart reads it from `runners.secret`."""
    service_account: dict[str, Any] = {"create": settings.service_account.create}
    if settings.service_account.name:
        service_account["name"] = settings.service_account.name
    rbac: dict[str, Any] = {"create": settings.rbac.create, "clusterWideAccess": settings.rbac.cluster_wide_access}
    if settings.rbac.create:
        rbac["rules"] = rbac_rules(runner)
    metrics: dict[str, Any] = {"enabled": global_.metrics_enabled, "port": global_.metrics_port}
    if extras.service_monitor.enabled:
        metrics["serviceMonitor"] = {
            "enabled": True,
            "interval": extras.service_monitor.interval,
            "labels": dict(extras.service_monitor.labels),
        }
    runners: dict[str, Any] = {
        "secret": secret_name,
        "name": runner.name,
        "config": render_chart_runner_toml(runner, settings.namespace, extras.cache),
    }
    if extras.cache_secret is not None:
        runners["cache"] = {"secretName": extras.cache_secret}
    values: dict[str, Any] = {
        "gitlabUrl": gitlab_url,
        # Per runner manager pod: with replicas R the runner runs up to R x this many jobs.
        "concurrent": manager_concurrency(global_, [runner]),
        "checkInterval": global_.check_interval,
        "logLevel": global_.log_level,
        "replicas": settings.replicas,
        "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
        # The chart's readiness probe (is the runner process up, which it is once the chart's register
        # script succeeded) first looks after 60 s and then once a minute: each rollout the readiness gate
        # waits for took a minute or two longer than the runner needed. The liveness probe is the chart's.
        "readinessProbe": {"initialDelaySeconds": READINESS_DELAY, "periodSeconds": READINESS_PERIOD},
        "shutdown_timeout": global_.shutdown_timeout,
        "rbac": rbac,
        "serviceAccount": service_account,
        "resources": {"requests": dict(settings.resources.requests), "limits": dict(settings.resources.limits)},
        # The chart always listens on :<port> when enabled; there is no listen address to set.
        "metrics": metrics,
        # The metrics Service, which a ServiceMonitor selects.
        "service": {"enabled": global_.metrics_enabled},
        "podAnnotations": {
            # The chart's checksum/secrets does not cover Secrets it did not render: a new token (a
            # re-created runner, a rotation) or new cache credentials must roll the pods through this.
            SECRETS_FINGERPRINT: secrets_fingerprint,
            # Allowances the stack file made, visible to the policy pack.
            "gitlab-runners.io/allow-privileged": str(allow_privileged).lower(),
            "gitlab-runners.io/allow-cluster-wide-rbac": str(settings.rbac.cluster_wide_access).lower(),
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": False,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "podSecurityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUNNER_UID,
            "fsGroup": RUNNER_FS_GROUP,
        },
        "runners": runners,
        **manager_placement(settings.manager_pods, release_name(runner)),
    }
    if global_.session_server.enabled:
        values["sessionServer"] = session_values(global_.session_server, settings.session_service or SessionService())
    if extras.certs_secret is not None:
        values["certsSecretName"] = extras.certs_secret
    global_toml = render_chart_global_toml(global_, runner)
    if global_toml is not None:
        values["preEntrypointScript"] = global_config_script(global_toml)
    return values


class KubernetesRunner(pulumi.ComponentResource):
    """The namespace (used as it is, or created when asked), the cache and CA Secrets, and per runner
    a token Secret and a chart release."""

    namespace: pulumi.Output[str]
    release_names: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: KubernetesRunnerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        releases = {r.name: release_name(r) for r in args.runners}
        manager = args.manager
        described = {
            "namespace": args.settings.namespace,
            "releases": releases,
            # Each release's config.toml, token masked, for the plan's config.toml diff (scripts/plan_table.py).
            "configTomls": {
                releases[r.name]: render_chart_config_toml(
                    manager.global_, r, manager.gitlab_url, args.settings.namespace, manager.cache
                )
                for r in args.runners
            },
        }
        super().__init__(COMPONENT_TYPE, name, described, opts)
        settings = args.settings
        labels = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "gitlab-runners"}
        child = pulumi.ResourceOptions(parent=self)

        # The namespace the objects go into: the created one's name (so they depend on it), else the name.
        in_namespace: pulumi.Input[str]
        if settings.create_namespace:
            namespace = kubernetes.core.v1.Namespace(
                f"{name}-namespace",
                metadata=kubernetes.meta.v1.ObjectMetaArgs(name=settings.namespace, labels=labels),
                opts=child,
            )
            in_namespace = self.namespace = namespace.metadata.name
        else:
            # Not a resource of the stack: the namespace must exist (GitLab itself often lives there),
            # and destroy never deletes it.
            in_namespace = settings.namespace
            self.namespace = pulumi.Output.from_input(settings.namespace)

        def metadata(secret_name: str) -> kubernetes.meta.v1.ObjectMetaArgs:
            return kubernetes.meta.v1.ObjectMetaArgs(name=secret_name, namespace=in_namespace, labels=labels)

        secret_options = pulumi.ResourceOptions(parent=self, additional_secret_outputs=["data", "stringData"])
        depends: list[pulumi.Resource] = []
        cache_secret = certs_secret = None
        credentials = dict(manager.cache_credentials or {})
        if manager.cache is not None and credentials:
            cache_secret = CACHE_SECRET
            depends.append(
                kubernetes.core.v1.Secret(
                    f"{name}-cache",
                    metadata=metadata(cache_secret),
                    type="Opaque",
                    string_data={CACHE_SECRET_KEYS[k]: v for k, v in credentials.items()},
                    opts=secret_options,
                )
            )
        if manager.gitlab_ca is not None:
            certs_secret = CERTS_SECRET
            depends.append(
                kubernetes.core.v1.Secret(
                    f"{name}-certs",
                    metadata=metadata(certs_secret),
                    type="Opaque",
                    # The runner reads ~/.gitlab-runner/certs/<GitLab host>.crt, where the chart mounts it.
                    string_data={f"{gitlab_host(manager.gitlab_url)}.crt": manager.gitlab_ca},
                    opts=child,
                )
            )
        extras = ChartExtras(
            cache=manager.cache,
            cache_secret=cache_secret,
            certs_secret=certs_secret,
            service_monitor=args.service_monitor,
        )
        wait = ReleaseWait.of(manager.readiness)
        self.release_names = {}
        for runner in args.runners:
            token = args.tokens[runner.name]
            secret = kubernetes.core.v1.Secret(
                f"{name}-{runner.name}-token",
                metadata=metadata(f"{runner.name}-runner-token"),
                type="Opaque",
                # The keys the chart mounts; the registration token is gone with the glrt- workflow.
                string_data={"runner-token": token, "runner-registration-token": ""},
                opts=secret_options,
            )
            # The values hold a hash of the credentials (to roll the pods when they change) and no
            # credential: deliberately not secret, so the release's values stay readable in the state.
            # Only the hash is made from secrets: the SDK walks every value an Output holds, each time
            # one is made from another, and the values are large.
            secrets_fingerprint = pulumi.Output.unsecret(
                pulumi.Output.all(token, *(credentials[k] for k in sorted(credentials))).apply(
                    lambda parts: fingerprint(*parts)
                )
            )
            values = pulumi.Output.all(secret.metadata.name, secrets_fingerprint).apply(
                functools.partial(self._values, runner, args, extras)
            )
            release = kubernetes.helm.v3.Release(
                f"{name}-{runner.name}",
                name=release_name(runner),
                chart=settings.chart.reference,
                version=settings.chart.version,
                repository_opts=kubernetes.helm.v3.RepositoryOptsArgs(repo=settings.chart.index_repository)
                if settings.chart.index_repository
                else None,
                namespace=in_namespace,
                values=values,
                cleanup_on_fail=True,
                atomic=wait.atomic,
                skip_await=wait.skip_await,
                timeout=wait.timeout,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[secret, *depends]),
            )
            self.release_names[runner.name] = release.name
        self.register_outputs({"namespace": self.namespace, "releaseNames": self.release_names})

    @staticmethod
    def _values(runner: Runner, args: KubernetesRunnerArgs, extras: ChartExtras, parts: list[str]) -> dict[str, Any]:
        secret_name, secrets_fingerprint = parts
        return chart_values(
            runner,
            args.settings,
            args.manager.global_,
            args.manager.gitlab_url,
            secret_name,
            secrets_fingerprint,
            args.manager.allow_privileged,
            extras,
        )

"""The stack config, declared once.

Types, ranges, patterns, defaults, examples and the one-line documentation of every key live here.
Every preview and up checks the stack's config against these classes (section.py); the JSON Schema in
schemas/, the README's configuration reference and the wording of settings errors come from pydantic
models built from them when needed (pydantic_model.py). Rules that span several keys are in rules.py;
defaults that depend on the stack's name or on other keys are filled in by resolve.py.
"""

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from components.settings.section import Bounds, Chars, Check, Invalid, Section, key

PROJECT = "gitlab-runners"

# Pinned defaults. The runner version and the chart version move together: the chart's own
# appVersion says which runner it ships (tests/unit/test_pins.py reads it from the archive).
RUNNER_VERSION = "18.9.0"
CHART_VERSION = "0.86.0"
CHART_REPOSITORY = "https://charts.gitlab.io"
CHART_NAME = "gitlab-runner"
DEFAULT_JOB_IMAGE = "alpine:3.20.3"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
METRICS_PORT = 9252
SESSION_PORT = 8093  # the runner's documented session server port
# The housekeeping container's image: the official Docker CLI image (alpine, with sh), pinned.
HOUSEKEEPING_IMAGE = "docker:29.7.2-cli"
# Docker: the runner containers whose jobs have a web terminal, and the offset of each one's session
# port from sessionServer.port (the autoscaler container's executors have no terminal).
SESSION_OFFSETS = {"docker": 0, "shell": 1}

# Patterns, anchored: pydantic and JSON Schema validators both search, neither anchors for us.
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$"
# An image reference with a tag other than `latest`, or a digest.
PINNED_IMAGE_PATTERN = (
    r"^([^\s@:/]+(:[0-9]+)?/)?[^\s@:]+:(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
    r"|^[^\s@]+@sha256:[0-9a-f]{64}$"
)
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
VERSION_PATTERN = r"^[0-9]+\.[0-9]+\.[0-9]+$"
TAG_PATTERN = r"^[^,\s]([^,]{0,253}[^,\s])?$"
PACKAGE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9+._:=~-]{0,127}$"
REPOSITORY_PATTERN = r"^[a-z0-9]+([._/-][a-z0-9]+)*$"
CONTAINER_NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
DOCKER_HOST_PATTERN = r"^(unix:///|tcp://|ssh://)\S+$"
ABSOLUTE_PATH_PATTERN = r"^/\S*$"
VOLUME_PATTERN = r"^(/[^:\s]*|[^:\s]+:/[^:\s]*(:(ro|rw))?)$"
LABEL_KEY_PATTERN = r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
LABEL_VALUE_PATTERN = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
URL_PATTERN = r"^https?://[^\s/?#@]+(/[^\s?#]*)?$"
CHART_REPOSITORY_PATTERN = r"^(https?|oci)://[^\s/?#@]+(/[^\s?#]*)?$"
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
AGE_PATTERN = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
# A fleeting plugin at an exact release: [registry/][repository/]name:1.2.3. `gitlab-runner fleeting
# install` fills in registry.gitlab.com and the repository gitlab-org/fleeting/plugins, where GitLab's
# own plugins are (aws, googlecloud, azure): aws:1.0.0 is registry.gitlab.com/gitlab-org/fleeting/plugins/aws.
EXAMPLE_PLUGIN = "aws:1.0.0"
PLUGIN_PATTERN = r"^([a-z0-9.-]+(:[0-9]+)?/)?([a-z0-9._-]+/)*[a-z0-9._-]+:[0-9]+\.[0-9]+\.[0-9]+$"
CRON_PATTERN = r"^\S+( \S+){4,5}$"
PLATFORM_PATTERN = r"^linux/(amd64|arm64|arm/v[67]|ppc64le|s390x|riscv64)$"
IP_PATTERN = r"^([0-9]{1,3}\.){3}[0-9]{1,3}$|^\[?[0-9a-fA-F:]+\]?$"
# An image repository without a tag ([registry[:port]/]path), or a full reference with a tag or digest.
HELPER_IMAGE_PATTERN = (
    r"^([a-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+([._/-][a-z0-9]+)*"
    r"(:[A-Za-z0-9_${}][A-Za-z0-9_.${}-]{0,127}|@sha256:[0-9a-f]{64})?$"
)
# A host name or IP address a client connects to (no scheme, no port); IPv6 in brackets.
ADDRESS_PATTERN = (
    r"^([A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$"
    r"|^\[[0-9a-fA-F:.]+\]$"
)
CIDR_PATTERN = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$|^[0-9a-fA-F:]+/[0-9]{1,3}$"
# A Kubernetes object name (DNS subdomain), as a PriorityClass's.
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"

# What a pattern means, in the words the error messages use.
PATTERN_HINTS = {
    NAME_PATTERN: (
        "must be lower-case letters, digits and dashes (at most 40), starting and ending with a letter or digit"
    ),
    PINNED_IMAGE_PATTERN: "must be pinned with a tag (not latest) or a digest",
    QUANTITY_PATTERN: "must be a Kubernetes quantity",
    VERSION_PATTERN: "must be an exact release such as 1.2.3 (never latest)",
    TAG_PATTERN: "must be a non-empty tag without commas or surrounding spaces",
    PACKAGE_PATTERN: "must be a package name",
    REPOSITORY_PATTERN: "must be a lower-case image repository name",
    CONTAINER_NAME_PATTERN: "must be a valid container name",
    DOCKER_HOST_PATTERN: "must start with unix:///, tcp:// or ssh://",
    ABSOLUTE_PATH_PATTERN: "must be an absolute path",
    VOLUME_PATTERN: "must be a container path (/cache) or host:container[:ro|rw] with an absolute container path",
    LABEL_KEY_PATTERN: "must be a Kubernetes label key",
    LABEL_VALUE_PATTERN: "must be a Kubernetes label value",
    URL_PATTERN: "must be an http(s) URL without credentials, query or fragment",
    CHART_REPOSITORY_PATTERN: (
        "must be an http(s) chart repository or an oci:// registry path, without credentials, query or fragment"
    ),
    PLATFORM_PATTERN: "must be a platform such as linux/amd64 or linux/arm64",
    DURATION_PATTERN: "must be a duration such as 20m or 1h30m",
    AGE_PATTERN: "must be a duration such as 7d, 24h or 1h30m",
    PLUGIN_PATTERN: f"must be a fleeting plugin pinned to an exact release, such as {EXAMPLE_PLUGIN}",
    CRON_PATTERN: "must be a cron expression such as * 8-18 * * mon-fri",
    IP_PATTERN: "must be an IP address such as 127.0.0.1 or 0.0.0.0",
    HELPER_IMAGE_PATTERN: ("must be an image repository (the stack adds the tag) or a reference with a tag or digest"),
    DNS_SUBDOMAIN_PATTERN: "must be a Kubernetes object name (lower-case letters, digits, dashes and dots)",
    ADDRESS_PATTERN: "must be a host name or an IP address, without scheme or port (IPv6 in brackets)",
    CIDR_PATTERN: "must be an address range such as 203.0.113.0/24",
}

# Bounds: what config.toml, GitLab and Kubernetes accept, and far below a 64-bit overflow.
MAX_JOBS = 10_000
ONE_DAY = 86_400
ONE_MONTH = 2_629_746  # GitLab's longest job timeout
MAX_ID = 2_147_483_647  # GitLab ids are 32-bit integers

Name = Annotated[str, Chars(pattern=NAME_PATTERN)]
PinnedImage = Annotated[str, Chars(pattern=PINNED_IMAGE_PATTERN)]
Quantity = Annotated[str, Chars(pattern=QUANTITY_PATTERN)]
Version = Annotated[str, Chars(pattern=VERSION_PATTERN)]
Tag = Annotated[str, Chars(pattern=TAG_PATTERN)]
Package = Annotated[str, Chars(pattern=PACKAGE_PATTERN)]
Volume = Annotated[str, Chars(pattern=VOLUME_PATTERN)]
AbsolutePath = Annotated[str, Chars(pattern=ABSOLUTE_PATH_PATTERN)]
LabelKey = Annotated[str, Chars(pattern=LABEL_KEY_PATTERN)]
LabelValue = Annotated[str, Chars(pattern=LABEL_VALUE_PATTERN)]
Text = Annotated[str, Chars(max_length=1024)]
Port = Annotated[int, Bounds(ge=1, le=65535)]
Duration = Annotated[str, Chars(pattern=DURATION_PATTERN, min_length=2)]
Age = Annotated[str, Chars(pattern=AGE_PATTERN, min_length=2, max_length=32)]


def seconds(duration: str) -> int:
    """A duration such as 7d, 1h30m or 45s in seconds (the model's patterns only)."""
    units = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
    total, number = 0, ""
    for char in duration:
        if char.isdigit():
            number += char
        else:
            total, number = total + int(number) * units[char], ""
    return total


Target = Literal["docker", "kubernetes"]
Flavor = Literal["alpine", "ubuntu"]
Scope = Literal["instance", "group", "project"]
AccessLevel = Literal["not_protected", "ref_protected"]
PullPolicy = Literal["always", "if-not-present", "never"]
LogLevel = Literal["debug", "info", "warn", "error", "fatal", "panic"]
# The helper image flavours runner 18.9.0 publishes (docs/configuration/advanced-configuration.md).
HelperFlavor = Literal["alpine", "alpine3.21", "alpine-latest", "ubuntu", "ubi-fips"]
TaintEffect = Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""]
TolerationKey = Annotated[str, Chars(pattern=r"^[A-Za-z0-9./_-]+(=[A-Za-z0-9._-]*)?$")]
EXECUTORS: dict[str, tuple[str, ...]] = {
    "docker": ("docker", "shell", "docker-autoscaler", "instance"),
    "kubernetes": ("kubernetes",),
}
AUTOSCALING_EXECUTORS = ("docker-autoscaler", "instance")
# Executors GitLab retired, and what replaced them.
RETIRED_EXECUTORS = {
    "docker+machine": "docker-autoscaler",
    "docker-ssh": "docker",
    "docker-ssh+machine": "docker-autoscaler",
}


def check_gitlab_url(url: str) -> str:
    """The instance's address as the gitlab provider and the runner want it: the API path is theirs to add."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        raise Invalid("url_port", f'has a port that is not a number from 1 to 65535, got "{url}"') from None
    if port == 0:
        raise Invalid("url_port", f'has a port that is not a number from 1 to 65535, got "{url}"')
    if "/api/v4" in parts.path.rstrip("/") + "/":
        raise Invalid("url_api", "must be the instance's address without /api/v4 (the API path is added for you)")
    return url.rstrip("/")


class AutoscalerPolicy(Section):
    """When and how many idle instances to keep (a taskscaler policy)."""

    periods: list[Annotated[str, Chars(pattern=CRON_PATTERN)]] = key(
        ["* * * * *"], ["* 8-18 * * mon-fri"], "cron periods the policy applies in", min_length=1, max_length=32
    )
    timezone: Annotated[str, Chars(pattern=r"^[A-Za-z0-9_+/-]{1,64}$")] | None = key(
        None, "Europe/Berlin", "time zone of the periods; default UTC"
    )
    idle_count: int = key(0, 2, "idle capacity (job slots) to keep ready", ge=0, le=MAX_JOBS)
    idle_time: Duration = key("20m0s", "30m", "how long an idle instance is kept")
    scale_factor: float = key(0.0, 0.5, "extra idle capacity as a share of the busy one", ge=0, le=100)
    scale_factor_limit: int = key(0, 10, "the most idle capacity scale_factor adds", ge=0, le=MAX_JOBS)


class ConnectorConfig(Section):
    """How the runner reaches an instance."""

    os: Literal["linux", "windows", "darwin"] = key("linux", "linux", "the instances' OS")
    arch: Literal["amd64", "arm64"] = key("amd64", "arm64", "the instances' architecture")
    protocol: Literal["ssh", "winrm", "winrm+https"] = key("ssh", "ssh", "how to connect")
    username: Annotated[str, Chars(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = key(
        ..., "ec2-user", "the user the runner logs in as"
    )
    use_static_credentials: bool = key(False, False, "use key_path instead of the plugin's credentials")
    key_path: AbsolutePath | None = key(None, "/etc/gitlab-runner/instance-key", "a key file in the runner container")
    timeout: Duration | None = key(None, "10m", "connection timeout")
    keepalive: Duration | None = key(None, "30s", "keepalive interval")
    use_external_addr: bool = key(False, True, "connect to the instances' external addresses")


class Autoscaler(Section):
    """`[runners.autoscaler]` for the docker-autoscaler and instance executors."""

    plugin: Annotated[str, Chars(pattern=PLUGIN_PATTERN)] = key(
        ...,
        EXAMPLE_PLUGIN,
        "the fleeting plugin at an exact release, installed into the image by `gitlab-runner fleeting install`: "
        "GitLab's `aws`, `googlecloud` or `azure` (from registry.gitlab.com/gitlab-org/fleeting/plugins), "
        "or `[registry/]repository/name`",
    )
    capacity_per_instance: int = key(1, 2, "jobs an instance runs at once", ge=1, le=1000)
    max_use_count: int = key(0, 10, "jobs an instance runs before it is replaced; 0: no limit", ge=0, le=1_000_000)
    max_instances: int = key(..., 10, "the most instances at once (bounds the cost)", ge=1, le=MAX_JOBS)
    plugin_config: dict[Annotated[str, Chars(pattern=r"^[A-Za-z0-9_]{1,64}$")], Any] = key(
        {}, {"name": "runner-asg", "region": "eu-west-1"}, "the plugin's own settings (its documentation)"
    )
    connector_config: ConnectorConfig = key(..., {"username": "ec2-user"}, "how the runner reaches an instance")
    policies: list[AutoscalerPolicy] = key(
        ..., [{"idleCount": 1, "idleTime": "20m"}], "idle capacity over time; at least one", min_length=1, max_length=32
    )


class JobPods(Section):
    """Where and how big the kubernetes executor's job pods may be."""

    namespace: Name | None = key(
        None, "ci-jobs", "their namespace; default the runners' (another needs cluster-wide RBAC)"
    )
    namespace_per_job: bool = key(False, False, "a namespace of its own per job (needs cluster-wide RBAC)")
    node_selector: dict[LabelKey, LabelValue] = key({}, {"kubernetes.io/arch": "amd64"}, "nodes the job pods run on")
    tolerations: dict[TolerationKey, TaintEffect] = key(
        {}, {"ci=true": "NoSchedule"}, "taints the job pods tolerate, `key[=value]: effect`"
    )
    service_account: Name | None = key(None, "ci-jobs", "the job pods' service account")
    max_cpu_limit: Quantity | None = key(None, "4", "the most CPU a job may ask for (KUBERNETES_CPU_LIMIT)")
    max_memory_limit: Quantity | None = key(None, "8Gi", "the most memory a job may ask for (KUBERNETES_MEMORY_LIMIT)")
    max_cpu_request: Quantity | None = key(None, "2", "the largest CPU request a job may set")
    max_memory_request: Quantity | None = key(None, "4Gi", "the largest memory request a job may set")
    helper_image: Annotated[str, Chars(pattern=HELPER_IMAGE_PATTERN, max_length=512)] | None = key(
        None,
        "registry.example.com/gitlab-org/gitlab-runner/gitlab-runner-helper",
        "a mirror of the helper image: a repository, to which the stack adds the tag the runner would pull "
        "(`[flavor-]<arch>-v${CI_RUNNER_VERSION}`, the job pods' architecture), or a full reference used as it is; "
        "default the runner's own choice from registry.gitlab.com",
    )
    helper_image_flavor: HelperFlavor | None = key(
        None, "ubuntu", "the helper image's flavour (config.toml helper_image_flavor); default `alpine`"
    )


class JobResources(Section):
    """Kubernetes requests and limits of each job pod (kubernetes executor only)."""

    cpu_request: Quantity | None = key(None, "500m", "CPU request of a job pod")
    memory_request: Quantity | None = key(None, "512Mi", "memory request of a job pod")
    cpu_limit: Quantity | None = key(None, "2", "CPU limit of a job pod")
    memory_limit: Quantity | None = key(None, "2Gi", "memory limit of a job pod")


class Runner(Section):
    """One runner: its attributes in GitLab and how its jobs run."""

    name: Name = key(
        ..., "docker-1", "unique; names the runner in config.toml, the GitLab description's default and the release"
    )
    scope: Scope = key("instance", "group", "where the runner is created in GitLab (with groupId / projectId)")
    group_id: int | None = key(None, 42, "the group of a group runner", ge=1, le=MAX_ID)
    project_id: int | None = key(None, 7, "the project of a project runner", ge=1, le=MAX_ID)
    description: Text | None = key(None, "build runner", "GitLab description; default `<stack>-<name>`")
    tags: list[Tag] = key([], ["docker", "linux"], "job tags this runner picks up (set in GitLab)", max_length=256)
    run_untagged: bool | None = key(None, False, "pick up untagged jobs; default: true when there are no tags")
    locked: bool = key(False, True, "locked to its project (set in GitLab)")
    access_level: AccessLevel = key(
        "not_protected", "ref_protected", "`ref_protected` runs protected-ref jobs only (deploy runners)"
    )
    paused: bool = key(False, True, "paused in GitLab: takes no jobs")
    maximum_timeout: int | None = key(
        None, 3600, "longest job the runner accepts, in seconds (set in GitLab)", ge=600, le=ONE_MONTH
    )
    maintenance_note: Text | None = key(None, "owned by platform", "GitLab maintenance note")
    executor: Literal["docker", "shell", "docker-autoscaler", "instance", "kubernetes"] | None = key(
        None,
        "docker",
        "docker target: `docker`, `shell`, `docker-autoscaler` or `instance`; kubernetes: `kubernetes`; "
        "default the first",
    )
    image: PinnedImage | None = key(
        None, DEFAULT_JOB_IMAGE, f"default job image (not for shell); default `{DEFAULT_JOB_IMAGE}`"
    )
    request_concurrency: int = key(1, 2, "concurrent job requests to GitLab", ge=1, le=100)
    limit: int = key(0, 4, "jobs at once for this runner, 0 for no limit of its own", ge=0, le=MAX_JOBS)
    privileged: bool = key(False, False, "privileged job containers (root on the host); needs allowPrivileged")
    volumes: list[Volume] | None = key(None, ["/cache"], "docker executor volumes; default `[/cache]`", max_length=64)
    pull_policy: list[PullPolicy] = key(
        ["always"], ["if-not-present"], "job image pull policy", min_length=1, max_length=3
    )
    job_resources: JobResources | None = key(None, {"cpuLimit": "2", "memoryLimit": "2Gi"}, "kubernetes executor only")
    token_generation: int = key(
        1,
        2,
        "raise it to rotate the token: a new runner is created in GitLab, reaches the runner, then the old one goes",
        ge=1,
        le=MAX_ID,
    )
    autoscaler: Autoscaler | None = key(
        None,
        {"plugin": EXAMPLE_PLUGIN, "maxInstances": 10},
        "docker-autoscaler and instance executors",
    )
    job_pods: JobPods | None = key(None, {"nodeSelector": {"kubernetes.io/arch": "amd64"}}, "kubernetes executor only")
    hosts: list[Name] | None = key(
        None,
        ["build-1"],
        "Docker target: the hosts this runner runs on, one GitLab runner on each; default all",
        min_length=1,
    )
    extra_config: dict[str, Any] = key(
        {},
        {"docker": {"shm_size": 268435456}},
        "any other key of this runner's `[[runners]]` entry in config.toml, nested tables (docker, kubernetes, ...) "
        "included, merged into it; each key and value type is checked against gitlab-runner's own key tree",
    )


class Metrics(Section):
    """The runner's Prometheus metrics."""

    enabled: bool = key(
        False,
        True,
        "serve metrics to scrapers: Kubernetes, the chart's metrics port; Docker, on the host at hostAddress",
    )
    port: Port = key(
        METRICS_PORT,
        METRICS_PORT,
        "Kubernetes: the chart's metrics port; Docker: the docker-executor container's, +1 for shell",
    )
    host_address: Annotated[str, Chars(pattern=IP_PATTERN)] = key(
        "127.0.0.1",
        "0.0.0.0",  # noqa: S104 - an example value
        "Docker only: the host address the metrics port is published on (listened on, in host mode)",
    )


class SessionServer(Section):
    """The interactive web terminal of running jobs: config.toml's [session_server]."""

    enabled: bool = key(
        False, True, "serve the web terminal (docker, shell and kubernetes executors); GitLab must reach it"
    )
    port: Port = key(
        SESSION_PORT,
        SESSION_PORT,
        "Docker: the docker-executor container's session port on its host, +1 for shell; "
        "Kubernetes: the pod's (chart internalPort)",
    )
    session_timeout: int = key(
        1800, 600, "seconds a terminal stays open after its job ends (the job waits for it)", ge=1, le=ONE_DAY
    )
    host_address: Annotated[str, Chars(pattern=IP_PATTERN)] = key(
        "0.0.0.0",  # noqa: S104 - GitLab must reach it
        "10.0.0.5",
        "Docker only: the host address the session port is published on (listened on, in host mode)",
    )


class ImageBuild(Section):
    """How the runner image is built from images/runner/Dockerfile."""

    flavor: Flavor = key("alpine", "ubuntu", "base image flavour")
    runner_version: Version = key(RUNNER_VERSION, RUNNER_VERSION, "exact gitlab-runner release")
    base_image: PinnedImage | None = key(
        None,
        f"gitlab/gitlab-runner:alpine-v{RUNNER_VERSION}",
        "pinned base; default `gitlab/gitlab-runner:<flavor>-v<runnerVersion>`",
    )
    extra_packages: list[Package] = key([], ["python3", "py3-pip"], "packages installed with apk or apt", max_length=64)
    repository: Annotated[str, Chars(pattern=REPOSITORY_PATTERN)] | None = key(
        None, "gitlab-runners/runner", "local image repository, never pushed; default `gitlab-runners/<stack>-runner`"
    )

    @property
    def resolved_base_image(self) -> str:
        return self.base_image or f"gitlab/gitlab-runner:{self.flavor}-v{self.runner_version}"

    @property
    def tag(self) -> str:
        """The local image's name and tag (resolved settings only)."""
        return f"{self.repository}:{self.flavor}-v{self.runner_version}"


class DockerHost(Section):
    """One Docker host: its own provider, image build, config volumes and runner containers."""

    name: Name = key("local", "build-1", "names the host's resources; unique")
    host: Annotated[str, Chars(pattern=DOCKER_HOST_PATTERN)] = key(
        DEFAULT_DOCKER_HOST, "ssh://deploy@build-1.example.com", "the host's explicit docker provider connects here"
    )
    socket_path: AbsolutePath | None = key(
        None,
        "/run/user/1000/docker.sock",
        "the Docker socket on the host, mounted for docker-executor runners; default the unix:// host's path, "
        "else /var/run/docker.sock",
    )
    network_mode: Literal["bridge", "host"] = key(
        "bridge", "host", "`host` lets the runner reach services on the host's loopback"
    )
    platform: Annotated[str, Chars(pattern=PLATFORM_PATTERN)] | None = key(
        None,
        "linux/arm64",
        "platform of the runner image; default the machine running pulumi's (set it for remote hosts of another)",
    )
    cert_path: Annotated[str, Chars(min_length=1, max_length=4096)] | None = key(
        None,
        "~/.docker/build-1",
        "tcp:// only: folder with ca.pem, cert.pem and key.pem for TLS (or the secret dockerTls)",
    )
    metrics_port: Port | None = key(
        None, 9352, "this host's first metrics port, if not metrics.port (two hosts sharing a network)"
    )
    ssh_opts: list[Annotated[str, Chars(min_length=1, max_length=1024)]] = key(
        [], ["-o", "StrictHostKeyChecking=yes"], "ssh:// only: extra ssh options", max_length=32
    )
    session_address: Annotated[str, Chars(pattern=ADDRESS_PATTERN, max_length=253)] | None = key(
        None,
        "build-1.example.com",
        "with sessionServer.enabled: the host name or IP GitLab reaches this host's web terminal on "
        "(each host its own; the port is sessionServer.port)",
    )


class Housekeeping(Section):
    """A scheduled clean-up on each Docker host of what the runner's jobs left behind, and nothing else."""

    enabled: bool = key(False, True, "run the housekeeping container on each host")
    every: Age = key("1h", "6h", "how often it looks (the first time when it starts)")
    max_age: Age = key(
        "24h",
        "7d",
        "what jobs left is removed once this old: a stopped job container since it stopped, a cache volume "
        "no container uses since it was created, an unused job network since it was created",
    )
    image: PinnedImage = key(HOUSEKEEPING_IMAGE, HOUSEKEEPING_IMAGE, "an image with sh and the docker CLI, pinned")


class DockerTarget(Section):
    """The Docker target: a list of Docker hosts, each with its runner containers."""

    hosts: list[DockerHost] = key(
        [DockerHost()],
        [{"name": "local", "host": DEFAULT_DOCKER_HOST}],
        "the Docker hosts",
        min_length=1,
        max_length=100,
    )
    container_name: Annotated[str, Chars(pattern=CONTAINER_NAME_PATTERN)] | None = key(
        None,
        "gitlab-runner",
        "prefix of the runner containers, `<prefix>-<executor>`; default `gitlab-runner-<stack>`; "
        "volumes add `-config`",
    )
    image: ImageBuild | None = key(
        None, {"flavor": "alpine", "extraPackages": ["python3"]}, "the image to build on each host"
    )
    prebuilt_image: PinnedImage | None = key(
        None, f"registry.example.com/runner:{RUNNER_VERSION}", "use instead of building (exclusive with image)"
    )
    keep_config_volume: bool = key(False, True, "keep the config volumes on destroy")
    stop_timeout: int = key(
        3600, 3600, "seconds a stopping runner gets to finish running jobs (SIGQUIT)", ge=0, le=ONE_DAY
    )
    housekeeping: Housekeeping = key(
        Housekeeping(),
        {"enabled": True, "every": "6h", "maxAge": "7d"},
        "remove old job containers, cache volumes and job networks the runner's jobs left (off by default)",
    )

    @property
    def build(self) -> ImageBuild | None:
        """The image to build, None when a prebuilt image is used (resolved settings only)."""
        return None if self.prebuilt_image is not None else self.image


class Chart(Section):
    """Where the official gitlab-runner chart comes from."""

    repository: Annotated[str, Chars(pattern=CHART_REPOSITORY_PATTERN)] | None = key(
        None,
        CHART_REPOSITORY,
        f"chart repository (an index.yaml), or an oci:// registry path the chart `{CHART_NAME}` is under; "
        f"default `{CHART_REPOSITORY}`",
    )
    version: Version | None = key(None, CHART_VERSION, f"exact chart version; default `{CHART_VERSION}`")
    path: Annotated[str, Chars(min_length=1, max_length=4096)] | None = key(
        None, "./charts/gitlab-runner-0.86.0.tgz", "a chart archive or folder on disk instead of a repository"
    )

    @property
    def is_oci(self) -> bool:
        return self.repository is not None and self.repository.startswith("oci://")

    @property
    def reference(self) -> str:
        """What helm installs: the path on disk, the chart's full oci:// reference (Helm pulls an OCI
        chart by that reference, never through a repository index), else its name in the repository."""
        if self.path is not None:
            return self.path
        if self.repository is not None and self.is_oci:
            return f"{self.repository.rstrip('/')}/{CHART_NAME}"
        return CHART_NAME

    @property
    def index_repository(self) -> str | None:
        """The chart repository whose index.yaml helm reads, None for an OCI registry or a path."""
        return None if self.is_oci else self.repository


class Resources(Section):
    """Requests and limits of the runner manager pod."""

    requests: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = key(
        {"cpu": "100m", "memory": "128Mi"}, {"cpu": "100m", "memory": "128Mi"}, "requests of the runner manager pod"
    )
    limits: dict[Literal["cpu", "memory", "ephemeral-storage"], Quantity] = key(
        {"cpu": "500m", "memory": "512Mi"}, {"cpu": "500m", "memory": "512Mi"}, "limits of the runner manager pod"
    )


class Rbac(Section):
    create: bool = key(True, True, "create the runner's Role and RoleBinding")
    cluster_wide_access: bool = key(False, False, "a ClusterRole instead (needs the allowance annotation)")


class ServiceAccount(Section):
    create: bool = key(True, True, "create the runner manager's service account")
    name: Name | None = key(
        None, "gitlab-runner", "its name; default the chart's; with create false and rbac.create, an existing account"
    )


class ServiceMonitor(Section):
    enabled: bool = key(False, True, "create it (the cluster needs the monitoring.coreos.com CRDs)")
    interval: Annotated[str, Chars(pattern=r"^[0-9]+(s|m)$")] = key("30s", "15s", "scrape interval")
    labels: dict[LabelKey, LabelValue] = key({}, {"release": "prometheus"}, "labels the Prometheus selects on")


class SessionService(Section):
    """The Service GitLab reaches the web terminal of the manager pod through (the chart's sessionServer)."""

    type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = key(
        "LoadBalancer",
        "NodePort",
        "LoadBalancer (its address found once the cloud gives one), NodePort (the node's IP), "
        "ClusterIP (a GitLab in the same cluster)",
    )
    port: Port = key(9000, 9000, "the Service's port (chart externalPort)")
    node_port: Annotated[int, Bounds(ge=30000, le=32767)] | None = key(
        None, 30093, "type NodePort: a fixed node port; default one Kubernetes assigns"
    )
    public_address: Annotated[str, Chars(pattern=ADDRESS_PATTERN, max_length=253)] | None = key(
        None,
        "terminal.ci.example.com",
        "LoadBalancer or NodePort: the address GitLab uses instead of the one found (chart publicIP)",
    )
    source_ranges: list[Annotated[str, Chars(pattern=CIDR_PATTERN)]] = key(
        [], ["203.0.113.0/24"], "type LoadBalancer: the only clients let in (chart loadBalancerSourceRanges)"
    )


class TopologySpread(Section):
    """One topology spread constraint of the runner manager pods."""

    max_skew: int = key(1, 1, "the most the pod counts of two domains may differ by", ge=1, le=1000)
    topology_key: LabelKey = key(
        ..., "topology.kubernetes.io/zone", "the node label whose values are the domains to spread over"
    )
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"] = key(
        "DoNotSchedule", "ScheduleAnyway", "what the scheduler does when it cannot keep the skew"
    )
    match_labels: dict[LabelKey, LabelValue] | None = key(
        None, {"app.kubernetes.io/part-of": "gitlab-runners"}, "the pods counted; default this runner's manager pods"
    )


class ManagerPods(Section):
    """Where the runner manager pods run, apart from the job pods (`runners[*].jobPods`)."""

    node_selector: dict[LabelKey, LabelValue] = key(
        {}, {"node-role.kubernetes.io/ci-control": "true"}, "nodes the manager pods run on (chart nodeSelector)"
    )
    tolerations: dict[TolerationKey, TaintEffect] = key(
        {}, {"dedicated=ci": "NoSchedule"}, "taints the manager pods tolerate, `key[=value]: effect`"
    )
    affinity: dict[Literal["nodeAffinity", "podAffinity", "podAntiAffinity"], dict[str, Any]] = key(
        {},
        {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 50,
                        "preference": {
                            "matchExpressions": [
                                {"key": "node.kubernetes.io/lifecycle", "operator": "NotIn", "values": ["spot"]}
                            ]
                        },
                    }
                ]
            }
        },
        "a pod spec's affinity, as Kubernetes writes it (chart affinity)",
    )
    priority_class_name: Annotated[str, Chars(pattern=DNS_SUBDOMAIN_PATTERN)] | None = key(
        None, "ci-critical", "the manager pods' PriorityClass, which must exist (chart priorityClassName)"
    )
    topology_spread_constraints: list[TopologySpread] = key(
        [],
        [{"topologyKey": "topology.kubernetes.io/zone"}],
        "spread each runner's manager pods over zones or nodes (chart topologySpreadConstraints)",
        max_length=8,
    )


class KubernetesTarget(Section):
    """The Kubernetes target: the official chart, one release per runner."""

    namespace: Name = key("gitlab", "gitlab", "the runners' namespace, not `default`")
    create_namespace: bool = key(
        False,
        True,
        "create the namespace (and delete it on destroy); by default an existing one is used and never deleted",
    )
    chart: Chart = key(Chart(), {"version": CHART_VERSION}, "the chart's source")
    replicas: int = key(1, 1, "runner manager pods per runner", ge=0, le=50)
    resources: Resources = key(Resources(), {"requests": {"cpu": "100m"}}, "the runner manager pod's resources")
    manager_pods: ManagerPods = key(
        ManagerPods(),
        {"nodeSelector": {"kubernetes.io/arch": "amd64"}},
        "where the runner manager pods run (the job pods: runners[*].jobPods)",
    )
    rbac: Rbac = key(Rbac(), {"create": True}, "the chart's RBAC")
    service_account: ServiceAccount = key(ServiceAccount(), {"create": True}, "the chart's service account")
    kubeconfig: Annotated[str, Chars(min_length=1, max_length=4096)] | None = key(
        None, "~/.kube/config", "the explicit kubernetes provider's kubeconfig; default the ambient one"
    )
    context: Annotated[str, Chars(min_length=1, max_length=253)] | None = key(
        None, "prod-cluster", "the kubeconfig context; default its current one"
    )
    termination_grace_period_seconds: int = key(3600, 3600, "time running jobs get on a rollout", ge=0, le=ONE_DAY)
    service_monitor: ServiceMonitor = key(
        ServiceMonitor(),
        {"enabled": True},
        "a Prometheus Operator ServiceMonitor for the metrics (needs metrics.enabled)",
    )
    session_service: SessionService | None = key(
        None,
        {"type": "NodePort", "nodePort": 30093},
        "the Service of the web terminal (with sessionServer.enabled); default a LoadBalancer on port 9000",
    )


class CacheS3(Section):
    server_address: Annotated[str, Chars(pattern=r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")] | None = key(
        None, "s3.amazonaws.com", "S3 endpoint, host[:port]; default AWS"
    )
    bucket_name: Annotated[str, Chars(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")] = key(
        ..., "runner-cache", "the bucket"
    )
    bucket_location: Annotated[str, Chars(min_length=1, max_length=64)] | None = key(
        None, "eu-west-1", "the bucket's region"
    )
    insecure: bool = key(False, False, "plain HTTP to the endpoint (a local MinIO, say)")
    authentication_type: Literal["access-key", "iam"] = key(
        "access-key", "iam", "`access-key` (cacheCredentials) or `iam` (the host's or pod's role)"
    )


class CacheGcs(Section):
    bucket_name: Annotated[str, Chars(pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")] = key(
        ..., "runner-cache", "the bucket"
    )


class CacheAzure(Section):
    container_name: Annotated[str, Chars(pattern=r"^[a-z0-9](-?[a-z0-9]){2,62}$")] = key(
        ..., "runner-cache", "the blob container"
    )
    storage_domain: Annotated[str, Chars(pattern=r"^[A-Za-z0-9.-]+$")] | None = key(
        None, "blob.core.windows.net", "the storage domain"
    )


class Cache(Section):
    """The distributed cache every runner of the stack uses; credentials in the secret cacheCredentials."""

    type: Literal["s3", "gcs", "azure"] = key(..., "s3", "the cache service")
    path: Annotated[str, Chars(pattern=r"^[A-Za-z0-9._/-]{1,256}$")] | None = key(
        None, "runners/prod", "a prefix inside the bucket"
    )
    shared: bool = key(False, True, "share the cache between runners")
    s3: CacheS3 | None = key(None, {"bucketName": "runner-cache", "bucketLocation": "eu-west-1"}, "with type s3")
    gcs: CacheGcs | None = key(None, {"bucketName": "runner-cache"}, "with type gcs")
    azure: CacheAzure | None = key(None, {"containerName": "runner-cache"}, "with type azure")


class GitlabCa(Section):
    """The CA that signed a self-hosted GitLab's certificate (public; not a secret)."""

    file: Annotated[str, Chars(min_length=1, max_length=4096)] | None = key(
        None, "./certs/gitlab-ca.pem", "a PEM file, relative to the project"
    )
    pem: Annotated[str, Chars(pattern=r"-----BEGIN CERTIFICATE-----")] | None = key(
        None, "-----BEGIN CERTIFICATE-----...", "the PEM text itself"
    )


class Readiness(Section):
    """`pulumi up` succeeds only when the runners are up."""

    enabled: bool = key(
        True,
        False,
        "wait for healthy runner containers / ready runner pods (Kubernetes: Helm's wait, a failed release "
        "rolled back, uninstall waits); false: nothing waits, a failed release is left for you to inspect",
    )
    timeout_seconds: int = key(
        300, 600, "how long to wait before failing (Kubernetes: Helm's timeout, for uninstall too)", ge=10, le=ONE_DAY
    )


class StackConfig(Section):
    """Every `gitlab-runners:` key of a stack file. Secrets are read apart (secrets.py)."""

    target: Target = key(..., "docker", "where the runners run")
    gitlab_url: Annotated[str, Chars(max_length=2048, pattern=URL_PATTERN), Check(check_gitlab_url)] = key(
        "https://gitlab.com", "https://gitlab.example.com", "the GitLab instance, without /api/v4"
    )
    allow_privileged: bool = key(False, True, "let runners set `privileged` (root on the host)")
    concurrent: int | None = key(
        None,
        4,
        "jobs at once per runner manager; default the sum of the limits, else one per runner",
        ge=1,
        le=MAX_JOBS,
    )
    check_interval: int = key(3, 3, "seconds between job requests (config.toml check_interval)", ge=0, le=3600)
    shutdown_timeout: int = key(
        30, 30, "seconds a forced shutdown waits (config.toml shutdown_timeout)", ge=0, le=ONE_DAY
    )
    log_level: LogLevel = key("info", "debug", "the runner's log level")
    metrics: Metrics = key(Metrics(), {"enabled": True}, "Prometheus metrics")
    readiness: Readiness = key(Readiness(), {"timeoutSeconds": 600}, "the readiness gate of `pulumi up`")
    session_server: SessionServer = key(
        SessionServer(), {"enabled": True}, "the interactive web terminal of running jobs (off by default)"
    )
    cache: Cache | None = key(
        None, {"type": "s3", "s3": {"bucketName": "runner-cache"}}, "the distributed cache (S3, GCS or Azure)"
    )
    gitlab_ca: GitlabCa | None = key(None, {"file": "./certs/gitlab-ca.pem"}, "a private CA for a self-hosted GitLab")
    extra_global_config: dict[str, Any] = key(
        {},
        {"log_format": "json"},
        "any other key of config.toml's global part, merged into it; checked like a runner's extraConfig",
    )
    runners: list[Runner] | None = key(
        None,
        [{"name": "docker-1", "executor": "docker"}],
        "the runners; default one named `runner`",
        min_length=1,
        max_length=1000,
    )
    docker: DockerTarget | None = key(None, {"host": DEFAULT_DOCKER_HOST}, "the Docker target's settings")
    kubernetes: KubernetesTarget | None = key(None, {"namespace": "gitlab"}, "the Kubernetes target's settings")


# Keys of the project's namespace read as secrets, not through the model (secrets.py).
SECRET_KEYS = {
    "runnerTokens": (
        "runner name -> glrt- token of a runner created outside the stack, or -> {Docker host -> glrt- token}: "
        "one runner per host"
    ),
    "cacheCredentials": (
        "{accessKey, secretKey} (s3), {accessId, privateKey} (gcs) or {accountName, accountKey} (azure)"
    ),
    "dockerTls": "Docker host name -> {caCert, cert, key} PEM for a tcp:// host (instead of certPath)",
}

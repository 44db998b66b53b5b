"""Settings: defaults, and every bad configuration rejected with a message naming key, problem, fix."""

from __future__ import annotations

from typing import Any

import pytest

from components.settings import CHART_VERSION, RUNNER_VERSION, SettingsError, parse_settings


def parse(values: dict[str, Any], **kwargs: Any) -> Any:
    kwargs.setdefault("has_gitlab_token", True)
    return parse_settings(values, stack="test", **kwargs)


def test_docker_defaults() -> None:
    settings = parse({"target": "docker"})
    assert [r.name for r in settings.runners] == ["runner"]
    runner = settings.runners[0]
    assert runner.executor == "docker"
    assert runner.privileged is False
    assert runner.run_untagged is True  # no tags: takes untagged jobs, as GitLab does
    assert settings.docker is not None and settings.kubernetes is None
    assert settings.docker.build is not None
    assert settings.docker.build.base_image == f"gitlab/gitlab-runner:alpine-v{RUNNER_VERSION}"
    assert [h.name for h in settings.docker.hosts] == ["local"]
    assert settings.docker.hosts[0].socket_path == "/var/run/docker.sock"
    assert runner.hosts == ["local"]
    assert settings.global_.metrics_host_address == "127.0.0.1"


def test_kubernetes_defaults() -> None:
    settings = parse({"target": "kubernetes"})
    assert settings.runners[0].executor == "kubernetes"
    assert settings.kubernetes is not None and settings.docker is None
    assert settings.kubernetes.namespace == "gitlab"
    assert settings.kubernetes.chart.version == CHART_VERSION
    assert settings.kubernetes.resources.limits and settings.kubernetes.resources.requests


@pytest.mark.parametrize(
    "kubernetes",
    [
        {"serviceAccount": {"create": False, "name": "ci-manager"}},  # an existing account, bound by the Role
        {"serviceAccount": {"create": False}, "rbac": {"create": False}},  # the namespace's default account
    ],
)
def test_service_accounts_the_chart_can_run_with(kubernetes: dict[str, Any]) -> None:
    assert parse({"target": "kubernetes", "kubernetes": kubernetes}).kubernetes is not None


def test_full_runner() -> None:
    settings = parse(
        {
            "target": "docker",
            "runners": [
                {
                    "name": "grp",
                    "scope": "group",
                    "groupId": 42,
                    "tags": ["a", "b"],
                    "locked": True,
                    "accessLevel": "ref_protected",
                    "paused": True,
                    "maximumTimeout": 3600,
                    "limit": 3,
                    "requestConcurrency": 2,
                    "volumes": ["/cache", "/srv/data:/data:ro"],
                    "pullPolicy": ["if-not-present"],
                }
            ],
        }
    )
    runner = settings.runners[0]
    assert runner.scope == "group" and runner.group_id == 42
    assert runner.tags == ["a", "b"] and runner.run_untagged is False
    assert (runner.locked, runner.paused, runner.access_level) == (True, True, "ref_protected")
    assert runner.maximum_timeout == 3600 and runner.limit == 3 and runner.request_concurrency == 2
    assert settings.global_.concurrent == 3  # the sum of the limits


def test_rootless_socket_from_host() -> None:
    settings = parse({"target": "docker", "docker": {"hosts": [{"host": "unix:///run/user/1000/docker.sock"}]}})
    assert settings.docker is not None
    assert settings.docker.hosts[0].socket_path == "/run/user/1000/docker.sock"


def test_existing_tokens_skip_api_and_gitlab_token() -> None:
    settings = parse(
        {"target": "docker", "runners": [{"name": "a"}]},
        existing_token_names=frozenset({"a"}),
        has_gitlab_token=False,
    )
    assert settings.runners_to_create == ()


def test_missing_gitlab_token_only_warns_on_preview() -> None:
    settings = parse({"target": "docker"}, has_gitlab_token=False, dry_run=True)
    assert any("gitlab:token" in w for w in settings.warnings)
    with pytest.raises(SettingsError, match="gitlab:token is required"):
        parse({"target": "docker"}, has_gitlab_token=False, dry_run=False)


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("target typo", {"target": "dokcer"}, 'gitlab-runners:target must be "docker" or "kubernetes", got "dokcer"'),
    ("target missing", {}, "gitlab-runners:target is required but not set"),
    ("url", {"target": "docker", "gitlabUrl": "gitlab.example.com"}, "gitlab-runners:gitlabUrl must be an http(s) URL"),
    ("unknown top key", {"target": "docker", "runerz": []}, "gitlab-runners:runerz is not a known key"),
    (
        "executor for target",
        {"target": "kubernetes", "runners": [{"name": "a", "executor": "shell"}]},
        'gitlab-runners:runners[0].executor must be "kubernetes" for target "kubernetes", got "shell"',
    ),
    (
        "executor typo",
        {"target": "docker", "runners": [{"name": "a", "executor": "dokcer"}]},
        'gitlab-runners:runners[0].executor must be "docker" or "shell" or "docker-autoscaler" or "instance" '
        'for target "docker", got "dokcer"',
    ),
    (
        "runner name",
        {"target": "docker", "runners": [{"name": "Bad_Name"}]},
        "gitlab-runners:runners[0].name must be lower-case letters",
    ),
    (
        "runner name missing",
        {"target": "docker", "runners": [{"executor": "docker"}]},
        "gitlab-runners:runners[0].name is required but not set",
    ),
    (
        "duplicate",
        {"target": "docker", "runners": [{"name": "a"}, {"name": "a"}]},
        'gitlab-runners:runners[1].name "a" is used twice',
    ),
    (
        "unknown runner key",
        {"target": "docker", "runners": [{"name": "a", "tagz": ["x"]}]},
        "gitlab-runners:runners[0].tagz is not a known key",
    ),
    (
        "group without id",
        {"target": "docker", "runners": [{"name": "a", "scope": "group"}]},
        "gitlab-runners:runners[0].groupId is required but not set",
    ),
    (
        "project id on instance",
        {"target": "docker", "runners": [{"name": "a", "projectId": 3}]},
        'gitlab-runners:runners[0].projectId is only valid with scope "project"',
    ),
    (
        "scope",
        {"target": "docker", "runners": [{"name": "a", "scope": "global"}]},
        'gitlab-runners:runners[0].scope must be "instance" or "group" or "project", got "global"',
    ),
    (
        "access level",
        {"target": "docker", "runners": [{"name": "a", "accessLevel": "protected"}]},
        'gitlab-runners:runners[0].accessLevel must be "not_protected" or "ref_protected"',
    ),
    (
        "timeout too small",
        {"target": "docker", "runners": [{"name": "a", "maximumTimeout": 60}]},
        "gitlab-runners:runners[0].maximumTimeout must be at least 600, got 60",
    ),
    (
        "bool as string",
        {"target": "docker", "runners": [{"name": "a", "locked": "yes"}]},
        'gitlab-runners:runners[0].locked must be true or false, got "yes"',
    ),
    (
        "int as bool",
        {"target": "docker", "runners": [{"name": "a", "limit": True}]},
        "gitlab-runners:runners[0].limit must be an integer, got true",
    ),
    (
        "tags not a list",
        {"target": "docker", "runners": [{"name": "a", "tags": "a,b"}]},
        'gitlab-runners:runners[0].tags must be a list, got "a,b"',
    ),
    (
        "tag with comma",
        {"target": "docker", "runners": [{"name": "a", "tags": ["a,b"]}]},
        "gitlab-runners:runners[0].tags[0] must be a non-empty tag",
    ),
    (
        "privileged not allowed",
        {"target": "docker", "runners": [{"name": "a", "privileged": True}]},
        "gitlab-runners:runners[0].privileged is true but gitlab-runners:allowPrivileged is not set",
    ),
    (
        "pull policy",
        {"target": "docker", "runners": [{"name": "a", "pullPolicy": ["sometimes"]}]},
        'gitlab-runners:runners[0].pullPolicy[0] must be "always" or "if-not-present" or "never", got "sometimes"',
    ),
    ("empty runners", {"target": "docker", "runners": []}, "gitlab-runners:runners must not be empty"),
    (
        "docker host scheme",
        {"target": "docker", "docker": {"hosts": [{"host": "/var/run/docker.sock"}]}},
        "gitlab-runners:docker.hosts[0].host must start with unix:///, tcp:// or ssh://",
    ),
    (
        "flavor",
        {"target": "docker", "docker": {"image": {"flavor": "debian"}}},
        'gitlab-runners:docker.image.flavor must be "alpine" or "ubuntu", got "debian"',
    ),
    (
        "runner version latest",
        {"target": "docker", "docker": {"image": {"runnerVersion": "latest"}}},
        "gitlab-runners:docker.image.runnerVersion must be an exact release",
    ),
    (
        "unpinned job image",
        {"target": "docker", "runners": [{"name": "a", "image": "alpine:latest"}]},
        "gitlab-runners:runners[0].image must be pinned with a tag (not latest) or a digest",
    ),
    (
        "latest base",
        {"target": "docker", "docker": {"image": {"baseImage": "gitlab/gitlab-runner:latest"}}},
        "gitlab-runners:docker.image.baseImage must be pinned with a tag (not latest) or a digest",
    ),
    (
        "unpinned base",
        {"target": "docker", "docker": {"image": {"baseImage": "gitlab/gitlab-runner"}}},
        "gitlab-runners:docker.image.baseImage must be pinned with a tag (not latest) or a digest",
    ),
    (
        "unknown docker key",
        {"target": "docker", "docker": {"hots": "unix:///x"}},
        "gitlab-runners:docker.hots is not a known key",
    ),
    (
        "prebuilt and build",
        {"target": "docker", "docker": {"prebuiltImage": "r/x:1", "image": {}}},
        "gitlab-runners:docker.prebuiltImage and docker.image are exclusive",
    ),
    (
        "default namespace",
        {"target": "kubernetes", "kubernetes": {"namespace": "default"}},
        'gitlab-runners:kubernetes.namespace must not be "default"',
    ),
    (
        "chart version",
        {"target": "kubernetes", "kubernetes": {"chart": {"version": "latest"}}},
        "gitlab-runners:kubernetes.chart.version must be an exact release such as 1.2.3",
    ),
    (
        "chart registry without a host",
        {"target": "kubernetes", "kubernetes": {"chart": {"repository": "oci:///charts"}}},
        "gitlab-runners:kubernetes.chart.repository must be an http(s) chart repository or an oci:// registry path",
    ),
    (
        "chart registry with credentials",
        {"target": "kubernetes", "kubernetes": {"chart": {"repository": "oci://ci:hunter2@registry.example.com/c"}}},
        "gitlab-runners:kubernetes.chart.repository must be an http(s) chart repository or an oci:// registry path",
    ),
    (
        "service account neither created nor named",
        {"target": "kubernetes", "kubernetes": {"serviceAccount": {"create": False}}},
        "gitlab-runners:kubernetes.serviceAccount.name is required with serviceAccount.create: false and "
        "rbac.create: true",
    ),
    (
        "replicas",
        {"target": "kubernetes", "kubernetes": {"replicas": -1}},
        "gitlab-runners:kubernetes.replicas must be at least 0, got -1",
    ),
    (
        "resource quantity",
        {"target": "kubernetes", "kubernetes": {"resources": {"limits": {"cpu": "lots"}}}},
        'gitlab-runners:kubernetes.resources.limits.cpu must be a Kubernetes quantity, got "lots"',
    ),
    (
        "wrong target section",
        {"target": "docker", "kubernetes": {"namespace": "gitlab"}},
        'gitlab-runners:kubernetes is set but target is "docker"',
    ),
    (
        "job resources on docker",
        {"target": "docker", "runners": [{"name": "a", "jobResources": {"cpuLimit": "1"}}]},
        "gitlab-runners:runners[0].jobResources only applies to the kubernetes executor",
    ),
    (
        "metrics host address",
        {"target": "docker", "metrics": {"enabled": True, "hostAddress": "localhost"}},
        'gitlab-runners:metrics.hostAddress must be an IP address such as 127.0.0.1 or 0.0.0.0, got "localhost"',
    ),
    (
        "token for unknown runner",
        {"target": "docker", "runners": [{"name": "a"}]},
        "gitlab-runners:runnerTokens.b names no runner",
    ),
]


@pytest.mark.parametrize(("values", "expected"), [(v, e) for _, v, e in BAD], ids=[n for n, _, _ in BAD])
def test_bad_config_is_rejected_with_its_message(values: dict[str, Any], expected: str) -> None:
    tokens = frozenset({"a", "b"}) if "runnerTokens.b" in expected else frozenset()
    with pytest.raises(SettingsError) as caught:
        parse(values, existing_token_names=tokens)
    message = str(caught.value)
    assert expected in message
    # Every problem line carries an example of a right value.
    assert all("Example:" in str(p) for p in caught.value.problems)


def test_several_problems_reported_together() -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"target": "docker", "gitlabUrl": "nope", "runners": [{"name": "A", "limit": -1}]})
    keys = {p.key for p in caught.value.problems}
    assert {"gitlab-runners:gitlabUrl", "gitlab-runners:runners[0].name", "gitlab-runners:runners[0].limit"} <= keys


def test_credentials_in_a_url_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as caught:
        parse({"target": "kubernetes", "kubernetes": {"chart": {"repository": "oci://ci:hunter2@registry.example/c"}}})
    assert "hunter2" not in str(caught.value) and "registry.example/c" in str(caught.value)


def test_secret_value_never_echoed_in_errors() -> None:
    from components.settings import secrets

    values = {"runnerTokens": {"a": "glrt-plaintext-value-123"}}
    tokens, problems = secrets.runner_tokens(values, is_secret=False)
    assert tokens == {} and problems
    assert "glrt-plaintext-value-123" not in str(problems[0])
    assert "must be stored as a secret" in str(problems[0])


@pytest.mark.parametrize(
    ("reference", "pinned"),
    [
        ("alpine:3.20.3", True),
        ("registry.local:5000/team/runner:18.5.0", True),
        ("alpine@sha256:" + "a" * 64, True),
        ("alpine", False),
        ("alpine:latest", False),
        ("registry.local:5000/team/runner", False),
    ],
)
def test_job_image_pinning(reference: str, pinned: bool) -> None:
    values = {"target": "docker", "runners": [{"name": "a", "image": reference}]}
    if pinned:
        assert parse(values).runners[0].image == reference
    else:
        with pytest.raises(SettingsError, match=r"runners\[0\]\.image must be pinned"):
            parse(values)

"""The stack config as one declared model: the classes of bad config a review found, the committed
JSON Schema and README reference, and properties that hold for any YAML-shaped input (hypothesis)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from components.settings import SettingsError, parse_settings
from components.settings import schema as schema_module
from components.settings import secrets as secret_config
from components.settings.model import StackConfig

ROOT = Path(__file__).resolve().parents[2]
SECRETS = ("glrt-t1_PropertyTokenABCDEFGH", "glpat-PropertyApiToken12345", "-----BEGIN PRIVATE KEY-----\nAAAA")


def parse(values: dict[str, Any], **kwargs: Any) -> Any:
    kwargs.setdefault("has_gitlab_token", True)
    return parse_settings(values, stack="test", **kwargs)


def problems(values: dict[str, Any], **kwargs: Any) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(values, **kwargs)
    return [str(p) for p in caught.value.problems]


# ---- the classes a review found accepted ---------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://gitlab.example.com/api/v4", "without /api/v4"),
        ("https://gitlab.example.com/api/v4/", "without /api/v4"),
        ("https://gitlab.example.com:https", "has a port that is not a number"),
        ("https://gitlab.example.com:99999", "has a port that is not a number"),
        ("https://user:pw@gitlab.example.com", "without credentials"),
        ("https://gitlab.example.com/?x=1", "without credentials, query or fragment"),
    ],
)
def test_gitlab_urls_the_provider_and_runner_cannot_use(url: str, expected: str) -> None:
    (line,) = problems({"target": "docker", "gitlabUrl": url})
    assert line.startswith("gitlab-runners:gitlabUrl ") and expected in line
    assert "Example: gitlabUrl: https://gitlab.example.com" in line


def test_a_url_with_a_path_and_port_is_fine() -> None:
    assert parse({"target": "docker", "gitlabUrl": "https://example.com:8443/gitlab/"}).gitlab_url == (
        "https://example.com:8443/gitlab"
    )


def test_a_limit_above_concurrent_is_a_warning_naming_both_keys() -> None:
    settings = parse({"target": "docker", "concurrent": 2, "runners": [{"name": "a", "limit": 5}]})
    (warning,) = settings.warnings
    assert "gitlab-runners:runners[0].limit" in warning and "gitlab-runners:concurrent" in warning


@pytest.mark.parametrize("attribute", ["tags", "locked", "accessLevel", "runUntagged", "maximumTimeout", "paused"])
def test_gitlab_side_attributes_with_an_existing_token_are_refused(attribute: str) -> None:
    value = {"tags": ["x"], "locked": True, "accessLevel": "ref_protected", "runUntagged": False}.get(attribute, 3600)
    if attribute == "paused":
        value = True
    (line,) = problems(
        {"target": "docker", "runners": [{"name": "a", attribute: value}]}, existing_token_names=frozenset({"a"})
    )
    assert line.startswith(f"gitlab-runners:runners[0].{attribute} is an attribute GitLab keeps")
    assert "runnerTokens.a" in line


@pytest.mark.parametrize("volume", ["host:", "host:relative", "", "relative", "/a:/b:rx"])
def test_volumes_without_an_absolute_container_path(volume: str) -> None:
    (line,) = problems({"target": "docker", "runners": [{"name": "a", "volumes": [volume]}]})
    assert line.startswith("gitlab-runners:runners[0].volumes[0] must be a container path")


@pytest.mark.parametrize("volume", ["/cache", "/srv/data:/data", "/srv/data:/data:ro", "named:/data:rw"])
def test_good_volumes(volume: str) -> None:
    assert parse({"target": "docker", "runners": [{"name": "a", "volumes": [volume]}]}).runners[0].volumes == [volume]


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"metrics": {"port": 70000}}, "gitlab-runners:metrics.port must be at most 65535"),
        ({"concurrent": 10**20}, "gitlab-runners:concurrent must be at most 10000"),
        ({"runners": [{"name": "a", "limit": 2**63}]}, "gitlab-runners:runners[0].limit must be at most 10000"),
        ({"runners": [{"name": "a", "scope": "group", "groupId": 2**40}]}, "groupId must be at most 2147483647"),
        ({"checkInterval": -1}, "gitlab-runners:checkInterval must be at least 0"),
    ],
)
def test_numbers_beyond_what_config_toml_or_gitlab_accept(values: dict[str, Any], key: str) -> None:
    assert any(key in line for line in problems({"target": "docker", **values}))


def test_a_plain_text_api_token_is_refused() -> None:
    (line,) = problems({"target": "docker"}, gitlab_token_is_secret=False)
    assert line.startswith("gitlab:token is stored in plain text") and "--secret" in line


def test_only_root_causes_are_reported() -> None:
    # A wrong target: the docker block that goes with the intended target is not reported too.
    lines = problems({"target": "dokcer", "docker": {"hosts": [{"name": "local"}]}})
    assert len(lines) == 1 and lines[0].startswith("gitlab-runners:target must be")
    # A section for the other target: named once, its content not read.
    lines = problems({"target": "docker", "kubernetes": {"namespace": 1, "bogus": True}})
    assert lines == [
        'gitlab-runners:kubernetes is set but target is "docker". Example: remove gitlab-runners:kubernetes'
    ]


def test_a_retired_executor_names_its_successor() -> None:
    (line,) = problems({"target": "docker", "runners": [{"name": "a", "executor": "docker+machine"}]})
    assert '"docker+machine" was retired by GitLab; its successor is "docker-autoscaler"' in line


# ---- the published schema and reference ----------------------------------------------------------


def test_the_committed_schema_and_readme_reference_match_the_model() -> None:
    assert schema_module.SCHEMA_PATH.read_text() == schema_module.render_schema(), (
        "run: python -m components.settings.schema --write"
    )
    readme = (ROOT / "README.md").read_text()
    assert schema_module.readme_with_reference(readme) == readme, "run: python -m components.settings.schema --write"


def stack_file_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(schema_module.SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("stack", sorted(p.name for p in ROOT.glob("Pulumi.*.yaml")))
def test_the_example_stacks_are_valid_for_an_editor(stack: str) -> None:
    document = yaml.safe_load((ROOT / stack).read_text())
    assert (ROOT / stack).read_text().startswith("# yaml-language-server: $schema=./schemas/stack-config.schema.json")
    errors = [e.message for e in stack_file_validator().iter_errors(document)]
    assert errors == []


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"gitlab-runners:target": "dokcer"}, id="unknown target"),
        pytest.param({"gitlab-runners:target": "docker", "gitlab-runners:runerz": []}, id="unknown key"),
        pytest.param(
            {"gitlab-runners:target": "docker", "gitlab:token": "glpat-plain-text-token"}, id="plain-text token"
        ),
        pytest.param(
            {"gitlab-runners:target": "docker", "gitlab-runners:runners": [{"name": "Bad_Name"}]}, id="bad name"
        ),
        pytest.param(
            {"gitlab-runners:target": "docker", "gitlab-runners:docker": {"image": {"baseImage": "x:latest"}}},
            id="unpinned base image",
        ),
    ],
)
def test_an_editor_underlines_what_the_program_refuses(config: dict[str, Any]) -> None:
    assert list(stack_file_validator().iter_errors({"config": config})), config


def test_secrets_in_a_stack_file_are_secure_values() -> None:
    document = {
        "config": {
            "gitlab-runners:target": "docker",
            "gitlab:token": {"secure": "v1:abc"},
            "gitlab-runners:runnerTokens": {"a": {"secure": "v1:def"}, "b": {"build-1": {"secure": "v1:ghi"}}},
            "gitlab-runners:dockerTls": {"build-1": {"key": {"secure": "v1:jkl"}}},
        }
    }
    assert list(stack_file_validator().iter_errors(document)) == []
    # A token in plain text, at either depth, is underlined.
    for plain in ({"a": "glrt-plain"}, {"b": {"build-1": "glrt-plain"}}):
        document["config"]["gitlab-runners:runnerTokens"] = plain
        assert list(stack_file_validator().iter_errors(document)), plain


# ---- properties over any YAML-shaped input ----------------------------------------------------------

TOP_KEYS = [f.alias or n for n, f in StackConfig.model_fields.items()]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(
        [*SECRETS, "docker", "kubernetes", "shell", "alpine:3.20.3", "unix:///x.sock", "https://g.example"]
    ),
)
KNOWN_WORDS = [
    *TOP_KEYS,
    "name",
    "hosts",
    "host",
    "executor",
    "image",
    "limit",
    "tags",
    "volumes",
    "flavor",
    "chart",
    "namespace",
    "replicas",
]
yaml_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KNOWN_WORDS), st.text(max_size=12)), children, max_size=5),
    ),
    max_leaves=20,
)
configs = st.dictionaries(st.one_of(st.sampled_from(TOP_KEYS), st.text(max_size=12)), yaml_values, max_size=6)


def no_secret_in(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text
        assert secret.split("\n")[0] not in text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=configs, target=st.sampled_from(["docker", "kubernetes", None]))
def test_any_yaml_shaped_config_gives_settings_or_the_settings_error(
    values: dict[str, Any], target: str | None
) -> None:
    if target is not None:
        values = {**values, "target": target}
    try:
        parse(values)
    except SettingsError as error:
        message = str(error)
        assert error.problems and all(re.match(r"^(gitlab-runners:|gitlab:)", p.key) for p in error.problems)
        assert all("Example:" in str(p) for p in error.problems)
        no_secret_in(message)


@settings(max_examples=200, deadline=None)
@given(raw=yaml_values, is_secret=st.booleans())
def test_any_secret_config_value_is_checked_without_echo(raw: Any, is_secret: bool) -> None:
    for key, read in (("runnerTokens", secret_config.runner_tokens), ("dockerTls", secret_config.docker_tls)):
        _, found = read({key: raw}, is_secret)
        for problem in found:
            no_secret_in(str(problem))


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(TOP_KEYS), raw=st.text(max_size=30))
def test_any_string_the_engine_hands_over_decodes_without_error(name: str, raw: str) -> None:
    decoded = secret_config.decode(name, raw)
    try:
        parse({"target": "docker", name: decoded} if name != "target" else {"target": decoded})
    except SettingsError:
        pass

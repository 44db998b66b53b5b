"""extraConfig and extraGlobalConfig: every key checked against config.toml's key tree at the pinned
runner release, and what passes rendered into config.toml on both targets."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.kubernetes_runner import chart_values
from components.runner_config import render_chart_runner_toml, render_config_toml
from components.settings import RUNNER_VERSION, Settings, SettingsError, parse_settings
from components.settings import extra as extra_config
from components.settings.model import Runner, StackConfig
from components.settings.schema import model_schema, render_reference

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "glrt-t1_UnitExtraConfigToken"


def parse(values: dict[str, Any]) -> Settings:
    return parse_settings(values, stack="unit", has_gitlab_token=True)


def docker(runner_extra: dict[str, Any], global_extra: dict[str, Any] | None = None, **runner: Any) -> dict[str, Any]:
    return {
        "target": "docker",
        "runners": [{"name": "d", "extraConfig": runner_extra, **runner}],
        **({"extraGlobalConfig": global_extra} if global_extra is not None else {}),
    }


def kubernetes(runner_extra: dict[str, Any], global_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**docker(runner_extra, global_extra), "target": "kubernetes"}


def problems(values: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        parse(values)
    return [str(p) for p in caught.value.problems]


def only_problem(values: dict[str, Any]) -> str:
    found = problems(values)
    assert len(found) == 1, found
    return found[0]


# ---- the key tree ------------------------------------------------------------------------------------


def test_the_committed_key_tree_is_the_pinned_runners() -> None:
    document = extra_config.config_keys()
    # scripts/config-keys reads the tag of the pinned release: re-run it when the pin moves.
    assert document["runner_version"] == RUNNER_VERSION
    assert document["keys"] == extra_config.count_keys(document["tree"]) > 600
    assert "CHART_APP_VERSION" in (ROOT / "scripts" / "config-keys").read_text()


def test_the_key_tree_holds_what_the_runner_source_declares() -> None:
    root = extra_config.global_tree()["table"]
    runner = extra_config.runner_tree()["table"]
    # The global part (common.Config) and [[runners]] (RunnerConfig, with the embedded
    # RunnerCredentials and RunnerSettings lending it their keys).
    assert root["runners"] == {"array": extra_config.runner_tree()}
    assert root["connection_max_age"] == "duration" and root["log_format"] == "string"
    assert root["session_server"]["table"]["session_timeout"] == "integer"
    assert {"url", "token", "tls-ca-file", "executor", "builds_dir", "limit"} <= set(runner)
    assert runner["feature_flags"] == {"map": "boolean"}
    assert runner["environment"] == {"array": "string"}
    assert runner["unhealthy_interval"] == "duration"  # *time.Duration
    docker = runner["docker"]["table"]
    assert docker["shm_size"] == "integer" and docker["privileged"] == "boolean"
    assert docker["pull_policy"] == "string-or-array"  # StringOrArray's own UnmarshalTOML
    assert docker["host"] == "string"  # embedded docker.Credentials
    assert runner["kubernetes"]["table"]["cap_add"] == {"array": "string"}  # []api.Capability
    assert runner["autoscaler"]["table"]["policy"]["array"]["table"]["scale_factor"] == "float"
    # toml:"-" and unexported fields are no keys.
    for absent in ("SystemID", "ConfigLoadedAt", "ConfigDir", "GracefulKillTimeout", "Logger"):
        assert absent not in runner
    assert not {"ModTime", "Loaded", "ConfigSaver"} & set(root)


# ---- refused, with the key, the problem and a right example --------------------------------------------


@pytest.mark.parametrize(
    ("values", "key", "nearest"),
    [
        (docker({"docker": {"shm_sise": 268435456}}), "runners[0].extraConfig.docker.shm_sise", "shm_size"),
        (docker({"pre_build_scrpt": "echo hi"}), "runners[0].extraConfig.pre_build_scrpt", "pre_build_script"),
        (docker({}, {"log_fromat": "json"}), "extraGlobalConfig.log_fromat", "log_format"),
        (
            kubernetes({"kubernetes": {"pod_anotations": {"a": "b"}}}),
            "runners[0].extraConfig.kubernetes.pod_anotations",
            "pod_annotations",
        ),
        (
            docker({}, {"experimental": {"usage_logger": {"log_dri": "/var/log/usage"}}}),
            "extraGlobalConfig.experimental.usage_logger.log_dri",
            "log_dir",
        ),
    ],
)
def test_an_unknown_key_names_the_nearest_known_one(values: dict[str, Any], key: str, nearest: str) -> None:
    message = only_problem(values)
    assert message.startswith(f"gitlab-runners:{key} is not a key of ")
    assert f'in config.toml of gitlab-runner {RUNNER_VERSION}; the nearest known key there is "{nearest}"' in message
    assert f". Example: {nearest}: " in message


def test_an_unknown_key_says_which_table_it_is_not_in() -> None:
    message = only_problem(docker({"docker": {"shm_sise": 1}}))
    assert "is not a key of [runners.docker] in config.toml" in message
    assert "is not a key of the global part" in only_problem(docker({}, {"concurent": 2}))


@pytest.mark.parametrize(
    ("values", "key", "expected", "example"),
    [
        (
            docker({"docker": {"shm_size": "256m"}}),
            "runners[0].extraConfig.docker.shm_size",
            "an integer",
            "shm_size: 1",
        ),
        (docker({"docker": {"tls_verify": "yes"}}), "runners[0].extraConfig.docker.tls_verify", "true or false", ""),
        (docker({"environment": "A=1"}), "runners[0].extraConfig.environment", "a list of strings", ""),
        (docker({"environment": ["A=1", 2]}), "runners[0].extraConfig.environment[1]", "a string", ""),
        (docker({"docker": {"sysctls": {"net.ipv4.ip_forward": 1}}}), "", "a string", ""),
        (docker({"docker": 3}), "runners[0].extraConfig.docker", "a table", ""),
        (docker({}, {"connection_max_age": "15 minutes"}), "extraGlobalConfig.connection_max_age", "a duration", ""),
        (docker({"feature_flags": {"FF_USE_FASTZIP": "true"}}), "", "true or false", ""),
        (docker({"docker": {"allowed_pull_policies": "always"}}), "", "a list of strings", ""),
        (docker({"docker": {"cpus": None}}), "", "a string", ""),
    ],
)
def test_a_value_of_the_wrong_type_names_the_type(
    values: dict[str, Any], key: str, expected: str, example: str
) -> None:
    message = only_problem(values)
    assert f" must be {expected}" in message
    if key:
        assert message.startswith(f"gitlab-runners:{key} must be")
    if example:
        assert message.endswith(f"Example: {example}")


@pytest.mark.parametrize(
    "values",
    [
        docker({"docker": {"shm_size": 268435456, "cpus": "2", "tls_verify": True}}),
        docker({"unhealthy_interval": "1h30m", "environment": ["A=1"], "feature_flags": {"FF_USE_FASTZIP": True}}),
        docker({}, {"connection_max_age": "15m", "log_format": "json", "labels": {"team": "ci"}}),
        docker({"autoscaler": {"instance_creation_time_buckets": [1, 2.5]}}),
        kubernetes({"kubernetes": {"image_pull_secrets": ["registry"], "bearer_token_overwrite_allowed": False}}),
        kubernetes({"kubernetes": {"volumes": {"secret": [{"name": "ca", "mount_path": "/certs"}]}}}),
        docker({"feature_flags": {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}}),  # the stack's only on Kubernetes
    ],
)
def test_right_keys_and_values_pass(values: dict[str, Any]) -> None:
    assert parse(values).runners[0].extra_config == values["runners"][0]["extraConfig"]


@pytest.mark.parametrize(
    ("values", "typed", "example"),
    [
        (docker({"executor": "shell"}), "gitlab-runners:runners[0].executor", "executor: docker"),
        (docker({"limit": 2}), "gitlab-runners:runners[0].limit", "limit: 4"),
        (docker({"url": "https://gitlab.example.com"}), "gitlab-runners:gitlabUrl", "gitlabUrl: "),
        (docker({"docker": {"image": "debian:12.7"}}), "gitlab-runners:runners[0].image", "image: alpine:3.20.3"),
        (docker({"docker": {"privileged": True}}), "gitlab-runners:runners[0].privileged", "privileged: false"),
        (docker({"cache": {"Type": "s3"}}), "gitlab-runners:cache", "cache: {type: s3"),
        (docker({}, {"concurrent": 8}), "gitlab-runners:concurrent", "concurrent: 4"),
        (docker({}, {"listen_address": ":9252"}), "gitlab-runners:metrics", "metrics: {enabled: true}"),
        (docker({}, {"shutdown_timeout": 30}), "gitlab-runners:shutdownTimeout", "shutdownTimeout: 30"),
        (
            kubernetes({"kubernetes": {"cpu_limit": "2"}}),
            "gitlab-runners:runners[0].jobResources.cpuLimit",
            "cpuLimit: 2",
        ),
        (
            kubernetes({"feature_flags": {"FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": False}}),
            "tokenGeneration",
            "tokenGeneration: 2",
        ),
    ],
)
def test_a_key_a_typed_setting_renders_names_that_setting(values: dict[str, Any], typed: str, example: str) -> None:
    message = only_problem(values)
    assert typed in message
    assert f"Example: {example}" in message


@pytest.mark.parametrize(
    ("values", "key"),
    [
        (docker({"token": "glrt-abc"}), "runners[0].extraConfig.token"),
        (kubernetes({"kubernetes": {"bearer_token": "eyJhbGciOi"}}), "runners[0].extraConfig.kubernetes.bearer_token"),
        (docker({"ssh": {"password": "hunter2"}}), "runners[0].extraConfig.ssh.password"),
        (
            docker({"autoscaler": {"connector_config": {"password": "hunter2"}}}),
            "runners[0].extraConfig.autoscaler.connector_config.password",
        ),
        (
            docker({"autoscaler": {"vm_isolation": {"nesting_config": {"api_token": "x"}}}}),
            "runners[0].extraConfig.autoscaler.vm_isolation.nesting_config.api_token",
        ),
        (docker({"environment": [f"CI_TOKEN={TOKEN}"]}), "runners[0].extraConfig.environment[0]"),
    ],
)
def test_secrets_never_go_into_extra_config(values: dict[str, Any], key: str) -> None:
    message = only_problem(values)
    assert message.startswith(f"gitlab-runners:{key} ")
    assert "plain text" in message and "Example: remove it" in message
    for secret in ("glrt-abc", "eyJhbGciOi", "hunter2", TOKEN):
        assert secret not in message


def test_a_credential_names_the_typed_secret_settings() -> None:
    message = only_problem(docker({"token": "x"}))
    assert "runnerTokens, cacheCredentials, dockerTls; pulumi config set --secret" in message


def test_every_problem_is_reported_at_once() -> None:
    found = problems(docker({"docker": {"shm_sise": 1, "image": "x:1"}, "token": "x"}, {"log_fromat": "json"}))
    assert len(found) == 4


# ---- rendered ------------------------------------------------------------------------------------------


def test_extra_keys_are_merged_into_the_docker_config_toml() -> None:
    settings = parse(
        docker(
            {
                "environment": ["GIT_DEPTH=10"],
                "docker": {"shm_size": 268435456, "cpus": "2", "sysctls": {"net.ipv4.ip_forward": "1"}},
                "custom_build_dir": {"enabled": True},
            },
            {"log_format": "json", "connection_max_age": "30m", "experimental": {"usage_logger": {"enabled": True}}},
            image="debian:12.7",
        )
    )
    text = render_config_toml(settings.global_, settings.runners, "https://gitlab.example.com", {"d": TOKEN})
    document = tomllib.loads(text)
    assert document["log_format"] == "json" and document["connection_max_age"] == "30m"
    assert document["experimental"] == {"usage_logger": {"enabled": True}}
    assert document["concurrent"] == 1 and document["log_level"] == "info"  # the typed keys stay
    (runner,) = document["runners"]
    assert runner["environment"] == ["GIT_DEPTH=10"]
    assert runner["custom_build_dir"] == {"enabled": True}
    assert runner["docker"]["shm_size"] == 268435456  # laid over the rendered default, 0
    assert runner["docker"]["cpus"] == "2" and runner["docker"]["sysctls"] == {"net.ipv4.ip_forward": "1"}
    assert runner["docker"]["image"] == "debian:12.7" and runner["docker"]["volumes"] == ["/cache"]
    assert runner["token"] == TOKEN and runner["executor"] == "docker"


def test_without_extra_keys_config_toml_is_as_before() -> None:
    plain = parse(docker({}))
    text = render_config_toml(plain.global_, plain.runners, "https://g.example", {"d": TOKEN})
    assert set(tomllib.loads(text)) == {"concurrent", "check_interval", "shutdown_timeout", "log_level", "runners"}


def test_the_settings_are_not_changed_by_rendering() -> None:
    settings = parse(docker({"docker": {"shm_size": 1}}))
    for _ in range(2):
        render_config_toml(settings.global_, settings.runners, "https://g.example", {"d": TOKEN})
    assert settings.runners[0].extra_config == {"docker": {"shm_size": 1}}


def test_extra_keys_reach_the_charts_runner_section() -> None:
    settings = parse(
        kubernetes(
            {
                "kubernetes": {"pod_annotations": {"team": "ci"}, "poll_timeout": 300},
                "feature_flags": {"FF_USE_FASTZIP": True},
                "pre_build_script": "docker ps --format '{{.Names}}'",
            }
        )
    )
    assert settings.kubernetes is not None
    text = render_chart_runner_toml(settings.runners[0], settings.kubernetes.namespace)
    # Helm's `tpl` reads runners.config: a "{{" of a value is escaped as a template action printing it.
    assert "{{.Names}}" not in text
    (runner,) = tomllib.loads(text.replace('{{ "{{" }}', "{{"))["runners"]
    assert runner["pre_build_script"] == "docker ps --format '{{.Names}}'"
    assert runner["kubernetes"]["pod_annotations"] == {"team": "ci"} and runner["kubernetes"]["poll_timeout"] == 300
    assert runner["kubernetes"]["namespace"] == "gitlab"  # the typed keys stay
    assert runner["feature_flags"] == {"FF_USE_FASTZIP": True, "FF_DISABLE_AUTOMATIC_TOKEN_ROTATION": True}
    values = chart_values(
        settings.runners[0], settings.kubernetes, settings.global_, settings.gitlab_url, "secret", "fingerprint"
    )
    assert values["runners"]["config"] == text
    assert "preEntrypointScript" not in values  # no extraGlobalConfig: the chart's global part as it is


# The global part as the chart writes it, and the [[runners]] entry registration appends.
REGISTERED = f"""shutdown_timeout = 30
concurrent = 1
check_interval = 3
log_level = "info"
connection_max_age = "15m0s"

[[runners]]
  name = "d"
  url = "https://gitlab.example.com"
  id = 7
  token = "{TOKEN}"
  executor = "kubernetes"
  [runners.kubernetes]
    namespace = "gitlab"
  [runners.feature_flags]
    FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true
"""


def test_extra_global_keys_reach_the_runner_pod_on_kubernetes(tmp_path: Path) -> None:
    settings = parse(
        {
            **kubernetes({}, {"connection_max_age": "30m", "labels": {"team": "ci"}, "log_format": "json"}),
            "metrics": {"enabled": True},
        }
    )
    assert settings.kubernetes is not None
    values = chart_values(
        settings.runners[0], settings.kubernetes, settings.global_, settings.gitlab_url, "secret", "fingerprint"
    )
    script = values["preEntrypointScript"]
    assert TOKEN not in script
    # Run as the chart's entrypoint runs it: bash, after registration, with CONFIG_PATH_FOR_INIT set.
    (tmp_path / "config.toml").write_text(REGISTERED)
    (tmp_path / "script").write_text(script)
    env = {**os.environ, "CONFIG_PATH_FOR_INIT": f"{tmp_path}/"}
    done = subprocess.run(["bash", str(tmp_path / "script")], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert TOKEN not in done.stdout + done.stderr
    document = tomllib.loads((tmp_path / "config.toml").read_text())  # duplicate keys would not parse
    assert document["log_format"] == "json" and document["labels"] == {"team": "ci"}
    assert document["connection_max_age"] == "30m"  # replaces what registration wrote
    # The chart's own keys, with the values chart_values gives the chart.
    assert document["concurrent"] == values["concurrent"] and document["check_interval"] == values["checkInterval"]
    assert document["shutdown_timeout"] == values["shutdown_timeout"] and document["log_level"] == values["logLevel"]
    assert document["listen_address"] == f":{values['metrics']['port']}"
    (runner,) = document["runners"]
    assert runner["token"] == TOKEN and runner["id"] == 7 and runner["kubernetes"] == {"namespace": "gitlab"}
    assert oct((tmp_path / "config.toml").stat().st_mode & 0o777) == "0o600"


def test_the_global_script_refuses_a_config_without_runners(tmp_path: Path) -> None:
    settings = parse(kubernetes({}, {"log_format": "json"}))
    assert settings.kubernetes is not None
    values = chart_values(settings.runners[0], settings.kubernetes, settings.global_, settings.gitlab_url, "s", "f")
    (tmp_path / "config.toml").write_text('concurrent = 1\nlog_level = "info"\n')
    (tmp_path / "script").write_text(values["preEntrypointScript"])
    env = {**os.environ, "CONFIG_PATH_FOR_INIT": str(tmp_path)}
    done = subprocess.run(["bash", str(tmp_path / "script")], env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "no [[runners]] entry" in done.stderr
    assert (tmp_path / "config.toml").read_text() == 'concurrent = 1\nlog_level = "info"\n'


# ---- documented --------------------------------------------------------------------------------------------


def test_the_schema_and_reference_have_both_keys_with_examples_that_pass() -> None:
    schema = model_schema()
    global_field = schema["properties"]["extraGlobalConfig"]
    runner_field = schema["$defs"]["Runner"]["properties"]["extraConfig"]
    assert global_field["type"] == runner_field["type"] == "object"
    assert global_field["examples"] == [StackConfig.model_fields["extra_global_config"].examples[0]]
    assert runner_field["examples"] == [Runner.model_fields["extra_config"].examples[0]]
    parse(docker(runner_field["examples"][0], global_field["examples"][0]))
    reference = render_reference()
    assert re.search(r"\| `extraGlobalConfig` \| map \| `\{\}` \| .*e\.g\. `\{\"log_format\": \"json\"\}`", reference)
    assert "`extraConfig` | map | `{}` |" in reference and '"shm_size": 268435456' in reference


def test_the_readme_example_is_a_valid_stack() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Any other config.toml key", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)["config"]
    values = {key.removeprefix("gitlab-runners:"): value for key, value in config.items()}
    settings = parse({"target": "docker", **values})
    assert settings.runners[0].extra_config["docker"]["shm_size"] == 268435456
    assert settings.global_.extra == {"log_format": "json", "connection_max_age": "30m"}


def test_a_key_that_is_not_a_string_is_refused() -> None:
    message = only_problem(docker({"docker": {"sysctls": {1: "x"}}}))
    assert message == (
        'gitlab-runners:runners[0].extraConfig.docker.sysctls has a key that is not a string: 1. Example: "1": ...'
    )

"""A runner on several Docker hosts and its tokens (issue 18 item 1), under mocks: one GitLab runner per
host where the stack creates it, a token per host or one shared token (automatic rotation off) where the
runner brings its own, and what reaches each host's config.toml."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import pulumi
import pytest

from components.runner_config import ROTATION_OFF, render_config_toml
from components.runner_registration import RunnerRegistration, RunnerRegistrationArgs
from components.settings import Settings, SettingsError, parse_settings
from tests.unit.helpers import resolve, run
from tests.unit.mocks import RecordingMocks
from tests.unit.test_program import FAKE_API_TOKEN, run_program, stack_config

USER_RUNNER = "gitlab:index/userRunner:UserRunner"
HOSTS = {"hosts": [{"name": "a", "host": "unix:///a.sock"}, {"name": "b", "host": "ssh://ci@b"}]}
RUNNERS = [{"name": "x", "executor": "shell", "hosts": ["a", "b"]}, {"name": "y", "executor": "shell", "hosts": ["a"]}]


def fleet(**kwargs: Any) -> Settings:
    return parse_settings(
        {"target": "docker", "docker": HOSTS, "runners": RUNNERS}, stack="unit", has_gitlab_token=True, **kwargs
    )


def secret(value: str) -> pulumi.Output[str]:
    return pulumi.Output.secret(value)


def test_a_runner_on_several_hosts_is_one_gitlab_runner_per_host(mocks: RecordingMocks) -> None:
    s = fleet()
    reg = run(lambda: RunnerRegistration("reg", RunnerRegistrationArgs(runners=s.runners)))
    created = {r.name: r for r in mocks.by_type(USER_RUNNER)}
    assert set(created) == {"reg-x@a", "reg-x@b", "reg-y"}
    # The host in the description tells them apart in GitLab; everything else is the runner's.
    assert created["reg-x@a"].inputs["description"] == "unit-x (a)"
    assert created["reg-x@b"].inputs["description"] == "unit-x (b)"
    assert created["reg-y"].inputs["description"] == "unit-y"
    assert {k: v for k, v in created["reg-x@a"].inputs.items() if k != "description"} == {
        k: v for k, v in created["reg-x@b"].inputs.items() if k != "description"
    }
    # A new token generation still replaces each of them, created before the old one goes.
    for r in created.values():
        assert r.options["replacementTrigger"] == 1 and r.options["deleteBeforeReplace"] is False
    on_a, on_b = reg.tokens_on("a", s.runners[:2]), reg.tokens_on("b", s.runners[:1])
    token_a, token_b = resolve(on_a["x"]), resolve(on_b["x"])
    assert token_a.secret and token_b.secret
    assert token_a.value.startswith("glrt-") and token_a.value != token_b.value
    assert set(resolve(reg.runner_ids["x"]).value) == {"a", "b"}
    assert reg.shared_tokens == frozenset()
    assert reg.descriptions["x"]["registration"] == "created, one per host"
    assert reg.descriptions["y"]["registration"] == "created"


def test_the_gitlab_runner_of_a_runner_that_spreads_or_shrinks_is_kept(mocks: RecordingMocks) -> None:
    s = fleet()
    run(lambda: RunnerRegistration("reg", RunnerRegistrationArgs(runners=s.runners)))
    created = {r.name: r for r in mocks.by_type(USER_RUNNER)}
    # The runner as it was on one host (reg-x) becomes its first host's; back on one host, the reverse.
    # Each alias is the URN the engine gave the runner before (the component is at the stack's root).
    before = "urn:pulumi:unit::gitlab-runners::gitlab-runners:index:RunnerRegistration$" + USER_RUNNER + "::"
    assert created["reg-x@a"].options["aliases"] == [before + "reg-x"]
    assert created["reg-x@b"].options["aliases"] == []
    assert created["reg-y"].options["aliases"] == [before + "reg-y@a"]


def test_under_another_parent_the_alias_is_left_to_the_sdk(mocks: RecordingMocks) -> None:
    s = fleet()

    def program() -> None:
        parent = pulumi.ComponentResource("test:index:Parent", "p")
        RunnerRegistration("reg", RunnerRegistrationArgs(runners=s.runners), pulumi.ResourceOptions(parent=parent))

    run(program)
    created = {r.name: r for r in mocks.by_type(USER_RUNNER)}
    # An alias spec by name: the SDK and the engine place it under the runner's own parent.
    assert created["reg-x@a"].options["aliases"] == ["reg-x"]
    assert created["reg-y"].options["aliases"] == ["reg-y@a"]


def test_one_brought_token_on_several_hosts_is_shared_and_its_rotation_off(mocks: RecordingMocks) -> None:
    s = fleet(existing_token_names=frozenset({"x", "y"}))
    reg = run(
        lambda: RunnerRegistration(
            "reg",
            RunnerRegistrationArgs(runners=s.runners, existing_tokens={"x": secret("glrt-xx"), "y": secret("glrt-yy")}),
        )
    )
    assert mocks.by_type(USER_RUNNER) == []
    assert reg.shared_tokens == frozenset({"x"})  # y runs on one host: its runner rotates it
    assert resolve(reg.tokens_on("b", s.runners[:1])["x"]).value == "glrt-xx"
    assert reg.descriptions["x"]["registration"] == "existing token, shared by 2 hosts: rotation off"
    assert reg.descriptions["y"]["registration"] == "existing token"
    (warning,) = s.warnings
    assert "gitlab-runners:runnerTokens.x is one token for 2 Docker hosts (a, b)" in warning
    assert "automatic token rotation is off for runner x" in warning
    assert "gitlab-runners:runnerTokens.x.<host>" in warning


def test_a_token_per_host_brought_along(mocks: RecordingMocks) -> None:
    s = fleet(existing_token_names=frozenset({"y"}), host_tokens={"x": frozenset({"a", "b"})})
    assert s.warnings == ()
    reg = run(
        lambda: RunnerRegistration(
            "reg",
            RunnerRegistrationArgs(
                runners=s.runners,
                existing_tokens={"y": secret("glrt-yy")},
                existing_host_tokens={"x": {"a": secret("glrt-xa"), "b": secret("glrt-xb")}},
            ),
        )
    )
    assert mocks.by_type(USER_RUNNER) == []
    assert reg.shared_tokens == frozenset()
    assert resolve(reg.tokens_on("a", s.runners)["x"]).value == "glrt-xa"
    token = resolve(reg.tokens_on("b", s.runners[:1])["x"])
    assert token.value == "glrt-xb" and token.secret
    assert reg.descriptions["x"]["registration"] == "existing token, one per host"


@pytest.mark.parametrize(
    ("values", "host_tokens", "expected"),
    [
        (
            {"target": "docker", "docker": HOSTS, "runners": RUNNERS},
            {"x": frozenset({"a"})},
            "gitlab-runners:runnerTokens.x.b is missing: runner x runs on host b and brings a token per host",
        ),
        (
            {"target": "docker", "docker": HOSTS, "runners": RUNNERS},
            {"y": frozenset({"a", "b"})},
            "gitlab-runners:runnerTokens.y.b names no host runner y runs on",
        ),
        (
            {"target": "kubernetes", "runners": [{"name": "x"}]},
            {"x": frozenset({"a"})},
            "gitlab-runners:runnerTokens.x holds a token per Docker host, but the target is not docker",
        ),
    ],
)
def test_tokens_per_host_must_match_the_runners_hosts(
    values: dict[str, Any], host_tokens: dict[str, frozenset[str]], expected: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(values, stack="unit", has_gitlab_token=True, host_tokens=host_tokens)
    assert expected in str(caught.value)


def test_a_token_per_host_is_read_from_the_secret_object() -> None:
    from components.settings import secrets

    tokens, problems = secrets.runner_tokens(
        {"runnerTokens": {"x": {"a": "glrt-token-for-a", "b": "glrt-token-for-b"}, "y": "glrt-token-for-y"}}, True
    )
    assert problems == []
    assert tokens == {"x": {"a": "glrt-token-for-a", "b": "glrt-token-for-b"}, "y": "glrt-token-for-y"}
    _, problems = secrets.runner_tokens({"runnerTokens": {"x": {"a": "glrt-token-for-a", "b": "nope"}}}, True)
    (problem,) = problems
    assert problem.key == "gitlab-runners:runnerTokens.x.b" and "nope" not in str(problem)


def test_a_shared_token_turns_the_runners_rotation_off_in_config_toml() -> None:
    s = parse_settings(
        {
            "target": "docker",
            "runners": [
                # Set otherwise by hand: the stack's flag wins, the runner's reset would cut the other hosts off.
                {"name": "x", "executor": "shell", "extraConfig": {"feature_flags": {ROTATION_OFF: False}}},
                {"name": "y", "executor": "shell"},
            ],
        },
        stack="unit",
        has_gitlab_token=True,
    )
    text = render_config_toml(s.global_, s.runners, "https://gl", {"x": "glrt-x", "y": "glrt-y"}, shared_tokens={"x"})
    x, y = tomllib.loads(text)["runners"]
    assert x["feature_flags"] == {ROTATION_OFF: True}
    assert "feature_flags" not in y
    # As the sync script finds it: a [runners.feature_flags] table after the runner's own keys.
    assert "[runners.feature_flags]" in text


def sync_uploads(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each sync container's uploaded config.toml (by container resource name), parsed."""
    found = {}
    for r in result["resources"]:
        if r["typ"] == "docker:index/container:Container" and r["name"].endswith("-sync"):
            upload = next(u for u in r["inputs"]["uploads"] if u["file"].endswith("config.toml"))
            found[r["name"]] = {t["name"]: t for t in tomllib.loads(upload["content"])["runners"]}
    return found


def fleet_program(**extra: str) -> dict[str, Any]:
    config = stack_config("dev")
    config["gitlab-runners:docker"] = json.dumps(HOSTS)
    config["gitlab-runners:runners"] = json.dumps(RUNNERS)
    config.update(extra)
    secret_keys = ("gitlab:token", *(k for k in extra if k.endswith("runnerTokens")))
    result = run_program("dev", config={**config, "gitlab:token": FAKE_API_TOKEN}, secret_keys=secret_keys)
    assert result["error"] is None, result["error"]
    return result


def test_each_host_gets_its_own_gitlab_runners_token() -> None:
    result = fleet_program()
    names = sorted(r["name"] for r in result["resources"] if r["typ"] == USER_RUNNER)
    assert names == ["runners-x@a", "runners-x@b", "runners-y"]
    uploads = sync_uploads(result)
    on_a, on_b = uploads["docker-a-shell-sync"], uploads["docker-b-shell-sync"]
    assert on_a["x"]["token"] != on_b["x"]["token"]
    assert set(on_a) == {"x", "y"} and set(on_b) == {"x"}
    assert all("feature_flags" not in t for host in uploads.values() for t in host.values())
    exported = result["exports"]["runners"]["value"]["x"]
    assert set(exported["gitlabId"]) == {"a", "b"} and exported["registration"] == "created, one per host"


def test_a_brought_token_on_two_hosts_never_rotates_there() -> None:
    tokens = {"x": "glrt-shared-token-x", "y": "glrt-own-token-y"}
    result = fleet_program(**{"gitlab-runners:runnerTokens": json.dumps(tokens)})
    assert not [r for r in result["resources"] if r["typ"] == USER_RUNNER]
    uploads = sync_uploads(result)
    for host in ("docker-a-shell-sync", "docker-b-shell-sync"):
        assert uploads[host]["x"]["token"] == tokens["x"]
        assert uploads[host]["x"]["feature_flags"] == {ROTATION_OFF: True}
    assert "feature_flags" not in uploads["docker-a-shell-sync"]["y"]  # on one host: the runner rotates it


def test_tokens_per_host_reach_their_hosts() -> None:
    tokens = {"x": {"a": "glrt-token-x-on-a", "b": "glrt-token-x-on-b"}, "y": "glrt-own-token-y"}
    result = fleet_program(**{"gitlab-runners:runnerTokens": json.dumps(tokens)})
    uploads = sync_uploads(result)
    assert uploads["docker-a-shell-sync"]["x"]["token"] == "glrt-token-x-on-a"
    assert uploads["docker-b-shell-sync"]["x"]["token"] == "glrt-token-x-on-b"
    assert all("feature_flags" not in t for host in uploads.values() for t in host.values())

"""The GitLab API double speaks the documented contract over real HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.gitlab_double.server import GitLabDouble, serve

API_TOKEN = "glpat-double-test-api-token"


@pytest.fixture()
def gitlab() -> Iterator[GitLabDouble]:
    with serve(API_TOKEN) as double:
        yield double


def call(
    double: GitLabDouble,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
) -> tuple[int, Any, dict[str, str]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(f"{double.base_url}{path}", data=data, method=method)  # noqa: S310
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - 127.0.0.1 only
            text = response.read()
            return response.status, json.loads(text) if text else None, dict(response.headers)
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text else None, dict(error.headers)


def create(double: GitLabDouble, **attributes: Any) -> dict[str, Any]:
    status, body, _ = call(
        double,
        "POST",
        "/api/v4/user/runners",
        {"runner_type": "instance_type", **attributes},
        {"PRIVATE-TOKEN": API_TOKEN},
    )
    assert status == 201, body
    return dict(body)


def test_management_needs_the_api_token(gitlab: GitLabDouble) -> None:
    assert call(gitlab, "GET", "/api/v4/user")[0] == 401
    assert call(gitlab, "GET", "/api/v4/user", headers={"PRIVATE-TOKEN": "glpat-wrong"})[0] == 401
    assert call(gitlab, "GET", "/api/v4/user", headers={"PRIVATE-TOKEN": API_TOKEN})[0] == 200


def test_runner_lifecycle(gitlab: GitLabDouble) -> None:
    auth = {"PRIVATE-TOKEN": API_TOKEN}
    created = create(
        gitlab,
        description="d",
        tag_list=["a", "b"],
        run_untagged=False,
        access_level="ref_protected",
        maximum_timeout=3600,
        locked=True,
        paused=False,
    )
    assert created["token"].startswith("glrt-") and "token_expires_at" in created
    status, runner, _ = call(gitlab, "GET", f"/api/v4/runners/{created['id']}", headers=auth)
    assert status == 200
    assert (runner["description"], runner["tag_list"], runner["run_untagged"]) == ("d", ["a", "b"], False)
    assert (runner["access_level"], runner["maximum_timeout"], runner["locked"]) == ("ref_protected", 3600, True)
    assert "token" not in runner  # GitLab never shows a token again
    status, runner, _ = call(gitlab, "PUT", f"/api/v4/runners/{created['id']}", {"tag_list": "x,y"}, auth)
    assert status == 200 and runner["tag_list"] == ["x", "y"]
    assert call(gitlab, "DELETE", f"/api/v4/runners/{created['id']}", headers=auth)[0] == 204
    assert call(gitlab, "GET", f"/api/v4/runners/{created['id']}", headers=auth)[0] == 404
    assert gitlab.created == [created["id"]] and gitlab.deleted == [created["id"]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"runner_type": "global"}, "runner_type"),
        ({"runner_type": "group_type"}, "group_id is missing"),
        ({"runner_type": "project_type"}, "project_id is missing"),
        ({"runner_type": "instance_type", "access_level": "protected"}, "access_level"),
        ({"runner_type": "instance_type", "maximum_timeout": 60}, "maximum_timeout"),
    ],
)
def test_bad_runner_is_refused(gitlab: GitLabDouble, body: dict[str, Any], message: str) -> None:
    status, answer, _ = call(gitlab, "POST", "/api/v4/user/runners", body, {"PRIVATE-TOKEN": API_TOKEN})
    assert status == 400 and message in answer["message"]
    assert gitlab.runners == {}


def test_verify_and_poll_are_recorded_by_token(gitlab: GitLabDouble) -> None:
    token = create(gitlab)["token"]
    assert call(gitlab, "POST", "/api/v4/runners/verify", {"token": "glrt-unknown", "system_id": "s_1"})[0] == 403
    status, answer, _ = call(gitlab, "POST", "/api/v4/runners/verify", {"token": token, "system_id": "s_1"})
    assert status == 200 and answer["token"] == token
    status, _, headers = call(gitlab, "POST", "/api/v4/jobs/request", {"token": token, "system_id": "s_1", "info": {}})
    assert status == 204 and headers.get("X-GitLab-Last-Update")
    assert call(gitlab, "POST", "/api/v4/jobs/request", {"token": "glrt-unknown", "info": {}})[0] == 403
    assert gitlab.tokens_that_polled() == {token}
    assert [p.system_id for p in gitlab.polls] == ["s_1"]


def test_a_job_is_handed_out_traced_and_finished(gitlab: GitLabDouble) -> None:
    token = create(gitlab)["token"]
    job = gitlab.enqueue_job(token, ["echo marker-42"])
    status, payload, _ = call(gitlab, "POST", "/api/v4/jobs/request", {"token": token, "system_id": "s", "info": {}})
    assert status == 201 and payload["id"] == job.id
    assert {"key": "GIT_STRATEGY", "value": "none", "public": True, "masked": False} in payload["variables"]
    assert payload["steps"][0]["script"] == ["echo marker-42"]
    for key in (
        "job_info",
        "git_info",
        "runner_info",
        "image",
        "services",
        "artifacts",
        "cache",
        "credentials",
        "dependencies",
        "features",
    ):
        assert key in payload
    trace_headers = {"JOB-TOKEN": payload["token"], "Content-Range": "0-14", "Content-Type": "text/plain"}
    assert (
        call(gitlab, "PATCH", f"/api/v4/jobs/{job.id}/trace", headers=trace_headers, raw=b"marker-42 done\n")[0] == 202
    )
    wrong_offset = {**trace_headers, "Content-Range": "3-5"}
    assert call(gitlab, "PATCH", f"/api/v4/jobs/{job.id}/trace", headers=wrong_offset, raw=b"xx")[0] == 416
    status, _, _ = call(
        gitlab, "PUT", f"/api/v4/jobs/{job.id}", {"token": payload["token"], "state": "success", "exit_code": 0}
    )
    assert status == 200
    assert job.state == "success" and b"marker-42" in bytes(job.trace)
    assert call(gitlab, "PUT", f"/api/v4/jobs/{job.id}", {"token": "wrong", "state": "failed"})[0] == 403


def test_paused_runner_gets_no_job_and_managers_leave(gitlab: GitLabDouble) -> None:
    token = create(gitlab, paused=True)["token"]
    gitlab.enqueue_job(token, ["true"])
    assert call(gitlab, "POST", "/api/v4/jobs/request", {"token": token, "info": {}})[0] == 204
    assert call(gitlab, "DELETE", "/api/v4/runners/managers", {"token": token, "system_id": "s_9"})[0] == 204
    assert [m.system_id for m in gitlab.managers_removed] == ["s_9"]


def test_token_rotation(gitlab: GitLabDouble) -> None:
    token = create(gitlab)["token"]
    status, answer, _ = call(gitlab, "POST", "/api/v4/runners/reset_authentication_token", {"token": token})
    assert status == 201 and answer["token"] != token and answer["token"].startswith("glrt-")
    assert call(gitlab, "POST", "/api/v4/runners/verify", {"token": token})[0] == 403

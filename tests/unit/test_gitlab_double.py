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
    poll = {"token": token, "system_id": "s_9", "info": {}}
    assert call(gitlab, "POST", "/api/v4/jobs/request", poll)[0] == 204
    runner = next(iter(gitlab.runners.values()))
    assert set(runner.managers) == {"s_9"}  # a runner manager per system id that contacted GitLab
    assert call(gitlab, "DELETE", "/api/v4/runners/managers", {"token": token, "system_id": "s_other"})[0] == 404
    assert call(gitlab, "DELETE", "/api/v4/runners/managers", {"token": token, "system_id": "s_9"})[0] == 204
    assert [m.system_id for m in gitlab.managers_removed] == ["s_9"] and runner.managers == {}


def test_token_rotation(gitlab: GitLabDouble) -> None:
    token = create(gitlab)["token"]
    status, answer, _ = call(gitlab, "POST", "/api/v4/runners/reset_authentication_token", {"token": token})
    assert status == 201 and answer["token"] != token and answer["token"].startswith("glrt-")
    assert call(gitlab, "POST", "/api/v4/runners/verify", {"token": token})[0] == 403


def test_create_runner_scope_cannot_read_change_or_delete_runners() -> None:
    with serve("glpat-create-only", scopes=("create_runner",)) as double:
        auth = {"PRIVATE-TOKEN": "glpat-create-only"}
        status, created, _ = call(double, "POST", "/api/v4/user/runners", {"runner_type": "instance_type"}, auth)
        assert status == 201
        for method, body in (("GET", None), ("PUT", {"paused": True}), ("DELETE", None)):
            status, answer, _ = call(double, method, f"/api/v4/runners/{created['id']}", body, auth)
            assert status == 403 and answer["error"] == "insufficient_scope", method
        assert double.runners  # still there: a destroy with this token would leave it behind
        double.add_api_token("glpat-manage", ("create_runner", "manage_runner"))
        manage = {"PRIVATE-TOKEN": "glpat-manage"}
        assert call(double, "GET", f"/api/v4/runners/{created['id']}", headers=manage)[0] == 200
        assert call(double, "DELETE", f"/api/v4/runners/{created['id']}", headers=manage)[0] == 204


def test_manage_only_scope_cannot_create() -> None:
    with serve("glpat-manage-only", scopes=("manage_runner",)) as double:
        status, answer, _ = call(
            double,
            "POST",
            "/api/v4/user/runners",
            {"runner_type": "instance_type"},
            {"PRIVATE-TOKEN": "glpat-manage-only"},
        )
        assert status == 403 and answer["error"] == "insufficient_scope"


def test_token_expiry_and_reset() -> None:
    from datetime import UTC, datetime, timedelta

    with serve(API_TOKEN, token_lifetime=timedelta(hours=2)) as double:
        created = create(double)
        expires = datetime.fromisoformat(created["token_expires_at"].replace("Z", "+00:00"))
        assert timedelta(hours=1, minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=2)
        status, verified, _ = call(
            double, "POST", "/api/v4/runners/verify", {"token": created["token"], "system_id": "s"}
        )
        assert status == 200 and verified["token_expires_at"] == created["token_expires_at"]
        status, reset, _ = call(
            double, "POST", "/api/v4/runners/reset_authentication_token", {"token": created["token"]}
        )
        assert status == 201 and reset["token"] != created["token"] and reset["token_expires_at"]
        # The old token stops working at once; the new one works until it expires.
        assert call(double, "POST", "/api/v4/jobs/request", {"token": created["token"], "info": {}})[0] == 403
        assert call(double, "POST", "/api/v4/jobs/request", {"token": reset["token"], "info": {}})[0] == 204
        double.expire_now(double.runners[created["id"]])
        assert call(double, "POST", "/api/v4/jobs/request", {"token": reset["token"], "info": {}})[0] == 403


def test_a_job_request_without_runner_info_is_a_bad_request(gitlab: GitLabDouble) -> None:
    token = create(gitlab)["token"]
    assert call(gitlab, "POST", "/api/v4/jobs/request", {"token": token})[0] == 400


def test_an_outage_answers_every_call_with_its_status(gitlab: GitLabDouble) -> None:
    runner = gitlab.create_runner()
    gitlab.outage = 502
    assert call(gitlab, "POST", "/api/v4/runners/verify", {"token": runner.token})[0] == 502
    assert call(gitlab, "POST", "/api/v4/jobs/request", {"token": runner.token, "info": {}})[0] == 502
    assert call(gitlab, "GET", "/api/v4/user", headers={"PRIVATE-TOKEN": API_TOKEN})[:2] == (
        502,
        {"message": "502 Bad Gateway"},
    )
    gitlab.outage = None
    assert call(gitlab, "POST", "/api/v4/runners/verify", {"token": runner.token})[0] == 200

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


def raw_call(double: GitLabDouble, path: str, body: dict[str, Any]) -> tuple[int, bytes, dict[str, str]]:
    """A runner call whose answer may be no JSON (a proxy's page, a rate limiter's text)."""
    request = urllib.request.Request(  # noqa: S310 - 127.0.0.1 only
        f"{double.base_url}{path}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def test_faults_answer_the_runner_endpoints_named_for_a_while(gitlab: GitLabDouble) -> None:
    import time

    token = create(gitlab)["token"]
    poll = {"token": token, "system_id": "s", "info": {}}
    gitlab.fault(["request_job"], seconds=0.6, status=502)
    status, body, headers = raw_call(gitlab, "/api/v4/jobs/request", poll)
    assert status == 502 and b"502 Bad Gateway" in body and headers["Content-Type"] == "text/html"
    # verify is not named: it answers as usual.
    assert raw_call(gitlab, "/api/v4/runners/verify", {"token": token, "system_id": "s"})[0] == 200
    gitlab.fault(["verify", "request_job"], seconds=5, status=429, retry_after=2)
    status, body, headers = raw_call(gitlab, "/api/v4/runners/verify", {"token": token})
    assert status == 429 and headers["Retry-After"] == "2" and body == b"Retry later\n"
    gitlab.heal()
    gitlab.fault(["verify"], seconds=0.6, status=500)
    status, body, _ = raw_call(gitlab, "/api/v4/runners/verify", {"token": token})
    assert status == 500 and json.loads(body) == {"message": "500 Internal Server Error"}
    time.sleep(0.7)
    assert raw_call(gitlab, "/api/v4/runners/verify", {"token": token})[0] == 200
    assert raw_call(gitlab, "/api/v4/jobs/request", poll)[0] == 204
    answered = [(a.endpoint, a.status, a.token) for a in gitlab.fault_answers]
    assert answered == [("request_job", 502, token), ("verify", 429, token), ("verify", 500, token)]
    assert [a.status for a in gitlab.answered_with_faults("verify")] == [429, 500]
    # A late answer: held back, then answered as usual.
    gitlab.fault(["verify"], seconds=5, delay=0.5)
    started = time.monotonic()
    assert raw_call(gitlab, "/api/v4/runners/verify", {"token": token})[0] == 200
    assert time.monotonic() - started >= 0.5
    with pytest.raises(ValueError, match="no such runner endpoint"):
        gitlab.fault(["jobs"], seconds=1, status=500)


def test_a_stream_of_jobs_is_bounded_and_goes_to_any_of_its_runners(gitlab: GitLabDouble) -> None:
    import time

    first, second = create(gitlab), create(gitlab)
    stream = gitlab.stream_jobs([first["id"]], count=3, every=0.05, script=["true"], timeout=30)
    deadline = time.monotonic() + 5
    while stream.feeding and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(stream.jobs) == 3 and not stream.feeding
    # Only its runners take its jobs; a runner added later (a rotation) takes the pending ones.
    assert raw_call(gitlab, "/api/v4/jobs/request", {"token": second["token"], "info": {}})[0] == 204
    status, body, _ = raw_call(gitlab, "/api/v4/jobs/request", {"token": first["token"], "info": {}})
    assert status == 201 and json.loads(body)["id"] == stream.jobs[0].id
    stream.runners.add(second["id"])
    status, body, _ = raw_call(gitlab, "/api/v4/jobs/request", {"token": second["token"], "info": {}})
    assert status == 201 and json.loads(body)["id"] == stream.jobs[1].id
    assert stream.jobs[1].runner_id == second["id"]
    assert stream.counts() == {
        "enqueued": 3,
        "handed_out": 2,
        "finished": 0,
        "lost": 0,
        "dropped": 0,
        "running": 2,
        "pending": 1,
    }
    assert not stream.settled()
    short = gitlab.stream_jobs([first["id"]], count=100, every=0.2, script=["true"], deadline=0.5)
    time.sleep(1)
    assert not short.feeding and 1 <= len(short.jobs) <= 4


def test_a_job_nobody_finishes_is_failed_after_its_timeout() -> None:
    import time

    with serve(API_TOKEN, stuck_grace=0.2) as double:
        token = create(double)["token"]
        job = double.enqueue_job(token, ["sleep 100"], timeout=1)
        status, body, _ = raw_call(double, "/api/v4/jobs/request", {"token": token, "info": {}})
        assert status == 201 and job.state == "running"
        assert double.running_jobs() == [job]
        time.sleep(1.3)
        assert double.running_jobs() == []
        assert job.state == "failed" and job.failure_reason == "stuck_or_timeout_failure" and job.dropped
        # The runner that comes back too late is told the job is no longer its.
        late = {"token": json.loads(body)["token"], "state": "success"}
        status, answer, headers = call(double, "PUT", f"/api/v4/jobs/{job.id}", late)
        assert status == 403 and "not processing on runner" in answer["message"] and headers["Job-Status"] == "failed"
        assert job.state == "failed"


def test_token_lifetimes_by_runner_type() -> None:
    from datetime import timedelta

    with serve(API_TOKEN, token_lifetimes={"project_type": timedelta(minutes=5)}) as double:
        instance = create(double)
        project = create(double, runner_type="project_type", project_id=7)
        assert instance["token_expires_at"] is None and project["token_expires_at"] is not None
        status, reset, _ = call(
            double, "POST", "/api/v4/runners/reset_authentication_token", {"token": project["token"]}
        )
        assert status == 201 and reset["token_expires_at"] is not None
        assert double.accepts(reset["token"]) and not double.accepts(project["token"])
        double.delete_runner(double.runners[instance["id"]])
        assert not double.accepts(instance["token"]) and instance["id"] in double.deleted

"""A GitLab API double: a small real HTTP(S) server on 127.0.0.1 for tests. It is not GitLab.

It speaks the part of GitLab's REST API that the project relies on (shared/GITLAB-API.md), as strictly
as GitLab does:
- runner management as pulumi-gitlab's UserRunner uses it (`POST /user/runners`, `GET/PUT/DELETE
  /runners/:id`), with the personal access token's scopes enforced: `create_runner` creates only;
  reading, changing and deleting need `manage_runner` (GitLab 17.1+) or `api`, else 403
  insufficient_scope;
- the calls the gitlab-runner binary makes (verify, request a job, update it, append its trace, reset
  the token, leave as a runner manager), with runner managers kept per system id and, when the
  instance sets a runner-token lifetime, real `token_expires_at` values and tokens that stop working
  at expiry or after a reset.
Shapes follow gitlab-runner's common/network.go and network/gitlab.go and GitLab's REST docs. It records
every runner created and deleted, every verify and poll (with the system id), every job handed out with
its final state and trace, so tests can assert "the runner `pulumi up` created is the one that polled"
and "after `pulumi destroy` no runner is left".

It binds only to 127.0.0.1, optionally serves HTTPS with a certificate the test made, and keeps
everything in memory.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

RUNNER_FIELDS = (
    "description",
    "paused",
    "locked",
    "run_untagged",
    "tag_list",
    "access_level",
    "maximum_timeout",
    "maintenance_note",
)
RUNNER_TYPES = ("instance_type", "group_type", "project_type")
ACCESS_LEVELS = ("not_protected", "ref_protected")
# Which token scopes allow which management call (GitLab 17.1+, MR !153285).
CREATE_SCOPES = {"create_runner", "api"}
MANAGE_SCOPES = {"manage_runner", "api"}
USER_SCOPES = {"read_user", "read_api", "api"}

Answer = tuple[int, Any, dict[str, str]]
"""(status, body, extra headers): a JSON body, None for none, or bytes sent as they are."""
# The runner endpoints a fault can hit, by the names the runner's metrics give them.
RUNNER_ENDPOINTS = {
    ("POST", "/api/v4/runners/verify"): "verify",
    ("POST", "/api/v4/jobs/request"): "request_job",
}


def _forbidden_scope(needed: set[str]) -> Answer:
    """What GitLab's API guard answers a token without the scope a call needs."""
    return (
        HTTPStatus.FORBIDDEN,
        {
            "error": "insufficient_scope",
            "error_description": "The request requires higher privileges than provided by the access token.",
            "scope": " ".join(sorted(needed)),
        },
        {},
    )


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@dataclass
class Manager:
    """A runner manager: one process (system id) serving a runner."""

    system_id: str
    contacted_at: datetime


@dataclass
class Runner:
    id: int
    token: str
    runner_type: str
    attributes: dict[str, Any]
    token_expires_at: datetime | None = None
    group_id: int | None = None
    project_id: int | None = None
    managers: dict[str, Manager] = field(default_factory=dict)
    revoked: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        contacted = max((m.contacted_at for m in self.managers.values()), default=None)
        body: dict[str, Any] = {
            "id": self.id,
            "runner_type": self.runner_type,
            "active": not self.attributes.get("paused", False),
            "is_shared": self.runner_type == "instance_type",
            "online": contacted is not None,
            "status": "online" if contacted is not None else "never_contacted",
            "contacted_at": iso(contacted),
            **self.attributes,
        }
        if self.group_id is not None:
            body["groups"] = [{"id": self.group_id}]
        if self.project_id is not None:
            body["projects"] = [{"id": self.project_id}]
        return body


@dataclass
class Job:
    id: int
    token: str
    runner_token: str
    script: list[str]
    variables: dict[str, str]
    timeout: int = 3600
    image: str | None = None
    """The job's `image:` (docker and kubernetes executors); None: the runner's default image."""
    entrypoint: list[str] | None = None
    """The job's `image: entrypoint:` (`[""]` clears the image's own)."""
    state: str = "pending"
    exit_code: int | None = None
    failure_reason: str | None = None
    runner_id: int | None = None
    """The runner that took it."""
    system_id: str | None = None
    trace: bytearray = field(default_factory=bytearray)
    candidates: set[int] = field(default_factory=set)
    """The runners that may take it while it is pending (GitLab hands a job to any runner that matches)."""
    handed_out_at: float | None = None
    """When a runner took it (epoch seconds)."""
    dropped: bool = False
    """Failed by the double: still running when its timeout (plus the double's grace) was over."""

    def payload(self, base_url: str) -> dict[str, Any]:
        variables = [{"key": k, "value": v, "public": True, "masked": False} for k, v in self.variables.items()]
        return {
            "id": self.id,
            "token": self.token,
            "allow_git_fetch": False,
            "job_info": {
                "id": self.id,
                "name": f"job-{self.id}",
                "stage": "test",
                "project_id": 1,
                "project_name": "double",
            },
            "git_info": {
                "repo_url": f"{base_url}/double/project.git",
                "ref": "main",
                "sha": "0" * 40,
                "before_sha": "0" * 40,
                "ref_type": "branch",
                "refspecs": [],
                "depth": 0,
            },
            "runner_info": {"timeout": self.timeout, "runner_session_url": ""},
            "variables": variables,
            "steps": [
                {
                    "name": "script",
                    "script": self.script,
                    "timeout": self.timeout,
                    "when": "on_success",
                    "allow_failure": False,
                }
            ],
            "image": {"name": self.image, **({"entrypoint": self.entrypoint} if self.entrypoint else {})}
            if self.image
            else None,
            "services": [],
            "artifacts": [],
            "cache": [],
            "credentials": [],
            "dependencies": [],
            "features": {"trace_sections": True, "failure_reasons": ["script_failure", "unknown_failure"]},
        }


@dataclass
class Poll:
    token: str
    system_id: str | None
    at: datetime
    runner_id: int | None = None


@dataclass(frozen=True)
class Fault:
    """GitLab misbehaving for a while: `status` answered to the runner endpoints named, or answers
    held back `delay` seconds first (status None)."""

    endpoints: frozenset[str]
    until: float
    """Epoch seconds."""
    status: int | None = None
    retry_after: int | None = None
    """The Retry-After header of a 429, in seconds, as GitLab's rate limiter sends it."""
    delay: float = 0.0


@dataclass(frozen=True)
class Answered:
    """One runner-endpoint request the double answered with a fault."""

    endpoint: str
    token: str | None
    status: int
    at: float
    correlation: str | None = None
    """The call's X-Request-Id: the runner sends the same one on every attempt of a call."""


def fault_answer(status: int, retry_after: int | None) -> Answer:
    """What GitLab (or the proxy in front of it) sends with these statuses."""
    if status == HTTPStatus.TOO_MANY_REQUESTS:
        # Rack::Attack's throttle answer: plain text, Retry-After in seconds.
        headers = {"Content-Type": "text/plain"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        return status, b"Retry later\n", headers
    if status in (HTTPStatus.BAD_GATEWAY, HTTPStatus.GATEWAY_TIMEOUT):
        # From the proxy in front of Rails (NGINX): an HTML page.
        phrase = f"{status} {HTTPStatus(status).phrase}"
        return status, f"<html><body><h1>{phrase}</h1></body></html>\n".encode(), {"Content-Type": "text/html"}
    return status, {"message": f"{status} {HTTPStatus(status).phrase}"}, {}


class JobStream:
    """A bounded stream of jobs: `count` jobs, one every `every` seconds, for whichever of `runners` asks
    first; it stops early at `deadline` seconds. `runners` is shared with the pending jobs, so a runner
    added later (a rotation by the stack) may take them too."""

    def __init__(
        self,
        double: GitLabDouble,
        runners: Iterable[int],
        count: int,
        every: float,
        script: list[str],
        timeout: int,
        deadline: float,
    ) -> None:
        self.double = double
        self.runners: set[int] = set(runners)
        self.count = count
        self.every = every
        self.script = script
        self.timeout = timeout
        self.jobs: list[Job] = []
        self._stop = threading.Event()
        self._ends = time.time() + deadline
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        while len(self.jobs) < self.count and time.time() < self._ends and not self._stop.is_set():
            self.jobs.append(self.double.enqueue_job(None, self.script, timeout=self.timeout, runners=self.runners))
            self._stop.wait(self.every)

    def stop(self) -> None:
        """No more jobs; the ones enqueued stay."""
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def feeding(self) -> bool:
        return self._thread.is_alive()

    def settled(self) -> bool:
        """Every job enqueued is finished, or failed (by its runner or by the double's timeout)."""
        with self.double.lock:
            self.double._drop_stuck()
            return all(job.state in ("success", "failed") for job in self.jobs)

    def counts(self) -> dict[str, int]:
        """Jobs enqueued, handed out, finished (success), lost (failed or dropped), still running or pending."""
        with self.double.lock:
            self.double._drop_stuck()
            jobs = list(self.jobs)
            return {
                "enqueued": len(jobs),
                "handed_out": sum(1 for j in jobs if j.state != "pending"),
                "finished": sum(1 for j in jobs if j.state == "success"),
                "lost": sum(1 for j in jobs if j.state == "failed"),
                "dropped": sum(1 for j in jobs if j.dropped),
                "running": sum(1 for j in jobs if j.state == "running"),
                "pending": sum(1 for j in jobs if j.state == "pending"),
            }


class GitLabDouble:
    """The double's state and behaviour; `serve()` puts it on 127.0.0.1."""

    def __init__(
        self,
        api_token: str,
        scopes: tuple[str, ...] = ("api",),
        token_lifetime: timedelta | None = None,
        token_lifetimes: Mapping[str, timedelta] | None = None,
        stuck_grace: float = 60.0,
    ) -> None:
        self.api_tokens: dict[str, set[str]] = {api_token: set(scopes)}
        self.token_lifetime = token_lifetime
        """The instance's runner-token lifetime; None: tokens never expire (GitLab's default)."""
        self.token_lifetimes = dict(token_lifetimes or {})
        """Lifetimes by runner type, as GitLab's settings for instance, group and project runners set
        them (runner_token_expiration_interval, group_…, project_…); they win over token_lifetime."""
        self.stuck_grace = stuck_grace
        """Seconds past its timeout after which a job still running is failed by the double
        (stuck_or_timeout_failure), as GitLab drops jobs no runner finishes."""
        self.lock = threading.Lock()
        self.runners: dict[int, Runner] = {}
        self.created: list[int] = []
        self.deleted: list[int] = []
        self.verified: list[Poll] = []
        self.polls: list[Poll] = []
        self.resets: list[Poll] = []
        self.managers_removed: list[Poll] = []
        self.jobs: dict[int, Job] = {}
        self.queue: list[Job] = []
        self.unavailable = False
        """Answer job requests 503, as GitLab does while it is down for maintenance."""
        self.outage: int | None = None
        """Answer every request with this status (502, 503, 500), as the proxy in front of a GitLab that
        is down does."""
        self.faults: list[Fault] = []
        self.fault_answers: list[Answered] = []
        self._ids = itertools.count(1)
        self._job_ids = itertools.count(1000)
        self.base_url = ""

    # -- what tests call ---------------------------------------------------------------------

    def add_api_token(self, token: str, scopes: tuple[str, ...]) -> None:
        with self.lock:
            self.api_tokens[token] = set(scopes)

    def create_runner(self, runner_type: str = "instance_type", **attributes: Any) -> Runner:
        """A runner created outside the stack (in GitLab's UI, say); its token is what a user copies."""
        with self.lock:
            status, answer, _ = self._create_runner({"runner_type": runner_type, **attributes})
            if status != HTTPStatus.CREATED:
                raise ValueError(answer)
            return self.runners[answer["id"]]

    def enqueue_job(
        self,
        runner_token: str | None,
        script: list[str],
        variables: dict[str, str] | None = None,
        timeout: int = 3600,
        image: str | None = None,
        entrypoint: list[str] | None = None,
        runners: set[int] | None = None,
    ) -> Job:
        """A job for the runner holding `runner_token` now (it follows the runner through token resets),
        or for any of `runners` (ids; the set is kept, so runners added to it later may take the job)."""
        with self.lock:
            job = Job(
                id=next(self._job_ids),
                token=f"glcbt-{secrets.token_hex(8)}",
                runner_token=runner_token or "",
                script=script,
                variables={"GIT_STRATEGY": "none", **(variables or {})},
                timeout=timeout,
                image=image,
                entrypoint=entrypoint,
            )
            if runners is not None:
                job.candidates = runners
            else:
                runner = self._runner_by_token(runner_token)
                job.candidates = {runner.id} if runner else set()
            self.jobs[job.id] = job
            self.queue.append(job)
            return job

    def stream_jobs(
        self,
        runners: Iterable[int],
        count: int,
        every: float,
        script: list[str],
        timeout: int = 60,
        deadline: float = 300,
    ) -> JobStream:
        """Start a bounded stream of jobs for these runners (ids); see JobStream."""
        return JobStream(self, runners, count, every, script, timeout, deadline)

    def fault(
        self,
        endpoints: Iterable[str],
        seconds: float,
        status: int | None = None,
        retry_after: int | None = None,
        delay: float = 0.0,
    ) -> Fault:
        """Misbehave on the runner endpoints named (`verify`, `request_job`) for `seconds`: answer
        `status` (500, 502, 429 with `retry_after`, …), or answer late by `delay` seconds."""
        unknown = set(endpoints) - set(RUNNER_ENDPOINTS.values())
        if unknown:
            raise ValueError(f"no such runner endpoint: {sorted(unknown)}")
        fault = Fault(frozenset(endpoints), time.time() + seconds, status, retry_after, delay)
        with self.lock:
            self.faults.append(fault)
        return fault

    def heal(self) -> None:
        """GitLab answers again."""
        with self.lock:
            self.faults.clear()

    def answered_with_faults(self, endpoint: str, since: float = 0.0) -> list[Answered]:
        with self.lock:
            return [a for a in self.fault_answers if a.endpoint == endpoint and a.at >= since]

    def delete_runner(self, runner: Runner) -> None:
        """Delete a runner as `DELETE /runners/:id` (or GitLab's UI) does: its token stops working."""
        with self.lock:
            self.runners.pop(runner.id, None)
            self.deleted.append(runner.id)

    def accepts(self, token: str) -> bool:
        """GitLab takes this runner token now (verify would answer 200)."""
        with self.lock:
            return self._runner_by_token(token) is not None

    def running_jobs(self) -> list[Job]:
        with self.lock:
            self._drop_stuck()
            return [j for j in self.jobs.values() if j.state == "running"]

    def tokens_that_polled(self) -> set[str]:
        with self.lock:
            return {p.token for p in self.polls}

    def polled_since(self, token: str, since: float) -> float | None:
        """The time (epoch seconds) of the token's first job request at or after `since`, if any."""
        with self.lock:
            return next((p.at.timestamp() for p in self.polls if p.token == token and p.at.timestamp() >= since), None)

    def first_poll(self, token: str) -> datetime | None:
        with self.lock:
            return next((p.at for p in self.polls if p.token == token), None)

    def expire_now(self, runner: Runner) -> None:
        with self.lock:
            runner.token_expires_at = datetime.now(UTC) - timedelta(seconds=1)

    def reset_token(self, runner: Runner) -> None:
        """Rotate the runner's token as its own `POST /runners/reset_authentication_token` does."""
        with self.lock:
            self._reset_token({"token": runner.token})

    # -- the API -------------------------------------------------------------------------------

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _runner_by_token(self, token: Any) -> Runner | None:
        if not isinstance(token, str):
            return None
        runner = next((r for r in self.runners.values() if r.token == token), None)
        if runner is not None and runner.token_expires_at is not None and runner.token_expires_at <= self._now():
            return None
        return runner

    def _expiry(self, runner_type: str | None = None) -> datetime | None:
        lifetime = self.token_lifetimes.get(runner_type or "", self.token_lifetime)
        return None if lifetime is None else self._now() + lifetime

    def _active_fault(self, endpoint: str) -> Fault | None:
        now = time.time()
        self.faults = [f for f in self.faults if f.until > now]
        return next((f for f in reversed(self.faults) if endpoint in f.endpoints), None)

    def _drop_stuck(self) -> None:
        """Fail the running jobs whose timeout (plus the grace) is over: no runner will finish them."""
        now = time.time()
        for job in self.jobs.values():
            if job.state == "running" and job.handed_out_at is not None:
                if now > job.handed_out_at + job.timeout + self.stuck_grace:
                    job.state, job.failure_reason, job.dropped = "failed", "stuck_or_timeout_failure", True

    def _api_scopes(self, headers: dict[str, str]) -> set[str] | None:
        token = headers.get("private-token")
        if token is None and headers.get("authorization", "").startswith("Bearer "):
            token = headers["authorization"][len("Bearer ") :]
        return self.api_tokens.get(token or "")

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """One request -> (status, JSON body or None, extra headers)."""
        route = path.split("?", 1)[0].rstrip("/")
        data: dict[str, Any] = {}
        if body and headers.get("content-type", "").startswith("application/json"):
            try:
                loaded = json.loads(body)
            except ValueError:
                return HTTPStatus.BAD_REQUEST, {"message": "400 Bad request - invalid JSON"}, {}
            if not isinstance(loaded, dict):
                return HTTPStatus.BAD_REQUEST, {"message": "400 Bad request - JSON object expected"}, {}
            data = loaded
        endpoint = RUNNER_ENDPOINTS.get((method, route))
        if endpoint is not None:
            with self.lock:
                fault = self._active_fault(endpoint)
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            if fault is not None and fault.status is not None:
                token = data.get("token")
                with self.lock:
                    self.fault_answers.append(
                        Answered(
                            endpoint,
                            token if isinstance(token, str) else None,
                            fault.status,
                            time.time(),
                            headers.get("x-request-id"),
                        )
                    )
                return fault_answer(fault.status, fault.retry_after)
        with self.lock:
            return self._route(method, route, headers, data, body)

    def _route(self, method: str, route: str, headers: dict[str, str], data: dict[str, Any], body: bytes) -> Answer:
        if self.outage is not None:
            return self.outage, {"message": f"{self.outage} {HTTPStatus(self.outage).phrase}"}, {}
        if route.startswith("/api/v4/jobs/") and route.endswith("/trace") and method == "PATCH":
            return self._patch_trace(route, headers, body)
        if route == "/api/v4/runners/verify" and method == "POST":
            return self._verify(data)
        if route == "/api/v4/jobs/request" and method == "POST":
            return self._request_job(data)
        if re.fullmatch(r"/api/v4/jobs/\d+", route) and method == "PUT":
            return self._update_job(route, data)
        if route == "/api/v4/runners/managers" and method == "DELETE":
            return self._remove_manager(data)
        if route == "/api/v4/runners/reset_authentication_token" and method == "POST":
            return self._reset_token(data)
        # Everything else is the management API: it needs a personal (or group/project) access token.
        scopes = self._api_scopes(headers)
        if scopes is None:
            return HTTPStatus.UNAUTHORIZED, {"message": "401 Unauthorized"}, {}
        if route == "/api/v4/personal_access_tokens/self" and method == "GET":
            # Any valid token may read itself.
            return (
                HTTPStatus.OK,
                {"id": 1, "name": "double", "scopes": sorted(scopes), "active": True, "revoked": False},
                {},
            )
        if route == "/api/v4/user" and method == "GET":
            if not scopes & USER_SCOPES:
                return _forbidden_scope(USER_SCOPES)
            return HTTPStatus.OK, {"id": 1, "username": "double", "is_admin": True}, {}
        if route == "/api/v4/user/runners" and method == "POST":
            if not scopes & CREATE_SCOPES:
                return _forbidden_scope(CREATE_SCOPES)
            return self._create_runner(data)
        match = re.fullmatch(r"/api/v4/runners/(\d+)", route)
        if match and method in ("GET", "PUT", "DELETE"):
            if not scopes & MANAGE_SCOPES:
                return _forbidden_scope(MANAGE_SCOPES)
            runner = self.runners.get(int(match.group(1)))
            if runner is None:
                return HTTPStatus.NOT_FOUND, {"message": "404 Runner Not Found"}, {}
            if method == "GET":
                return HTTPStatus.OK, runner.as_json(), {}
            if method == "PUT":
                problem = self._apply(runner.attributes, data)
                if problem:
                    return HTTPStatus.BAD_REQUEST, {"message": problem}, {}
                return HTTPStatus.OK, runner.as_json(), {}
            del self.runners[runner.id]
            self.deleted.append(runner.id)
            return HTTPStatus.NO_CONTENT, None, {}
        return HTTPStatus.NOT_FOUND, {"message": "404 Not Found"}, {}

    @staticmethod
    def _apply(attributes: dict[str, Any], data: dict[str, Any]) -> str | None:
        for key in RUNNER_FIELDS:
            if key not in data:
                continue
            value = data[key]
            if key == "tag_list" and isinstance(value, str):
                value = [t.strip() for t in value.split(",") if t.strip()]
            if key == "access_level" and value not in ACCESS_LEVELS:
                return "access_level does not have a valid value"
            if key == "maximum_timeout" and value is not None:
                if not isinstance(value, int) or isinstance(value, bool) or value < 600:
                    return "maximum_timeout needs to be at least 10 minutes"
            if key in ("paused", "locked", "run_untagged") and not isinstance(value, bool):
                return f"{key} is invalid"
            attributes[key] = value
        return None

    def _create_runner(self, data: dict[str, Any]) -> Answer:
        runner_type = data.get("runner_type")
        if runner_type not in RUNNER_TYPES:
            return HTTPStatus.BAD_REQUEST, {"message": "runner_type does not have a valid value"}, {}
        if runner_type == "group_type" and not data.get("group_id"):
            return HTTPStatus.BAD_REQUEST, {"message": "group_id is missing"}, {}
        if runner_type == "project_type" and not data.get("project_id"):
            return HTTPStatus.BAD_REQUEST, {"message": "project_id is missing"}, {}
        attributes: dict[str, Any] = {
            "description": "",
            "paused": False,
            "locked": False,
            "run_untagged": True,
            "tag_list": [],
            "access_level": "not_protected",
            "maximum_timeout": None,
            "maintenance_note": None,
        }
        problem = self._apply(attributes, data)
        if problem:
            return HTTPStatus.BAD_REQUEST, {"message": problem}, {}
        runner = Runner(
            id=next(self._ids),
            token=f"glrt-t1_{secrets.token_urlsafe(15)}",
            runner_type=str(runner_type),
            attributes=attributes,
            token_expires_at=self._expiry(str(runner_type)),
            group_id=data.get("group_id"),
            project_id=data.get("project_id"),
        )
        self.runners[runner.id] = runner
        self.created.append(runner.id)
        return (
            HTTPStatus.CREATED,
            {"id": runner.id, "token": runner.token, "token_expires_at": iso(runner.token_expires_at)},
            {},
        )

    def _contact(self, runner: Runner, system_id: Any) -> None:
        if isinstance(system_id, str) and system_id:
            runner.managers[system_id] = Manager(system_id, self._now())

    def _verify(self, data: dict[str, Any]) -> Answer:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self._contact(runner, data.get("system_id"))
        self.verified.append(Poll(runner.token, data.get("system_id"), self._now(), runner.id))
        return (
            HTTPStatus.OK,
            {"id": runner.id, "token": runner.token, "token_expires_at": iso(runner.token_expires_at)},
            {},
        )

    def _request_job(self, data: dict[str, Any]) -> Answer:
        if self.unavailable:
            return HTTPStatus.SERVICE_UNAVAILABLE, {"message": "503 Service Unavailable"}, {}
        if not isinstance(data.get("info"), dict):
            return HTTPStatus.BAD_REQUEST, {"message": "400 Bad request - info is missing"}, {}
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self._contact(runner, data.get("system_id"))
        self.polls.append(Poll(runner.token, data.get("system_id"), self._now(), runner.id))
        last_update = {"X-GitLab-Last-Update": secrets.token_hex(8)}
        if runner.attributes.get("paused"):
            return HTTPStatus.NO_CONTENT, None, last_update
        for job in self.queue:
            if runner.id in job.candidates:
                self.queue.remove(job)
                job.state = "running"
                job.runner_id = runner.id
                job.system_id = data.get("system_id")
                job.handed_out_at = time.time()
                return HTTPStatus.CREATED, job.payload(self.base_url), {}
        return HTTPStatus.NO_CONTENT, None, last_update

    def _job_for(self, route: str, token: Any) -> Job | None:
        job = self.jobs.get(int(route.split("/")[4]))
        return job if job is not None and job.token == token else None

    def _update_job(self, route: str, data: dict[str, Any]) -> Answer:
        job = self._job_for(route, data.get("token"))
        if job is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self._drop_stuck()
        if job.dropped:
            # A job GitLab already failed: its API's job_forbidden! for a job no longer on the runner.
            return (
                HTTPStatus.FORBIDDEN,
                {"message": "403 Forbidden - Job is not processing on runner"},
                {"Job-Status": job.state},
            )
        state = data.get("state")
        if state not in (None, "running", "success", "failed"):
            return HTTPStatus.BAD_REQUEST, {"message": "state does not have a valid value"}, {}
        if state:
            job.state = str(state)
        job.exit_code = data.get("exit_code")
        job.failure_reason = data.get("failure_reason") or None
        return HTTPStatus.OK, {}, {"Job-Status": job.state}

    def _patch_trace(self, route: str, headers: dict[str, str], body: bytes) -> Answer:
        job = self._job_for(route, headers.get("job-token"))
        if job is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self._drop_stuck()
        if job.dropped:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden - Job is not running"}, {"Job-Status": job.state}
        match = re.fullmatch(r"(\d+)-(\d+)", headers.get("content-range", ""))
        start = int(match.group(1)) if match else len(job.trace)
        if start != len(job.trace):
            # The runner resends from the offset the server has.
            return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, None, {"Range": f"0-{len(job.trace)}"}
        job.trace.extend(body)
        return HTTPStatus.ACCEPTED, None, {"Range": f"0-{len(job.trace)}", "Job-Status": job.state}

    def _remove_manager(self, data: dict[str, Any]) -> Answer:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        system_id = data.get("system_id")
        if not isinstance(system_id, str) or system_id not in runner.managers:
            return HTTPStatus.NOT_FOUND, {"message": "404 Runner Manager Not Found"}, {}
        del runner.managers[system_id]
        self.managers_removed.append(Poll(runner.token, system_id, self._now(), runner.id))
        return HTTPStatus.NO_CONTENT, None, {}

    def _reset_token(self, data: dict[str, Any]) -> Answer:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self.resets.append(Poll(runner.token, None, self._now(), runner.id))
        runner.revoked.append(runner.token)
        runner.token = f"glrt-t1_{secrets.token_urlsafe(15)}"
        runner.token_expires_at = self._expiry(runner.runner_type)
        return HTTPStatus.CREATED, {"token": runner.token, "token_expires_at": iso(runner.token_expires_at)}, {}


def _handler(double: GitLabDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = double.handle(self.command, self.path, headers, body)
            raw = isinstance(answer, bytes)
            payload = answer if isinstance(answer, bytes) else b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            if answer is not None and not raw:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: requests carry tokens, and test output must not."""

    return Handler


@contextmanager
def serve(
    api_token: str,
    scopes: tuple[str, ...] = ("api",),
    token_lifetime: timedelta | None = None,
    tls: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    client_ca: str | None = None,
    token_lifetimes: Mapping[str, timedelta] | None = None,
    stuck_grace: float = 60.0,
) -> Iterator[GitLabDouble]:
    """Run a double on a free port of `host` for the duration of the block; HTTPS with `tls`
    (certificate file, key file), requiring a client certificate signed by `client_ca` when given (a
    GitLab behind mutual TLS). `host` is 127.0.0.1, or this machine's address on a network the test
    made (a pod network), never another."""
    double = GitLabDouble(api_token, scopes, token_lifetime, token_lifetimes, stuck_grace)
    server = ThreadingHTTPServer((host, 0), _handler(double))
    scheme = "http"
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    double.base_url = f"{scheme}://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

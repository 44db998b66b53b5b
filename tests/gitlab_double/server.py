"""A GitLab API double: a small real HTTP server on 127.0.0.1 for tests. It is not GitLab.

It speaks the part of GitLab's REST API that the project relies on (shared/GITLAB-API.md): runner
management as pulumi-gitlab's UserRunner uses it, and the runner <-> GitLab calls the gitlab-runner
binary makes. Shapes follow gitlab-runner's common/network.go and GitLab's REST docs. It records
every runner created and deleted, every token that verified or polled (with its system_id), every
job handed out with its final state and trace, so tests can assert "the runner `pulumi up` created
is the one that polled" and "after `pulumi destroy` no runner is left".

It binds only to 127.0.0.1 and keeps everything in memory.
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


@dataclass
class Runner:
    id: int
    token: str
    runner_type: str
    attributes: dict[str, Any]
    group_id: int | None = None
    project_id: int | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "runner_type": self.runner_type,
            "active": not self.attributes.get("paused", False),
            "is_shared": self.runner_type == "instance_type",
            "online": False,
            "status": "never_contacted",
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
    state: str = "pending"
    exit_code: int | None = None
    failure_reason: str | None = None
    trace: bytearray = field(default_factory=bytearray)

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
            "image": None,
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


class GitLabDouble:
    """The double's state and behaviour; `serve()` puts it on 127.0.0.1."""

    def __init__(self, api_token: str) -> None:
        self.api_token = api_token
        self.lock = threading.Lock()
        self.runners: dict[int, Runner] = {}
        self.created: list[int] = []
        self.deleted: list[int] = []
        self.verified: list[Poll] = []
        self.polls: list[Poll] = []
        self.managers_removed: list[Poll] = []
        self.jobs: dict[int, Job] = {}
        self.queue: list[Job] = []
        self._ids = itertools.count(1)
        self._job_ids = itertools.count(1000)
        self.base_url = ""

    # -- what tests call ---------------------------------------------------------------------

    def enqueue_job(self, runner_token: str, script: list[str], variables: dict[str, str] | None = None) -> Job:
        """A job for the runner holding `runner_token`; GIT_STRATEGY=none needs no repository."""
        with self.lock:
            job = Job(
                id=next(self._job_ids),
                token=f"job-{secrets.token_hex(8)}",
                runner_token=runner_token,
                script=script,
                variables={"GIT_STRATEGY": "none", **(variables or {})},
            )
            self.jobs[job.id] = job
            self.queue.append(job)
            return job

    def tokens_that_polled(self) -> set[str]:
        with self.lock:
            return {p.token for p in self.polls}

    # -- the API -------------------------------------------------------------------------------

    def _runner_by_token(self, token: str | None) -> Runner | None:
        return next((r for r in self.runners.values() if r.token == token), None)

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        """One request -> (status, JSON body or bytes or None, extra headers)."""
        route = path.split("?", 1)[0].rstrip("/")
        data: dict[str, Any] = {}
        if body and headers.get("content-type", "").startswith("application/json"):
            try:
                data = json.loads(body)
            except ValueError:
                return HTTPStatus.BAD_REQUEST, {"message": "400 Bad request - invalid JSON"}, {}
        with self.lock:
            if route.startswith("/api/v4/jobs/") and route.endswith("/trace") and method == "PATCH":
                return self._patch_trace(route, headers, body)
            if route in ("/api/v4/runners/verify",) and method == "POST":
                return self._verify(data)
            if route == "/api/v4/jobs/request" and method == "POST":
                return self._request_job(data)
            if re.fullmatch(r"/api/v4/jobs/\d+", route) and method == "PUT":
                return self._update_job(route, data)
            if route == "/api/v4/runners/managers" and method == "DELETE":
                return self._remove_manager(data)
            if route == "/api/v4/runners/reset_authentication_token" and method == "POST":
                return self._reset_token(data)
            # Everything else is the management API: it needs the API token.
            if headers.get("private-token") != self.api_token:
                return HTTPStatus.UNAUTHORIZED, {"message": "401 Unauthorized"}, {}
            if route == "/api/v4/user" and method == "GET":
                return HTTPStatus.OK, {"id": 1, "username": "double", "is_admin": True}, {}
            if route == "/api/v4/user/runners" and method == "POST":
                return self._create_runner(data)
            match = re.fullmatch(r"/api/v4/runners/(\d+)", route)
            if match:
                runner = self.runners.get(int(match.group(1)))
                if runner is None:
                    return HTTPStatus.NOT_FOUND, {"message": "404 Not found"}, {}
                if method == "GET":
                    return HTTPStatus.OK, runner.as_json(), {}
                if method == "PUT":
                    problem = self._apply(runner.attributes, data)
                    if problem:
                        return HTTPStatus.BAD_REQUEST, {"message": problem}, {}
                    return HTTPStatus.OK, runner.as_json(), {}
                if method == "DELETE":
                    del self.runners[runner.id]
                    self.deleted.append(runner.id)
                    return HTTPStatus.NO_CONTENT, None, {}
        return HTTPStatus.NOT_FOUND, {"message": "404 Not found"}, {}

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
            if key == "maximum_timeout" and value is not None and int(value) < 600:
                return "maximum_timeout needs to be at least 10 minutes"
            attributes[key] = value
        return None

    def _create_runner(self, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
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
            token=f"glrt-{secrets.token_urlsafe(15)}",
            runner_type=runner_type,
            attributes=attributes,
            group_id=data.get("group_id"),
            project_id=data.get("project_id"),
        )
        self.runners[runner.id] = runner
        self.created.append(runner.id)
        return HTTPStatus.CREATED, {"id": runner.id, "token": runner.token, "token_expires_at": None}, {}

    def _verify(self, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self.verified.append(Poll(runner.token, data.get("system_id"), datetime.now(UTC)))
        return HTTPStatus.OK, {"id": runner.id, "token": runner.token, "token_expires_at": None}, {}

    def _request_job(self, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self.polls.append(Poll(runner.token, data.get("system_id"), datetime.now(UTC)))
        last_update = {"X-GitLab-Last-Update": secrets.token_hex(8)}
        if runner.attributes.get("paused"):
            return HTTPStatus.NO_CONTENT, None, last_update
        for job in self.queue:
            if job.runner_token == runner.token:
                self.queue.remove(job)
                job.state = "running"
                return HTTPStatus.CREATED, job.payload(self.base_url), {}
        return HTTPStatus.NO_CONTENT, None, last_update

    def _job_for(self, route: str, token: str | None) -> Job | None:
        job_id = int(route.split("/")[4])
        job = self.jobs.get(job_id)
        return job if job is not None and job.token == token else None

    def _update_job(self, route: str, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        job = self._job_for(route, data.get("token"))
        if job is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        state = data.get("state")
        if state:
            job.state = str(state)
        job.exit_code = data.get("exit_code")
        job.failure_reason = data.get("failure_reason")
        return HTTPStatus.OK, {}, {"Job-Status": job.state}

    def _patch_trace(self, route: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        job = self._job_for(route, headers.get("job-token"))
        if job is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        match = re.fullmatch(r"(\d+)-(\d+)", headers.get("content-range", ""))
        start = int(match.group(1)) if match else len(job.trace)
        if start != len(job.trace):
            # The runner resends from the offset the server has.
            return HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, None, {"Range": f"0-{len(job.trace)}"}
        job.trace.extend(body)
        return HTTPStatus.ACCEPTED, None, {"Range": f"0-{len(job.trace)}", "Job-Status": job.state}

    def _remove_manager(self, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        self.managers_removed.append(Poll(runner.token, data.get("system_id"), datetime.now(UTC)))
        return HTTPStatus.NO_CONTENT, None, {}

    def _reset_token(self, data: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        runner = self._runner_by_token(data.get("token"))
        if runner is None:
            return HTTPStatus.FORBIDDEN, {"message": "403 Forbidden"}, {}
        runner.token = f"glrt-{secrets.token_urlsafe(15)}"
        return HTTPStatus.CREATED, {"token": runner.token, "token_expires_at": None}, {}


def _handler(double: GitLabDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer, extra = double.handle(self.command, self.path, headers, body)
            payload = b"" if answer is None else json.dumps(answer).encode()
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            if answer is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: requests carry tokens, and test output must not."""

    return Handler


@contextmanager
def serve(api_token: str) -> Iterator[GitLabDouble]:
    """Run a double on a free 127.0.0.1 port for the duration of the block."""
    double = GitLabDouble(api_token)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(double))
    double.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

"""Faults, measured for real: the Pulumi engine and CLI on a file backend, the docker provider, two real
Docker engines (host a: the session's current engine; host b: one this module starts, and restarts, on
the same release, or Debian's 20.10 where Docker 29 was not built), the GitLab API double and the runner
stand-in (a test double of gitlab-runner, retrying as the runner's own retry requester does). No job
lost, no token lost, and a stack that always converges:

1. jobs in flight while the settings change, the image is upgraded, a token is rotated by the stack and
   by the runner itself, and a host leaves the stack;
2. `pulumi up` interrupted: SIGINT to the CLI, and kill -9 of it, then the README's recovery;
3. drift: a runner container, its config volume, its config.toml changed by hand;
4. GitLab answering 500, 502 and 429 (Retry-After) to verify and to job requests for a while;
5. the engine restarting while runners hold jobs.

The tests share one deployed stack (two runners on two hosts) but each gets the state it needs from the
`faults` fixture, which brings the stack back to its baseline when a test left it elsewhere, so they
pass in any order and selection. Each test adds rows to the README's "Faults" table, printed at the end
(and written to $GITLAB_RUNNERS_FAULTS_TABLE when set).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation as auto

from components.config_drift import drifted
from tests.gitlab_double.server import GitLabDouble, Job, JobStream, Runner, serve
from tests.integration.conftest import exported_state
from tests.integration.docker_engine import (
    CURRENT_MIN_API,
    Engine,
    ExtraEngine,
    base_image,
    current_engine_binaries,
    docker_provider_or_skip,
    wait_for,
)
from tests.integration.docker_stack import DockerStack, docker_stack
from tests.integration.local_cluster import free_port_block

API_TOKEN = "glpat-" + secrets.token_hex(10)
# Project runners' tokens live 60 s (GitLab's project_runner_token_expiration_interval): f-solo, a
# project runner, rotates its own at 75% of that, every 45 s; f-spread, an instance runner, never.
TOKEN_LIFETIME = timedelta(seconds=60)
# How long f-solo may take to rotate its token: 75% of the lifetime, and time to write it down.
ROTATES_WITHIN = TOKEN_LIFETIME.total_seconds() * 0.75 + 20
# A job still running this long past its timeout is failed by the double (a runner that went away).
STUCK_GRACE = 5.0
JOB = ["sleep 2", 'echo "job $CI_JOB_ID done"']


@dataclass
class Row:
    event: str
    happened: str
    handed_out: int
    finished: int
    lost: int
    tokens: str


TABLE: list[Row] = []


def record(row: Row) -> None:
    TABLE.append(row)
    print(f"faults row: {row}")


def table() -> str:
    lines = [
        "| event | what happened | jobs handed out | jobs finished | jobs lost | tokens kept |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r.event} | {r.happened} | {r.handed_out} | {r.finished} | {r.lost} | {r.tokens} |" for r in TABLE]
    return "\n".join(lines)


@dataclass
class Faults:
    """The module's stack: runner f-spread on hosts a and b, runner f-solo on host a, shell executors."""

    stack: DockerStack
    gitlab: GitLabDouble
    a: Engine
    b: ExtraEngine
    runners: dict[str, Runner]
    """The GitLab runners the stack's tokens belong to now."""
    hosts: list[dict[str, Any]]
    bystanders: dict[str, str] = field(default_factory=dict)
    """Host name -> id of a container the stack does not own (with a volume of the same name)."""
    dirty: bool = True
    """The stack may be away from its baseline: the next `ensure` brings it back."""

    def engine(self, host: str) -> Engine:
        return self.a if host == "a" else self.b.engine

    @property
    def container(self) -> str:
        return self.stack.container("shell")

    def baseline(self) -> dict[str, Any]:
        return {
            "runners": [
                {"name": "f-spread", "executor": "shell", "hosts": ["a", "b"]},
                {"name": "f-solo", "executor": "shell", "hosts": ["a"]},
            ],
            "checkInterval": "1",
            "docker": {**self.stack.config("docker"), "hosts": self.hosts},
        }

    def tokens(self) -> dict[str, str]:
        """What the stack holds: the token each runner was given (the runner may have rotated it since)."""
        return {name: self.given[name] for name in self.runners}

    given: dict[str, str] = field(default_factory=dict)

    def ensure(self) -> Faults:
        """The baseline: both hosts, both runners with tokens GitLab knows, every manager polling."""
        if self.dirty:
            # The image is left as it is (a rebuild replaces every runner container): any will do.
            for key, value in self.baseline().items():
                self.stack.set(key, value)
            self.stack.set("runnerTokens", self.tokens(), secret=True)
            self.stack.up(refresh=True)
            self.dirty = False
        self.keeps_polling(time.time())
        return self

    def managers(self) -> list[tuple[str, str]]:
        """(host, runner) for every runner manager of the stack's current config."""
        hosts = {h["name"] for h in self.stack.config("docker")["hosts"]}
        return [(h, r["name"]) for r in self.stack.config("runners") for h in r["hosts"] if h in hosts]

    def config_toml(self, host: str) -> dict[str, Any]:
        return tomllib.loads(self.stack.config_toml("shell", self.engine(host)))

    def system_id(self, host: str) -> str:
        done = self.engine(host).run("exec", self.container, "cat", "/etc/gitlab-runner/.runner_system_id")
        return done.stdout.strip()

    def held(self, host: str, runner: str) -> str | None:
        """The token a runner manager holds (its config.toml)."""
        entry = next((r for r in self.config_toml(host)["runners"] if r["name"] == runner), None)
        return None if entry is None else str(entry["token"])

    def tokens_kept(self) -> str:
        """Runner managers holding a token GitLab accepts, of all the stack's managers."""
        managers = self.managers()
        kept = sum(1 for host, runner in managers if (token := self.held(host, runner)) and self.gitlab.accepts(token))
        return f"{kept}/{len(managers)}"

    def polled(self, host: str, runner: str, since: float) -> bool:
        token, system_id = self.held(host, runner), self.system_id(host)
        with self.gitlab.lock:
            return any(
                p.token == token and p.system_id == system_id and p.at.timestamp() >= since for p in self.gitlab.polls
            )

    def keeps_polling(self, since: float, seconds: float = 60) -> None:
        for host, runner in self.managers():

            def check(host: str = host, runner: str = runner) -> bool:
                return self.polled(host, runner, since)

            try:
                wait_for(f"{runner} on host {host} to poll", check, seconds=seconds)
            except AssertionError as error:
                token = self.held(host, runner)
                logs = self.engine(host).run("logs", "--tail", "40", self.container, check=False)
                verdict = "accepts" if token and self.gitlab.accepts(token) else "refuses"
                raise AssertionError(
                    f"{error}; it holds a token GitLab {verdict}; its runner's last lines:\n{logs.stdout}{logs.stderr}"
                ) from error

    def ids(self) -> dict[str, str | None]:
        """host/container -> id, for the runner and sync containers on every host."""
        found: dict[str, str | None] = {}
        for host in ("a", "b"):
            for name in (self.container, f"{self.container}-sync"):
                inspected = self.engine(host).inspect("container", name)
                found[f"{host}/{name}"] = None if inspected is None else str(inspected["Id"])
        return found

    def owned_on(self, host: str) -> tuple[list[str], list[str]]:
        """The stack's containers and volumes on a host, by name (sorted, duplicates kept)."""
        engine = self.engine(host)
        containers = engine.run("ps", "-a", "--format", "{{.Names}}").stdout.split()
        volumes = engine.run("volume", "ls", "--format", "{{.Name}}").stdout.split()
        prefix = self.stack.prefix
        return sorted(c for c in containers if c.startswith(prefix)), sorted(v for v in volumes if v.startswith(prefix))

    def assert_converged(self) -> None:
        """One runner container, one sync container and one volume per host, nothing else of the stack's;
        every manager with a token GitLab accepts; what the stack does not own untouched; no changes."""
        hosts = {h["name"] for h in self.stack.config("docker")["hosts"]}
        for host in ("a", "b"):
            containers, volumes = self.owned_on(host)
            expected = [self.container, f"{self.container}-sync"] if host in hosts else []
            assert containers == sorted(expected), (host, containers)
            assert volumes == ([f"{self.container}-config"] if host in hosts else []), (host, volumes)
            inspected = self.engine(host).inspect("container", f"bystander-{self.stack.prefix}")
            assert inspected is not None and inspected["Id"] == self.bystanders[host] and inspected["State"]["Running"]
            assert self.engine(host).exists("volume", f"bystander-{self.stack.prefix}")
        kept, total = self.tokens_kept().split("/")
        assert kept == total, f"runner managers without a token GitLab accepts: {self.tokens_kept()}"
        # Refreshed first: what the engines hold matches what the stack would make.
        preview = self.stack.stack.preview(color="never", refresh=True, expect_no_changes=True)
        assert set(preview.change_summary) == {auto.OpType.SAME}, preview.stdout[-4000:]


@pytest.fixture(scope="module")
def host_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtraEngine]:
    """A Docker engine this module starts (and restarts): Docker 29 where it was built, else 20.10."""
    docker_provider_or_skip()
    binaries = current_engine_binaries()
    extra = ExtraEngine(
        tmp_path_factory.mktemp("dockerd-b"), binaries=binaries, min_api=CURRENT_MIN_API if binaries else None
    )
    try:
        extra.start()
        print(f"host b: docker engine {extra.engine.describe()}")
        yield extra
    finally:
        extra.close()


@pytest.fixture(scope="module")
def faults(engine: Engine, host_b: ExtraEngine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faults]:
    base = base_image(engine)
    assert base_image(host_b.engine) == base
    with serve(API_TOKEN, token_lifetimes={"project_type": TOKEN_LIFETIME}, stuck_grace=STUCK_GRACE) as gitlab:
        spread = gitlab.create_runner(description="f-spread")
        hosts: list[dict[str, Any]] = [
            {"name": "a", "host": engine.host, "networkMode": "host"},
            # Both engines share this machine's network: host b's metrics go elsewhere.
            {"name": "b", "host": host_b.engine.host, "networkMode": "host", "metricsPort": free_port_block()},
        ]
        with docker_stack(
            tmp_path_factory.mktemp("faults"),
            [engine, host_b.engine],
            gitlab,
            base,
            runners=[],
            tokens={},
            hosts=hosts,
        ) as stack:
            # The images first, with f-spread alone: f-solo's token, which lives a minute, is created just
            # before the `up` that starts its runner, and is not spent on image builds on a busy machine.
            stack.set("runners", [{"name": "f-spread", "executor": "shell", "hosts": ["a", "b"]}])
            stack.set("docker", {**stack.config("docker"), "hosts": hosts})
            stack.set("runnerTokens", {"f-spread": spread.token}, secret=True)
            stack.up()
            runners = {
                "f-spread": spread,
                "f-solo": gitlab.create_runner("project_type", project_id=1, description="f-solo"),
            }
            f = Faults(stack, gitlab, engine, host_b, runners, hosts, given={n: r.token for n, r in runners.items()})
            # Something on each host that is not the stack's, which no fault or recovery may touch.
            for name in ("a", "b"):
                on = f.engine(name)
                bystander = f"bystander-{stack.prefix}"
                on.run("volume", "create", bystander)
                on.run(
                    "run",
                    "-d",
                    "--name",
                    bystander,
                    "--restart",
                    "unless-stopped",
                    "-v",
                    f"{bystander}:/data",
                    "--entrypoint",
                    "sleep",
                    base,
                    "3600",
                )
                f.bystanders[name] = str((on.inspect("container", bystander) or {})["Id"])
            try:
                yield f
            finally:
                for name in ("a", "b"):
                    f.engine(name).run("rm", "-f", f"bystander-{stack.prefix}", check=False)
                    f.engine(name).run("volume", "rm", "-f", f"bystander-{stack.prefix}", check=False)
                print("\n" + table())
                if os.environ.get("GITLAB_RUNNERS_FAULTS_TABLE"):
                    Path(os.environ["GITLAB_RUNNERS_FAULTS_TABLE"]).write_text(table() + "\n")


def changed(up: auto.UpResult) -> str:
    """What an update did, as `pulumi up` sums it up: "2 replaced, 16 unchanged"."""
    words = {"same": "unchanged", "replace": "replaced", "create": "created", "delete": "deleted", "update": "updated"}
    counts: dict[str, int] = dict(up.summary.resource_changes or {})  # type: ignore[arg-type]
    return ", ".join(f"{n} {words.get(op, op)}" for op, n in sorted(counts.items(), key=lambda kv: kv[0] == "same"))


def holds(f: Faults, host: str, runner: str, token: str) -> bool:
    return f.held(host, runner) == token


def by_window(jobs: list[Job], starts: list[tuple[str, float]]) -> dict[str, list[Job]]:
    """Each handed-out job under the event during which a runner took it."""
    grouped: dict[str, list[Job]] = {name: [] for name, _ in starts}
    for job in jobs:
        if job.handed_out_at is None:
            continue
        name = starts[0][0]
        for event, started in starts:
            if job.handed_out_at >= started:
                name = event
        grouped[name].append(job)
    return grouped


def settle(stream: JobStream, seconds: float = 120) -> dict[str, int]:
    stream.stop()
    wait_for("every job of the stream to end", stream.settled, seconds=seconds, every=1)
    return stream.counts()


def job_figures(jobs: list[Job]) -> tuple[int, int, int]:
    return len(jobs), sum(1 for j in jobs if j.state == "success"), sum(1 for j in jobs if j.state != "success")


def test_jobs_in_flight_go_on_through_settings_image_tokens_and_a_host_leaving(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    spread, solo = f.runners["f-spread"], f.runners["f-solo"]
    stream = f.gitlab.stream_jobs({spread.id, solo.id}, count=400, every=0.7, script=JOB, timeout=60, deadline=600)
    starts: list[tuple[str, float]] = []
    happened: dict[str, str] = {}
    tokens: dict[str, str] = {}

    def start(event: str) -> None:
        starts.append((event, time.time()))

    # A settings change: the sync containers run again, the runners reload in place.
    start("settings change")
    before = f.ids()
    runners = f.stack.config("runners")
    for runner in runners:
        runner["limit"] = 2
    f.stack.set("runners", runners)
    up = f.stack.up()
    after = f.ids()
    assert all(after[k] == before[k] for k in before if not k.endswith("-sync")), "a runner container was replaced"
    assert all(after[k] != before[k] for k in before if k.endswith("-sync"))
    happened["settings change"] = (
        f"`limit` of both runners changed: the two sync containers ran again ({changed(up)}); "
        "the runners reloaded config.toml in place, no restart"
    )
    tokens["settings change"] = f.tokens_kept()

    # An image upgrade: each runner container is replaced after it finished its running jobs (SIGQUIT).
    start("image upgrade")
    docker = f.stack.config("docker")
    docker["image"]["extraPackages"] = [] if docker["image"].get("extraPackages") else ["jq"]
    f.stack.set("docker", docker)
    up = f.stack.up()
    replaced = f.ids()
    assert all(replaced[k] != after[k] for k in after if not k.endswith("-sync")), "a runner container was kept"
    happened["image upgrade"] = (
        f"a new image on both hosts ({changed(up)}): each runner container got SIGQUIT, finished its jobs, "
        "and the new one took over"
    )
    tokens["image upgrade"] = f.tokens_kept()

    # A token rotation by the stack, the documented way for runners that bring their own tokens: a new
    # runner in GitLab, its token in runnerTokens, `pulumi up`, then the old runner deleted in GitLab.
    start("token rotation by the stack")
    new = f.gitlab.create_runner(description="f-spread")
    stream.runners.add(new.id)
    f.given["f-spread"] = new.token
    f.runners["f-spread"] = new
    f.stack.set("runnerTokens", f.tokens(), secret=True)
    f.stack.up()
    since = time.time()
    for host in ("a", "b"):
        wait_for(f"f-spread on {host} to hold the new token", functools.partial(holds, f, host, "f-spread", new.token))
        wait_for(f"f-spread on {host} to poll with it", functools.partial(f.polled, host, "f-spread", since))
    f.gitlab.delete_runner(spread)
    stream.runners.discard(spread.id)
    happened["token rotation by the stack"] = (
        "f-spread (on both hosts): a new runner in GitLab, its token in runnerTokens, `up` (config.toml reloaded "
        "in place on both hosts), then the old runner deleted in GitLab"
    )
    tokens["token rotation by the stack"] = f.tokens_kept()

    # A token rotation by the runner itself: f-solo resets its token at 75% of its lifetime.
    start("token rotation by the runner")
    rotated_at = time.time()
    held = f.held("a", "f-solo")
    wait_for("f-solo to rotate its own token", lambda: f.held("a", "f-solo") != held, seconds=ROTATES_WITHIN)
    assert f.gitlab.accepts(str(f.held("a", "f-solo"))) and not f.gitlab.accepts(str(held))
    wait_for("f-solo to poll with its new token", lambda: f.polled("a", "f-solo", rotated_at), seconds=30)
    with f.gitlab.lock:
        resets = sum(1 for r in f.gitlab.resets if r.runner_id == solo.id and r.at.timestamp() >= starts[0][1])
    happened["token rotation by the runner"] = (
        f"f-solo (token lifetime {TOKEN_LIFETIME.seconds} s) reset its token itself during the stream "
        f"({resets} reset(s)), and kept polling with the new one"
    )
    tokens["token rotation by the runner"] = f.tokens_kept()

    # One host leaves the stack: its runner container finishes its jobs and goes, with its volume.
    start("a host removed")
    docker = f.stack.config("docker")
    docker["hosts"] = [h for h in docker["hosts"] if h["name"] == "a"]
    f.stack.set("docker", docker)
    runners = f.stack.config("runners")
    runners[0]["hosts"] = ["a"]
    f.stack.set("runners", runners)
    up = f.stack.up()
    assert f.owned_on("b") == ([], [])
    happened["a host removed"] = (
        f"host b left the stack ({changed(up)}): its runner container finished its jobs on SIGQUIT, then it "
        "and its volume were removed; host a took the jobs"
    )
    tokens["a host removed"] = f.tokens_kept()

    counts = settle(stream)
    assert counts["handed_out"] == counts["enqueued"] > 10, counts
    grouped = by_window(stream.jobs, starts)
    for event, _ in starts:
        handed, finished, lost = job_figures(grouped[event])
        record(Row(event, happened[event], handed, finished, lost, tokens[event]))
    failed = [
        (j.id, j.state, j.failure_reason, bytes(j.trace).decode()[-200:]) for j in stream.jobs if j.state != "success"
    ]
    assert not failed, failed
    assert not f.gitlab.running_jobs()
    f.keeps_polling(time.time())
    f.assert_converged()


def cli(f: Faults, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The pulumi CLI on the module's stack, as a user runs it."""
    return subprocess.run(
        ["pulumi", *args, "--stack", "test", "--non-interactive", "--color", "never"],
        cwd=f.stack.project.dir,
        env={**os.environ, **f.stack.project.env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def end_group(leader: int, seconds: float = 90) -> bool:
    """Wait for the processes of a process group this test started to exit; end them after `seconds`.
    True when they ended by themselves."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(leader, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        return True
    return False


def interrupted_up(f: Faults, sig: signal.Signals) -> tuple[int, str, str, bool]:
    """`pulumi up` of a settings change, sent `sig` while a config sync container runs: its exit code,
    its output, the host whose sync was in flight, and whether the CLI's plugins ended by themselves."""
    before = f.ids()
    runners = f.stack.config("runners")
    for runner in runners:
        runner["limit"] = 4 if runner.get("limit") == 3 else 3
    f.stack.set("runners", runners)
    # GitLab answers the sync's check late: the sync container runs for seconds, long enough to interrupt.
    f.gitlab.fault(["verify"], seconds=600, delay=6)
    log = f.stack.project.dir.parent / f"up-{sig.name}.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            ["pulumi", "up", "--yes", "--skip-preview", "--stack", "test", "--non-interactive", "--color", "never"],
            cwd=f.stack.project.dir,
            env={**os.environ, **f.stack.project.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def in_flight() -> str | None:
            for host in ("a", "b"):
                found = f.engine(host).inspect("container", f"{f.container}-sync")
                if found and found["Id"] != before[f"{host}/{f.container}-sync"] and found["State"]["Running"]:
                    return host
            return None

        host = wait_for("a config sync container in flight", in_flight, seconds=240, every=0.2)
        os.kill(process.pid, sig)
        code = process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        ended = end_group(process.pid)
        f.gitlab.heal()
    return code, log.read_text(), str(host), ended


def test_an_up_interrupted_with_sigint_converges_on_the_next_up(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    stream = f.gitlab.stream_jobs(set(r.id for r in f.runners.values()), count=200, every=1, script=JOB, deadline=600)
    code, output, host, ended = interrupted_up(f, signal.SIGINT)
    print(output[-3000:])
    assert code != 0 and ended
    assert "update canceled" in output or "canceled" in output, output[-2000:]
    # Nothing to recover: the CLI finished what was in flight, recorded it and let go of the stack.
    f.stack.up()
    counts = settle(stream)
    f.assert_converged()
    f.keeps_polling(time.time())
    record(
        Row(
            "`pulumi up` interrupted (SIGINT)",
            f"^C while host {host}'s config sync ran: the CLI let it finish, recorded it and stopped; "
            "the next `pulumi up` did the rest",
            counts["handed_out"],
            counts["finished"],
            counts["lost"],
            f.tokens_kept(),
        )
    )
    assert counts["lost"] == 0 and counts["finished"] == counts["handed_out"] == counts["enqueued"], counts
    f.dirty = False


def pending_creates(f: Faults) -> list[tuple[str, str]]:
    """(host, container name) of each container create the state has as pending (`pulumi stack export`)."""
    deployment = json.loads(exported_state(f.stack.project, "test"))["deployment"]
    found = []
    for operation in deployment.get("pending_operations") or []:
        resource = operation["resource"]
        if operation["type"] == "creating" and resource["type"] == "docker:index/container:Container":
            host = resource["urn"].rsplit("::", 1)[1].split("-")[1]  # docker-<host>-<kind>[-sync]
            found.append((host, str(resource["inputs"]["name"])))
    return found


def test_an_up_killed_with_sigkill_converges_after_the_readme_recovery(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    stream = f.gitlab.stream_jobs(set(r.id for r in f.runners.values()), count=200, every=1, script=JOB, deadline=600)
    code, _output, host, ended = interrupted_up(f, signal.SIGKILL)
    assert code == -signal.SIGKILL
    print(f"plugins of the killed CLI ended by themselves: {ended}")
    # The lock the killed CLI left on the file backend.
    with pytest.raises(auto.CommandError) as caught:
        f.stack.up()
    print(str(caught.value)[-3000:])
    assert "the stack is currently locked by 1 lock(s)" in str(caught.value) and "pulumi cancel" in str(caught.value)
    cancelled = cli(f, "cancel", "--yes")
    assert cancelled.returncode == 0, cancelled.stderr
    # Containers the killed CLI's provider created, which the state never got: `up` warns of operations
    # "interrupted while creating", and Docker refuses the same names again.
    attempt = cli(f, "up", "--yes", "--skip-preview")
    said = attempt.stdout + attempt.stderr
    print(said[-3000:])
    assert attempt.returncode != 0 and "interrupted while creating" in said and "is already in use" in said, said
    pending = pending_creates(f)
    assert pending, "no pending create in the state"
    refreshed = cli(f, "refresh", "--yes", "--clear-pending-creates")
    assert refreshed.returncode == 0, refreshed.stdout[-2000:] + refreshed.stderr
    for host, name in pending:
        removed_by_hand(f.engine(host), name)
    f.stack.up()
    steps = [
        "`pulumi cancel`",
        "`pulumi refresh --clear-pending-creates`",
        f"`docker stop` + `docker rm` of the {len(pending)} container(s) it named",
    ]
    counts = settle(stream)
    f.assert_converged()
    f.keeps_polling(time.time())
    record(
        Row(
            "`pulumi up` killed (kill -9)",
            f"killed while host {host}'s config sync ran; recovered with {', '.join(steps)}, then `pulumi up`",
            counts["handed_out"],
            counts["finished"],
            counts["lost"],
            f.tokens_kept(),
        )
    )
    assert counts["lost"] == 0 and counts["finished"] == counts["handed_out"] == counts["enqueued"], counts
    f.dirty = False


def removed_by_hand(engine: Engine, *containers: str, volume: str | None = None) -> None:
    """As a user removes them: `docker stop` (the runner finishes its jobs on SIGQUIT), `docker rm`,
    then `docker volume rm` (a volume in use by a container cannot be removed)."""
    engine.run("stop", *containers, timeout=300)
    engine.run("rm", *containers)
    if volume is not None:
        engine.run("volume", "rm", volume)


def test_drift_by_hand_is_brought_back_by_up_refresh(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    stream = f.gitlab.stream_jobs(set(r.id for r in f.runners.values()), count=300, every=1, script=JOB, deadline=900)
    starts: list[tuple[str, float]] = []
    happened: dict[str, str] = {}
    tokens: dict[str, str] = {}
    b, a = f.engine("b"), f.engine("a")

    # A runner container removed by hand.
    starts.append(("runner container removed by hand", time.time()))
    removed_by_hand(b, f.container)
    up = f.stack.up(refresh=True)
    assert b.exists("container", f.container)
    f.keeps_polling(time.time())
    happened["runner container removed by hand"] = (
        f"host b's runner container (`docker stop`, `docker rm`): `up --refresh` created it again ({changed(up)}) "
        "on the config.toml its volume kept"
    )
    tokens["runner container removed by hand"] = f.tokens_kept()

    # Its config volume removed by hand (with the containers that use it).
    starts.append(("config volume removed by hand", time.time()))
    removed_by_hand(b, f.container, f"{f.container}-sync", volume=f"{f.container}-config")
    up = f.stack.up(refresh=True)
    f.keeps_polling(time.time())
    happened["config volume removed by hand"] = (
        f"host b's config volume, with its containers: `up --refresh` created them again ({changed(up)}); the "
        "sync verified the stack's token of f-spread anew"
    )
    tokens["config volume removed by hand"] = f.tokens_kept()

    # config.toml edited by hand.
    starts.append(("config.toml edited by hand", time.time()))
    concurrent = f.config_toml("a")["concurrent"]
    edit = "s/^concurrent = .*/concurrent = 99/"
    a.run("exec", f.container, "sed", "-i", edit, "/etc/gitlab-runner/config.toml")
    assert f.config_toml("a")["concurrent"] == 99
    up = f.stack.up(refresh=True)
    assert f.config_toml("a")["concurrent"] == concurrent
    changes: dict[str, int] = dict(up.summary.resource_changes or {})  # type: ignore[arg-type]
    assert changes.get("replace") == 1, up.stdout[-4000:]  # host a's sync container, and only it
    f.keeps_polling(time.time())
    happened["config.toml edited by hand"] = (
        f"`concurrent = 99` written on host a: `up --refresh` saw it ({changed(up)}: the sync container, given a "
        "new restore label), the runner reloaded the stack's file; the next `up` changed nothing"
    )
    tokens["config.toml edited by hand"] = f.tokens_kept()

    # The volume of a runner that rotated its own token: the stack's token is revoked, the runner's own
    # went with the volume. `up` says so and names the way out: a new token through the stack.
    event = "config volume removed by hand, after the runner rotated its token"
    starts.append((event, time.time()))
    wait_for(
        "f-solo to have rotated its token", lambda: f.held("a", "f-solo") != f.given["f-solo"], seconds=ROTATES_WITHIN
    )
    removed_by_hand(a, f.container, f"{f.container}-sync", volume=f"{f.container}-config")
    with pytest.raises(auto.CommandError) as caught:
        f.stack.up(refresh=True)
    said = str(caught.value)
    assert "GitLab refuses the stack's token of runner f-solo (403 Forbidden)" in said, said[-3000:]
    assert "set runnerTokens.f-solo" in said and "exited" not in said.split("GitLab refuses")[0][-200:]
    old = f.runners["f-solo"]
    new = f.gitlab.create_runner("project_type", project_id=1, description="f-solo")
    stream.runners.add(new.id)
    f.runners["f-solo"], f.given["f-solo"] = new, new.token
    f.stack.set("runnerTokens", f.tokens(), secret=True)
    f.stack.up()
    f.gitlab.delete_runner(old)
    stream.runners.discard(old.id)
    f.keeps_polling(time.time())
    happened[event] = (
        "host a's config volume, after f-solo had rotated its token: `up --refresh` failed before starting the "
        "runner, saying GitLab refuses the stack's token (403), the runner's own went with the volume, and the "
        "way out; then a new runner in GitLab, runnerTokens.f-solo, `up`: converged"
    )
    tokens[event] = f"{f.tokens_kept()}, f-solo's a new one (its own was in the volume removed by hand)"

    settle(stream)
    grouped = by_window(stream.jobs, starts)
    for name, _ in starts:
        handed, finished, lost = job_figures(grouped[name])
        record(Row(name, happened[name], handed, finished, lost, tokens[name]))
    failed = [(j.id, j.state, j.failure_reason) for j in stream.jobs if j.state != "success"]
    assert not failed, failed
    f.assert_converged()
    f.dirty = False


def attempts_of_calls(answers: list[Any]) -> list[list[float]]:
    """The times of each call's attempts (answers with one X-Request-Id), calls in order."""
    calls: dict[str, list[float]] = {}
    for answer in answers:
        calls.setdefault(str(answer.correlation), []).append(answer.at)
    return [sorted(times) for times in calls.values()]


def test_gitlab_answering_500_502_and_429_for_a_while(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    stream = f.gitlab.stream_jobs(set(r.id for r in f.runners.values()), count=300, every=1, script=JOB, deadline=900)
    starts: list[tuple[str, float]] = []
    happened: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for status, named, retry_after in (
        (500, "500 Internal Server Error", None),
        (502, "502 Bad Gateway", None),
        (429, "429 Too Many Requests", 1),
    ):
        event = f"GitLab answers {status}" + (f" (Retry-After: {retry_after})" if retry_after else "")
        started = time.time()
        starts.append((event, started))
        ids = f.ids()
        before = {h: f.stack.config_toml("shell", f.engine(h)) for h in ("a", "b")}
        f.gitlab.fault(["verify", "request_job"], seconds=600, status=status, retry_after=retry_after)
        runners = f.stack.config("runners")
        for runner in runners:
            runner["limit"] = 4 if runner.get("limit") == 3 else 3
        f.stack.set("runners", runners)
        with pytest.raises(auto.CommandError) as caught:
            f.stack.up()
        message = str(caught.value)
        assert f"GitLab answered {named} (after 5 tries)" in message, message[-3000:]
        # Nothing changed: the same containers, config.toml with the same settings.
        assert {k: v for k, v in f.ids().items() if not k.endswith("-sync")} == {
            k: v for k, v in ids.items() if not k.endswith("-sync")
        }
        for host in ("a", "b"):
            now = f.stack.config_toml("shell", f.engine(host))
            assert not drifted(now, before[host]) and not drifted(before[host], now), host
        # The stand-in retried each job request as the runner's retry requester does: 5 attempts, after
        # Retry-After or else an exponential backoff with jitter (100 ms, then up to 200, 400, 800 ms).
        calls = [c for c in attempts_of_calls(f.gitlab.answered_with_faults("request_job", started)) if len(c) == 5]
        assert len(calls) >= 3, attempts_of_calls(f.gitlab.answered_with_faults("request_job", started))
        for times in calls:
            gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
            if retry_after:
                assert all(retry_after - 0.05 <= gap <= retry_after + 1.0 for gap in gaps), gaps
            else:
                assert all(0.09 <= gap <= 0.1 * 2**k + 0.5 for k, gap in enumerate(gaps)), gaps
        # The sync's verify too: every call 5 attempts.
        checks = attempts_of_calls(f.gitlab.answered_with_faults("verify", started))
        assert checks and all(len(c) == 5 for c in checks), checks
        f.gitlab.heal()
        since = time.time()
        f.keeps_polling(since)
        wait = f"Retry-After {retry_after} s apart" if retry_after else "backoff 0.1-0.8 s apart"
        happened[event] = (
            f"to verify and job requests: each job request and each verify tried 5 times ({wait}), the runners "
            f'kept polling; `up` of a settings change failed saying "GitLab answered {named}", nothing changed'
        )
        tokens[event] = f.tokens_kept()
    # GitLab answers again: the next `up` converges.
    starts.append(("GitLab answers again", time.time()))
    f.stack.up()
    happened["GitLab answers again"] = "the next `up` made the settings change; the queued jobs ran"
    tokens["GitLab answers again"] = f.tokens_kept()
    settle(stream)
    grouped = by_window(stream.jobs, starts)
    for name, _ in starts:
        handed, finished, lost = job_figures(grouped[name])
        record(Row(name, happened[name], handed, finished, lost, tokens[name]))
    failed = [(j.id, j.state, j.failure_reason) for j in stream.jobs if j.state != "success"]
    assert not failed, failed
    f.assert_converged()
    f.dirty = False


def test_the_engine_restarting_while_runners_hold_jobs(faults: Faults) -> None:
    f = faults.ensure()
    f.dirty = True
    spread = f.runners["f-spread"]
    # Jobs long enough to be in flight when the engine stops.
    stream = f.gitlab.stream_jobs(
        {spread.id}, count=12, every=1, script=["sleep 8", 'echo "job $CI_JOB_ID done"'], timeout=30, deadline=60
    )
    system_b = f.system_id("b")

    def b_holds_a_job() -> bool:
        return any(j.system_id == system_b for j in f.gitlab.running_jobs())

    wait_for("host b's runner to hold a job", b_holds_a_job, seconds=60)
    held = [j for j in f.gitlab.running_jobs() if j.system_id == system_b]
    before = f.engine("b").inspect("container", f.container) or {}
    restarted = time.time()
    f.b.stop()
    f.b.start()
    down = time.time() - restarted
    after = wait_for(
        "host b's runner container back by its restart policy",
        lambda: (c := f.engine("b").inspect("container", f.container)) and c["State"]["Running"] and c,
        seconds=120,
    )
    assert after["Id"] == before["Id"]
    counts = settle(stream, seconds=180)
    outcomes = {j.id: (j.state, j.failure_reason) for j in held}
    f.keeps_polling(time.time())
    up = f.stack.up()
    changes = dict(up.summary.resource_changes or {})
    assert set(changes) == {"same"}, changes
    f.assert_converged()
    lost = [j for j in stream.jobs if j.state != "success"]
    record(
        Row(
            "Docker engine restarted (host b)",
            f"dockerd stopped (SIGTERM) and started again ({down:.0f} s) while host b's runner held "
            f"{len(held)} job(s): the engine's shutdown sent it SIGQUIT and waited; the job(s) ended in "
            f"{', '.join(sorted({state for state, _ in outcomes.values()}))}; "
            "it came back by its restart policy (same container); `up` after it: no change",
            counts["handed_out"],
            counts["finished"],
            len(lost),
            f.tokens_kept(),
        )
    )
    f.dirty = False

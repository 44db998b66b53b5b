"""P2 to P5: the real engine, Docker and the local control plane, against what a user does by hand.

Each side runs in the same conditions (the same image cache state, the same GitLab API double and the
same runner stand-in), alternated, the median of several runs taken.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pulumi import automation as auto

from components.runner_config import render_config_toml
from components.runner_image import build_args
from components.settings import RUNNER_VERSION, parse_settings
from tests.charts import chart_under_test
from tests.gitlab_double.server import GitLabDouble, serve
from tests.integration.conftest import ROOT, new_project
from tests.integration.docker_engine import Engine, ExtraEngine, base_image, wait_for
from tests.integration.local_cluster import free_port, local_cluster

API_TOKEN = "glpat-benchmark-api-token"  # noqa: S105 - for the API double only


@contextmanager
def project(work: Path, program: Path | None = None) -> Iterator[tuple[Path, dict[str, str]]]:
    """A throw-away copy of the project (or of the baseline program) with its own file backend."""
    copy = new_project(work / secrets.token_hex(3))
    if program is not None:
        shutil.copy(program / "__main__.py", copy.dir / "__main__.py")
    yield copy.dir, copy.env


def docker_stack_config(
    engine: Engine, gitlab: GitLabDouble, base: str, tokens: dict[str, str], prefix: str, extra: list[str]
) -> dict[str, auto.ConfigValue]:
    runners = [{"name": name, "executor": "shell"} for name in tokens]
    docker = {
        "hosts": [{"name": "local", "host": engine.host, "networkMode": "host"}],
        "containerName": prefix,
        "image": {
            "flavor": "ubuntu",
            "baseImage": base,
            "repository": f"gitlab-runners/{prefix}",
            "extraPackages": extra,
        },
        "stopTimeout": 10,
    }
    return {
        "gitlab-runners:target": auto.ConfigValue("docker"),
        "gitlab-runners:gitlabUrl": auto.ConfigValue(gitlab.base_url),
        "gitlab-runners:checkInterval": auto.ConfigValue("1"),
        "gitlab-runners:metrics": auto.ConfigValue(json.dumps({"port": free_port()})),
        "gitlab-runners:runners": auto.ConfigValue(json.dumps(runners)),
        "gitlab-runners:docker": auto.ConfigValue(json.dumps(docker)),
        "gitlab-runners:runnerTokens": auto.ConfigValue(json.dumps(tokens), secret=True),
    }


@contextmanager
def bench_engine(work: Path) -> Iterator[Engine]:
    """A Docker engine of the benchmarks' own (its own data root and bridge, as the fleet tests'), so
    that emptying its build cache between runs costs no one else theirs."""
    extra = ExtraEngine(work / "engine")
    try:
        yield extra.start()
    finally:
        extra.close()


def clean_images(engine: Engine, prefix: str) -> None:
    """The same image cache state for both sides: no built runner image, no build cache (the engine
    is the benchmarks' own: see bench_engine)."""
    names = engine.run("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    ours = [n for n in names if n.startswith(f"gitlab-runners/{prefix}") or n.startswith(f"{prefix}/")]
    if ours:
        engine.run("rmi", "-f", *ours, check=False)
    engine.run("builder", "prune", "-af", check=False)


def by_hand(engine: Engine, gitlab: GitLabDouble, base: str, token: str, prefix: str, extra: list[str]) -> float:
    """`docker build` and `docker run` of the same Dockerfile and config.toml, to the runner's first poll."""
    settings = parse_settings(
        {
            "target": "docker",
            "gitlabUrl": gitlab.base_url,
            "checkInterval": 1,
            "runners": [{"name": "bench", "executor": "shell"}],
            "docker": {"image": {"flavor": "ubuntu", "baseImage": base, "extraPackages": extra}},
        },
        stack="bench",
        existing_token_names=frozenset({"bench"}),
    )
    assert settings.docker is not None and settings.docker.build is not None
    config = render_config_toml(settings.global_, settings.runners, gitlab.base_url, {"bench": token})
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.toml").write_text(config)
        started = time.time()
        args = [f"--build-arg={k}={v}" for k, v in build_args(settings.docker.build).items()]
        image = f"{prefix}/by-hand:{RUNNER_VERSION}"
        subprocess.run(
            ["docker", "-H", engine.host, "build", "-q", "-t", image, *args, str(ROOT / "images" / "runner")],
            check=True,
            capture_output=True,
            env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )
        engine.run("volume", "create", f"{prefix}-by-hand")
        engine.run(
            "create",
            "--name",
            f"{prefix}-by-hand",
            "--network",
            "host",
            "-v",
            f"{prefix}-by-hand:/etc/gitlab-runner",
            image,
        )
        try:
            engine.run("cp", str(Path(folder) / "config.toml"), f"{prefix}-by-hand:/etc/gitlab-runner/config.toml")
            engine.run("start", f"{prefix}-by-hand")
            first = wait_for("the hand-made runner's first poll", lambda: gitlab.polled_since(token, started), 120)
        finally:
            engine.run("rm", "-f", f"{prefix}-by-hand", check=False)
            engine.run("volume", "rm", "-f", f"{prefix}-by-hand", check=False)
    return float(first) - started


def with_pulumi(
    engine: Engine, gitlab: GitLabDouble, base: str, token: str, prefix: str, extra: list[str], work: Path
) -> float:
    """`pulumi up` of a fresh stack, to the runner's first poll."""
    with project(work) as (folder, env):
        stack = auto.create_or_select_stack(
            "bench", work_dir=str(folder), opts=auto.LocalWorkspaceOptions(env_vars=env)
        )
        stack.set_all_config(docker_stack_config(engine, gitlab, base, {"bench": token}, prefix, extra))
        started = time.time()
        try:
            stack.up(color="never")
            first = wait_for("the deployed runner's first poll", lambda: gitlab.polled_since(token, started), 120)
        finally:
            stack.destroy(color="never")
            stack.workspace.remove_stack("bench", force=True)
    return float(first) - started


def time_to_first_poll(engine: Engine, repeats: int, work: Path) -> list[dict[str, object]]:
    base = base_image(engine)
    extra = ["jq"]
    hand: list[float] = []
    program: list[float] = []
    clean_images(engine, "gr-bench-")
    with serve(API_TOKEN) as gitlab:
        for _ in range(repeats):
            # Each side starts from the same state: no runner image, an empty build cache.
            prefix = f"gr-bench-{secrets.token_hex(3)}"
            hand.append(by_hand(engine, gitlab, base, gitlab.create_runner().token, prefix, extra))
            clean_images(engine, prefix)
            program.append(with_pulumi(engine, gitlab, base, gitlab.create_runner().token, prefix, extra, work))
            clean_images(engine, prefix)
    ratio = statistics.median(program) / statistics.median(hand)
    return [
        {
            "benchmark": "P2 pulumi up to first poll (Docker)",
            "case": "1 shell runner, cold image build",
            "program_s": statistics.median(program),
            "baseline_s": statistics.median(hand),
            "baseline": "docker build + docker run by hand",
            "ratio": ratio,
            "goal": "<= 1.5x",
            "met": ratio <= 1.5,
        }
    ]


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def no_change_docker(engine: Engine, repeats: int, work: Path) -> list[dict[str, object]]:
    base = base_image(engine)
    rows = []
    with serve(API_TOKEN) as gitlab:
        prefix = f"gr-bench-{secrets.token_hex(3)}"
        tokens = {"bench": gitlab.create_runner().token}
        baseline_tokens = {"bench": gitlab.create_runner().token}
        with project(work) as (folder, env), project(work, ROOT / "benchmarks" / "baseline") as (b_folder, b_env):
            stack = auto.create_or_select_stack(
                "bench", work_dir=str(folder), opts=auto.LocalWorkspaceOptions(env_vars=env)
            )
            stack.set_all_config(docker_stack_config(engine, gitlab, base, tokens, prefix, []))
            baseline = auto.create_or_select_stack(
                "bench", work_dir=str(b_folder), opts=auto.LocalWorkspaceOptions(env_vars=b_env)
            )
            baseline.set_all_config(docker_stack_config(engine, gitlab, base, baseline_tokens, f"{prefix}-b", []))
            try:
                stack.up(color="never")
                baseline.up(color="never")
                up, preview, base_up = no_change_runs(stack, baseline, repeats)
            finally:
                stack.destroy(color="never")
                baseline.destroy(color="never")
                clean_images(engine, prefix)
        rows += no_change_rows("docker", up, preview, base_up)
    return rows


def no_change_runs(
    stack: auto.Stack, baseline: auto.Stack, repeats: int
) -> tuple[list[float], list[float], list[float]]:
    """Seconds of a no-change up and preview of the stack and of a no-change up of the baseline, alternated."""
    up, preview, base_up = [], [], []
    for _ in range(repeats):
        up.append(timed(lambda: stack.up(color="never", expect_no_changes=True)))
        preview.append(timed(lambda: stack.preview(color="never", expect_no_changes=True)))
        base_up.append(timed(lambda: baseline.up(color="never", expect_no_changes=True)))
    return up, preview, base_up


def no_change_rows(target: str, up: list[float], preview: list[float], base_up: list[float]) -> list[dict[str, object]]:
    return [
        {
            "benchmark": "P3 no-change pulumi up",
            "case": f"{target}: against pulumi preview of the same stack",
            "program_s": statistics.median(up),
            "baseline_s": statistics.median(preview),
            "ratio": statistics.median(up) / statistics.median(preview),
            "goal": "(reported)",
            "met": None,
        },
        {
            "benchmark": "P3 no-change pulumi up",
            "case": f"{target}: against the baseline program's no-change up",
            "program_s": statistics.median(up),
            "baseline_s": statistics.median(base_up),
            "ratio": statistics.median(up) / statistics.median(base_up),
            "goal": "(reported)",
            "met": None,
        },
    ]


def kubernetes_costs(repeats: int, work: Path) -> list[dict[str, object]]:
    """P3 on Kubernetes and P5: the deploy time of the prod example on the local control plane."""
    bin_dir = os.environ.get("GITLAB_RUNNERS_CLUSTER_BIN")
    if not bin_dir:
        return [{"benchmark": "P3/P5 Kubernetes", "case": "skipped: no local control plane", "met": None}]
    chart, official = chart_under_test()
    with local_cluster(Path(bin_dir), work / "cluster") as cluster:
        cluster.request("POST", "/api/v1/namespaces", {"metadata": {"name": "gitlab"}})

        def config(name: str) -> dict[str, auto.ConfigValue]:
            runners = [{"name": name, "executor": "kubernetes", "limit": 4}]
            kubernetes = {"namespace": "gitlab", "chart": {"path": str(chart)}, "kubeconfig": str(cluster.kubeconfig)}
            return {
                "gitlab-runners:target": auto.ConfigValue("kubernetes"),
                "gitlab-runners:gitlabUrl": auto.ConfigValue("https://gitlab.example.com"),
                "gitlab-runners:runners": auto.ConfigValue(json.dumps(runners)),
                "gitlab-runners:runnerTokens": auto.ConfigValue(json.dumps({name: f"glrt-bench-{name}"}), secret=True),
                "gitlab-runners:kubernetes": auto.ConfigValue(json.dumps(kubernetes)),
            }

        with project(work) as (folder, env), project(work, ROOT / "benchmarks" / "baseline") as (b_folder, b_env):
            stack = auto.create_or_select_stack(
                "prod", work_dir=str(folder), opts=auto.LocalWorkspaceOptions(env_vars=env)
            )
            stack.set_all_config(config("prod-k8s"))
            baseline = auto.create_or_select_stack(
                "prod", work_dir=str(b_folder), opts=auto.LocalWorkspaceOptions(env_vars=b_env)
            )
            baseline.set_all_config(config("base-k8s"))
            try:
                deploy = timed(lambda: stack.up(color="never"))
                base_deploy = timed(lambda: baseline.up(color="never"))
                up, preview, base_up = no_change_runs(stack, baseline, repeats)
            finally:
                stack.destroy(color="never")
                baseline.destroy(color="never")
    kind = "official" if official else "stand-in"
    rows: list[dict[str, object]] = [
        {
            "benchmark": "P5 deploy time",
            "case": f"kubernetes: 1 runner, {kind} chart, local control plane (baseline program alongside)",
            "program_s": deploy,
            "baseline_s": base_deploy,
            "ratio": deploy / base_deploy,
            "goal": "(reported)",
            "met": None,
        }
    ]
    return rows + no_change_rows("kubernetes", up, preview, base_up)


def fleet_deploy(engine: Engine, work: Path) -> list[dict[str, object]]:
    """P5: `pulumi up` of 10 runners on the Docker target (one host, both executor kinds)."""
    base = base_image(engine)
    with serve(API_TOKEN) as gitlab:
        prefix = f"gr-bench-{secrets.token_hex(3)}"
        tokens = {f"fleet-{i}": gitlab.create_runner().token for i in range(10)}
        with project(work) as (folder, env):
            stack = auto.create_or_select_stack(
                "bench", work_dir=str(folder), opts=auto.LocalWorkspaceOptions(env_vars=env)
            )
            config = docker_stack_config(engine, gitlab, base, tokens, prefix, [])
            runners = [{"name": n, "executor": "docker" if i % 2 else "shell"} for i, n in enumerate(tokens)]
            config["gitlab-runners:runners"] = auto.ConfigValue(json.dumps(runners))
            stack.set_all_config(config)
            try:
                deploy = timed(lambda: stack.up(color="never"))
                wait_for(
                    "all ten runners to poll", lambda: set(tokens.values()) <= gitlab.tokens_that_polled(), seconds=120
                )
            finally:
                stack.destroy(color="never")
                clean_images(engine, prefix)
    return [
        {
            "benchmark": "P5 deploy time",
            "case": "docker: 10 runners (docker and shell) on one host",
            "program_s": deploy,
            "goal": "(reported)",
            "met": None,
        }
    ]


def image_size(engine: Engine) -> list[dict[str, object]]:
    """P4: what the runner image adds over its base, against the bytes of the files its packages installed."""
    base = base_image(engine)
    settings = parse_settings(
        {"target": "docker", "docker": {"image": {"flavor": "ubuntu", "baseImage": base, "extraPackages": ["jq"]}}},
        stack="bench",
        has_gitlab_token=True,
    )
    assert settings.docker is not None and settings.docker.build is not None
    image = f"gr-bench-size/runner:{RUNNER_VERSION}"
    args = [f"--build-arg={k}={v}" for k, v in build_args(settings.docker.build).items()]
    subprocess.run(
        ["docker", "-H", engine.host, "build", "-q", "-t", image, *args, str(ROOT / "images" / "runner")],
        check=True,
        capture_output=True,
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
    )

    def size(name: str) -> int:
        return int(engine.run("image", "inspect", "-f", "{{.Size}}", name).stdout)

    added = size(image) - size(base)
    # The bytes of the files the added packages (the requested ones and their dependencies) put on disk.
    listing = "dpkg-query -W -f '${Package}\\n'"

    def packages(name: str) -> set[str]:
        return set(engine.run("run", "--rm", "--entrypoint", "sh", name, "-c", listing).stdout.split())

    added_packages = sorted(packages(image) - packages(base))
    regular = 'while read -r f; do [ -f "$f" ] && [ ! -L "$f" ] && echo "$f"; done'
    files = f"dpkg -L {' '.join(added_packages)} | {regular}"
    sizes = engine.run("run", "--rm", "--entrypoint", "sh", image, "-c", f"{files} | sort -u | xargs -r stat -c %s")
    installed = sum(int(n) for n in sizes.stdout.split())
    engine.run("rmi", "-f", image, check=False)
    ratio = added / installed
    return [
        {
            "benchmark": "P4 runner image size",
            "case": "extraPackages [jq] on the ubuntu-flavour base: bytes added / bytes of the files of "
            + ", ".join(added_packages),
            "program_bytes": added,
            "baseline_bytes": installed,
            "ratio": ratio,
            "goal": "<= 1.1x",
            "met": ratio <= 1.1,
        }
    ]

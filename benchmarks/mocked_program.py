"""One evaluation of a Pulumi program under mocks, in a process of its own, printing its time and peak
memory as JSON. Run by benchmarks/program_cost.py; the root Stack exists once per process under mocks.

    python -m benchmarks.mocked_program '{"program": "project"|"baseline"|"handwritten", "target": ...,
                                          "runners": N, "hosts": H}'

For the project it also says where the time went: its imports (until it reads its settings), reading
and validating the settings (`load_settings`), and the rest (registering the resources, with whatever
it imports on the way).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import resource
import runpy
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = {
    "project": ROOT / "__main__.py",
    "baseline": ROOT / "benchmarks" / "baseline" / "__main__.py",
    "handwritten": ROOT / "benchmarks" / "handwritten" / "__main__.py",
}
SETTINGS = "components.settings"


class SettingsClock(importlib.abc.MetaPathFinder):
    """Times the project's settings: the import of the settings package (with what it imports), and its
    `load_settings` call, wrapped when the package is imported, before the program can import the name."""

    def __init__(self) -> None:
        self.imported = 0.0
        self.called: float | None = None
        self.returned: float | None = None

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != SETTINGS:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec
        loader = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            begun = time.perf_counter()
            execute(module)
            self.imported = time.perf_counter() - begun
            setattr(module, "load_settings", self.timed(module.load_settings))  # noqa: B010 - a module's name

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec

    def timed(self, load: Callable[[], Any]) -> Callable[[], Any]:
        def load_settings() -> Any:
            self.called = time.perf_counter()
            try:
                return load()
            finally:
                self.returned = time.perf_counter()

        return load_settings


class Mocks(pulumi.runtime.Mocks):
    """Answers with the inputs, and the few outputs the programs read; counts the resources by type."""

    def __init__(self) -> None:
        self.types: Counter[str] = Counter()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.types[args.typ] += 1
        outputs = dict(args.inputs)
        if args.typ == "gitlab:index/userRunner:UserRunner":
            outputs["token"] = f"glrt-bench-{args.name}"
        elif args.typ == "docker:index/image:Image":
            outputs["repoDigest"] = "sha256:" + "0" * 64
        elif args.typ == "docker:index/container:Container":
            outputs["exitCode"] = 0
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None]:
        return {}, None


def stack_config(target: str, runners: int, hosts: int) -> dict[str, str]:
    """A stack of `runners` runners (docker and shell alternating on Docker) over `hosts` hosts."""
    executors = ["docker", "shell"] if target == "docker" else ["kubernetes"]
    host_names = [f"h{i}" for i in range(hosts)]
    specs: list[dict[str, Any]] = []
    for index in range(runners):
        spec: dict[str, Any] = {"name": f"r{index}", "executor": executors[index % len(executors)], "limit": 2}
        spec["tags"] = ["bench", f"t{index % 7}"]
        if target == "docker":
            spec["hosts"] = [host_names[index % hosts]]
        specs.append(spec)
    config = {
        "gitlab-runners:target": target,
        "gitlab-runners:gitlabUrl": "https://gitlab.example.com",
        "gitlab-runners:runners": json.dumps(specs),
        # The scope check and the readiness gate ask GitLab and Docker: off, as in a preview.
        "gitlab-runners:readiness": json.dumps({"enabled": False}),
        "gitlab:token": "glpat-benchmark-token",
    }
    if target == "docker":
        config["gitlab-runners:docker"] = json.dumps(
            {"hosts": [{"name": n, "host": f"unix:///run/{n}.sock"} for n in host_names]}
        )
    else:
        config["gitlab-runners:kubernetes"] = json.dumps({"namespace": "gitlab"})
    return config


def main() -> None:
    request = json.loads(sys.argv[1])
    config = stack_config(request["target"], request["runners"], request.get("hosts", 1))
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, project="gitlab-runners", stack="bench", preview=True)
    pulumi.runtime.set_all_config(config, ["gitlab:token"])
    pulumi.export = lambda name, value: None
    program = PROGRAMS[request["program"]]
    clock = SettingsClock()
    sys.meta_path.insert(0, clock)
    started = time.perf_counter()

    def evaluate() -> None:
        runpy.run_path(str(program), run_name="__main__")

    _sync_await(run_pulumi_func(evaluate))
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {"seconds": elapsed, "peak_mib": peak_kib / 1024, "types": dict(mocks.types)}
    if clock.called is not None and clock.returned is not None:
        result["phases"] = {
            "import": clock.called - started - clock.imported,
            "settings": clock.imported + clock.returned - clock.called,
            "registration": started + elapsed - clock.returned,
        }
    print(json.dumps(result), flush=True)
    # Straight out: the mocks' event loop, collected at exit, only prints noise about its closed pipe.
    os._exit(0)


if __name__ == "__main__":
    main()

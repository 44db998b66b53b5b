"""One evaluation of a Pulumi program under mocks, in a process of its own, printing its time and peak
memory as JSON. Run by benchmarks/program_cost.py; the root Stack exists once per process under mocks.

    python -m benchmarks.mocked_program '{"program": "project"|"baseline"|"handwritten", "target": ...,
                                          "runners": N, "hosts": H}'

It also says where the CPU time went: the modules the program imports (the SDKs included), for the
project reading and validating its settings (`load_settings`), and the rest: registering the resources.
"""

from __future__ import annotations

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


class Clock:
    """Where a program's time goes, in CPU time: the modules it imports (wherever it imports them, each
    counted once with what it imports in turn), and the project's `load_settings` call (wrapped when the
    settings package is imported, before the program can import the name).

    It stands in for the path finder (`install`), so that looking for a module costs what it did."""

    def __init__(self) -> None:
        self.importing = 0.0
        self.depth = 0
        self.settings = 0.0
        self.settings_imports = 0.0
        self.called = False
        self.path_finder: Any = importlib.machinery.PathFinder

    def install(self) -> None:
        sys.meta_path[sys.meta_path.index(self.path_finder)] = self

    def __getattr__(self, name: str) -> Any:
        # invalidate_caches, find_distributions (importlib.metadata asks the finders): the path finder's.
        return getattr(self.path_finder, name)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        spec: importlib.machinery.ModuleSpec | None = self.path_finder.find_spec(fullname, path, target)
        # Loaders of their own per module (source, bytecode, extension).
        if spec is not None and isinstance(
            spec.loader, importlib.machinery.SourceFileLoader | importlib.machinery.ExtensionFileLoader
        ):
            setattr(spec.loader, "exec_module", self.timed_import(fullname, spec.loader.exec_module))  # noqa: B010
        return spec

    def timed_import(self, name: str, execute: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
        def exec_module(module: ModuleType) -> None:
            self.depth += 1
            begun = time.process_time()
            try:
                execute(module)
            finally:
                self.depth -= 1
                if self.depth == 0:
                    self.importing += time.process_time() - begun
            if name == SETTINGS:
                setattr(module, "load_settings", self.timed_settings(module.load_settings))  # noqa: B010

        return exec_module

    def timed_settings(self, load: Callable[[], Any]) -> Callable[[], Any]:
        def load_settings() -> Any:
            self.called = True
            imported, begun = self.importing, time.process_time()
            try:
                return load()
            finally:
                self.settings += time.process_time() - begun
                self.settings_imports += self.importing - imported

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
    clock = Clock()
    clock.install()
    started, cpu_started = time.perf_counter(), time.process_time()

    def evaluate() -> None:
        runpy.run_path(str(program), run_name="__main__")

    _sync_await(run_pulumi_func(evaluate))
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    settings = clock.settings - clock.settings_imports
    result: dict[str, Any] = {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "peak_mib": peak_kib / 1024,
        "types": dict(mocks.types),
        "phases": {"import": clock.importing, "registration": cpu - clock.importing - settings},
    }
    if clock.called:
        result["phases"]["settings"] = settings
    print(json.dumps(result), flush=True)
    # Straight out: the mocks' event loop, collected at exit, only prints noise about its closed pipe.
    os._exit(0)


if __name__ == "__main__":
    main()

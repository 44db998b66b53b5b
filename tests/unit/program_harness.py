"""Runs __main__.py under mocks in a process of its own and prints what it registered, as JSON.

Usage: python -m tests.unit.program_harness '<json request: stack, config, secret_keys, preview>'
The root Stack exists once per process under mocks, so each whole-program run gets a fresh process.
"""

from __future__ import annotations

import json
import runpy
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from tests.unit.mocks import RecordingMocks, install

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    request = json.loads(sys.argv[1])
    program = Path(request.get("program", ROOT))
    mocks = RecordingMocks()
    install(mocks, stack=request["stack"], preview=request.get("preview", False))
    pulumi.runtime.set_all_config(request["config"], request.get("secret_keys", []))
    exports: dict[str, Any] = {}
    result: dict[str, Any] = {"error": None}

    def export(name: str, value: Any) -> None:
        exports[name] = value

    pulumi.export = export

    # No network from unit tests: GitLab's answer about the API token's scopes comes from the request.
    from components import gitlab_access

    def token_info(url: str, token: str, timeout: float = 10) -> gitlab_access.TokenInfo:
        result.setdefault("scope_checks", []).append(url)
        return gitlab_access.TokenInfo(200, frozenset(request.get("token_scopes", ["api"])))

    gitlab_access.fetch_token_info = token_info  # type: ignore[assignment]

    # Nor any Docker API: the readiness gate's question is answered "healthy", and recorded.
    from components import docker_health

    def healthy(engine: docker_health.Engine, container: str, timeout: float = 10) -> dict[str, Any]:
        result.setdefault("gate_asked", []).append(engine.host)
        return {"State": {"Running": True, "Health": {"Status": "healthy", "Log": []}}}

    docker_health.inspect = healthy
    from components import config_drift

    config_drift.observe = lambda engine, container_name: config_drift.Observation(None, None)

    def run_main() -> None:
        runpy.run_path(str(program / "__main__.py"), run_name="__main__")

    try:
        _sync_await(run_pulumi_func(run_main))
    except pulumi.RunError as error:
        result["error"] = str(error)
    resolved = {}
    for name, value in exports.items():
        output = pulumi.Output.from_input(value)
        try:
            resolved[name] = {
                "value": _sync_await(output.future()),
                "secret": _sync_await(output.is_secret()),
            }
        except pulumi.RunError as error:
            # An output that failed (the program's own error, raised inside an apply).
            result["error"] = result["error"] or str(error)
    result["resources"] = [asdict(r) for r in mocks.resources]
    # The heavy libraries the program loaded: each target's provider SDK only for it, pydantic only for errors.
    result["libraries"] = sorted(
        name for name in ("pulumi_docker", "pulumi_kubernetes", "pulumi_gitlab", "pydantic") if name in sys.modules
    )
    result["exports"] = resolved
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()

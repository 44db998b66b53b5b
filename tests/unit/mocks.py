"""Pulumi mocks that record every registered resource, including which inputs were sent as secrets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pulumi
from google.protobuf import json_format
from pulumi.runtime.mocks import MockMonitor

# The marker Pulumi's wire format puts on a secret value.
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
SIG_KEY = "4dabf18193072939515e22adb298388d"


def secret_paths(value: Any, path: str = "") -> list[str]:
    """Paths of the values that travel to the engine wrapped as secrets."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return [path or "."]
        found: list[str] = []
        for key, item in value.items():
            found += secret_paths(item, f"{path}.{key}" if path else key)
        return found
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in secret_paths(item, f"{path}[{i}]")]
    return []


def unwrap(value: Any) -> Any:
    """The plain value, with secret wrappers removed (which ones were secret is kept apart)."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return unwrap(value.get("value"))
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


@dataclass
class Recorded:
    typ: str
    name: str
    inputs: dict[str, Any]
    provider: str | None
    secret_inputs: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


def _fake_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:12]


class RecordingMocks(pulumi.runtime.Mocks):
    """Answers like the real providers would for the outputs the program reads."""

    def __init__(self) -> None:
        self.resources: list[Recorded] = []
        self._secret_inputs: dict[str, list[str]] = {}
        self._options: dict[str, dict[str, Any]] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        outputs = dict(args.inputs)
        rid = f"{args.name}-{_fake_id(args.name)}"
        if args.typ == "gitlab:index/userRunner:UserRunner":
            rid = str(int(_fake_id(args.name), 16) % 100000)
            outputs["token"] = f"glrt-mock-{_fake_id(args.name)}{_fake_id(rid)}"
        elif args.typ == "docker:index/image:Image":
            outputs["repoDigest"] = f"sha256:{hashlib.sha256(args.name.encode()).hexdigest()}"
        elif args.typ == "kubernetes:helm.sh/v3:Release":
            outputs.setdefault("name", args.name)
        self.resources.append(
            Recorded(
                args.typ,
                args.name,
                unwrap(args.inputs),
                args.provider,
                self._secret_inputs.pop(args.name, []),
                self._options.pop(args.name, {}),
            )
        )
        return rid, outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        return {}, None

    def by_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> Recorded:
        found = self.by_type(typ)
        assert len(found) == 1, f"expected one {typ}, got {[r.name for r in found]}"
        return found[0]


class _CapturingMonitor(MockMonitor):
    """Records the raw wire inputs so the tests can see which ones travel as secrets."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self._recording = mocks

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 - the gRPC method's name
        raw = json_format.MessageToDict(request.object)
        self._recording._secret_inputs[request.name] = secret_paths(raw)
        # The resource options the engine acts on that the tests check.
        self._recording._options[request.name] = {
            "deleteBeforeReplace": request.deleteBeforeReplace,
            "replacementTrigger": json_format.MessageToDict(request.replacement_trigger)
            if request.HasField("replacement_trigger")
            else None,
            "customTimeouts": json_format.MessageToDict(request.customTimeouts),
            # Each alias by its name (an alias spec) or its URN.
            "aliases": [a.spec.name or a.urn for a in request.aliases] + list(request.aliasURNs),
            "ignoreChanges": list(request.ignoreChanges),
            "replaceOnChanges": list(request.replaceOnChanges),
        }
        return super().RegisterResource(request)  # type: ignore[no-untyped-call]


def install(mocks: RecordingMocks, stack: str = "unit", preview: bool = False) -> None:
    """Install `mocks` for the current process."""
    pulumi.runtime.set_mocks(
        mocks, project="gitlab-runners", stack=stack, preview=preview, monitor=_CapturingMonitor(mocks)
    )

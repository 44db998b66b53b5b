"""Run component code under the mocks and read its Outputs back, secrets included."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime.sync_await import _sync_await


@dataclass
class Resolved:
    value: Any
    secret: bool
    known: bool


def resolve(output: pulumi.Input[Any]) -> Resolved:
    out = pulumi.Output.from_input(output)
    return Resolved(
        value=_sync_await(out.future()),
        secret=_sync_await(out.is_secret()),
        known=_sync_await(out.is_known()),
    )


def run(build: Callable[[], Any]) -> Any:
    """Build resources under the mocks and wait until every registration has finished."""
    built: list[Any] = []

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def body() -> pulumi.Output[Any]:
        result = build()
        built.append(result)
        return pulumi.Output.from_input(True)

    body()
    return built[0]

"""A small validating reader for structured stack config.

It walks plain data (what `pulumi config` stores as JSON) with the full key path in hand, so every
problem can name the exact key (`gitlab-runners:runners[1].executor`), say what is wrong and show a
right value. Problems are collected, not raised one by one: a user fixing a stack file sees them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


@dataclass(frozen=True)
class Problem:
    """One invalid or missing config value."""

    key: str
    problem: str
    example: str

    def __str__(self) -> str:
        return f"{self.key} {self.problem}. Example: {self.example}"


@dataclass
class Problems:
    """Collects problems while settings are read."""

    items: list[Problem] = field(default_factory=list)

    def add(self, key: str, problem: str, example: str) -> None:
        self.items.append(Problem(key, problem, example))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Node:
    """A config object (a mapping) at a known key path.

    Each `get_*` call marks its key as known; `finish()` reports every key that was not asked for,
    so a misspelt key is an error instead of a silently ignored value.
    """

    def __init__(self, data: Mapping[str, Any], path: str, problems: Problems) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._known: set[str] = set()

    @property
    def path(self) -> str:
        return self._path

    def key(self, name: str) -> str:
        return f"{self._path}.{name}"

    def report(self, key: str, problem: str, example: str) -> None:
        """Record a problem found by a rule that spans several keys."""
        self._problems.add(key, problem, example)

    def ignore(self, name: str) -> None:
        """Mark a key as known although this reader does not read it."""
        self._known.add(name)

    def has(self, name: str) -> bool:
        return name in self._data and self._data[name] is not None

    def _raw(self, name: str) -> Any:
        self._known.add(name)
        value = self._data.get(name)
        return _MISSING if value is None else value

    def _typed(
        self,
        name: str,
        kinds: tuple[type, ...],
        kind_name: str,
        default: Any,
        example: str,
    ) -> Any:
        value = self._raw(name)
        if value is _MISSING:
            if default is _MISSING:
                self._problems.add(self.key(name), "is required but not set", example)
            return None if default is _MISSING else default
        # bool is an int in Python; a boolean is never an acceptable integer here.
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            self._problems.add(self.key(name), f"must be {kind_name}, got {_show(value)}", example)
            return None if default is _MISSING else default
        return value

    def get_str(
        self,
        name: str,
        example: str,
        default: Any = _MISSING,
        pattern: str | None = None,
        pattern_hint: str = "",
    ) -> Any:
        value = self._typed(name, (str,), "a string", default, example)
        if isinstance(value, str) and pattern and value is not default:
            if not re.fullmatch(pattern, value):
                self._problems.add(self.key(name), f"{pattern_hint}, got {_show(value)}", example)
        return value

    def get_choice(self, name: str, choices: Sequence[str], default: Any = _MISSING) -> Any:
        options = " or ".join(f'"{c}"' for c in choices)
        example = f"{name}: {choices[0]}"
        value = self._typed(name, (str,), "a string", default, example)
        if isinstance(value, str) and value not in choices:
            self._problems.add(self.key(name), f"must be {options}, got {_show(value)}", example)
            return None if default is _MISSING else default
        return value

    def get_bool(self, name: str, default: bool) -> bool:
        value: bool = self._typed(name, (bool,), "true or false", default, f"{name}: {_show(default)}")
        return value

    def get_int(
        self,
        name: str,
        example: str,
        default: Any = _MISSING,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        value = self._typed(name, (int,), "an integer", default, example)
        if isinstance(value, int) and value is not default:
            if minimum is not None and value < minimum:
                self._problems.add(self.key(name), f"must be at least {minimum}, got {value}", example)
            elif maximum is not None and value > maximum:
                self._problems.add(self.key(name), f"must be at most {maximum}, got {value}", example)
        return value

    def get_str_list(
        self,
        name: str,
        example: str,
        default: Sequence[str] = (),
        item_check: Callable[[str], str | None] | None = None,
    ) -> tuple[str, ...]:
        value = self._raw(name)
        if value is _MISSING:
            return tuple(default)
        if not isinstance(value, list):
            self._problems.add(self.key(name), f"must be a list of strings, got {_show(value)}", example)
            return tuple(default)
        items: list[str] = []
        for index, item in enumerate(value):
            item_key = f"{self.key(name)}[{index}]"
            if not isinstance(item, str):
                self._problems.add(item_key, f"must be a string, got {_show(item)}", example)
                continue
            failure = item_check(item) if item_check else None
            if failure:
                self._problems.add(item_key, f"{failure}, got {_show(item)}", example)
                continue
            items.append(item)
        return tuple(items)

    def get_str_map(self, name: str, example: str) -> dict[str, str]:
        value = self._raw(name)
        if value is _MISSING:
            return {}
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, (str, int)) and not isinstance(v, bool) for k, v in value.items()
        ):
            self._problems.add(self.key(name), f"must be a map of strings, got {_show(value)}", example)
            return {}
        return {k: str(v) for k, v in value.items()}

    def child(self, name: str, example: str) -> Node:
        """The nested object `name`; an empty one when it is not set."""
        value = self._raw(name)
        if value is _MISSING:
            return Node({}, self.key(name), self._problems)
        if not isinstance(value, dict):
            self._problems.add(self.key(name), f"must be an object, got {_show(value)}", example)
            return Node({}, self.key(name), self._problems)
        return Node(value, self.key(name), self._problems)

    def children(self, name: str, example: str) -> list[Node] | None:
        """The list of objects `name`, or None when it is not set."""
        value = self._raw(name)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            self._problems.add(self.key(name), f"must be a list of objects, got {_show(value)}", example)
            return []
        nodes: list[Node] = []
        for index, item in enumerate(value):
            item_key = f"{self.key(name)}[{index}]"
            if not isinstance(item, dict):
                self._problems.add(item_key, f"must be an object, got {_show(item)}", example)
                continue
            nodes.append(Node(item, item_key, self._problems))
        return nodes

    def finish(self) -> None:
        """Report keys present in the data that no reader asked for."""
        for unknown in sorted(set(self._data) - self._known):
            known = ", ".join(sorted(self._known)) or "none"
            self._problems.add(self.key(unknown), f"is not a known key (known keys here: {known})", "remove it")

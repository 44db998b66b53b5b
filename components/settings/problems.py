"""Settings problems: one line each, naming the key, what is wrong and a right value.

pydantic's errors are turned into the project's wording here; values are echoed only after redaction,
so a credential typed into the wrong key never reaches a log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from types import UnionType
from typing import TYPE_CHECKING, Any, NamedTuple, Union, get_args, get_origin

import pulumi

from components.settings.model import EXECUTORS, PATTERN_HINTS, PROJECT, RETIRED_EXECUTORS, StackConfig

if TYPE_CHECKING:
    # Only a config that fails the quick check meets pydantic (section.py).
    from pydantic import BaseModel, ValidationError
    from pydantic.fields import FieldInfo

# Anything shaped like a credential: GitLab tokens, private keys, long opaque strings.
_SECRET_SHAPES = re.compile(r"(glrt-|glpat-|glptt-|gldt-|glsoat-|GR1348941|-----BEGIN|PRIVATE KEY)", re.I)
# The user:password part of a URL.
_URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")


class Problem(NamedTuple):
    """One invalid or missing config value."""

    key: str
    problem: str
    example: str

    def __str__(self) -> str:
        return f"{self.key} {self.problem}. Example: {self.example}"


class SettingsError(pulumi.RunError):
    """Raised with every config problem found; pulumi prints it without a traceback."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid stack configuration ({len(self.problems)} problem(s)):\n{lines}")


def looks_like_credential(text: str) -> bool:
    """A GitLab token, a private key or the like, wherever it was typed."""
    return bool(_SECRET_SHAPES.search(text))


def show(value: Any) -> str:
    """A value as the user wrote it, short, and never a secret."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
        except (TypeError, ValueError, RecursionError):
            text = type(value).__name__
    if looks_like_credential(text):
        return "(a value shaped like a credential, not shown)"
    text = _URL_CREDENTIALS.sub("(credentials, not shown)@", text)
    return text if len(text) <= 80 else text[:77] + "..."


def flow(value: Any) -> str:
    """A value in YAML flow style, as a stack file would hold it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(flow(v) for v in value) + "]"
    return str(value)


def key_path(loc: Iterable[int | str]) -> str:
    """('runners', 0, 'executor') -> gitlab-runners:runners[0].executor"""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part != "[key]":
            text += f".{part}" if text else part
    return f"{PROJECT}:{text}"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation can hold (through Optional, list and dict)."""
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, UnionType, list, dict) or get_args(annotation):
        return [m for arg in get_args(annotation) for m in _models_in(arg)]
    return []


class _Place(NamedTuple):
    owner: type[BaseModel] | None
    """The model holding the last named key."""
    field: FieldInfo | None
    """That key's field, None when the model has no such key."""
    map_key: str | None = None
    """The key inside a map-valued field (resources.limits.cpu), if the path goes there."""


def _place(loc: Sequence[int | str]) -> _Place:
    from components.settings.pydantic_model import pydantic_model

    model: type[BaseModel] | None = pydantic_model(StackConfig)
    place = _Place(None, None)
    for part in loc:
        if not isinstance(part, str) or part == "[key]":
            continue
        if model is None:
            # Past a model: the key of a map-valued field.
            return _Place(place.owner, place.field, part) if place.field is not None else place
        by_alias = {f.alias or n: f for n, f in model.model_fields.items()}
        if part not in by_alias:
            return _Place(model, None)
        place = _Place(model, by_alias[part])
        models = _models_in(place.field.annotation) if place.field is not None else []
        model = models[0] if models else None
    return place


def example_for(loc: Sequence[int | str]) -> str:
    place = _place(loc)
    if place.field is None or not place.field.examples:
        return "remove it"
    example = place.field.examples[0]
    if place.map_key is not None and isinstance(example, dict):
        name, value = next(iter(example.items()))
        return f"{name}: {flow(example.get(place.map_key, value))}"
    return f"{place.field.alias}: {flow(example)}"


def _map_keys(loc: Sequence[int | str]) -> str:
    """The keys a map-valued field accepts (a Literal key type)."""
    place = _place(loc)
    if place.field is None:
        return "none"
    for arg in (place.field.annotation, *get_args(place.field.annotation)):
        if get_origin(arg) is dict:
            return ", ".join(str(k) for k in get_args(get_args(arg)[0]))
    return "none"


def _known_keys(loc: Sequence[int | str]) -> str:
    owner = _place(loc).owner
    if owner is None:
        return "none"
    return ", ".join(sorted(f.alias or n for n, f in owner.model_fields.items()))


def _choices(expected: str) -> str:
    options = re.findall(r"'([^']*)'", expected)
    return " or ".join(f'"{o}"' for o in options) if options else expected


def _phrase(error: Any, target: str | None) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = show(error.get("input"))
    if kind == "missing":
        return "is required but not set"
    if kind == "extra_forbidden":
        return f"is not a known key (known keys here: {_known_keys(error['loc'])})"
    if kind == "literal_error":
        value = error.get("input")
        if isinstance(value, str) and value in RETIRED_EXECUTORS:
            return f'"{value}" was retired by GitLab; its successor is "{RETIRED_EXECUTORS[value]}"'
        if error["loc"][-1] == "executor" and target in EXECUTORS:
            options = " or ".join(f'"{e}"' for e in EXECUTORS[target])
            return f'must be {options} for target "{target}", got {got}'
        return f"must be {_choices(str(ctx.get('expected', '')))}, got {got}"
    if kind in ("string_type", "str_type"):
        return f"must be a string, got {got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer, got {got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false, got {got}"
    if kind == "list_type":
        return f"must be a list, got {got}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"must be an object, got {got}"
    if kind == "greater_than_equal":
        return f"must be at least {ctx.get('ge')}, got {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx.get('le')}, got {got}"
    if kind == "too_short":
        least = ctx.get("min_length")
        return "must not be empty" if least == 1 else f"must list at least {least} items"
    if kind == "too_long":
        return f"must list at most {ctx.get('max_length')} items"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        hint = PATTERN_HINTS.get(str(ctx.get("pattern")), "has the wrong form")
        return f"{hint}, got {got}"
    message = str(error.get("msg") or kind)
    return message.removeprefix("Value error, ")


def from_validation_error(error: ValidationError, target: str | None = None) -> list[Problem]:
    problems: list[Problem] = []
    for item in error.errors(include_url=False):
        loc = tuple(item["loc"])
        if loc and loc[-1] == "[key]":
            problems.append(
                Problem(key_path(loc[:-1]), f"is not a known key (known keys here: {_map_keys(loc[:-2])})", "remove it")
            )
            continue
        problems.append(Problem(key_path(loc), _phrase(item, target), example_for(loc)))
    return problems

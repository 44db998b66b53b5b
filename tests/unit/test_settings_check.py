"""The quick check every preview and up runs (section.py) decides as pydantic would, and valid stacks
never import pydantic.

Whatever config the quick check accepts, the pydantic models built from the same declaration accept,
with the same values and the same keys set; whatever they accept, it accepts (for values of the types
a decoded stack config holds). Configs are drawn from the declaration itself: each key's example,
default, values of its type near its bounds, and any YAML-shaped value.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from components.settings import model, pydantic_model
from components.settings.section import Bounds, Chars, Check, Section, validate

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = sorted(
    (v for v in vars(model).values() if isinstance(v, type) and issubclass(v, Section) and v is not Section),
    key=lambda cls: cls.__name__,
)

yaml_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**60), max_value=2**60),
        st.floats(),
        st.text(max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def plain(value: Any) -> Any:
    """A declared value (a default) as a stack file would hold it."""
    if isinstance(value, Section):
        fields = type(value).model_fields
        return {fields[name].alias: plain(getattr(value, name)) for name in value.model_fields_set}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def strings(metadata: tuple[Any, ...]) -> st.SearchStrategy[str]:
    chars = next((m for m in metadata if isinstance(m, Chars)), Chars())
    found: list[st.SearchStrategy[str]] = [st.text(max_size=20)]
    if chars.pattern is not None:
        found.append(st.from_regex(chars.pattern))
    if chars.max_length is not None:
        found.append(st.text(min_size=chars.max_length - 1, max_size=chars.max_length + 1))
    return st.one_of(found)


def of_type(annotation: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of a declared type, near its bounds, with the odd value of another type."""
    other = yaml_values if depth < 3 else st.none()
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return st.one_of(of_section(annotation, depth + 1), other) if depth < 4 else st.just({})
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        metadata = annotation.__metadata__
        if args[0] is str:
            return st.one_of(strings(metadata), other)
        bounds = next((m for m in metadata if isinstance(m, Bounds)), Bounds())
        return st.one_of(numbers(args[0], bounds.ge, bounds.le), other)
    if origin is Literal:
        return st.one_of(st.sampled_from(args), other)
    if origin in (Union, UnionType):
        return st.one_of(*(of_type(a, depth) for a in args))
    if origin is list:
        return st.one_of(st.lists(of_type(args[0], depth + 1), max_size=3), other)
    if origin is dict:
        # Keys from deep down: strings or None, never a list.
        return st.one_of(st.dictionaries(of_type(args[0], 3), of_type(args[1], depth + 1), max_size=3), other)
    if annotation in (int, float):
        return st.one_of(numbers(annotation, None, None), other)
    if annotation is bool:
        return st.one_of(st.booleans(), st.sampled_from([0, 1]), other)
    if annotation is str:
        return st.one_of(st.text(max_size=12), other)
    if annotation is NoneType:
        return st.none()
    return other


def numbers(kind: Any, low: float | None, high: float | None) -> st.SearchStrategy[Any]:
    edges = [e + d for e in (low, high) if e is not None for d in (-1, 0, 1)]
    found = [st.sampled_from([0, 1, -1, *edges]), st.integers()]
    if kind is float:
        found += [st.floats(), st.sampled_from([float(e) for e in edges] or [0.5])]
    return st.one_of(found)


def with_constraints(declared: Any, values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    constraints = declared.constraints
    if "min_length" in constraints or "max_length" in constraints:
        low, high = constraints.get("min_length", 0), constraints.get("max_length", 4)
        inner = get_args(declared.annotation)
        item = next((a for a in inner if get_origin(a) is list), declared.annotation)
        if get_origin(item) is list:
            sized = st.lists(of_type(get_args(item)[0], 2), min_size=max(0, low - 1), max_size=min(high + 1, 40))
            return st.one_of(values, sized)
    if "ge" in constraints or "le" in constraints:
        return st.one_of(values, numbers(float, constraints.get("ge"), constraints.get("le")))
    return values


def of_section(section: type[Section], depth: int = 0) -> st.SearchStrategy[dict[str, Any]]:
    optional: dict[str, st.SearchStrategy[Any]] = {}
    required: dict[str, st.SearchStrategy[Any]] = {}
    for declared in section.model_fields.values():
        known = st.sampled_from([declared.example] + ([] if declared.required else [plain(declared.default)]))
        # Mostly right values, so that whole sections are often valid; now and then anything.
        values = with_constraints(declared, st.one_of(*[known] * 6, of_type(declared.annotation, depth)))
        # Now and then a required key is left out.
        (required if declared.required else optional)[declared.alias] = values
    return st.fixed_dictionaries(required, optional=optional) | st.fixed_dictionaries({}, optional=required)


def fields_sets(value: Any) -> list[Any]:
    if isinstance(value, Section):
        found: list[Any] = [type(value).__name__, sorted(value.model_fields_set)]
        for name in type(value).model_fields:
            found += fields_sets(getattr(value, name))
        return found
    if isinstance(value, list):
        return [s for v in value for s in fields_sets(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in fields_sets(v)]
    return []


def assert_same_decision(section: type[Section], data: Any) -> None:
    quick = validate(section, data)
    try:
        checked = pydantic_model.validate(section, data)
    except ValidationError:
        assert quick is None, f"the quick check accepted what pydantic refuses: {data!r}"
        return
    assert quick is not None, f"the quick check left undecided what pydantic accepts: {data!r}"
    assert quick == checked
    assert fields_sets(quick) == fields_sets(checked)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_every_section_is_decided_as_pydantic_decides(data: st.DataObject) -> None:
    section = data.draw(st.sampled_from(SECTIONS))
    assert_same_decision(section, data.draw(of_section(section), label=section.__name__))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=of_section(model.StackConfig))
def test_a_whole_config_is_decided_as_pydantic_decides(values: dict[str, Any]) -> None:
    assert_same_decision(model.StackConfig, values)


def stack_file(name: str) -> dict[str, Any]:
    config = yaml.safe_load((ROOT / name).read_text())["config"]
    return {k.split(":", 1)[1]: v for k, v in config.items() if k.startswith("gitlab-runners:")}


@pytest.mark.parametrize("stack", sorted(p.name for p in ROOT.glob("Pulumi.*.yaml")))
def test_the_example_stacks_pass_the_quick_check(stack: str) -> None:
    values = stack_file(stack)
    assert validate(model.StackConfig, values) is not None
    assert_same_decision(model.StackConfig, values)


def test_the_keys_are_pydantics_camel_case() -> None:
    for section in SECTIONS:
        assert all(f.alias == to_camel(n) for n, f in section.model_fields.items()), section


def test_every_declared_check_runs_in_both() -> None:
    url = model.StackConfig.model_fields["gitlab_url"]
    assert any(isinstance(m, Check) for m in url.annotation.__metadata__)
    for data in (
        {"gitlabUrl": "https://gitlab.example.com/api/v4"},
        {"gitlabUrl": "https://g.example.com/"},
        {"gitlabUrl": "http://["},  # urlsplit's own ValueError
    ):
        assert_same_decision(model.StackConfig, {"target": "docker", **data})
    assert validate(model.StackConfig, {"target": "docker", "gitlabUrl": "https://g.example.com/"}) == (
        validate(model.StackConfig, {"target": "docker", "gitlabUrl": "https://g.example.com"})
    )


def test_sections_are_frozen_and_copied_with_changes() -> None:
    runner = validate(model.Runner, {"name": "a", "tags": ["x"]})
    assert runner is not None and runner.model_fields_set == {"name", "tags"}
    with pytest.raises(AttributeError):
        runner.name = "b"  # type: ignore[misc]
    copy = runner.model_copy(update={"executor": "shell"})
    assert copy.executor == "shell" and runner.executor is None
    assert copy.model_fields_set == {"name", "tags", "executor"}
    assert model.Runner(name="a", tags=["x"]) == runner


def test_sections_copy_deepcopy_and_pickle_as_they_are() -> None:
    config = validate(model.StackConfig, {"target": "docker", "runners": [{"name": "a", "tags": ["x"]}]})
    assert config is not None
    for again in (copy.copy(config), copy.deepcopy(config), pickle.loads(pickle.dumps(config))):  # noqa: S301
        assert again == config and fields_sets(again) == fields_sets(config)
    assert copy.deepcopy(config).runners is not config.runners


def test_a_valid_stack_never_imports_pydantic() -> None:
    script = (
        "import json, sys\n"
        "from components.settings import parse_settings\n"
        "for values in json.loads(sys.argv[1]):\n"
        "    parse_settings(values, stack='dev', has_gitlab_token=True)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pydantic'))))\n"
    )
    stacks = json.dumps([stack_file(p.name) for p in sorted(ROOT.glob("Pulumi.*.yaml"))])
    done = subprocess.run(
        [sys.executable, "-c", script, stacks], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(done.stdout) == []

"""The stack config's sections as pydantic models, built from model.py's declaration when they are needed.

They are needed when the quick check (section.validate) could not accept a config: pydantic then
decides, and its report is worded by problems.py; and for the JSON Schema (schema.py). A valid stack
never imports pydantic.
"""

from __future__ import annotations

import functools
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, create_model
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from components.settings.section import Bounds, Chars, Check, Invalid, Section


class Strict(BaseModel):
    """Every part of the stack config: camelCase keys, unknown keys refused, no type coercion."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,
        regex_engine="python-re",
        use_attribute_docstrings=False,
    )


_MODELS: dict[type[Section], type[BaseModel]] = {}
_SECTIONS: dict[type[BaseModel], type[Section]] = {}


def pydantic_model(section: type[Section]) -> type[BaseModel]:
    """The pydantic model of a section: same name, documentation, keys, types, defaults and examples."""
    if section in _MODELS:
        return _MODELS[section]
    fields: dict[str, Any] = {
        name: (
            _pydantic_type(declared.annotation),
            Field(
                _pydantic_value(declared.default),
                description=declared.description,
                examples=declared.examples,
                **declared.constraints,
            ),
        )
        for name, declared in section.model_fields.items()
    }
    model: type[BaseModel] = create_model(
        section.__name__, __base__=Strict, __doc__=section.__doc__, __module__=section.__module__, **fields
    )
    _MODELS[section], _SECTIONS[model] = model, section
    return model


S = TypeVar("S", bound=Section)


def validate(section: type[S], data: Any) -> S:
    """`data` checked by pydantic, as `section`; raises pydantic's ValidationError."""
    checked = pydantic_model(section).model_validate(data)
    made = _section_value(checked)
    assert isinstance(made, section)
    return made


def _custom(function: Any, value: Any) -> Any:
    try:
        return function(value)
    except Invalid as error:
        raise PydanticCustomError(error.kind, error.message) from None


def _pydantic_type(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return pydantic_model(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        metadata: list[Any] = []
        for item in annotation.__metadata__:
            if isinstance(item, Chars):
                metadata.append(
                    StringConstraints(pattern=item.pattern, min_length=item.min_length, max_length=item.max_length)
                )
            elif isinstance(item, Bounds):
                metadata.append(Field(ge=item.ge, le=item.le))
            elif isinstance(item, Check):
                metadata.append(AfterValidator(functools.partial(_custom, item.function)))
            else:
                metadata.append(item)
        return Annotated[(_pydantic_type(args[0]), *metadata)]
    if origin in (Union, UnionType):
        return Union[tuple(_pydantic_type(a) for a in args)]  # noqa: UP007 - built from a tuple
    if origin is list:
        return list[_pydantic_type(args[0])]  # type: ignore[misc]
    if origin is dict:
        return dict[_pydantic_type(args[0]), _pydantic_type(args[1])]  # type: ignore[misc]
    return NoneType if annotation is None else annotation


def _pydantic_value(value: Any) -> Any:
    """A default as the pydantic model holds it."""
    if isinstance(value, Section):
        # Only the keys set: a default's unset keys stay unset, as the rules read them.
        given = type(value).model_fields
        return pydantic_model(type(value)).model_validate(
            {given[name].alias: _pydantic_value(getattr(value, name)) for name in value.model_fields_set}
        )
    if isinstance(value, list):
        return [_pydantic_value(v) for v in value]
    return value


def _section_value(value: Any) -> Any:
    """A value pydantic checked, with sections in place of its models."""
    if isinstance(value, BaseModel):
        section = _SECTIONS[type(value)]
        return section.built(
            {name: _section_value(getattr(value, name)) for name in section.model_fields},
            frozenset(value.model_fields_set),
        )
    if isinstance(value, list):
        return [_section_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _section_value(v) for k, v in value.items()}
    return value

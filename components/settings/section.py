"""How the stack config is declared, and the check every `pulumi preview` and `up` runs on it.

model.py declares each key once, as an annotated class attribute of a `Section`: its type (a pattern,
a length or a range as `Annotated` metadata: `Chars`, `Bounds`, `Check`), and `key(default, example,
doc, **constraints)`. Two things are made from that one declaration:

- `validate` (here): plain Python over the decoded config. It accepts only what it can tell is valid,
  exactly as pydantic's strict mode would (no coercion, unknown keys refused, camelCase keys), and
  builds the frozen section objects the program reads. Anything else it leaves undecided.
- pydantic models (pydantic_model.py), built only when `validate` left the config undecided (pydantic
  then decides, and the errors are worded from its report) and for the JSON Schema.

Why two: importing pydantic and building the model's classes took 0.15 to 0.3 s on 2 cores, on every
preview and up, more than the rest of the settings together; this check costs microseconds per key.
tests/unit/test_settings_check.py proves that whatever it accepts, pydantic accepts with the same
values.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType, NoneType, UnionType
from typing import (
    Annotated,
    Any,
    ClassVar,
    Literal,
    NamedTuple,
    Self,
    TypeVar,
    Union,
    dataclass_transform,
    get_args,
    get_origin,
)


# The declaration's small values are NamedTuples: a frozen dataclass costs half a millisecond to define,
# and every preview and up defines them.
class Chars(NamedTuple):
    """A string's pattern (searched, as pydantic and JSON Schema do: anchor it) and length range."""

    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None


class Bounds(NamedTuple):
    """A number's range, both ends included."""

    ge: int | None = None
    le: int | None = None


class Invalid(ValueError):  # noqa: N818 - a value, not an error of the program
    """Raised by a `Check`: `kind` names the error, `message` says what is wrong (as the settings error
    shows it)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


class Check(NamedTuple):
    """A function run once the value has its type and constraints: returns the value to keep, or
    raises `Invalid`."""

    function: Callable[[Any], Any]


class Key(NamedTuple):
    """One key of a section, as declared (model.py) and as both checks and the schema read it."""

    default: Any
    """The value when the key is not set; `...` when it is required."""
    example: Any
    """A right value, shown in errors and in the schema."""
    description: str
    constraints: Mapping[str, Any] = MappingProxyType({})
    """Bounds of the value: ge/le for numbers, min_length/max_length for lists, maps and strings."""
    name: str = ""
    """The attribute's name (snake_case); set when the section is declared."""
    alias: str = ""
    """The key in the stack file (camelCase)."""
    annotation: Any = None

    @property
    def required(self) -> bool:
        return self.default is ...

    @property
    def examples(self) -> list[Any]:
        return [self.example]


CONSTRAINTS = frozenset({"ge", "le", "min_length", "max_length"})


def key(default: Any, example: Any, doc: str, **constraints: Any) -> Any:
    """A config key: its default (`...`: required), one example of a right value, and what it does."""
    unknown = set(constraints) - CONSTRAINTS
    if unknown:
        raise TypeError(f"key() knows the constraints {', '.join(sorted(CONSTRAINTS))}, not {', '.join(unknown)}")
    return Key(default, example, doc, constraints)


def to_camel(name: str) -> str:
    """snake_case -> camelCase, as pydantic's alias generator (tests compare the two)."""
    first, *rest = name.split("_")
    return first + "".join(part[:1].upper() + part[1:] for part in rest)


class Undecided(Exception):  # noqa: N818 - not an error: the other check decides
    """The check cannot tell the value is valid: pydantic decides."""


_UNDECIDED = Undecided()
Checker = Callable[[Any], Any]


# For type checkers: keyword construction, frozen. `key(...)` reads as each key's default, so a required
# key can be left out in code, as with pydantic's models (the stack file's are checked by `validate`).
@dataclass_transform(kw_only_default=True, frozen_default=True)
class Section:
    """A part of the stack config: declared keys, frozen once built, compared by value.

    Built by `validate` from the stack file (keys in camelCase), or in code by keyword (attribute names,
    trusted, with the defaults for the rest).
    """

    __slots__ = ("__dict__", "_fields_set")
    model_fields: ClassVar[dict[str, Key]] = {}
    """Attribute name -> its declaration, in declaration order."""
    _plan: ClassVar[tuple[tuple[str, str, Checker, Any, bool], ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls.model_fields)
        for name, annotation in inspect.get_annotations(cls).items():
            if isinstance(annotation, str):
                raise TypeError(f"{cls.__name__}.{name}: declare sections without `from __future__ import annotations`")
            declared = cls.__dict__.get(name)
            if not isinstance(declared, Key):
                raise TypeError(f"{cls.__name__}.{name} is declared without key(...)")
            fields[name] = declared._replace(name=name, alias=to_camel(name), annotation=annotation)
            delattr(cls, name)
        cls.model_fields = fields
        cls._plan = None

    def __init__(self, **values: Any) -> None:
        unknown = values.keys() - self.model_fields.keys()
        if unknown:
            raise TypeError(f"{type(self).__name__} has no key {', '.join(sorted(unknown))}")
        state = {}
        for name, declared in self.model_fields.items():
            if name in values:
                state[name] = values[name]
            elif declared.required:
                raise TypeError(f"{type(self).__name__}() needs {name}")
            else:
                state[name] = _fresh(declared.default)
        object.__setattr__(self, "__dict__", state)
        object.__setattr__(self, "_fields_set", frozenset(values))

    @classmethod
    def built(cls, values: dict[str, Any], fields_set: frozenset[str]) -> Self:
        """An instance of values already checked, every key present."""
        made = cls.__new__(cls)
        object.__setattr__(made, "__dict__", values)
        object.__setattr__(made, "_fields_set", fields_set)
        return made

    @property
    def model_fields_set(self) -> frozenset[str]:
        """The keys the stack file set (attribute names), as pydantic's models say."""
        fields_set: frozenset[str] = object.__getattribute__(self, "_fields_set")
        return fields_set

    def model_copy(self, *, update: Mapping[str, Any] | None = None) -> Self:
        """A copy with some values replaced (which count as set), as pydantic's `model_copy`."""
        changes = dict(update or {})
        return self.built({**self.__dict__, **changes}, self.model_fields_set | frozenset(changes))

    def __reduce__(self) -> tuple[Any, ...]:
        # copy, deepcopy and pickle rebuild it as it was (the default would set attributes one by one).
        return (_rebuilt, (type(self), self.__dict__, self.model_fields_set))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"

    @classmethod
    def _compiled(cls) -> tuple[tuple[str, str, Checker, Any, bool], ...]:
        """Per key, in declaration order: name, alias, its check, its default, whether the default is
        copied for each instance (a list or a map)."""
        plan = cls._plan
        if plan is None:
            plan = tuple(
                (f.name, f.alias, _checker(f.annotation, f.constraints), f.default, type(f.default) in (list, dict))
                for f in cls.model_fields.values()
            )
            cls._plan = plan
        return plan

    @classmethod
    def _from(cls, data: Any) -> Self:
        if type(data) is not dict:
            raise _UNDECIDED
        values: dict[str, Any] = {}
        given: list[str] = []
        for name, alias, check, default, copied in cls._compiled():
            if alias in data:
                values[name] = check(data[alias])
                given.append(name)
            elif default is ...:
                raise _UNDECIDED  # a required key is missing
            else:
                values[name] = _fresh(default) if copied else default
        if len(given) != len(data):
            raise _UNDECIDED  # a key the section does not have
        return cls.built(values, frozenset(given))


S = TypeVar("S", bound=Section)


def _rebuilt(cls: type[S], values: dict[str, Any], fields_set: frozenset[str]) -> S:
    return cls.built(dict(values), fields_set)


def validate(cls: type[S], data: Any) -> S | None:
    """`data` (a stack file's values, camelCase keys) as a `cls`, or None when the check cannot tell
    it is valid: then pydantic decides (pydantic_model.validate)."""
    try:
        return cls._from(data)
    except Undecided:
        return None


def _fresh(default: Any) -> Any:
    """A default of its own for each instance (sections are frozen, their lists and maps are not)."""
    if type(default) is list:
        return list(default)
    if type(default) is dict:
        return dict(default)
    return default


def _exact(kind: type) -> Checker:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _UNDECIDED
        return value

    return check


def _number(value: Any) -> float:
    # Strict: an int is a float (converted), a bool is neither; NaN, infinities and ints a float cannot
    # hold exactly are left to pydantic.
    if type(value) is float and math.isfinite(value):
        return value
    if type(value) is int and abs(value) <= 2**53:
        return float(value)
    raise _UNDECIDED


def _any(value: Any) -> Any:
    return value


def _none(value: Any) -> None:
    if value is not None:
        raise _UNDECIDED


def _checker(annotation: Any, constraints: Mapping[str, Any] | None = None) -> Checker:
    check = _type_checker(annotation)
    if constraints:
        check = _constrained(check, **constraints)
    return check


def _type_checker(annotation: Any) -> Checker:
    if annotation in (str, int, bool):
        return _exact(annotation)
    if annotation is float:
        return _number
    if annotation is Any:
        return _any
    if annotation is None or annotation is NoneType:
        return _none
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation._from
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _annotated(_type_checker(args[0]), annotation.__metadata__)
    if origin is Literal:
        if not all(type(a) is str for a in args):
            raise TypeError(f"only string literals are checked: {annotation}")
        options = frozenset(args)

        def literal(value: Any) -> Any:
            if type(value) is not str or value not in options:
                raise _UNDECIDED
            return value

        return literal
    if origin in (Union, UnionType):
        arms = [a for a in args if a is not NoneType]
        if len(arms) != 1:
            raise TypeError(f"only `X | None` unions are checked: {annotation}")
        arm = _type_checker(arms[0])

        def optional(value: Any) -> Any:
            return None if value is None else arm(value)

        return optional
    if origin is list:
        item = _type_checker(args[0])

        def items(value: Any) -> Any:
            if type(value) is not list:
                raise _UNDECIDED
            return [item(v) for v in value]

        return items
    if origin is dict:
        key_check, value_check = _type_checker(args[0]), _type_checker(args[1])

        def mapping(value: Any) -> Any:
            if type(value) is not dict:
                raise _UNDECIDED
            return {key_check(k): value_check(v) for k, v in value.items()}

        return mapping
    raise TypeError(f"a section key of a type the check does not know: {annotation}")


def _annotated(check: Checker, metadata: tuple[Any, ...]) -> Checker:
    for item in metadata:
        if isinstance(item, Chars):
            check = _constrained(check, pattern=item.pattern, min_length=item.min_length, max_length=item.max_length)
        elif isinstance(item, Bounds):
            check = _constrained(check, ge=item.ge, le=item.le)
        elif isinstance(item, Check):
            check = _checked(check, item.function)
        else:
            raise TypeError(f"section metadata the check does not know: {item!r}")
    return check


def _checked(check: Checker, function: Callable[[Any], Any]) -> Checker:
    def run(value: Any) -> Any:
        try:
            return function(check(value))
        except (ValueError, AssertionError):
            # What pydantic reports as a value error (Invalid is one): it words it.
            raise _UNDECIDED from None

    return run


def _constrained(
    check: Checker,
    pattern: str | None = None,
    min_length: int | None = None,
    max_length: int | None = None,
    ge: float | None = None,
    le: float | None = None,
) -> Checker:
    search = re.compile(pattern).search if pattern is not None else None

    def constrained(value: Any) -> Any:
        value = check(value)
        if value is None:
            return value
        if search is not None and (type(value) is not str or search(value) is None):
            raise _UNDECIDED
        if (min_length is not None and len(value) < min_length) or (max_length is not None and len(value) > max_length):
            raise _UNDECIDED
        if (ge is not None and not value >= ge) or (le is not None and not value <= le):
            raise _UNDECIDED
        return value

    return constrained

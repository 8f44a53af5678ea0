"""How an action declares its parameters: one typed request class per action.

A request class is a frozen dataclass whose fields are declared with :func:`wire`: the parameter's name on the
wire (PascalCase, e.g. ``ProductId``), its rules, and its documentation. The field's Python name is the one
name the value has inside fleetops (snake_case, with its unit: ``schedule_time``, ``max_execution_time_s``),
and its annotation gives the type::

    @dataclass(frozen=True, slots=True)
    class DescribeTasksRequest:
        offset: int = wire("Offset", required=True, doc="from 0")
        limit: int = wire("Limit", required=True, min_value=1, max_value=250, doc="1..250")

Supported annotations: ``str``, ``int``, ``bool``, a ``StrEnum`` or ``IntEnum`` (the vendor's values become
the allowed choices and the decoded value is the enum member), another request dataclass (an ``Object``),
``list[T]`` of any of these (an ``Array``), each optionally ``| None`` for an optional field without a default.

:func:`parameters` compiles a class into a tree of :class:`Param` once; :mod:`fleetops.api.decoding` builds a
request object from the raw parameters with it, and :mod:`fleetops.api.docs` renders docs/api.md from it. A
declaration that cannot work (a range on a String, a clash of wire names, an annotation the decoder cannot
build) raises ``ValueError`` when :func:`parameters` first sees the class, which the registry does at import.

Integer ranges: the vendor's ``Integer`` is an unsigned 64-bit number on the wire, but every integer fleetops
accepts must fit the signed 64-bit columns of its store, so a field without an explicit ``max_value`` is
limited to ``2**63 - 1`` (and ``min_value`` defaults to 0): an ``Offset`` of ``2**64 - 1`` is a client error
naming the parameter, never a database error (docs/limits.md).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final, Union

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "Kind",
    "Param",
    "parameters",
    "wire",
]

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_WIRE_KEY: Final = "fleetops.wire"


class Kind(StrEnum):
    """A parameter type; the value is the vendor's name for it, used in error messages and docs."""

    STRING = "String"
    INTEGER = "Integer"  # the vendor's unsigned 64-bit Integer, limited to what the store can hold
    INT64 = "Int64"  # signed 64-bit
    BOOLEAN = "Boolean"
    OBJECT = "Object"
    ARRAY = "Array"


@dataclass(frozen=True)
class _WireSpec:
    """What :func:`wire` records on a dataclass field."""

    name: str
    required: bool
    doc: str
    min_value: int | None
    max_value: int | None
    max_length: int | None
    pattern: str | None
    choices: tuple[str | int, ...] | None
    max_items: int | None
    int64: bool
    hint: tuple[str, str] | None


def wire(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    default: Any = None,
    min_value: int | None = None,
    max_value: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
    choices: tuple[str | int, ...] | None = None,
    max_items: int | None = None,
    int64: bool = False,
    hint: tuple[str, str] | None = None,
) -> Any:
    """A request field: the parameter ``name`` on the wire and its rules.

    A required field has no default. An optional field defaults to ``default`` (None unless given), which is
    also its value when the client sends the parameter as JSON ``null``. ``max_length`` counts characters (code
    points); ``pattern`` is matched with ``fullmatch`` (our own constants only, never a client's); ``int64``
    makes an integer signed (the vendor's ``Int64``). ``hint`` (English, Chinese) is added to the messages of a
    value that breaks the field's rules, for a mistake the field invites (a ProductName where the ProductId goes).
    """
    spec = _WireSpec(name, required, doc, min_value, max_value, max_length, pattern, choices, max_items, int64, hint)
    metadata = {_WIRE_KEY: spec}
    if required:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Param:
    """One compiled parameter: a field of a request class, a member of an Object, or the element of an Array."""

    name: str  # on the wire
    attr: str  # the field's Python name ("" for an Array element)
    kind: Kind
    required: bool = False
    doc: str = ""
    default: Any = None
    min_value: int | None = None  # as declared (None: the type's own bound)
    max_value: int | None = None
    max_length: int | None = None
    pattern: re.Pattern[str] | None = None
    choices: tuple[str | int, ...] | None = None
    enum: type[Enum] | None = None  # the decoded value is a member of this enum
    model: type | None = None  # an Object: the request dataclass built from its members
    fields: tuple[Param, ...] = ()  # an Object's members
    item: Param | None = None  # an Array's element
    max_items: int | None = None
    hint: tuple[str, str] | None = None  # appended to the value errors of this parameter (English, Chinese)

    @property
    def low(self) -> int:
        """The smallest integer accepted (the declared minimum, else the type's)."""
        if self.min_value is not None:
            return self.min_value
        return INT64_MIN if self.kind is Kind.INT64 else 0

    @property
    def high(self) -> int:
        """The largest integer accepted: the declared maximum, else what a signed 64-bit column holds."""
        return INT64_MAX if self.max_value is None else self.max_value


_COMPILED: dict[type, tuple[Param, ...]] = {}


def parameters(model: type[Any]) -> tuple[Param, ...]:
    """The compiled parameters of a request class (cached: built once per class)."""
    compiled = _COMPILED.get(model)
    if compiled is None:
        compiled = _COMPILED[model] = _compile_model(model)
    return compiled


def _compile_model(model: type[Any]) -> tuple[Param, ...]:
    if not dataclasses.is_dataclass(model):
        raise ValueError(f"{model.__name__} is not a dataclass")
    hints = typing.get_type_hints(model)
    compiled: list[Param] = []
    seen: dict[str, str] = {}
    for f in dataclasses.fields(model):
        spec = f.metadata.get(_WIRE_KEY)
        if not isinstance(spec, _WireSpec):
            raise ValueError(f"{model.__name__}.{f.name} is not declared with wire()")
        lowered = spec.name.lower()
        if lowered in seen:
            # ProductId and ProductID in one request could not both be sent by a case-insensitive client
            raise ValueError(f"{model.__name__}: members {seen[lowered]!r} and {spec.name!r} clash")
        seen[lowered] = spec.name
        default = None if spec.required else f.default
        compiled.append(_compile(model.__name__, f.name, spec, hints[f.name], default))
    return tuple(compiled)


def _compile(owner: str, attr: str, spec: _WireSpec, annotation: Any, default: Any) -> Param:
    where = f"{owner}.{attr} ({spec.name})"
    shape = _unwrap_optional(annotation)
    if typing.get_origin(shape) is list:
        (element,) = typing.get_args(shape)
        if typing.get_origin(element) is list:
            raise ValueError(f"{where}: lists of lists are not supported")
        # the rules of an Array's declaration (length, pattern, range, choices) are its elements' rules
        item = _scalar(where, "", dataclasses.replace(spec, required=False, doc="", max_items=None), element, None)
        return Param(
            name=spec.name,
            attr=attr,
            kind=Kind.ARRAY,
            required=spec.required,
            doc=spec.doc,
            default=default,
            item=item,
            max_items=spec.max_items,
        )
    if spec.max_items is not None:
        raise ValueError(f"{where} is declared wrongly: max_items needs a list")
    return _scalar(where, attr, spec, shape, default)


def _scalar(where: str, attr: str, spec: _WireSpec, shape: Any, default: Any) -> Param:
    kind, enum, model = _shape(where, shape, spec)
    problems: list[str] = []
    numeric = kind in (Kind.INTEGER, Kind.INT64)
    if (spec.min_value is not None or spec.max_value is not None) and not numeric:
        problems.append("min_value/max_value need an integer")
    if (spec.max_length is not None or spec.pattern is not None) and kind is not Kind.STRING:
        problems.append("max_length/pattern need a str")
    choices = spec.choices
    if enum is not None:
        if choices is not None:
            problems.append("an enum field takes its choices from the enum")
        choices = tuple(member.value for member in enum)
    elif choices is not None:
        expected: type = int if numeric else str
        # bool is an int subclass; True as an integer choice is a typo, not a choice
        if kind not in (Kind.STRING, Kind.INTEGER, Kind.INT64):
            problems.append("choices need a str or an int")
        elif not choices or any(type(c) is not expected for c in choices):
            problems.append(f"choices must be a non-empty tuple of {expected.__name__}")
    if problems:
        raise ValueError(f"{where} is declared wrongly: " + "; ".join(problems))
    min_value, max_value = spec.min_value, spec.max_value
    if numeric:
        floor = INT64_MIN if kind is Kind.INT64 else 0
        low = floor if min_value is None else min_value
        high = INT64_MAX if max_value is None else max_value
        if not floor <= low <= high <= INT64_MAX:
            raise ValueError(f"{where}: the range {low}..{high} does not fit a signed 64-bit column")
    return Param(
        name=spec.name,
        attr=attr,
        kind=kind,
        required=spec.required,
        doc=spec.doc,
        default=default,
        min_value=min_value,
        max_value=max_value,
        max_length=spec.max_length,
        pattern=re.compile(spec.pattern) if spec.pattern is not None else None,
        choices=choices,
        enum=enum,
        model=model,
        fields=parameters(model) if model is not None else (),
        hint=spec.hint,
    )


def _unwrap_optional(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return members[0]
    return annotation


def _shape(where: str, shape: Any, spec: _WireSpec) -> tuple[Kind, type[Enum] | None, type | None]:
    """(kind, enum, object model) of a scalar or Object annotation."""
    integer = Kind.INT64 if spec.int64 else Kind.INTEGER
    if isinstance(shape, type) and issubclass(shape, StrEnum):
        return Kind.STRING, shape, None
    if isinstance(shape, type) and issubclass(shape, IntEnum):
        return integer, shape, None
    if shape is bool:
        return Kind.BOOLEAN, None, None
    if shape is int:
        return integer, None, None
    if shape is str:
        return Kind.STRING, None, None
    if isinstance(shape, type) and dataclasses.is_dataclass(shape):
        return Kind.OBJECT, None, shape
    raise ValueError(f"{where}: the annotation {shape!r} is not one the decoder can build")

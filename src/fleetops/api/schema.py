"""How an action declares its parameters.

A :class:`Param` names a parameter as it appears on the wire (PascalCase, e.g. ``ProductId``), says its type
and the rules its value must follow. :func:`fleetops.api.decoding.decode_params` turns the raw request
parameters into typed values keyed by :attr:`Param.snake_name`; nothing else converts wire names to Python
names.

The helper constructors (:func:`string`, :func:`integer`, ...) exist so that an action's parameter list reads
like the vendor's documentation table::

    CREATE_TASK = (
        string("TaskType", required=True, choices=("UpdateShadow", "PublishMessage")),
        integer("ScheduleTimeInSeconds", required=True),
        object_of("Tasks", object_of("UpdateShadowTask", string("Desired")), required=True),
    )

A declaration that cannot work (a range on a String, an Array without an item, two members with the same
snake_case name) raises ``ValueError`` when the module that declares it is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

__all__ = [
    "Kind",
    "Param",
    "check_unique_names",
    "to_snake",
]


class Kind(StrEnum):
    """A parameter type; the value is the vendor's name for it, used in error messages and docs."""

    STRING = "String"
    INTEGER = "Integer"  # unsigned 64-bit: the vendor's Integer fields are uint64 in its Go SDK
    INT64 = "Int64"  # signed 64-bit
    BOOLEAN = "Boolean"
    OBJECT = "Object"
    ARRAY = "Array"


# Splits "MaxExecutionTimeInSeconds" and keeps acronyms together: "ProductID" -> "Product_ID".
_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@lru_cache(maxsize=1024)
def to_snake(name: str) -> str:
    """``"ProductId"`` and ``"ProductID"`` -> ``"product_id"``; ``"DeviceNames"`` -> ``"device_names"``."""
    return _WORD_BOUNDARY.sub("_", name).lower()


@dataclass(frozen=True)
class Param:
    """One parameter of an action, or a member of an Object parameter, or the element of an Array."""

    name: str
    kind: Kind
    required: bool = False
    doc: str = ""
    min_value: int | None = None
    max_value: int | None = None
    max_length: int | None = None  # in characters (code points), not bytes
    pattern: str | None = None  # Python regex matched with fullmatch; our own constants only
    choices: tuple[str | int, ...] | None = None
    fields: tuple[Param, ...] = ()
    item: Param | None = None
    max_items: int | None = None

    def __post_init__(self) -> None:
        problems = list(_declaration_problems(self))
        if problems:
            raise ValueError(f"parameter {self.name!r} is declared wrongly: " + "; ".join(problems))

    @property
    def snake_name(self) -> str:
        return to_snake(self.name)


def _declaration_problems(p: Param) -> list[str]:
    problems: list[str] = []
    numeric = p.kind in (Kind.INTEGER, Kind.INT64)
    if (p.min_value is not None or p.max_value is not None) and not numeric:
        problems.append("min_value/max_value need an Integer or Int64")
    if (p.max_length is not None or p.pattern is not None) and p.kind is not Kind.STRING:
        problems.append("max_length/pattern need a String")
    if p.pattern is not None:
        re.compile(p.pattern)  # fails at import time rather than on the first request
    if p.choices is not None:
        expected: type = str if p.kind is Kind.STRING else int
        if not numeric and p.kind is not Kind.STRING:
            problems.append("choices need a String, Integer or Int64")
        # bool is an int subclass; True as an Integer choice is a typo, not a choice.
        elif not p.choices or any(type(c) is not expected for c in p.choices):
            problems.append(f"choices must be a non-empty tuple of {expected.__name__}")
    if p.fields and p.kind is not Kind.OBJECT:
        problems.append("fields need an Object")
    if p.kind is Kind.OBJECT:
        try:
            check_unique_names(p.fields)
        except ValueError as exc:
            problems.append(str(exc))
    if (p.item is not None or p.max_items is not None) and p.kind is not Kind.ARRAY:
        problems.append("item/max_items need an Array")
    if p.kind is Kind.ARRAY and p.item is None:
        problems.append("an Array needs an item")
    return problems


def check_unique_names(params: tuple[Param, ...] | list[Param]) -> None:
    """Raise ``ValueError`` if two params share a wire or snake_case name (the decoded dict would clash)."""
    seen: dict[str, str] = {}
    for p in params:
        for key in {p.name, p.snake_name}:
            if key in seen:
                raise ValueError(f"members {seen[key]!r} and {p.name!r} clash on the name {key!r}")
            seen[key] = p.name

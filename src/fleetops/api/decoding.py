"""From raw business parameters to typed, validated, snake_case values.

Two inputs, one output:

* JSON bodies arrive already nested, with native JSON types (``from_strings=False``);
* GET queries and form bodies arrive flat (``Tasks.UpdateShadowTask.Desired=...``, ``DeviceNames.0=aaa``) with
  every value a string. :func:`unflatten` rebuilds the nesting, :func:`decode_params` then coerces
  (``from_strings=True``).

How the official SDK flattens (so what :func:`unflatten` must undo): an object member becomes
``Parent.Child``, an array element ``Parent.N`` with a zero-based ``N``, scalars are rendered with Python's
``str()`` (Booleans as ``True``/``False``) and ``None`` members are left out. Examples::

    Tasks.UpdateShadowTask.Desired=%7B%22color%22%3A%22red%22%7D
    Attribute.Tags.0.Tag=note&Attribute.Tags.0.Type=2&Attribute.Tags.0.Value=test_note
    DeviceNames.0=aaa&DeviceNames.1=bbb

Errors, by kind (the first two messages are the vendor's own wording):

* an undeclared name -> ``UnknownParameter`` "The parameter `X` is not recognized.";
* a required name absent (or JSON ``null``) -> ``MissingParameter`` "The request is missing a required
  parameter `X`.";
* a value of the wrong type, or a malformed flat name -> ``InvalidParameter``;
* a value of the right type that breaks a rule (range, length, pattern, choices, item count, a String holding
  U+0000) -> ``InvalidParameterValue``.

No String parameter may hold the NUL character (U+0000): PostgreSQL cannot store it in text while SQLite would,
so it is refused here, once, before any store sees it, and both databases give the same answer
(docs/decisions.md#wire-protocol).

Nested names are reported as flat paths (``Tasks.Foo``, ``DeviceNames.1``): the same string a GET user typed,
and unambiguous for a JSON user. Optional parameters that are absent (or JSON ``null``) are left out of the
result, so a handler's own defaults apply.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fleetops.api.schema import INT64_MAX, INT64_MIN, Kind, Param, parameters
from fleetops.api.text import shown_value
from fleetops.errors import InvalidParameter, InvalidParameterValue, MissingParameter, UnknownParameter

__all__ = ["decode_request", "unflatten"]

R = TypeVar("R")

UINT64_MAX = 2**64 - 1

# Booleans in flat requests: the SDK sends str(True) == "True"; people with curl send "true" or "1".
_TRUE = frozenset({"true", "True", "1"})
_FALSE = frozenset({"false", "False", "0"})
_DECIMAL = re.compile(r"-?[0-9]+")
# An array index: no sign, no leading zeros (so "1" and "01" cannot both name one element), and short enough
# that a hostile "A.99999999999" is refused before any list is sized from it.
_INDEX = re.compile(r"0|[1-9][0-9]{0,8}")
_DIGITS = re.compile(r"[0-9]+")


# --- unflatten ---------------------------------------------------------------------------------------------


@dataclass
class _Branch:
    path: str
    is_array: bool | None = None  # decided by the first child: an index or a name
    children: dict[str | int, _Branch | str] = field(default_factory=dict)


def unflatten(pairs: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Rebuild nested dicts and lists from flat ``(name, value)`` pairs, keeping every value a string.

    ``[("DeviceNames.0", "aaa"), ("DeviceNames.1", "bbb")]`` -> ``{"DeviceNames": ["aaa", "bbb"]}``.
    A purely numeric segment after the first is an array index; indexes must run 0, 1, 2, ... without gaps.
    A name given twice, given both as a value and as a structure, or mixing indexes and member names is
    ambiguous and raises ``InvalidParameter``.
    """
    root = _Branch(path="", is_array=False)
    for name, value in pairs:
        _insert(root, name, value)
    top = _finish(root)
    assert isinstance(top, dict)  # the root is created as an object
    return top


def _insert(root: _Branch, name: str, value: str) -> None:
    segments = name.split(".")
    if any(not s for s in segments):
        raise InvalidParameter(
            f"The parameter name `{name}` is malformed: names are joined with single dots, "
            "e.g. `Tasks.PublishMessageTask.Topic` or `DeviceNames.0`.",
            message_zh=f"参数名 `{name}` 格式错误：各级名称以单个点号连接，例如 `DeviceNames.0`。",
        )
    node = root
    for depth, segment in enumerate(segments):
        path = ".".join(segments[: depth + 1])
        key = _child_key(node, segment, path, depth)
        existing = node.children.get(key)
        if depth == len(segments) - 1:
            if isinstance(existing, str):
                raise InvalidParameter(
                    f"The parameter `{path}` is given more than once.",
                    message_zh=f"参数 `{path}` 重复出现。",
                )
            if existing is not None:
                raise _value_and_structure(path, next(iter(existing.children)))
            node.children[key] = value
            return
        if isinstance(existing, str):
            raise _value_and_structure(path, segments[depth + 1])
        if existing is None:
            existing = node.children[key] = _Branch(path=path)
        node = existing


def _child_key(node: _Branch, segment: str, path: str, depth: int) -> str | int:
    # A top-level name is always a name: the parameter list itself is an object, never an array.
    if depth == 0 or not _DIGITS.fullmatch(segment):
        if node.is_array:
            raise _mixed(node.path)
        node.is_array = False
        return segment
    if not _INDEX.fullmatch(segment):
        raise InvalidParameter(
            f"The array index in `{path}` is malformed: use 0, 1, 2, ... without leading zeros.",
            message_zh=f"`{path}` 中的数组下标格式错误：请使用 0、1、2……，不要有前导零。",
        )
    if node.is_array is False:
        raise _mixed(node.path)
    node.is_array = True
    return int(segment)


def _finish(node: _Branch | str) -> Any:
    if isinstance(node, str):
        return node
    if not node.is_array:
        return {str(k): _finish(v) for k, v in node.children.items()}
    present = set(node.children)
    missing = next(i for i in range(len(present) + 1) if i not in present)
    if missing < len(present):
        raise InvalidParameter(
            f"The array `{node.path}` must be numbered from 0 without gaps "
            f"(`{node.path}.0`, `{node.path}.1`, ...), but `{node.path}.{missing}` is missing.",
            message_zh=f"数组 `{node.path}` 的下标必须从 0 开始连续编号，缺少 `{node.path}.{missing}`。",
        )
    return [_finish(node.children[i]) for i in range(len(present))]


def _value_and_structure(path: str, member: str | int) -> InvalidParameter:
    return InvalidParameter(
        f"The parameter `{path}` is given both as a value and as a structure (`{path}.{member}`); "
        f"send either `{path}` or its members, not both.",
        message_zh=f"参数 `{path}` 既作为值又作为结构（`{path}.{member}`）出现，请只使用其中一种。",
    )


def _mixed(path: str) -> InvalidParameter:
    return InvalidParameter(
        f"The parameter `{path}` mixes array indexes (`{path}.0`) and member names (`{path}.Name`); "
        "an array is numbered, an object is named.",
        message_zh=f"参数 `{path}` 混用了数组下标和成员名称。",
    )


# --- decode_request ---------------------------------------------------------------------------------------


def decode_request(model: type[R], raw: Mapping[str, Any], *, from_strings: bool) -> R:
    """Check ``raw`` against the request class ``model`` (``api.schema``) and build the request object.

    ``from_strings=True`` (GET/form): Integers are parsed from decimal strings, Booleans from
    ``true/false/True/False/1/0``. ``from_strings=False`` (JSON): types must be native JSON; ``true`` is not
    an Integer and ``1.0`` is not an Integer either.
    """
    return _build(model, raw, "", from_strings)


_MEMBER_NAMES: dict[type, frozenset[str]] = {}


def _member_names(model: type[Any]) -> frozenset[str]:
    names = _MEMBER_NAMES.get(model)
    if names is None:
        names = _MEMBER_NAMES[model] = frozenset(p.name for p in parameters(model))
    return names


def _build(model: type[R], raw: Mapping[str, Any], prefix: str, from_strings: bool) -> R:
    spec = parameters(model)
    names = _member_names(model)
    for name in raw:
        if name not in names:
            raise _unknown(prefix + str(name), str(name), spec)
    values: dict[str, Any] = {}
    for p in spec:
        path = prefix + p.name
        value = raw.get(p.name)
        if value is None:  # absent, or JSON null: the SDK never sends null, it leaves the member out
            if p.required:
                raise MissingParameter(
                    f"The request is missing a required parameter `{path}`.",
                    message_zh=f"缺少必需参数 `{path}`。",
                )
            continue
        values[p.attr] = _decode_value(value, p, path, from_strings)
    return model(**values)


def _unknown(path: str, name: str, spec: Sequence[Param]) -> UnknownParameter:
    """The vendor's wording, plus the declared name the client most likely meant."""
    hint_en = hint_zh = ""
    declared = [p.name for p in spec]
    same_letters = [d for d in declared if d.lower() == name.lower()]
    close = same_letters or difflib.get_close_matches(name, declared, n=1, cutoff=0.75)
    if close:
        where = path[: len(path) - len(name)]
        hint_en = f" Did you mean `{where}{close[0]}`? (parameter names are case-sensitive)"
        hint_zh = f" 是否应为 `{where}{close[0]}`？（参数名区分大小写）"
    return UnknownParameter(
        f"The parameter `{path}` is not recognized.{hint_en}",
        message_zh=f"参数 `{path}` 无法识别。{hint_zh}",
    )


def _decode_value(value: Any, p: Param, path: str, from_strings: bool) -> Any:
    if p.kind is Kind.STRING:
        if not isinstance(value, str):
            raise _wrong_type(path, p, value, from_strings)
        _check_string(value, p, path)
        return p.enum(value) if p.enum is not None else value
    if p.kind in (Kind.INTEGER, Kind.INT64):
        number = _to_int(value, p, path, from_strings)
        _check_number(number, p, path)
        return p.enum(number) if p.enum is not None else number
    if p.kind is Kind.BOOLEAN:
        return _to_bool(value, p, path, from_strings)
    if p.kind is Kind.OBJECT:
        if not isinstance(value, dict):
            raise _wrong_type(path, p, value, from_strings)
        assert p.model is not None  # parameters() gives every Object its model
        return _build(p.model, value, path + ".", from_strings)
    # Kind.ARRAY
    if not isinstance(value, list):
        raise _wrong_type(path, p, value, from_strings)
    if p.max_items is not None and len(value) > p.max_items:
        raise InvalidParameterValue(
            f"The parameter `{path}` may hold at most {p.max_items} items, got {len(value)}.",
            message_zh=f"参数 `{path}` 最多包含 {p.max_items} 个元素，实际为 {len(value)} 个。",
        )
    assert p.item is not None  # parameters() gives every Array its element
    item = p.item
    decoded: list[Any] = []
    for index, element in enumerate(value):
        element_path = f"{path}.{index}"
        if element is None:  # an element cannot be "absent"
            raise _wrong_type(element_path, item, element, from_strings)
        decoded.append(_decode_value(element, item, element_path, from_strings))
    return decoded


def _to_int(value: Any, p: Param, path: str, from_strings: bool) -> int:
    if from_strings and isinstance(value, str):
        if not _DECIMAL.fullmatch(value):
            raise _wrong_type(path, p, value, from_strings)
        # 21 characters hold every 64-bit value; longer digit strings are out of range (and int() of a
        # 5000-digit string would raise ValueError on its own).
        number = int(value) if len(value) <= 21 else None
    elif not from_strings and type(value) is int:  # type(), not isinstance(): JSON true is not an Integer
        number = value
    elif not from_strings and type(value) is float:
        # Also catches integers beyond 64 bits: orjson parses those as floats.
        raise _wrong_type(path, p, value, from_strings, with_range=True)
    else:
        raise _wrong_type(path, p, value, from_strings)
    # A number the vendor's type cannot hold at all (a negative Integer, an Int64 past 64 bits) is not an
    # Integer on the wire: InvalidParameter. One it can hold but the field cannot is a value error, below.
    low, high = (0, UINT64_MAX) if p.kind is Kind.INTEGER else (INT64_MIN, INT64_MAX)
    if number is None or not low <= number <= high:
        raise _wrong_type(path, p, value, from_strings, with_range=True)
    return number


def _to_bool(value: Any, p: Param, path: str, from_strings: bool) -> bool:
    if not from_strings and type(value) is bool:
        return value
    if from_strings and isinstance(value, str):
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
    raise _wrong_type(path, p, value, from_strings)


def _check_string(value: str, p: Param, path: str) -> None:
    nul = value.find("\x00")
    if nul >= 0:
        raise InvalidParameterValue(
            f"The parameter `{path}` must not contain the NUL character (U+0000), found at character {nul + 1}; "
            "remove it.",
            message_zh=f"参数 `{path}` 不能包含 NUL 字符（U+0000），第 {nul + 1} 个字符为 NUL，请删除。",
        )
    if p.choices is not None:
        _check_choices(value, p, path)
        return
    if p.max_length is not None and len(value) > p.max_length:
        hint_en, hint_zh = p.hint or ("", "")
        raise InvalidParameterValue(
            f"The parameter `{path}` must be at most {p.max_length} characters long, got {len(value)} characters."
            + hint_en,
            message_zh=f"参数 `{path}` 最长 {p.max_length} 个字符，实际为 {len(value)} 个字符。{hint_zh}",
        )
    if p.pattern is not None and not p.pattern.fullmatch(value):
        shown, _ = shown_value(value, from_strings=True)
        raise InvalidParameterValue(
            f"The parameter `{path}` has an invalid format: {shown} does not match `{p.pattern.pattern}`.",
            message_zh=f"参数 `{path}` 格式不正确：{shown} 不符合 `{p.pattern.pattern}`。",
        )


def _range_text(p: Param) -> tuple[str, str]:
    """How the field's range reads in a message, in English and Chinese (as declared, else the whole range)."""
    if (p.min_value is None) == (p.max_value is None):  # both declared, or neither
        return f"between {p.low} and {p.high}", f"取值范围为 {p.low} 到 {p.high}"
    if p.min_value is not None:
        return f"at least {p.min_value}", f"不能小于 {p.min_value}"
    return f"at most {p.max_value}", f"不能大于 {p.max_value}"


def _check_number(number: int, p: Param, path: str) -> None:
    if p.choices is not None:
        _check_choices(number, p, path)
        return
    if p.low <= number <= p.high:
        return
    en, zh = _range_text(p)
    raise InvalidParameterValue(
        f"The parameter `{path}` must be {en}, got `{number}`.",
        message_zh=f"参数 `{path}` {zh}，实际为 `{number}`。",
    )


def _check_choices(value: str | int, p: Param, path: str) -> None:
    assert p.choices is not None
    if value in p.choices:
        return
    allowed = ", ".join(f"`{c}`" for c in p.choices)
    # The type is already right here, so the bare value is unambiguous.
    shown, _ = shown_value(str(value), from_strings=True)
    raise InvalidParameterValue(
        f"The parameter `{path}` must be one of {allowed}, got {shown}.",
        message_zh=f"参数 `{path}` 的取值必须是 {allowed} 之一，实际为 {shown}。",
    )


# --- messages ----------------------------------------------------------------------------------------------

_KIND_EN = {
    Kind.STRING: "a String",
    Kind.INTEGER: "an Integer",
    Kind.INT64: "an Int64",
    Kind.BOOLEAN: "a Boolean (true or false)",
    Kind.OBJECT: "an Object",
    Kind.ARRAY: "an Array",
}
_KIND_ZH = {
    Kind.STRING: "String（字符串）",
    Kind.INTEGER: "Integer（整数）",
    Kind.INT64: "Int64（整数）",
    Kind.BOOLEAN: "Boolean（true 或 false）",
    Kind.OBJECT: "Object（对象）",
    Kind.ARRAY: "Array（数组）",
}


def _wrong_type(path: str, p: Param, value: Any, from_strings: bool, *, with_range: bool = False) -> InvalidParameter:
    kind = p.kind
    expected_en, expected_zh = _KIND_EN[kind], _KIND_ZH[kind]
    if with_range and kind in (Kind.INTEGER, Kind.INT64):
        # the field's own range, not the wire type's: "Offset" says 0 to 2**63-1, "Limit" 10 to 250
        expected_en += f" from {p.low} to {p.high}"
        expected_zh += f"，范围 {p.low} 到 {p.high}"
    got_en, got_zh = shown_value(value, from_strings)
    hint_en = hint_zh = ""
    if from_strings and isinstance(value, str) and kind in (Kind.OBJECT, Kind.ARRAY):
        # Someone put JSON into a query string; say how flat requests spell structures.
        example = f"{path}.Name=..." if kind is Kind.OBJECT else f"{path}.0=..."
        hint_en = f" In a GET or form request send its members as separate parameters, e.g. `{example}`."
        hint_zh = f" GET 或表单请求中请将成员拆成单独的参数，例如 `{example}`。"
    return InvalidParameter(
        f"The parameter `{path}` must be {expected_en}, got {got_en}.{hint_en}",
        message_zh=f"参数 `{path}` 应为 {expected_zh}，实际为 {got_zh}。{hint_zh}",
    )

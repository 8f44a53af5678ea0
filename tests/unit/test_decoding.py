"""Request declarations (api.schema), un-flattening and decoding into request objects (api.decoding)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetops.api.actions import all_actions
from fleetops.api.decoding import decode_request, unflatten
from fleetops.api.schema import INT64_MAX, Kind, Param, parameters, wire
from fleetops.errors import (
    ApiError,
    InvalidParameter,
    InvalidParameterValue,
    MissingParameter,
    UnknownParameter,
)
from tests.sdk_capture import Capture, sdk_capture

# --- short constructors, so the declarations in these tests read like the vendor's tables --------------
#
# Each builds the declaration of one field; ``decode_params`` below turns a tuple of them into a request class
# (``dataclasses.make_dataclass`` with ``wire`` fields), decodes, and returns the object as a dict without the
# absent (None) members, so that expectations read as before.


@dataclass(frozen=True)
class Decl:
    name: str  # on the wire
    annotation: Any
    rules: dict[str, Any]

    @property
    def attr(self) -> str:
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", self.name).lower()


def string(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    max_length: int | None = None,
    pattern: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Decl:
    return Decl(name, str, dict(required=required, doc=doc, max_length=max_length, pattern=pattern, choices=choices))


def integer(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    min_value: int | None = None,
    max_value: int | None = None,
    choices: tuple[int, ...] | None = None,
) -> Decl:
    """The vendor's ``Integer`` (unsigned), limited to what the store can hold."""
    return Decl(name, int, dict(required=required, doc=doc, min_value=min_value, max_value=max_value, choices=choices))


def int64(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    min_value: int | None = None,
    max_value: int | None = None,
    choices: tuple[int, ...] | None = None,
) -> Decl:
    """A signed 64-bit integer (the vendor's ``Int64``)."""
    rules = dict(required=required, doc=doc, min_value=min_value, max_value=max_value, choices=choices, int64=True)
    return Decl(name, int, rules)


def boolean(name: str, *, required: bool = False, doc: str = "") -> Decl:
    return Decl(name, bool, dict(required=required, doc=doc))


def object_of(name: str, *fields: Decl, required: bool = False, doc: str = "") -> Decl:
    return Decl(name, model_of(fields, name), dict(required=required, doc=doc))


def array_of(name: str, item: Decl, *, required: bool = False, doc: str = "", max_items: int | None = None) -> Decl:
    """An Array; ``item`` describes each element (its rules apply to every element)."""
    element_rules = {k: v for k, v in item.rules.items() if k not in ("required", "doc")}
    return Decl(
        name,
        list.__class_getitem__(item.annotation),
        dict(required=required, doc=doc, max_items=max_items, **element_rules),
    )


def scalar(name: str, kind: Kind) -> Decl:
    if kind is Kind.STRING:
        return string(name)
    if kind is Kind.INTEGER:
        return integer(name)
    if kind is Kind.INT64:
        return int64(name)
    assert kind is Kind.BOOLEAN
    return boolean(name)


_MODELS: dict[tuple[Any, ...], type] = {}


def model_of(decls: tuple[Decl, ...] | list[Decl], name: str = "Request") -> type:
    key = (name, *((d.name, d.annotation, tuple(sorted(d.rules.items()))) for d in decls))
    if key not in _MODELS:
        members = [
            (d.attr, d.annotation if d.rules.get("required") else d.annotation | None, wire(d.name, **d.rules))
            for d in decls
        ]
        _MODELS[key] = dataclasses.make_dataclass(name, members, frozen=True, kw_only=True)
    return _MODELS[key]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if getattr(value, f.name) is not None
        }
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def decode_params(raw: dict[str, Any], spec: tuple[Decl, ...], *, from_strings: bool) -> dict[str, Any]:
    decoded: dict[str, Any] = _plain(decode_request(model_of(spec), raw, from_strings=from_strings))
    return decoded


# --- schema ------------------------------------------------------------------------------------------------


def test_every_action_declares_snake_case_fields_and_pascal_case_wire_names() -> None:
    def walk(params: tuple[Param, ...]) -> Iterator[Param]:
        for p in params:
            yield p
            yield from walk(p.fields)
            if p.item is not None:
                yield from walk(p.item.fields)

    for action in all_actions():
        for p in walk(action.params):
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", p.attr), (action.name, p.attr)
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", p.name), (action.name, p.name)
            if p.kind in (Kind.INTEGER, Kind.INT64):
                # every integer is limited to what a signed 64-bit column holds
                assert p.high <= INT64_MAX, (action.name, p.name)


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Level(IntEnum):
    LOW = 1
    HIGH = 2


def test_enum_fields_take_their_choices_and_decode_to_members() -> None:
    @dataclass(frozen=True)
    class Paint:
        colour: Colour = wire("Colour", required=True)
        level: Level | None = wire("Level")

    assert [p.choices for p in parameters(Paint)] == [("red", "blue"), (1, 2)]
    decoded = decode_request(Paint, {"Colour": "blue", "Level": "2"}, from_strings=True)
    assert decoded.colour is Colour.BLUE and decoded.level is Level.HIGH
    with pytest.raises(InvalidParameterValue, match="must be one of `red`, `blue`, got `green`"):
        decode_request(Paint, {"Colour": "green"}, from_strings=False)


def _declare(annotation: Any, **rules: Any) -> type:
    return dataclasses.make_dataclass("Bad", [("a", annotation, wire("A", **rules))], frozen=True)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: _declare(str, min_value=1), "min_value/max_value need"),
        (lambda: _declare(int, max_length=3), "max_length/pattern need"),
        (lambda: _declare(str, choices=(1, 2)), "choices must be"),
        (lambda: _declare(int, choices=(True,)), "choices must be"),
        (lambda: _declare(int, choices=()), "choices must be"),
        (lambda: _declare(bool, choices=("x",)), "choices need"),
        (lambda: _declare(str, max_items=3), "max_items needs a list"),
        (lambda: _declare(int, max_value=2**63), "does not fit a signed 64-bit column"),
        (lambda: _declare(dict), "not one the decoder can build"),
        (lambda: _declare(Colour, choices=("red",)), "takes its choices from the enum"),
        (lambda: dataclasses.make_dataclass("Plain", [("a", str)]), "not declared with wire"),
        (
            lambda: dataclasses.make_dataclass(
                "Clash", [("a", str | None, wire("ProductId")), ("b", str | None, wire("ProductID"))]
            ),
            "clash",
        ),
    ],
)
def test_wrong_declarations_fail_when_first_compiled(make: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parameters(make())


def test_bad_pattern_fails_at_declaration() -> None:
    with pytest.raises(Exception, match="unterminated"):
        parameters(_declare(str, pattern="[a-"))


# --- unflatten ---------------------------------------------------------------------------------------------


def pairs_of(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "Tasks.UpdateShadowTask.Desired=%7B%22color%22%3A%22red%22%7D",
            {"Tasks": {"UpdateShadowTask": {"Desired": '{"color":"red"}'}}},
        ),
        (
            "Tasks.PublishMessageTask.Topic=data&Tasks.PublishMessageTask.Payload=hi",
            {"Tasks": {"PublishMessageTask": {"Topic": "data", "Payload": "hi"}}},
        ),
        (
            "Attribute.Tags.0.Tag=note&Attribute.Tags.0.Type=2&Attribute.Tags.0.Value=test_note",
            {"Attribute": {"Tags": [{"Tag": "note", "Type": "2", "Value": "test_note"}]}},
        ),
        ("DeviceNames.0=aaa&DeviceNames.1=bbb", {"DeviceNames": ["aaa", "bbb"]}),
        ("DeviceNames.1=bbb&DeviceNames.0=aaa", {"DeviceNames": ["aaa", "bbb"]}),  # order of arrival is free
        (
            "Filters.0.Name=n&Filters.0.Values.0=a&Filters.0.Values.1=b&Filters.1.Name=m&Filters.1.Values.0=c",
            {"Filters": [{"Name": "n", "Values": ["a", "b"]}, {"Name": "m", "Values": ["c"]}]},
        ),
        ("Matrix.0.0=a&Matrix.0.1=b&Matrix.1.0=c", {"Matrix": [["a", "b"], ["c"]]}),
        ("Offset=0&Name=", {"Offset": "0", "Name": ""}),
        ("0=top", {"0": "top"}),  # a top-level name is a name, never an index
        ("", {}),
    ],
)
def test_unflatten(query: str, expected: dict[str, Any]) -> None:
    assert unflatten(pairs_of(query)) == expected


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (
            [("DeviceNames.0", "a"), ("DeviceNames.2", "c")],
            "The array `DeviceNames` must be numbered from 0 without gaps "
            "(`DeviceNames.0`, `DeviceNames.1`, ...), "
            "but `DeviceNames.1` is missing.",
        ),
        (
            [("DeviceNames.1", "b")],
            "The array `DeviceNames` must be numbered from 0 without gaps "
            "(`DeviceNames.0`, `DeviceNames.1`, ...), "
            "but `DeviceNames.0` is missing.",
        ),
        ([("A", "1"), ("A", "2")], "The parameter `A` is given more than once."),
        ([("A.B", "1"), ("A.B", "2")], "The parameter `A.B` is given more than once."),
        (
            [("A", "1"), ("A.B", "2")],
            "The parameter `A` is given both as a value and as a structure (`A.B`); send either `A` or its "
            "members, not both.",
        ),
        (
            [("A.B", "2"), ("A", "1")],
            "The parameter `A` is given both as a value and as a structure (`A.B`); send either `A` or its "
            "members, not both.",
        ),
        (
            [("A.0", "x"), ("A.B", "y")],
            "The parameter `A` mixes array indexes (`A.0`) and member names (`A.Name`); "
            "an array is numbered, an object is named.",
        ),
        (
            [("A.B", "y"), ("A.0", "x")],
            "The parameter `A` mixes array indexes (`A.0`) and member names (`A.Name`); "
            "an array is numbered, an object is named.",
        ),
        ([("A.01", "x")], "The array index in `A.01` is malformed: use 0, 1, 2, ... without leading zeros."),
        (
            [("A.9999999999", "x")],
            "The array index in `A.9999999999` is malformed: use 0, 1, 2, ... without leading zeros.",
        ),
    ],
)
def test_unflatten_errors(pairs: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        unflatten(pairs)
    assert info.value.message == message
    assert info.value.localized("zh-CN") != message


@pytest.mark.parametrize("name", ["", "A..B", ".A", "A.", "."])
def test_unflatten_malformed_names(name: str) -> None:
    with pytest.raises(InvalidParameter, match="is malformed: names are joined with single dots"):
        unflatten([(name, "x")])


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    with sdk_capture() as started:
        yield started


def sdk_flatten(capture: Capture, params: dict[str, Any]) -> list[tuple[str, str]]:
    """The SDK's own flattening: the query string of a GET it sends (v1, so every parameter is in it)."""
    raw = capture.send(
        "Probe", params, secret_id="AKIDtest", secret_key="key", sign_method="HmacSHA256", http_method="GET"
    )
    common = {
        "Action",
        "Version",
        "Region",
        "Timestamp",
        "Nonce",
        "SecretId",
        "Signature",
        "SignatureMethod",
        "RequestClient",
        "Language",
        "Token",
    }
    return [(k, v) for k, v in parse_qsl(raw.raw_query, keep_blank_values=True) if k not in common]


names = st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,8}", fullmatch=True)
COMMON_NAMES = frozenset(
    {"Action", "Version", "Region", "Timestamp", "Nonce", "SecretId", "Signature", "Token", "Language"}
)
trees = st.recursive(
    st.text(max_size=10),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=12), st.dictionaries(names, inner, min_size=1, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(names.filter(lambda n: n not in COMMON_NAMES), trees, max_size=5))
def test_unflatten_inverts_the_sdk_flattening(capture: Capture, params: dict[str, Any]) -> None:
    # Arrays of more than 10 items matter: "DeviceNames.10" sorts before "DeviceNames.2" as a string.
    flat = sdk_flatten(capture, params)
    assert unflatten(flat) == params
    assert unflatten(flat[::-1]) == params


# --- decode_params: shape and names ------------------------------------------------------------------------

CREATE_TASK = (
    string("TaskType", required=True, choices=("UpdateShadow", "PublishMessage")),
    string("ProductId", required=True, pattern=r"[A-Z0-9]{10}"),
    string("DeviceNameFilter", required=True, max_length=256),
    integer("ScheduleTimeInSeconds", required=True),
    object_of(
        "Tasks",
        object_of("UpdateShadowTask", string("Desired", required=True)),
        object_of("PublishMessageTask", string("Topic", required=True), string("Payload"), integer("Qos")),
        required=True,
    ),
    integer("MaxExecutionTimeInSeconds", min_value=1, max_value=86400),
)


def test_decode_json_request() -> None:
    raw = {
        "TaskType": "UpdateShadow",
        "ProductId": "ABCDE12345",
        "DeviceNameFilter": "^dev",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": '{"color":"red"}'}},
    }
    assert decode_params(raw, CREATE_TASK, from_strings=False) == {
        "task_type": "UpdateShadow",
        "product_id": "ABCDE12345",
        "device_name_filter": "^dev",
        "schedule_time_in_seconds": 0,
        "tasks": {"update_shadow_task": {"desired": '{"color":"red"}'}},
    }


def test_decode_flat_request_gives_the_same_values() -> None:
    query = (
        "TaskType=UpdateShadow&ProductId=ABCDE12345&DeviceNameFilter=%5Edev&ScheduleTimeInSeconds=0"
        "&Tasks.UpdateShadowTask.Desired=%7B%22color%22%3A%22red%22%7D&MaxExecutionTimeInSeconds=60"
    )
    decoded = decode_params(unflatten(pairs_of(query)), CREATE_TASK, from_strings=True)
    assert decoded["schedule_time_in_seconds"] == 0
    assert decoded["max_execution_time_in_seconds"] == 60
    assert decoded["tasks"] == {"update_shadow_task": {"desired": '{"color":"red"}'}}


def test_array_of_objects_and_snake_keys() -> None:
    spec = (
        object_of(
            "Attribute",
            array_of("Tags", object_of("Tag", string("Tag"), integer("Type"), string("Value")), max_items=5),
        ),
        array_of("DeviceNames", string("DeviceName")),
    )
    query = "Attribute.Tags.0.Tag=note&Attribute.Tags.0.Type=2&Attribute.Tags.0.Value=x&DeviceNames.0=a"
    assert decode_params(unflatten(pairs_of(query)), spec, from_strings=True) == {
        "attribute": {"tags": [{"tag": "note", "type": 2, "value": "x"}]},
        "device_names": ["a"],
    }


def test_null_and_absent_optional_parameters_are_left_out() -> None:
    spec = (integer("Offset"), object_of("Tasks", string("Topic"), string("Payload")))
    assert decode_params({}, spec, from_strings=False) == {}
    assert decode_params({"Offset": None, "Tasks": {"Topic": "t", "Payload": None}}, spec, from_strings=False) == {
        "tasks": {"topic": "t"}
    }


def message_of(raw: dict[str, Any], spec: tuple[Decl, ...], *, from_strings: bool) -> ApiError:
    with pytest.raises(ApiError) as info:
        decode_params(raw, spec, from_strings=from_strings)
    return info.value


def test_unknown_parameter() -> None:
    error = message_of({"Offset": 0, "Colour": "red"}, (integer("Offset"),), from_strings=False)
    assert type(error) is UnknownParameter
    assert error.message == "The parameter `Colour` is not recognized."
    assert error.localized("zh-CN") == "参数 `Colour` 无法识别。"


def test_unknown_nested_member() -> None:
    raw = {
        "TaskType": "UpdateShadow",
        "ProductId": "ABCDE12345",
        "DeviceNameFilter": "x",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"Foo": {}},
    }
    error = message_of(raw, CREATE_TASK, from_strings=False)
    assert type(error) is UnknownParameter
    assert error.message == "The parameter `Tasks.Foo` is not recognized."


def test_unknown_member_inside_an_array_element() -> None:
    spec = (array_of("Tags", object_of("Tag", string("Tag"))),)
    error = message_of({"Tags": [{"Tag": "a"}, {"Tga": "b"}]}, spec, from_strings=False)
    assert error.message == "The parameter `Tags.1.Tga` is not recognized."


def test_unknown_parameter_even_when_null() -> None:
    assert type(message_of({"Colour": None}, (integer("Offset"),), from_strings=False)) is UnknownParameter


def test_missing_parameter() -> None:
    error = message_of({"Offset": 0}, (integer("Offset"), integer("Limit", required=True)), from_strings=False)
    assert type(error) is MissingParameter
    assert error.message == "The request is missing a required parameter `Limit`."
    assert error.localized("zh-CN") == "缺少必需参数 `Limit`。"


def test_required_parameter_sent_as_null_is_missing() -> None:
    assert type(message_of({"Limit": None}, (integer("Limit", required=True),), from_strings=False)) is (
        MissingParameter
    )


def test_missing_nested_member() -> None:
    raw = {
        "TaskType": "PublishMessage",
        "ProductId": "ABCDE12345",
        "DeviceNameFilter": "x",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"PublishMessageTask": {"Payload": "hi"}},
    }
    error = message_of(raw, CREATE_TASK, from_strings=False)
    assert type(error) is MissingParameter
    assert error.message == "The request is missing a required parameter `Tasks.PublishMessageTask.Topic`."


# --- decode_params: coercion table -------------------------------------------------------------------------

U64 = 2**64 - 1
I64 = 2**63 - 1


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        (Kind.INTEGER, "0", 0),
        (Kind.INTEGER, "42", 42),
        (Kind.INTEGER, "007", 7),
        (Kind.INTEGER, str(I64), I64),
        (Kind.INT64, "-5", -5),
        (Kind.INT64, str(-(2**63)), -(2**63)),
        (Kind.INT64, str(I64), I64),
        (Kind.BOOLEAN, "true", True),
        (Kind.BOOLEAN, "True", True),
        (Kind.BOOLEAN, "1", True),
        (Kind.BOOLEAN, "false", False),
        (Kind.BOOLEAN, "False", False),
        (Kind.BOOLEAN, "0", False),
        (Kind.STRING, "", ""),
        (Kind.STRING, "123", "123"),
        (Kind.STRING, "true", "true"),
    ],
)
def test_coercion_from_strings(kind: Kind, value: str, expected: Any) -> None:
    decoded = decode_params({"V": value}, (scalar("V", kind),), from_strings=True)["v"]
    assert decoded == expected and type(decoded) is type(expected)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Kind.INTEGER, "abc"),
        (Kind.INTEGER, "1.0"),
        (Kind.INTEGER, " 1"),
        (Kind.INTEGER, "+1"),
        (Kind.INTEGER, "1_000"),
        (Kind.INTEGER, "１"),  # a full-width digit: int() would take it, the wire must not
        (Kind.INTEGER, ""),
        (Kind.INTEGER, "-1"),
        (Kind.INTEGER, str(U64 + 1)),
        (Kind.INTEGER, "9" * 5000),
        (Kind.INT64, str(I64 + 1)),
        (Kind.BOOLEAN, "yes"),
        (Kind.BOOLEAN, "TRUE"),
        (Kind.BOOLEAN, ""),
    ],
)
def test_coercion_from_strings_refuses(kind: Kind, value: str) -> None:
    error = message_of({"V": value}, (scalar("V", kind),), from_strings=True)
    assert type(error) is InvalidParameter
    assert error.message.startswith(f"The parameter `V` must be {'an' if kind is not Kind.BOOLEAN else 'a'} ")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Kind.INTEGER, 0),
        (Kind.INTEGER, I64),
        (Kind.INT64, -(2**63)),
        (Kind.INT64, I64),
        (Kind.BOOLEAN, True),
        (Kind.BOOLEAN, False),
        (Kind.STRING, ""),
    ],
)
def test_json_native_types(kind: Kind, value: Any) -> None:
    decoded = decode_params({"V": value}, (scalar("V", kind),), from_strings=False)["v"]
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize(
    ("kind", "value", "got"),
    [
        (Kind.INTEGER, True, "`true`"),  # bool is not an int on the wire
        (Kind.INTEGER, 1.0, "`1.0`"),
        (Kind.INTEGER, 1.5, "`1.5`"),
        (Kind.INTEGER, "1", '`"1"`'),  # quoted, so the user sees it was a String
        (Kind.INTEGER, -1, "`-1`"),
        (Kind.INTEGER, U64 + 1, f"`{U64 + 1}`"),
        (Kind.INTEGER, 1.8446744073709552e19, "`1.8446744073709552e+19`"),  # how orjson reads 2**64
        (Kind.INT64, I64 + 1, f"`{I64 + 1}`"),
        (Kind.BOOLEAN, 1, "`1`"),
        (Kind.BOOLEAN, "true", '`"true"`'),
        (Kind.STRING, 5, "`5`"),
        (Kind.STRING, False, "`false`"),
        (Kind.STRING, {"a": 1}, "an Object"),
        (Kind.STRING, ["a"], "an Array"),
        (Kind.ARRAY, "a", '`"a"`'),
        (Kind.ARRAY, {"0": "a"}, "an Object"),
        (Kind.OBJECT, ["a"], "an Array"),
        (Kind.OBJECT, "{}", '`"{}"`'),
    ],
)
def test_json_wrong_types(kind: Kind, value: Any, got: str) -> None:
    param = (
        array_of("V", string("I"))
        if kind is Kind.ARRAY
        else object_of("V", string("I"))
        if kind is Kind.OBJECT
        else scalar("V", kind)
    )
    error = message_of({"V": value}, (param,), from_strings=False)
    assert type(error) is InvalidParameter
    assert error.message.endswith(f", got {got}.")
    assert "参数 `V` 应为" in error.localized("zh-CN")


def test_wrong_type_message_reads_well() -> None:
    error = message_of({"Offset": "abc"}, (integer("Offset"),), from_strings=True)
    assert error.message == "The parameter `Offset` must be an Integer, got `abc`."
    assert error.localized("zh-CN") == "参数 `Offset` 应为 Integer（整数），实际为 `abc`。"
    # the field's own range, not the wire type's (a negative number is no Integer at all)
    error = message_of({"Offset": -1}, (integer("Offset"),), from_strings=False)
    assert error.message == f"The parameter `Offset` must be an Integer from 0 to {I64}, got `-1`."
    error = message_of({"Limit": -1}, (integer("Limit", min_value=10, max_value=250),), from_strings=False)
    assert error.message == "The parameter `Limit` must be an Integer from 10 to 250, got `-1`."
    error = message_of({"On": "yes"}, (boolean("On"),), from_strings=True)
    assert error.message == "The parameter `On` must be a Boolean (true or false), got `yes`."


def test_json_in_a_query_string_gets_a_hint() -> None:
    error = message_of({"Tasks": '{"A": 1}'}, (object_of("Tasks", string("A")),), from_strings=True)
    assert error.message == (
        'The parameter `Tasks` must be an Object, got `{"A": 1}`. In a GET or form request send its members '
        "as separate parameters, e.g. `Tasks.Name=...`."
    )
    error = message_of({"Names": "a,b"}, (array_of("Names", string("Name")),), from_strings=True)
    assert "e.g. `Names.0=...`" in error.message


def test_flat_value_where_a_structure_is_expected_and_back() -> None:
    error = message_of({"Offset": ["1"]}, (integer("Offset"),), from_strings=True)
    assert error.message == "The parameter `Offset` must be an Integer, got an Array."
    error = message_of({"Tasks": {"A": {"B": "x"}}}, (object_of("Tasks", string("A")),), from_strings=True)
    assert error.message == "The parameter `Tasks.A` must be a String, got an Object."


def test_wrong_type_of_an_array_element_names_its_index() -> None:
    spec = (array_of("Ids", integer("Id")),)
    error = message_of({"Ids": [1, "2"]}, spec, from_strings=False)
    assert error.message == 'The parameter `Ids.1` must be an Integer, got `"2"`.'
    error = message_of({"Ids": [1, None]}, spec, from_strings=False)
    assert error.message == "The parameter `Ids.1` must be an Integer, got null."


def test_long_values_are_cut_short_in_messages() -> None:
    error = message_of({"Offset": "x" * 1000}, (integer("Offset"),), from_strings=True)
    assert len(error.message) < 150 and error.message.endswith("...`.")


# --- decode_params: value rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        (
            integer("Limit", min_value=10, max_value=250),
            "500",
            "The parameter `Limit` must be between 10 and 250, got `500`.",
        ),
        (
            integer("Limit", min_value=10, max_value=250),
            "9",
            "The parameter `Limit` must be between 10 and 250, got `9`.",
        ),
        (integer("Offset", min_value=1), "0", "The parameter `Offset` must be at least 1, got `0`."),
        (int64("Delta", max_value=-1), "0", "The parameter `Delta` must be at most -1, got `0`."),
        (
            string("DeviceName", max_length=48),
            "d" * 49,
            "The parameter `DeviceName` must be at most 48 characters long, got 49 characters.",
        ),
        (
            string("ProductId", pattern=r"[A-Z0-9]{10}"),
            "ab!",
            "The parameter `ProductId` has an invalid format: `ab!` does not match `[A-Z0-9]{10}`.",
        ),
        (
            string("TaskType", choices=("UpdateShadow", "PublishMessage")),
            "Reboot",
            "The parameter `TaskType` must be one of `UpdateShadow`, `PublishMessage`, got `Reboot`.",
        ),
        (integer("Qos", choices=(0, 1)), "2", "The parameter `Qos` must be one of `0`, `1`, got `2`."),
    ],
)
def test_value_rules(param: Decl, value: str, message: str) -> None:
    error = message_of({param.name: value}, (param,), from_strings=True)
    assert type(error) is InvalidParameterValue
    assert error.message == message
    assert error.localized("zh-CN").startswith(f"参数 `{param.name}`")


def test_value_rules_accept_the_boundaries() -> None:
    spec = (
        integer("Limit", min_value=10, max_value=250),
        string("DeviceName", max_length=3),
        string("ProductId", pattern=r"[A-Z0-9]{2}"),
    )
    raw = {"Limit": 250, "DeviceName": "设备名", "ProductId": "A1"}  # max_length counts characters
    assert decode_params(raw, spec, from_strings=False) == {
        "limit": 250,
        "device_name": "设备名",
        "product_id": "A1",
    }
    assert decode_params({"Limit": 10}, spec, from_strings=False) == {"limit": 10}


def test_pattern_must_match_the_whole_value() -> None:
    error = message_of({"P": "AB\n"}, (string("P", pattern=r"[A-Z]+"),), from_strings=False)
    assert type(error) is InvalidParameterValue


def test_too_many_items() -> None:
    spec = (array_of("DeviceNames", string("DeviceName"), max_items=2),)
    error = message_of({"DeviceNames": ["a", "b", "c"]}, spec, from_strings=False)
    assert type(error) is InvalidParameterValue
    assert error.message == "The parameter `DeviceNames` may hold at most 2 items, got 3."
    assert error.localized("zh-CN") == "参数 `DeviceNames` 最多包含 2 个元素，实际为 3 个。"


def test_rules_apply_inside_arrays() -> None:
    spec = (array_of("DeviceNames", string("DeviceName", max_length=2)),)
    error = message_of({"DeviceNames": ["ab", "abc"]}, spec, from_strings=False)
    assert type(error) is InvalidParameterValue
    assert "`DeviceNames.1`" in error.message


def test_type_errors_come_before_value_errors() -> None:
    # "abc" for a ranged Integer is a type problem (InvalidParameter), not a range one.
    error = message_of({"Limit": "abc"}, (integer("Limit", min_value=10),), from_strings=True)
    assert type(error) is InvalidParameter


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=I64))
def test_every_int64_survives_both_encodings(number: int) -> None:
    spec = (integer("N"),)
    assert decode_params({"N": str(number)}, spec, from_strings=True) == {"n": number}
    assert decode_params({"N": number}, spec, from_strings=False) == {"n": number}


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=I64 + 1, max_value=U64))
def test_an_integer_the_store_cannot_hold_is_a_value_error_naming_the_range(number: int) -> None:
    # a uint64 on the wire, but every integer column is a signed 64-bit one: refused before any SQL
    for raw, from_strings in (({"Offset": str(number)}, True), ({"Offset": number}, False)):
        error = message_of(raw, (integer("Offset"),), from_strings=from_strings)
        assert type(error) is InvalidParameterValue
        assert error.message == f"The parameter `Offset` must be between 0 and {I64}, got `{number}`."


def test_unknown_parameter_suggests_the_declared_spelling() -> None:
    error = message_of({"ProductId": "X"}, (string("ProductID", required=True),), from_strings=False)
    assert type(error) is UnknownParameter
    assert error.message == (
        "The parameter `ProductId` is not recognized. Did you mean `ProductID`? (parameter names are case-sensitive)"
    )
    nested = (object_of("Tasks", string("UpdateShadowTask")),)
    assert (
        "Did you mean `Tasks.UpdateShadowTask`?"
        in message_of({"Tasks": {"updateShadowTask": "x"}}, nested, from_strings=False).message
    )
    assert (
        "Did you mean `TaskType`?" in message_of({"taskType": "x"}, (string("TaskType"),), from_strings=False).message
    )
    assert "Did you mean" not in message_of({"Colour": "x"}, (string("TaskType"),), from_strings=False).message


@pytest.mark.parametrize("from_strings", [True, False])
@pytest.mark.parametrize("value", ["\x00", "lamp\x00", "\x00\x00x"])
def test_a_string_holding_nul_is_a_value_error_naming_the_parameter(value: str, from_strings: bool) -> None:
    # PostgreSQL cannot store U+0000 in text and SQLite would: refused for every String, before any store
    spec = (string("ProductId"), object_of("Props", string("ProductDescription")), array_of("Names", string("N")))
    for raw, path in (
        ({"ProductId": value}, "ProductId"),
        ({"Props": {"ProductDescription": value}}, "Props.ProductDescription"),
        ({"Names": ["ok", value]}, "Names.1"),
    ):
        error = message_of(raw, spec, from_strings=from_strings)
        assert type(error) is InvalidParameterValue
        position = value.index("\x00") + 1
        assert error.message == (
            f"The parameter `{path}` must not contain the NUL character (U+0000), found at character {position}; "
            "remove it."
        )
        assert error.localized("zh-CN").startswith(f"参数 `{path}` 不能包含 NUL 字符")


def test_nul_is_refused_before_the_other_string_rules() -> None:
    # a NUL in a value that also breaks the pattern or the choices names the NUL, the actual problem
    for decl in (string("P", pattern=r"[A-Z]+"), string("T", choices=("A", "B")), string("L", max_length=1)):
        error = message_of({decl.name: "AB\x00"}, (decl,), from_strings=False)
        assert "NUL" in error.message


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])))
def test_every_other_string_passes(value: str) -> None:
    assert decode_params({"S": value}, (string("S"),), from_strings=False) == {"s": value}

"""Parameter declarations (api.schema), un-flattening and decoding (api.decoding)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tencentcloud.common.abstract_client import AbstractClient

from fleetops.api.decoding import decode_params, unflatten
from fleetops.api.schema import Kind, Param, to_snake
from fleetops.errors import (
    ApiError,
    InvalidParameter,
    InvalidParameterValue,
    MissingParameter,
    UnknownParameter,
)

# --- short constructors, so the declarations in these tests read like the vendor's tables --------------


def string(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    max_length: int | None = None,
    pattern: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Param:
    return Param(name, Kind.STRING, required, doc, max_length=max_length, pattern=pattern, choices=choices)


def integer(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    min_value: int | None = None,
    max_value: int | None = None,
    choices: tuple[int, ...] | None = None,
) -> Param:
    """An unsigned 64-bit integer (the vendor's ``Integer``)."""
    return Param(name, Kind.INTEGER, required, doc, min_value=min_value, max_value=max_value, choices=choices)


def int64(
    name: str,
    *,
    required: bool = False,
    doc: str = "",
    min_value: int | None = None,
    max_value: int | None = None,
    choices: tuple[int, ...] | None = None,
) -> Param:
    """A signed 64-bit integer (the vendor's ``Int64``)."""
    return Param(name, Kind.INT64, required, doc, min_value=min_value, max_value=max_value, choices=choices)


def boolean(name: str, *, required: bool = False, doc: str = "") -> Param:
    return Param(name, Kind.BOOLEAN, required, doc)


def object_of(name: str, *fields: Param, required: bool = False, doc: str = "") -> Param:
    return Param(name, Kind.OBJECT, required, doc, fields=fields)


def array_of(name: str, item: Param, *, required: bool = False, doc: str = "", max_items: int | None = None) -> Param:
    """An Array; ``item`` describes each element (its ``name`` and ``required`` are not used)."""
    return Param(name, Kind.ARRAY, required, doc, item=item, max_items=max_items)


# --- schema ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "snake"),
    [
        ("ProductId", "product_id"),
        ("ProductID", "product_id"),
        ("MaxExecutionTimeInSeconds", "max_execution_time_in_seconds"),
        ("DeviceNames", "device_names"),
        ("Offset", "offset"),
        ("DefinedPsk", "defined_psk"),
        ("ScheduleTimeInSeconds", "schedule_time_in_seconds"),
        ("Sha256Hash", "sha256_hash"),
        ("HTTPSUrl", "https_url"),
    ],
)
def test_snake_name(name: str, snake: str) -> None:
    assert to_snake(name) == snake
    assert string(name).snake_name == snake


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Param("A", Kind.STRING, min_value=1), "min_value/max_value need"),
        (lambda: Param("A", Kind.INTEGER, max_length=3), "max_length/pattern need"),
        (lambda: Param("A", Kind.STRING, choices=(1, 2)), "choices must be"),
        (lambda: Param("A", Kind.INTEGER, choices=(True,)), "choices must be"),
        (lambda: Param("A", Kind.INTEGER, choices=()), "choices must be"),
        (lambda: Param("A", Kind.BOOLEAN, choices=("x",)), "choices need"),
        (lambda: Param("A", Kind.STRING, fields=(string("B"),)), "fields need"),
        (lambda: Param("A", Kind.ARRAY), "an Array needs an item"),
        (lambda: Param("A", Kind.STRING, max_items=3), "item/max_items need"),
        (lambda: object_of("A", string("ProductId"), string("ProductID")), "clash"),
        (lambda: object_of("A", string("B"), integer("B")), "clash"),
    ],
)
def test_wrong_declarations_fail_at_import(make: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make()


def test_bad_pattern_fails_at_declaration() -> None:
    with pytest.raises(Exception, match="unterminated"):
        string("A", pattern="[a-")


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


def sdk_flatten(params: dict[str, Any]) -> dict[str, Any]:
    """The SDK's own flattening (AbstractClient._format_params); it does not use the client's state."""
    client = object.__new__(AbstractClient)
    flat = client._fix_params(params)
    assert isinstance(flat, dict)
    return flat


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True)
trees = st.recursive(
    st.text(max_size=10),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=12), st.dictionaries(names, inner, min_size=1, max_size=4)
    ),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, trees, max_size=5))
def test_unflatten_inverts_the_sdk_flattening(params: dict[str, Any]) -> None:
    # Arrays of more than 10 items matter: "DeviceNames.10" sorts before "DeviceNames.2" as a string.
    flat = [(str(k), str(v)) for k, v in sdk_flatten(params).items()]
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


def message_of(raw: dict[str, Any], spec: tuple[Param, ...], *, from_strings: bool) -> ApiError:
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
        (Kind.INTEGER, str(U64), U64),
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
    decoded = decode_params({"V": value}, (Param("V", kind),), from_strings=True)["v"]
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
    error = message_of({"V": value}, (Param("V", kind),), from_strings=True)
    assert type(error) is InvalidParameter
    assert error.message.startswith(f"The parameter `V` must be {'an' if kind is not Kind.BOOLEAN else 'a'} ")


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Kind.INTEGER, 0),
        (Kind.INTEGER, U64),
        (Kind.INT64, -(2**63)),
        (Kind.INT64, I64),
        (Kind.BOOLEAN, True),
        (Kind.BOOLEAN, False),
        (Kind.STRING, ""),
    ],
)
def test_json_native_types(kind: Kind, value: Any) -> None:
    decoded = decode_params({"V": value}, (Param("V", kind),), from_strings=False)["v"]
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
    param = Param("V", kind, item=string("I") if kind is Kind.ARRAY else None)
    error = message_of({"V": value}, (param,), from_strings=False)
    assert type(error) is InvalidParameter
    assert error.message.endswith(f", got {got}.")
    assert "参数 `V` 应为" in error.localized("zh-CN")


def test_wrong_type_message_reads_well() -> None:
    error = message_of({"Offset": "abc"}, (integer("Offset"),), from_strings=True)
    assert error.message == "The parameter `Offset` must be an Integer, got `abc`."
    assert error.localized("zh-CN") == "参数 `Offset` 应为 Integer（整数），实际为 `abc`。"
    error = message_of({"Offset": -1}, (integer("Offset"),), from_strings=False)
    assert error.message == f"The parameter `Offset` must be an Integer from 0 to {U64}, got `-1`."
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
def test_value_rules(param: Param, value: str, message: str) -> None:
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
@given(st.integers(min_value=0, max_value=U64))
def test_every_uint64_survives_both_encodings(number: int) -> None:
    spec = (integer("N"),)
    assert decode_params({"N": str(number)}, spec, from_strings=True) == {"n": number}
    assert decode_params({"N": number}, spec, from_strings=False) == {"n": number}

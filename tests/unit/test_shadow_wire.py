"""The wire shapes of shadows: the MQTT requests and replies (messaging/shadow_protocol.py) and the API's
``Data`` documents (api/actions/shadows.py), byte for byte.

The example messages are the ones of docs/device-protocol.md#device-shadow and docs/api.md, copied here because a test
must not depend on a document's prose.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fleetops.api.actions.shadows import render_describe_shadow_data, render_update_shadow_data
from fleetops.domain.shadow import (
    DeviceUpdate,
    JSONObject,
    Shadow,
    apply_desired,
    apply_device_update,
    check_version,
    parse_state_json,
    stamp_metadata,
    validate_state_document,
)
from fleetops.errors import (
    ApiError,
    InternalError,
    InvalidJSON,
    InvalidParameterValue,
    JSONHasInvalidNode,
    JSONLevelExceedLimit,
    JSONSizeExceedLimit,
    ParamIncomplete,
    UpdateVersionNotMatch,
)
from fleetops.messaging.shadow_protocol import (
    DeltaPush,
    ResultCode,
    ShadowOp,
    ShadowRequest,
    ShadowRequestRejected,
    parse_shadow_request,
    render_delta_push,
    render_error_reply,
    render_get_reply,
    render_update_reply,
    render_version_mismatch_reply,
    result_code,
)


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def update(state: object, *, version: int | None = None, overwrite: bool = False) -> DeviceUpdate:
    return DeviceUpdate(state, version, overwrite)


def shadow_with(
    reported: JSONObject | None = None, desired: JSONObject | None = None, *, version: int = 1, ts: int = 1000
) -> Shadow:
    reported = reported or {}
    return Shadow(
        reported=reported,
        desired=desired,
        metadata_reported=stamp_metadata(None, None, reported, ts),
        metadata_desired=stamp_metadata(None, None, desired or {}, ts),
        version=version,
        timestamp_ms=ts,
    )


# --- result codes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ParamIncomplete(), 5000),
        (JSONLevelExceedLimit(), 5002),
        (JSONHasInvalidNode(), 5003),
        (InvalidJSON(), 5004),
        (UpdateVersionNotMatch(), 5005),
        (JSONSizeExceedLimit(), 5006),
        (InvalidParameterValue(), 5101),
        (InternalError(), 5100),
        (ApiError(), 5100),
    ],
)
def test_result_code_follows_the_class_hierarchy(error: ApiError, code: int) -> None:
    assert result_code(error) == code


# --- device requests ---------------------------------------------------------------------------------------


def test_parse_get_and_update_requests() -> None:
    assert parse_shadow_request(b'{"type":"get","clientToken":"ABCDE12345-0"}') == ShadowRequest(
        ShadowOp.GET, "ABCDE12345-0"
    )
    payload = b'{"type":"update","state":{"reported":{"a":1}},"version":3,"overwriteUpdate":true}'
    assert parse_shadow_request(payload) == ShadowRequest(
        ShadowOp.UPDATE, None, DeviceUpdate({"reported": {"a": 1}}, 3, True)
    )


@pytest.mark.parametrize(
    ("token", "expected"),
    [('"abc"', "abc"), ("8480", "8480"), ("-3", "-3"), ("1.5", "1.5"), ("true", None), ("null", None)],
)
def test_client_token_numbers_become_their_decimal_text(token: str, expected: str | None) -> None:
    request = parse_shadow_request(f'{{"type":"get","clientToken":{token}}}'.encode())
    assert request.client_token == expected


@pytest.mark.parametrize(
    ("payload", "result", "request_type", "client_token"),
    [
        (b"not json", 5004, None, None),
        (b"\xff\xfe", 5004, None, None),
        (b'["get"]', 5004, None, None),
        (b'{"clientToken":"t"}', 5000, None, "t"),
        (b'{"type":"update","clientToken":"t"}', 5000, "update", "t"),
        (b'{"type":"update","state":null,"clientToken":"t"}', 5000, "update", "t"),
        (b'{"type":"delete","clientToken":"t"}', 5101, "delete", "t"),
        (b'{"type":"delta","clientToken":7}', 5101, "delta", "7"),
        (b'{"type":5}', 5101, None, None),
        (b'{"type":"update","state":{},"version":"3"}', 5101, "update", None),
        (b'{"type":"update","state":{},"version":3.0}', 5101, "update", None),
        (b'{"type":"update","state":{},"version":true}', 5101, "update", None),
        (b'{"type":"update","state":{},"overwriteUpdate":1}', 5101, "update", None),
    ],
)
def test_bad_requests_carry_the_result_and_what_could_be_read(
    payload: bytes, result: int, request_type: str | None, client_token: str | None
) -> None:
    with pytest.raises(ShadowRequestRejected) as caught:
        parse_shadow_request(payload)
    assert caught.value.result == result
    assert (caught.value.request_type, caught.value.client_token) == (request_type, client_token)


# --- wire shapes: the documented example sequence, byte for byte -----------------------------------------------


def test_never_modified_shadow_get_reply() -> None:
    reply = render_get_reply(Shadow.new(), "ABCDE12345-0", 1700000000456)
    assert dumps(reply) == (
        '{"clientToken":"ABCDE12345-0","payload":{"state":{"reported":{}},"timestamp":1700000000,"version":0},'
        '"result":0,"timestamp":1700000000,"type":"get"}'
    )


def test_the_spec_example_sequence() -> None:
    # 1. The device reports at version 0 ("if unsure, pass 0").
    request = parse_shadow_request(
        b'{"type":"update","state":{"reported":{"power":"off","brightness":40}},"version":0,'
        b'"clientToken":"ABCDE12345-1"}'
    )
    assert request.update is not None
    outcome = apply_device_update(Shadow.new(), request.update, 1700000005123)
    assert dumps(render_update_reply(outcome, request.client_token, 1700000005123)) == (
        '{"clientToken":"ABCDE12345-1","payload":{"state":{"reported":{"power":"off","brightness":40}},'
        '"timestamp":1700000005123,"version":1},"result":0,"timestamp":1700000005123,"type":"update"}'
    )
    # 2. UpdateDeviceShadow(State={"desired":{"power":"on"}}, ShadowVersion=1).
    state = validate_state_document(parse_state_json('{"desired":{"power":"on"}}'), allow_desired_only=True)
    check_version(outcome.shadow, 1)
    shadow, pushed = apply_desired(outcome.shadow, state["desired"], 1700000010456)
    assert dumps(render_update_shadow_data(shadow, state["desired"])) == (
        '{"payload":{"state":{"desired":{"power":"on"}},"metadata":{"desired":{"power":{"timestamp":'
        '1700000010456}}},"timestamp":1700000010456,"version":2},"result":0,"timestamp":1700000010456,'
        '"type":"update"}'
    )
    # 3. The device receives the delta.
    assert dumps(render_delta_push(shadow.version, pushed, 1700000010456)) == (
        '{"type":"delta","timestamp":1700000010456,"payload":{"state":{"power":"on"},"metadata":{"power":'
        '{"timestamp":1700000010456}},"version":2,"timestamp":1700000010456}}'
    )
    # 4. A get shows desired and the delta, the top-level timestamp in seconds.
    assert dumps(render_get_reply(shadow, "ABCDE12345-0", 1700000020001)) == (
        '{"clientToken":"ABCDE12345-0","payload":{"state":{"reported":{"power":"off","brightness":40},'
        '"desired":{"power":"on"},"delta":{"power":"on"}},"timestamp":1700000010456,"version":2},"result":0,'
        '"timestamp":1700000020,"type":"get"}'
    )
    # 5. The device acknowledges: reports the value and clears desired.
    request = parse_shadow_request(
        b'{"type":"update","state":{"reported":{"power":"on"},"desired":null},"version":2,"clientToken":"ABCDE12345-2"}'
    )
    assert request.update is not None
    outcome = apply_device_update(shadow, request.update, 1700000011789)
    assert dumps(render_update_reply(outcome, request.client_token, 1700000011789)) == (
        '{"clientToken":"ABCDE12345-2","payload":{"state":{"reported":{"power":"on"},"desired":null},'
        '"timestamp":1700000011789,"version":3},"result":0,"timestamp":1700000011789,"type":"update"}'
    )
    # 6. A stale update gets 5005 and the complete current document.
    request = parse_shadow_request(
        b'{"type":"update","state":{"reported":{"power":"off"}},"version":2,"clientToken":"ABCDE12345-4"}'
    )
    assert request.update is not None
    stale = apply_device_update(outcome.shadow, request.update, 1700000012000)
    assert dumps(render_update_reply(stale, request.client_token, 1700000012000)) == (
        '{"clientToken":"ABCDE12345-4","payload":{"state":{"reported":{"power":"on","brightness":40}},'
        '"timestamp":1700000011789,"version":3},"result":5005,"timestamp":1700000012000,"type":"update"}'
    )


def test_version_mismatch_reply_includes_desired_and_delta() -> None:
    reply = render_version_mismatch_reply(shadow_with({"a": 1}, {"a": 2}, version=3, ts=77), None, 99)
    assert reply == {
        "payload": {
            "state": {"reported": {"a": 1}, "desired": {"a": 2}, "delta": {"a": 2}},
            "timestamp": 77,
            "version": 3,
        },
        "result": 5005,
        "timestamp": 99,
        "type": "update",
    }


def test_error_replies_echo_what_could_be_read() -> None:
    assert dumps(render_error_reply("delete", "t", 5101, 42)) == (
        '{"clientToken":"t","result":5101,"timestamp":42,"type":"delete"}'
    )
    assert render_error_reply(None, None, ResultCode.INVALID_JSON, 42) == {"result": 5004, "timestamp": 42}


def test_update_reply_for_a_refused_update_is_an_error_reply() -> None:
    outcome = apply_device_update(shadow_with({"a": 1}), update({"delta": {}}), 9)
    assert render_update_reply(outcome, None, 42) == {"result": 5003, "timestamp": 42, "type": "update"}


def test_describe_shadow_data_matches_the_official_example() -> None:
    shadow = Shadow(
        reported={"color": "red"},
        desired=None,
        metadata_reported={"color": {"timestamp": 1509092895971}},
        metadata_desired={},
        version=5,
        timestamp_ms=1509443636326,
    )
    assert dumps(render_describe_shadow_data(shadow, 1509440846582)) == (
        '{"payload":{"state":{"reported":{"color":"red"}},"metadata":{"reported":{"color":{"timestamp":'
        '1509092895971}}},"timestamp":1509443636326,"version":5},"result":0,"timestamp":1509440846582,'
        '"type":"get"}'
    )


def test_describe_shadow_data_with_desired_and_of_a_new_shadow() -> None:
    data = render_describe_shadow_data(shadow_with({"a": 1}, {"a": 2}, version=2, ts=50), 99)
    assert data["payload"]["state"] == {"reported": {"a": 1}, "desired": {"a": 2}, "delta": {"a": 2}}
    assert data["payload"]["metadata"] == {
        "reported": {"a": {"timestamp": 50}},
        "desired": {"a": {"timestamp": 50}},
    }
    new = render_describe_shadow_data(Shadow.new(), 99)
    assert new["payload"] == {
        "state": {"reported": {}},
        "metadata": {"reported": {}},
        "timestamp": 99,
        "version": 0,
    }


def test_update_shadow_data_echoes_deletions_and_a_cleared_section() -> None:
    shadow, _ = apply_desired(shadow_with({}, {"a": 1}, version=1), {"a": None, "b": 2}, 60)
    data = render_update_shadow_data(shadow, {"a": None, "b": 2})
    assert data["payload"]["state"] == {"desired": {"a": None, "b": 2}}
    assert data["payload"]["metadata"] == {"desired": {"b": {"timestamp": 60}}}
    cleared, _ = apply_desired(shadow, None, 70)
    data = render_update_shadow_data(cleared, None)
    assert data["payload"] == {"state": {"desired": None}, "metadata": {}, "timestamp": 70, "version": 3}


def test_delta_push_metadata_mirrors_nested_values() -> None:
    push = render_delta_push(4, {"color": {"r": 1}, "on": True}, 10)
    assert push["payload"]["metadata"] == {"color": {"r": {"timestamp": 10}}, "on": {"timestamp": 10}}
    assert "clientToken" not in push and "result" not in push


@pytest.mark.parametrize("version", [0, 7, 12345678901234])
def test_delta_push_halves_equal_the_renderer(version: int) -> None:
    state: JSONObject = {"color": "red", "level": {"a": 1}}
    assert DeltaPush(state, 1700000010456).payload(version) == orjson.dumps(
        render_delta_push(version, state, 1700000010456)
    )

"""Shadow documents: merge (RFC 7396), delta, versions, validation, device requests and the exact wire shapes.

The example messages are the ones of the device protocol spec (sections 6.3-6.6) and of the iotcloud actions
spec (section 4), copied here because tests must not read the spec files.
"""

from __future__ import annotations

import copy
import sqlite3
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fleetops.domain.limits import SHADOW_MAX_DEPTH, SHADOW_STATE_MAX_BYTES
from fleetops.domain.shadow import (
    DeviceRequest,
    JSONObject,
    ResultCode,
    Shadow,
    ShadowOp,
    ShadowRequestRejected,
    apply_desired,
    apply_device_update,
    check_version,
    compute_delta,
    json_equal,
    merge_diff,
    merge_patch,
    parse_device_request,
    parse_state_json,
    render_delta_push,
    render_describe_shadow_data,
    render_error_reply,
    render_get_reply,
    render_update_reply,
    render_update_shadow_data,
    render_version_mismatch_reply,
    result_code,
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


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def update(state: object, *, version: int | None = None, overwrite: bool = False) -> DeviceRequest:
    return DeviceRequest(ShadowOp.UPDATE, "tok", state, version, overwrite)


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


# --- strategies --------------------------------------------------------------------------------------------

keys = st.text(alphabet="abcd", min_size=1, max_size=2)  # few keys, so patches collide with targets
scalars = st.booleans() | st.integers(-(2**53), 2**53) | st.text(alphabet="xyz", max_size=3)
# Stored documents: no nulls (merging removes them) and no null array elements (refused by validation).
docs = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
doc_objects = st.dictionaries(keys, docs, max_size=4)
# Patches: null values in objects delete keys; arrays are values and hold no null.
patches = st.recursive(
    scalars,
    lambda inner: st.lists(docs, max_size=3) | st.dictionaries(keys, inner | st.none(), max_size=3),
    max_leaves=12,
)
patch_objects = st.dictionaries(keys, patches | st.none(), max_size=4)
# Any JSON at all, for the RFC cross-check.
any_json = st.recursive(
    st.none() | scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)
shadows = st.builds(
    shadow_with,
    reported=doc_objects,
    desired=st.none() | doc_objects,
    version=st.integers(0, 1000),
    ts=st.integers(1, 10**12),
)


# --- merge_patch: RFC 7396 -------------------------------------------------------------------------------

# RFC 7396 appendix A, all fifteen rows: (original, patch, result).
RFC7396_EXAMPLES = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "expected"), RFC7396_EXAMPLES)
def test_merge_patch_rfc7396_appendix(original: Any, patch: Any, expected: Any) -> None:
    assert merge_patch(original, patch) == expected


@pytest.fixture(scope="module")
def sqlite_db() -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(":memory:")
    yield connection
    connection.close()


@given(target=any_json, patch=any_json)
def test_merge_patch_equals_sqlite_json_patch(sqlite_db: sqlite3.Connection, target: Any, patch: Any) -> None:
    # The engine merges in SQL with json_patch: both must give the same document.
    (merged,) = sqlite_db.execute("SELECT json_patch(?, ?)", (dumps(target), dumps(patch))).fetchone()
    assert merge_patch(target, patch) == orjson.loads(merged)


@given(target=any_json, patch=any_json)
def test_merge_patch_is_idempotent_and_does_not_modify_its_inputs(target: Any, patch: Any) -> None:
    target_before, patch_before = copy.deepcopy(target), copy.deepcopy(patch)
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once
    assert (target, patch) == (target_before, patch_before)


@given(target=doc_objects, patch=patch_objects)
def test_merge_patch_null_deletes_and_scalars_replace(target: JSONObject, patch: JSONObject) -> None:
    merged = merge_patch(target, patch)
    for key, value in patch.items():
        if value is None:
            assert key not in merged
        elif not isinstance(value, dict):
            assert merged[key] == value
    for key in target.keys() - patch.keys():
        assert merged[key] == target[key]


@given(old=doc_objects, new=doc_objects)
def test_merge_diff_is_a_patch_from_old_to_new(old: JSONObject, new: JSONObject) -> None:
    diff = merge_diff(old, new)
    assert json_equal(merge_patch(old, diff), new)
    assert merge_diff(new, new) == {}


def test_merge_diff_leaves_out_unchanged_keys_and_echoes_deletions() -> None:
    old = {"updateCount": 0, "updateCount12": "shadow", "gone": 1, "obj": {"x": 1, "y": 2}}
    new = {"updateCount": 1, "updateCount12": "shadow", "obj": {"x": 1, "y": 3}}
    assert merge_diff(old, new) == {"gone": None, "updateCount": 1, "obj": {"y": 3}}


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        (1, 1.0, True),
        (1, True, False),
        (0, False, False),
        (True, True, True),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": True}]}, True),
        ({"a": [1, {"b": True}]}, {"a": [1, {"b": 1}]}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1, 2], [2, 1], False),
        ("1", 1, False),
        (None, None, True),
        ({}, [], False),
    ],
)
def test_json_equal_keeps_booleans_apart_from_numbers(a: Any, b: Any, equal: bool) -> None:
    assert json_equal(a, b) is equal
    assert json_equal(b, a) is equal


# --- delta -------------------------------------------------------------------------------------------------


def test_delta_is_only_the_desired_keys_that_differ() -> None:
    reported = {"power": "off", "brightness": 40, "mode": "eco"}
    desired = {"power": "on", "brightness": 40, "color": "red"}
    assert compute_delta(reported, desired) == {"power": "on", "color": "red"}
    assert compute_delta(reported, None) is None
    assert compute_delta(reported, {}) == {}


@given(reported=doc_objects, desired=doc_objects)
def test_delta_holds_exactly_the_desired_keys_differing_from_reported(
    reported: JSONObject, desired: JSONObject
) -> None:
    delta = compute_delta(reported, desired)
    assert delta is not None
    for key, value in desired.items():
        differs = key not in reported or not json_equal(reported[key], value)
        assert (key in delta) is differs
        if differs:
            assert delta[key] == value
    assert delta.keys() <= desired.keys()


flat_objects = st.dictionaries(keys, scalars | st.lists(scalars, max_size=2), max_size=4)


@given(
    shadow=st.builds(shadow_with, reported=flat_objects, desired=st.none() | flat_objects),
    desired=st.dictionaries(keys, scalars, min_size=1, max_size=4),
)
def test_reporting_the_delta_values_empties_the_delta(shadow: Shadow, desired: JSONObject) -> None:
    # Flat values only: an object reported over a stored object is merged into it, not compared whole.
    with_desired, _ = apply_desired(shadow, desired, 5)
    delta = with_desired.delta
    assert delta is not None
    outcome = apply_device_update(with_desired, update({"reported": delta}), 6)
    assert outcome.accepted
    assert outcome.shadow.delta == {}


# --- validation --------------------------------------------------------------------------------------------


def nested(levels: int) -> JSONObject:
    """A state document exactly ``levels`` deep, the state object counting as level 1."""
    value: JSONObject = {}
    for _ in range(levels - 2):
        value = {"k": value}
    return {"reported": value}


def test_depth_limit_counts_the_state_object_as_level_one() -> None:
    assert nested(6) == {"reported": {"k": {"k": {"k": {"k": {}}}}}}
    validate_state_document(nested(SHADOW_MAX_DEPTH), allow_desired_only=False)
    with pytest.raises(JSONLevelExceedLimit, match="7 levels"):
        validate_state_document(nested(SHADOW_MAX_DEPTH + 1), allow_desired_only=False)


def test_arrays_count_as_levels() -> None:
    validate_state_document({"reported": {"a": [[[[1]]]]}}, allow_desired_only=False)
    with pytest.raises(JSONLevelExceedLimit):
        validate_state_document({"reported": {"a": [[[[[1]]]]]}}, allow_desired_only=False)


def test_very_deep_documents_are_refused_without_recursion_error() -> None:
    with pytest.raises(JSONLevelExceedLimit):
        validate_state_document(nested(5000), allow_desired_only=False)


def sized(total_bytes: int) -> JSONObject:
    """A state whose compact JSON is exactly ``total_bytes`` long."""
    state: JSONObject = {"reported": {"a": ""}}
    state["reported"]["a"] = "x" * (total_bytes - len(dumps(state)))
    assert len(dumps(state)) == total_bytes
    return state


def test_size_limit_is_8192_bytes_of_compact_utf8_json() -> None:
    validate_state_document(sized(SHADOW_STATE_MAX_BYTES), allow_desired_only=False)
    with pytest.raises(JSONSizeExceedLimit, match="8193 bytes"):
        validate_state_document(sized(SHADOW_STATE_MAX_BYTES + 1), allow_desired_only=False)


def test_size_counts_utf8_bytes_not_characters() -> None:
    state = {"reported": {"a": "é" * 4090}}  # 8180 bytes + 21 of framing, but only 4111 characters
    with pytest.raises(JSONSizeExceedLimit):
        validate_state_document(state, allow_desired_only=False)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ([1], "must be a JSON object"),
        ({"reported": {}, "delta": {}}, "illegal node"),
        ({"metadata": {}}, "illegal node"),
        ({"reported": 5}, "state.reported must be a JSON object or null"),
        ({"desired": [1]}, "state.desired must be a JSON object or null"),
        ({"reported": {"a": [1, None]}}, "must not contain null"),
        ({"reported": {"a": {"b": [[None]]}}}, "must not contain null"),
    ],
)
def test_invalid_nodes_are_refused(state: object, message: str) -> None:
    with pytest.raises(JSONHasInvalidNode, match=message):
        validate_state_document(state, allow_desired_only=False)


def test_the_api_accepts_only_the_desired_node() -> None:
    assert validate_state_document({"desired": {"a": 1}}, allow_desired_only=True) == {"desired": {"a": 1}}
    assert validate_state_document({"desired": None}, allow_desired_only=True) == {"desired": None}
    with pytest.raises(JSONHasInvalidNode, match=r"illegal node.*reported"):
        validate_state_document({"desired": {}, "reported": {}}, allow_desired_only=True)
    with pytest.raises(JSONHasInvalidNode, match="must contain the desired node"):
        validate_state_document({}, allow_desired_only=True)


def test_null_array_is_refused_before_depth_and_size() -> None:
    # Section 6.4 order: nodes (5003) before depth and size (5002, 5006).
    state = nested(SHADOW_MAX_DEPTH + 3)
    state["reported"]["bad"] = [None, "x" * 9000]
    with pytest.raises(JSONHasInvalidNode):
        validate_state_document(state, allow_desired_only=False)


def test_parse_state_json() -> None:
    assert parse_state_json('{"desired": {"color": "red"}}') == {"desired": {"color": "red"}}
    with pytest.raises(InvalidJSON, match="not valid JSON"):
        parse_state_json('{"desired": ')
    with pytest.raises(InvalidJSON, match="must be a JSON object"):
        parse_state_json("[1]")


def test_check_version() -> None:
    shadow = shadow_with({"a": 1}, version=3)
    check_version(shadow, 3)
    check_version(shadow, 0)  # 0 skips the check
    with pytest.raises(UpdateVersionNotMatch, match=r"ShadowVersion 2 .* current version 3"):
        check_version(shadow, 2)
    with pytest.raises(UpdateVersionNotMatch):
        check_version(shadow, 4)


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


# --- cloud-side writes -------------------------------------------------------------------------------------


def test_apply_desired_merges_bumps_the_version_and_returns_the_push() -> None:
    shadow = shadow_with({"power": "off"}, {"color": "red", "mode": "eco"}, version=4, ts=1000)
    new, pushed = apply_desired(shadow, {"color": "blue", "mode": None, "power": "off"}, 2000)
    assert new.desired == {"color": "blue", "power": "off"}
    assert new.version == 5
    assert new.timestamp_ms == 2000
    assert new.metadata_desired == {"color": {"timestamp": 2000}, "power": {"timestamp": 2000}}
    assert new.reported == shadow.reported and new.metadata_reported == shadow.metadata_reported
    # Every non-null key is pushed, even "power" whose value equals reported (spec 6.6 proposal).
    assert pushed == {"color": "blue", "power": "off"}


def test_apply_desired_that_only_deletes_pushes_nothing() -> None:
    new, pushed = apply_desired(shadow_with({}, {"a": 1}), {"a": None}, 2000)
    assert new.desired == {}
    assert pushed == {}


def test_apply_desired_none_removes_the_section() -> None:
    new, pushed = apply_desired(shadow_with({"a": 1}, {"a": 2}, version=7), None, 2000)
    assert (new.desired, new.metadata_desired, new.version, pushed) == (None, {}, 8, {})
    assert new.delta is None


def test_apply_desired_on_a_new_shadow_creates_the_section() -> None:
    new, _ = apply_desired(Shadow.new(), {"a": {"b": 1}}, 2000)
    assert new.desired == {"a": {"b": 1}}
    assert new.metadata_desired == {"a": {"b": {"timestamp": 2000}}}
    assert new.version == 1


def test_apply_desired_refuses_a_stored_state_over_the_size_limit() -> None:
    shadow = shadow_with({"big": "x" * (SHADOW_STATE_MAX_BYTES - 100)})
    with pytest.raises(JSONSizeExceedLimit, match="after this update"):
        apply_desired(shadow, {"more": "y" * 100}, 2000)


@given(shadow=shadows, patch=patch_objects, now=st.integers(1, 10**13))
def test_each_cloud_write_raises_the_version_by_one(shadow: Shadow, patch: JSONObject, now: int) -> None:
    new, pushed = apply_desired(shadow, patch, now)
    assert new.version == shadow.version + 1
    assert new.timestamp_ms == now
    assert new.desired == merge_patch(shadow.desired or {}, patch)
    assert pushed == {k: v for k, v in patch.items() if v is not None}


# --- metadata ----------------------------------------------------------------------------------------------


def shape(value: Any, *, metadata: bool) -> Any:
    """The tree of object keys, leaves as "leaf"; a metadata leaf is {"timestamp": int}."""
    if metadata and isinstance(value, dict) and value.keys() == {"timestamp"} and isinstance(value["timestamp"], int):
        return "leaf"
    if isinstance(value, dict):
        return {k: shape(v, metadata=metadata) for k, v in value.items()}
    return "leaf"


@given(start=doc_objects, steps=st.lists(patch_objects, max_size=5))
def test_metadata_mirrors_the_data_after_any_sequence_of_merges(start: JSONObject, steps: list[JSONObject]) -> None:
    data, metadata = start, stamp_metadata(None, None, start, 1)
    for now, patch in enumerate(steps, start=2):
        data, metadata = merge_patch(data, patch), stamp_metadata(data, metadata, patch, now)
        assert shape(metadata, metadata=True) == shape(data, metadata=False)


def test_metadata_of_an_object_written_over_a_scalar_and_back() -> None:
    data: JSONObject = {"a": 1}
    metadata = stamp_metadata(None, None, data, 1)
    metadata = stamp_metadata(data, metadata, {"a": {"timestamp": 5}}, 2)
    assert metadata == {"a": {"timestamp": {"timestamp": 2}}}  # an attribute called timestamp
    data = {"a": {"timestamp": 5}}
    assert stamp_metadata(data, metadata, {"a": 7}, 3) == {"a": {"timestamp": 3}}


def test_metadata_keeps_the_stamps_of_untouched_keys() -> None:
    data = {"a": 1, "o": {"x": 1, "y": 2}}
    metadata = stamp_metadata(None, None, data, 1)
    assert stamp_metadata(data, metadata, {"o": {"y": 3}, "b": [1]}, 9) == {
        "a": {"timestamp": 1},
        "o": {"x": {"timestamp": 1}, "y": {"timestamp": 9}},
        "b": {"timestamp": 9},
    }


# --- device updates ----------------------------------------------------------------------------------------


def test_device_update_replies_only_with_what_changed() -> None:
    # Recorded traffic: updateCount12 was already stored with that value, so the reply leaves it out.
    shadow = shadow_with({"updateCount": 0, "updateCount12": "shadow", "other": 1}, version=4)
    outcome = apply_device_update(shadow, update({"reported": {"updateCount": 1, "updateCount12": "shadow"}}), 9)
    assert outcome.accepted
    assert outcome.changed == {"reported": {"updateCount": 1}}
    assert outcome.shadow.reported == {"updateCount": 1, "updateCount12": "shadow", "other": 1}
    # Metadata stamps every written key, changed or not (section 6.4 step 7); untouched keys keep theirs.
    assert outcome.shadow.metadata_reported == {
        "updateCount": {"timestamp": 9},
        "updateCount12": {"timestamp": 9},
        "other": {"timestamp": 1000},
    }


def test_device_update_that_changes_nothing_still_bumps_the_version() -> None:
    shadow = shadow_with({"a": 1}, version=4)
    outcome = apply_device_update(shadow, update({"reported": {"a": 1, "gone": None}}), 9)
    assert (outcome.accepted, outcome.changed, outcome.shadow.version) == (True, {}, 5)
    outcome = apply_device_update(shadow, update({}), 9)
    assert (outcome.accepted, outcome.changed, outcome.shadow.version) == (True, {}, 5)


def test_device_deletes_a_reported_attribute() -> None:
    shadow = shadow_with({"power": "on", "brightness": 40})
    outcome = apply_device_update(shadow, update({"reported": {"brightness": None}}), 9)
    assert outcome.changed == {"reported": {"brightness": None}}
    assert outcome.shadow.reported == {"power": "on"}
    assert outcome.shadow.metadata_reported == {"power": {"timestamp": 1000}}


def test_device_clears_reported_and_desired_with_null() -> None:
    shadow = shadow_with({"a": 1}, {"b": 2}, version=2)
    outcome = apply_device_update(shadow, update({"reported": None, "desired": None}), 9)
    assert outcome.changed == {"reported": None, "desired": None}
    new = outcome.shadow
    assert (new.reported, new.desired, new.metadata_reported, new.metadata_desired) == ({}, None, {}, {})
    # Clearing what is already empty changes nothing, but is still an accepted update.
    again = apply_device_update(new, update({"reported": None, "desired": None}), 10)
    assert (again.changed, again.shadow.version) == ({}, 4)


def test_device_deletes_desired_keys_and_writes_desired_values() -> None:
    shadow = shadow_with({}, {"a": 1, "b": 2})
    outcome = apply_device_update(shadow, update({"desired": {"a": None, "c": 3}}), 9)
    assert outcome.changed == {"desired": {"a": None, "c": 3}}
    assert outcome.shadow.desired == {"b": 2, "c": 3}


def test_overwrite_update_replaces_the_given_sections_wholesale() -> None:
    shadow = shadow_with({"a": 1, "b": {"x": 1}}, {"d": 1})
    outcome = apply_device_update(shadow, update({"reported": {"b": {"y": 2}, "c": 3}}, overwrite=True), 9)
    assert outcome.shadow.reported == {"b": {"y": 2}, "c": 3}
    assert outcome.shadow.desired == {"d": 1}  # not given, not touched
    assert outcome.shadow.metadata_reported == {"b": {"y": {"timestamp": 9}}, "c": {"timestamp": 9}}
    assert outcome.changed == {"reported": {"a": None, "b": {"x": None, "y": 2}, "c": 3}}


@pytest.mark.parametrize("version", [None, 0, 7])
def test_version_absent_zero_or_equal_is_applied(version: int | None) -> None:
    outcome = apply_device_update(shadow_with({"a": 1}, version=7), update({"reported": {"a": 2}}, version=version), 9)
    assert outcome.accepted
    assert outcome.shadow.version == 8


@pytest.mark.parametrize("version", [6, 8, -1])
def test_other_versions_are_refused_with_5005(version: int) -> None:
    shadow = shadow_with({"a": 1}, version=7)
    outcome = apply_device_update(shadow, update({"reported": {"a": 2}}, version=version), 9)
    assert outcome.result is ResultCode.VERSION_MISMATCH
    assert outcome.shadow is shadow
    assert outcome.changed == {}
    assert isinstance(outcome.error, UpdateVersionNotMatch)


@pytest.mark.parametrize(
    ("state", "result"),
    [
        ({"delta": {}}, 5003),
        ({"reported": {"a": [None]}}, 5003),
        ("text", 5003),
        (nested(SHADOW_MAX_DEPTH + 1), 5002),
        (sized(SHADOW_STATE_MAX_BYTES + 1), 5006),
    ],
)
def test_invalid_device_updates_are_refused_and_change_nothing(state: object, result: int) -> None:
    shadow = shadow_with({"a": 1}, version=7)
    outcome = apply_device_update(shadow, update(state), 9)
    assert outcome.result == result
    assert outcome.shadow is shadow


def test_node_errors_come_before_the_version_check_and_the_version_before_the_limits() -> None:
    shadow = shadow_with({"a": 1}, version=7)
    assert apply_device_update(shadow, update({"delta": {}}, version=1), 9).result == 5003
    too_deep = nested(SHADOW_MAX_DEPTH + 1)
    assert apply_device_update(shadow, update(too_deep, version=1), 9).result == 5005


def test_a_device_update_growing_the_stored_state_over_the_limit_is_refused() -> None:
    shadow = shadow_with({"big": "x" * (SHADOW_STATE_MAX_BYTES - 100)})
    outcome = apply_device_update(shadow, update({"reported": {"more": "y" * 100}}), 9)
    assert outcome.result is ResultCode.JSON_TOO_LARGE
    assert outcome.shadow is shadow


def test_apply_device_update_needs_an_update_request() -> None:
    with pytest.raises(ValueError, match="update request"):
        apply_device_update(Shadow.new(), DeviceRequest(ShadowOp.GET), 9)


device_states = st.fixed_dictionaries(
    {}, optional={"reported": st.none() | patch_objects, "desired": st.none() | patch_objects}
) | st.sampled_from([{"delta": {}}, {"reported": {"a": [None]}}, nested(SHADOW_MAX_DEPTH + 1)])


@given(
    shadow=shadows,
    state=device_states,
    version=st.none() | st.integers(-1, 1001),
    overwrite=st.booleans(),
    now=st.integers(1, 10**13),
)
def test_accepted_updates_raise_the_version_by_one_and_rejected_ones_change_nothing(
    shadow: Shadow, state: JSONObject, version: int | None, overwrite: bool, now: int
) -> None:
    before, state_before = copy.deepcopy(shadow), copy.deepcopy(state)
    outcome = apply_device_update(shadow, update(state, version=version, overwrite=overwrite), now)
    assert state == state_before  # the request is not modified either
    assert shadow == before
    version_ok = version in (None, 0, shadow.version)
    if outcome.accepted:
        assert version_ok
        assert outcome.shadow.version == shadow.version + 1
        assert outcome.shadow.timestamp_ms == now
        assert outcome.error is None
    else:
        assert outcome.shadow is shadow
        assert outcome.changed == {}
        assert outcome.error is not None
        assert outcome.result == result_code(outcome.error)
        if outcome.result is ResultCode.VERSION_MISMATCH:
            assert not version_ok


@given(shadow=shadows, reported=patch_objects, desired=patch_objects)
def test_the_changed_state_turns_the_old_sections_into_the_new_ones(
    shadow: Shadow, reported: JSONObject, desired: JSONObject
) -> None:
    outcome = apply_device_update(shadow, update({"reported": reported, "desired": desired}), 5)
    assume(outcome.result not in (ResultCode.JSON_TOO_DEEP, ResultCode.JSON_TOO_LARGE))
    assert outcome.accepted
    new = outcome.shadow
    assert json_equal(merge_patch(shadow.reported, outcome.changed.get("reported", {})), new.reported)
    assert json_equal(merge_patch(shadow.desired or {}, outcome.changed.get("desired", {})), new.desired)


# --- device requests ---------------------------------------------------------------------------------------


def test_parse_get_and_update_requests() -> None:
    assert parse_device_request(b'{"type":"get","clientToken":"ABCDE12345-0"}') == DeviceRequest(
        ShadowOp.GET, "ABCDE12345-0"
    )
    payload = b'{"type":"update","state":{"reported":{"a":1}},"version":3,"overwriteUpdate":true}'
    assert parse_device_request(payload) == DeviceRequest(ShadowOp.UPDATE, None, {"reported": {"a": 1}}, 3, True)


@pytest.mark.parametrize(
    ("token", "expected"),
    [('"abc"', "abc"), ("8480", "8480"), ("-3", "-3"), ("1.5", "1.5"), ("true", None), ("null", None)],
)
def test_client_token_numbers_become_their_decimal_text(token: str, expected: str | None) -> None:
    request = parse_device_request(f'{{"type":"get","clientToken":{token}}}'.encode())
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
        parse_device_request(payload)
    assert caught.value.result == result
    assert (caught.value.request_type, caught.value.client_token) == (request_type, client_token)


# --- wire shapes: the spec's example sequence, byte for byte -----------------------------------------------


def test_never_modified_shadow_get_reply() -> None:
    reply = render_get_reply(Shadow.new(), "ABCDE12345-0", 1700000000456)
    assert dumps(reply) == (
        '{"clientToken":"ABCDE12345-0","payload":{"state":{"reported":{}},"timestamp":1700000000,"version":0},'
        '"result":0,"timestamp":1700000000,"type":"get"}'
    )


def test_the_spec_example_sequence() -> None:
    # 1. The device reports at version 0 ("if unsure, pass 0").
    request = parse_device_request(
        b'{"type":"update","state":{"reported":{"power":"off","brightness":40}},"version":0,'
        b'"clientToken":"ABCDE12345-1"}'
    )
    outcome = apply_device_update(Shadow.new(), request, 1700000005123)
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
    request = parse_device_request(
        b'{"type":"update","state":{"reported":{"power":"on"},"desired":null},"version":2,"clientToken":"ABCDE12345-2"}'
    )
    outcome = apply_device_update(shadow, request, 1700000011789)
    assert dumps(render_update_reply(outcome, request.client_token, 1700000011789)) == (
        '{"clientToken":"ABCDE12345-2","payload":{"state":{"reported":{"power":"on"},"desired":null},'
        '"timestamp":1700000011789,"version":3},"result":0,"timestamp":1700000011789,"type":"update"}'
    )
    # 6. A stale update gets 5005 and the complete current document.
    request = parse_device_request(
        b'{"type":"update","state":{"reported":{"power":"off"}},"version":2,"clientToken":"ABCDE12345-4"}'
    )
    stale = apply_device_update(outcome.shadow, request, 1700000012000)
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

"""Shadow documents, the pure rules: merge (RFC 7396), delta, versions, validation, device updates.

The wire shapes of both the MQTT replies and the API's Data are tested in test_shadow_wire.py.
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
    DeviceUpdate,
    JSONObject,
    Shadow,
    apply_desired,
    apply_device_update,
    check_version,
    compute_delta,
    is_flat,
    json_equal,
    merge_diff,
    merge_patch,
    merge_section,
    parse_state_json,
    stamp_metadata,
    state_view,
    validate_state_document,
)
from fleetops.errors import (
    ApiError,
    InvalidJSON,
    JSONHasInvalidNode,
    JSONLevelExceedLimit,
    JSONSizeExceedLimit,
    UpdateVersionNotMatch,
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
    # Metadata stamps every written key, changed or not (docs/device-protocol.md#update); untouched keys keep theirs.
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
    assert outcome.version_mismatch
    assert outcome.shadow is shadow
    assert outcome.changed == {}
    assert isinstance(outcome.error, UpdateVersionNotMatch)


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ({"delta": {}}, JSONHasInvalidNode),
        ({"reported": {"a": [None]}}, JSONHasInvalidNode),
        ("text", JSONHasInvalidNode),
        (nested(SHADOW_MAX_DEPTH + 1), JSONLevelExceedLimit),
        (sized(SHADOW_STATE_MAX_BYTES + 1), JSONSizeExceedLimit),
    ],
)
def test_invalid_device_updates_are_refused_and_change_nothing(state: object, error: type[ApiError]) -> None:
    shadow = shadow_with({"a": 1}, version=7)
    outcome = apply_device_update(shadow, update(state), 9)
    assert type(outcome.error) is error
    assert outcome.shadow is shadow


def test_node_errors_come_before_the_version_check_and_the_version_before_the_limits() -> None:
    shadow = shadow_with({"a": 1}, version=7)
    assert type(apply_device_update(shadow, update({"delta": {}}, version=1), 9).error) is JSONHasInvalidNode
    too_deep = nested(SHADOW_MAX_DEPTH + 1)
    assert apply_device_update(shadow, update(too_deep, version=1), 9).version_mismatch


def test_a_device_update_growing_the_stored_state_over_the_limit_is_refused() -> None:
    shadow = shadow_with({"big": "x" * (SHADOW_STATE_MAX_BYTES - 100)})
    outcome = apply_device_update(shadow, update({"reported": {"more": "y" * 100}}), 9)
    assert type(outcome.error) is JSONSizeExceedLimit
    assert outcome.shadow is shadow


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
        if outcome.version_mismatch:
            assert not version_ok


@given(shadow=shadows, reported=patch_objects, desired=patch_objects)
def test_the_changed_state_turns_the_old_sections_into_the_new_ones(
    shadow: Shadow, reported: JSONObject, desired: JSONObject
) -> None:
    outcome = apply_device_update(shadow, update({"reported": reported, "desired": desired}), 5)
    assume(not isinstance(outcome.error, JSONLevelExceedLimit | JSONSizeExceedLimit))
    assert outcome.accepted
    new = outcome.shadow
    assert json_equal(merge_patch(shadow.reported, outcome.changed.get("reported", {})), new.reported)
    assert json_equal(merge_patch(shadow.desired or {}, outcome.changed.get("desired", {})), new.desired)


# --- the merge the task engine runs in SQL for flat patches -------------------------------------------------


@given(old=st.none() | doc_objects, patch=patch_objects, now=st.integers(1, 10**13))
def test_merge_section_is_merge_patch_and_stamp_metadata(old: JSONObject | None, patch: JSONObject, now: int) -> None:
    metadata = stamp_metadata(None, None, old or {}, 1)
    merged, stamps = merge_section(old, metadata, patch, now)
    assert merged == merge_patch(old, patch)
    assert stamps == stamp_metadata(old, metadata, patch, now)


def test_is_flat() -> None:
    assert is_flat({"a": 1, "b": None, "c": [1, {"x": 1}]})  # an object inside an array is a value
    assert not is_flat({"a": {"b": 1}})


def test_state_view_shows_the_delta_only_with_a_desired_section() -> None:
    assert state_view(shadow_with({"a": 1})) == {"reported": {"a": 1}}
    assert state_view(shadow_with({"a": 1}, {"a": 2, "b": 3})) == {
        "reported": {"a": 1},
        "desired": {"a": 2, "b": 3},
        "delta": {"a": 2, "b": 3},
    }


@pytest.mark.parametrize(
    ("state", "path"),
    [
        ({"desired": {"a": "x\x00"}}, "desired.a"),
        ({"desired": {"a\x00": 1}}, "desired.a\x00"),
        ({"reported": {"a": {"b": ["ok", "\x00"]}}}, "reported.a.b.1"),
        ({"reported": {"a": [{"\x00": None}]}}, "reported.a.0.\x00"),
    ],
)
def test_a_state_holding_nul_is_invalid_json_on_every_path(state: JSONObject, path: str) -> None:
    # PostgreSQL's jsonb cannot hold \u0000 and SQLite's JSON would: one answer on both databases
    with pytest.raises(InvalidJSON, match="NUL") as refused:
        validate_state_document(state, allow_desired_only="reported" not in state)
    assert f"at {path}," in refused.value.message
    shadow = shadow_with({"a": 1}, version=3)
    outcome = apply_device_update(shadow, update(state), 9)
    assert type(outcome.error) is InvalidJSON  # result 5004 on the device's reply
    assert outcome.shadow is shadow

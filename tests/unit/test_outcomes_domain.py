"""Per-device outcome rules: tracked values, convergence, supersession, the window, the transition table."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.outcomes import (
    FAILURE_OUTCOMES,
    NEXT,
    OUTCOMES_BY_TYPE,
    DeviceOutcome,
    contradicts,
    count_by_outcome,
    effective_outcome,
    holds,
    may_change,
    shadow_verdict,
    sources,
    tracked_values,
    window_passed,
)
from fleetops.domain.shadow import merge_patch
from fleetops.domain.tasks import TaskType

W, C, S, NC = (DeviceOutcome.WRITTEN, DeviceOutcome.CONVERGED, DeviceOutcome.SUPERSEDED, DeviceOutcome.NOT_CONVERGED)


def test_tracked_values_are_the_leaves_a_patch_sets() -> None:
    patch = {"a": {"c": None, "e": {"f": 1}}, "x": None, "s": "t", "gone": {"only": None}}
    assert tracked_values(patch) == {"a": {"e": {"f": 1}}, "s": "t"}
    assert tracked_values({"k": None}) == {}


@pytest.mark.parametrize(
    ("state", "values", "expected"),
    [
        ({"color": "red", "level": 3}, {"color": "red"}, True),
        ({"color": "blue"}, {"color": "red"}, False),
        ({}, {"color": "red"}, False),
        (None, {"color": "red"}, False),
        ({"n": 1.0}, {"n": 1}, True),  # JSON numbers by value
        ({"b": 1}, {"b": True}, False),  # true is not 1
        ({"l": {"c": "red", "x": 1}}, {"l": {"c": "red"}}, True),  # nested: the leaves set
        ({"l": "red"}, {"l": {"c": "red"}}, False),
        ({"arr": [1, 2]}, {"arr": [1, 2]}, True),
        ({"arr": [1]}, {"arr": [1, 2]}, False),
        ({"anything": 1}, {}, True),  # a patch that only deletes converges at once
    ],
)
def test_holds(state: Any, values: Any, expected: bool) -> None:
    assert holds(state, values) is expected


@pytest.mark.parametrize(
    ("desired", "values", "expected"),
    [
        ({"color": "green"}, {"color": "red"}, True),
        ({"color": "red", "other": 1}, {"color": "red"}, False),
        ({}, {"color": "red"}, False),  # cleared (the device's acknowledgement): not a change of intent
        (None, {"color": "red"}, False),
        ({"l": {"c": "white"}}, {"l": {"c": "red"}}, True),
        ({"l": {"d": 1}}, {"l": {"c": "red"}}, False),
        ({"l": 5}, {"l": {"c": "red"}}, True),  # an object on the path replaced by a scalar
    ],
)
def test_contradicts(desired: Any, values: Any, expected: bool) -> None:
    assert contradicts(desired, values) is expected


def test_the_verdict_prefers_convergence() -> None:
    values = {"fw": "2"}
    assert shadow_verdict(values, {"fw": "2"}, {"fw": "3"}) is C
    assert shadow_verdict(values, {"fw": "1"}, {"fw": "3"}) is S
    assert shadow_verdict(values, {"fw": "1"}, {"fw": "2"}) is None
    assert shadow_verdict(values, {}, None) is None


@given(
    st.dictionaries(st.sampled_from("abcd"), st.one_of(st.integers(-3, 3), st.booleans(), st.text("xy", max_size=2))),
    st.dictionaries(st.sampled_from("abcd"), st.one_of(st.integers(-3, 3), st.booleans(), st.none())),
)
def test_a_state_merged_with_the_patch_holds_its_values(state: dict[str, Any], patch: dict[str, Any]) -> None:
    # what a device that applies a delta reports holds the task's values, whatever it reported before
    assert holds(merge_patch(state, patch), tracked_values(patch))
    assert not contradicts(merge_patch(state, patch), tracked_values(patch))


def test_not_converged_is_derived_from_the_window_and_final() -> None:
    assert effective_outcome(W, 1000, 500, 1500) is W  # the last millisecond of the window
    assert effective_outcome(W, 1000, 500, 1501) is NC
    assert effective_outcome(W, 1000, None, 10**12) is W  # no window: written until something decides
    assert effective_outcome(C, 1000, 500, 10**12) is C
    assert window_passed(1000, 500, 1501) and not window_passed(1000, None, 10**12)


def test_outcomes_only_move_forward() -> None:
    assert sources(C) == {W} and sources(S) == {W}
    assert sources(DeviceOutcome.SENT) == {DeviceOutcome.OFFLINE}
    assert sources(DeviceOutcome.ACKNOWLEDGED) == {DeviceOutcome.OFFLINE, DeviceOutcome.SENT, DeviceOutcome.PUBLISHED}
    assert sources(W) == frozenset() and sources(NC) == frozenset()  # set by the batch / derived, never moved to
    for before, afters in NEXT.items():
        for after in afters:
            assert not may_change(after, before), (before, after)  # no cycle
    assert not may_change(C, S) and not may_change(DeviceOutcome.ACKNOWLEDGED, DeviceOutcome.SENT)


def test_each_type_has_its_outcomes_and_failures() -> None:
    shadow, message = (set(OUTCOMES_BY_TYPE[t]) for t in TaskType)
    assert shadow | message == set(DeviceOutcome) and not shadow & message
    for task_type, failures in FAILURE_OUTCOMES.items():
        assert failures <= set(OUTCOMES_BY_TYPE[task_type])
    assert list(count_by_outcome(TaskType.UPDATE_SHADOW, {C: 2})) == [W, C, S, NC]
    assert count_by_outcome(TaskType.UPDATE_SHADOW, {C: 2})[C] == 2

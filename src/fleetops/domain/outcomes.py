"""Per-device outcomes of a batch task (a fleetops extension, docs/extensions.md#outcomes).

Tencent's CreateTask reports one number, DoneDeviceCnt. A task created with ``TrackOutcomes`` (or any option
that needs outcomes) also keeps, for every matched device it reached, what became of it:

* **UpdateShadow**: ``Written`` (the desired values are in the shadow, at the version the task wrote), then
  ``Converged`` once the device's reported state holds the task's values for the keys the task set, or
  ``Superseded`` when a later write set one of those desired keys to another value first, or ``NotConverged``
  when the task's convergence window passed while it was still ``Written``;
* **PublishMessage**: ``Sent`` (written to a connected session subscribed to the topic), ``Offline`` (no
  connected subscriber at send time), ``Acknowledged`` (the device's own PUBACK of a QoS 1 message arrived),
  ``Published`` (handed to an external broker, which does not say who got it).

The rules are pure functions of JSON values; the store applies them in the transactions that write shadows
and outcomes (``store/outcomes.py``, ``store/shadows.py``), so an outcome never disagrees with the shadow that
caused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from fleetops.domain.shadow import JSONObject, json_equal
from fleetops.domain.tasks import TaskType


class DeviceOutcome(StrEnum):
    """What became of one matched device; the values are the wire names (``Outcome`` of DescribeTaskDevices)."""

    WRITTEN = "Written"
    CONVERGED = "Converged"
    SUPERSEDED = "Superseded"
    NOT_CONVERGED = "NotConverged"  # never stored: Written past the convergence window (effective_outcome)
    SENT = "Sent"
    OFFLINE = "Offline"
    ACKNOWLEDGED = "Acknowledged"
    PUBLISHED = "Published"


OUTCOMES_BY_TYPE: Final[Mapping[TaskType, tuple[DeviceOutcome, ...]]] = {
    TaskType.UPDATE_SHADOW: (
        DeviceOutcome.WRITTEN,
        DeviceOutcome.CONVERGED,
        DeviceOutcome.SUPERSEDED,
        DeviceOutcome.NOT_CONVERGED,
    ),
    TaskType.PUBLISH_MESSAGE: (
        DeviceOutcome.SENT,
        DeviceOutcome.OFFLINE,
        DeviceOutcome.ACKNOWLEDGED,
        DeviceOutcome.PUBLISHED,
    ),
}

# What an abort criterion may count: the outcomes that mean "this device did not take the change".
FAILURE_OUTCOMES: Final[Mapping[TaskType, frozenset[DeviceOutcome]]] = {
    TaskType.UPDATE_SHADOW: frozenset({DeviceOutcome.NOT_CONVERGED}),
    TaskType.PUBLISH_MESSAGE: frozenset({DeviceOutcome.OFFLINE}),
}

# The one table of later changes: an outcome moves only to one of the outcomes listed for it. The store's
# conditional UPDATEs are built from it (``sources``), so two writers racing on one device (a device report and
# the late delivery of a message, say) cannot move an outcome backwards.
NEXT: Final[Mapping[DeviceOutcome, frozenset[DeviceOutcome]]] = {
    DeviceOutcome.WRITTEN: frozenset({DeviceOutcome.CONVERGED, DeviceOutcome.SUPERSEDED}),
    DeviceOutcome.OFFLINE: frozenset({DeviceOutcome.SENT, DeviceOutcome.ACKNOWLEDGED}),
    DeviceOutcome.SENT: frozenset({DeviceOutcome.ACKNOWLEDGED}),
    DeviceOutcome.PUBLISHED: frozenset({DeviceOutcome.ACKNOWLEDGED}),
}


def sources(outcome: DeviceOutcome) -> frozenset[DeviceOutcome]:
    """The stored outcomes that may change to ``outcome``."""
    return frozenset(before for before, after in NEXT.items() if outcome in after)


def may_change(before: DeviceOutcome, after: DeviceOutcome) -> bool:
    return after in NEXT.get(before, frozenset())


# --- UpdateShadow: convergence ------------------------------------------------------------------------------


def tracked_values(desired_patch: JSONObject) -> JSONObject:
    """The leaves a task's ``Desired`` sets (its ``null`` deletions left out): what convergence is judged on.

    ``{"a": {"c": null, "e": {"f": 1}}, "x": null, "s": "t"}`` sets ``a.e.f`` and ``s``.
    """
    values: JSONObject = {}
    for key, value in desired_patch.items():
        if value is None:
            continue
        if isinstance(value, dict):
            nested = tracked_values(value)
            if nested:
                values[key] = nested
            continue
        values[key] = value
    return values


def holds(state: JSONObject | None, values: JSONObject) -> bool:
    """Every leaf of ``values`` is in ``state`` with an equal value (JSON equality: 1 equals 1.0, not true).

    A task that only deletes keys sets no leaf, so any state holds it: such a device converges when written.
    """
    for key, value in values.items():
        if state is None or key not in state:
            return False
        current = state[key]
        if isinstance(value, dict):
            if not isinstance(current, dict) or not holds(current, value):
                return False
        elif not json_equal(current, value):
            return False
    return True


def contradicts(desired: JSONObject | None, values: JSONObject) -> bool:
    """``desired`` sets one of the leaves of ``values`` to another value (or replaces an object on their path).

    A leaf that is gone does not contradict: a device clears desired when it has applied it (the device
    protocol's acknowledgement), and that is not a change of intent.
    """
    if desired is None:
        return False
    for key, value in values.items():
        if key not in desired:
            continue
        current = desired[key]
        if isinstance(value, dict):
            if not isinstance(current, dict) or contradicts(current, value):
                return True
        elif not json_equal(current, value):
            return True
    return False


def shadow_verdict(values: JSONObject, reported: JSONObject | None, desired: JSONObject | None) -> DeviceOutcome | None:
    """The outcome a shadow write decides for a ``Written`` device: Converged when the reported state holds the
    task's values, else Superseded when the desired state now says otherwise, else None (still Written)."""
    if holds(reported, values):
        return DeviceOutcome.CONVERGED
    if contradicts(desired, values):
        return DeviceOutcome.SUPERSEDED
    return None


def effective_outcome(
    stored: DeviceOutcome, written_ms: int, convergence_window_ms: int | None, now_ms: int
) -> DeviceOutcome:
    """``NotConverged`` is a Written device whose window has passed: derived when read, so nothing has to run
    at the end of each device's window (and it is final: a shadow write after the window decides nothing)."""
    if stored is DeviceOutcome.WRITTEN and window_passed(written_ms, convergence_window_ms, now_ms):
        return DeviceOutcome.NOT_CONVERGED
    return stored


def window_passed(written_ms: int, convergence_window_ms: int | None, now_ms: int) -> bool:
    return convergence_window_ms is not None and now_ms > written_ms + convergence_window_ms


def count_by_outcome(task_type: TaskType, counted: Mapping[DeviceOutcome, int]) -> dict[DeviceOutcome, int]:
    """Every outcome of the task type, in the documented order, with 0 for the ones no device has."""
    return {outcome: int(counted.get(outcome, 0)) for outcome in OUTCOMES_BY_TYPE[task_type]}

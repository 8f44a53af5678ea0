"""CreateTask's extension parameters checked together, and the fingerprint of a ClientToken's request."""

from __future__ import annotations

import pytest

from fleetops.domain.extensions import AbortCriterionDraft, TaskExtensions, request_fingerprint, task_extensions
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import AbortCriterion, Rollout
from fleetops.domain.tasks import TaskType
from fleetops.errors import InvalidParameterValue

SHADOW, MESSAGE = TaskType.UPDATE_SHADOW, TaskType.PUBLISH_MESSAGE


def test_nothing_asked_is_a_tencent_task() -> None:
    assert task_extensions(SHADOW) is None
    assert task_extensions(MESSAGE, track_outcomes=False, deliver_on_connect=False) is None


def test_options_that_need_outcomes_imply_them() -> None:
    assert task_extensions(SHADOW, track_outcomes=True) == TaskExtensions(track_outcomes=True)
    window = task_extensions(SHADOW, convergence_window_s=30)
    assert window is not None and window.tracks_outcomes and window.convergence_window_ms == 30_000
    late = task_extensions(MESSAGE, deliver_on_connect=True)
    assert late is not None and late.tracks_outcomes
    aborting = task_extensions(MESSAGE, abort_criteria=[AbortCriterionDraft("Offline", 10, 5)])
    assert aborting is not None and aborting.tracks_outcomes
    assert aborting.abort_criteria == (AbortCriterion(DeviceOutcome.OFFLINE, 10, 5),)
    paced = task_extensions(MESSAGE, rollout=Rollout(10))
    assert paced is not None and not paced.tracks_outcomes  # a rate limit alone needs no outcomes


@pytest.mark.parametrize(
    ("task_type", "kwargs", "message"),
    [
        (MESSAGE, {"convergence_window_s": 5}, "ConvergenceWindowInSeconds applies to UpdateShadow tasks only"),
        (SHADOW, {"deliver_on_connect": True}, "DeliverOnConnect applies to PublishMessage tasks only"),
        (SHADOW, {"rollout": Rollout(10, base_per_s=5)}, "go together"),
        (SHADOW, {"rollout": Rollout(10, 11, 10, 10)}, r"BaseDevicesPerSecond \(11\) must not exceed"),
        (SHADOW, {"abort_criteria": [AbortCriterionDraft("Offline", 1, 1)]}, r"\[0\]\.Outcome must be NotConverged"),
        (MESSAGE, {"abort_criteria": [AbortCriterionDraft("Nope", 1, 1)]}, "must be Offline for a PublishMessage"),
        (
            SHADOW,
            {"abort_criteria": [AbortCriterionDraft("NotConverged", 1, 1)]},
            "NotConverged needs ConvergenceWindowInSeconds",
        ),
    ],
)
def test_rules_between_the_options(task_type: TaskType, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidParameterValue, match=message):
        task_extensions(task_type, **kwargs)  # type: ignore[arg-type]


def test_the_fingerprint_is_the_parameters_not_their_order() -> None:
    a = request_fingerprint({"TaskType": "UpdateShadow", "Filter": "x", "Rollout": {"max": 1, "base": None}})
    b = request_fingerprint({"Rollout": {"base": None, "max": 1}, "Filter": "x", "TaskType": "UpdateShadow"})
    assert a == b and len(a) == 64
    assert request_fingerprint({"TaskType": "UpdateShadow", "Filter": "y"}) != a

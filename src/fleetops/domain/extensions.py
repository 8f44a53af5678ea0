"""The fleetops extensions of CreateTask (docs/extensions.md): what a task asks for beyond Tencent's parameters,
and the rules that check them together.

Each is opt-in: a task created with none of them is exactly a Tencent task (``TaskExtensions`` None), and every
Tencent action behaves as without fleetops' extensions.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from fleetops.domain.limits import TASK_MAX_EXECUTION_TIME_S
from fleetops.domain.outcomes import FAILURE_OUTCOMES, DeviceOutcome
from fleetops.domain.rollout import AbortCriterion, Rollout
from fleetops.domain.tasks import TaskType
from fleetops.errors import InvalidParameterValue

# Bounds of the extension parameters (docs/limits.md), declared once for the API and the checks here.
CONVERGENCE_WINDOW_MAX_S: Final = TASK_MAX_EXECUTION_TIME_S
ROLLOUT_MAX_PER_S: Final = 1_000_000
ROLLOUT_INCREMENT_PERCENT_RANGE: Final = (1, 400)  # a factor of 1.01 .. 5 (AWS allows 1.1 .. 5)
ABORT_CRITERIA_MAX: Final = 4
CLIENT_TOKEN_PATTERN: Final = r"[A-Za-z0-9_.:-]{1,64}"
CLIENT_TOKEN_TTL_S: Final = 86_400  # the same token within 24 hours is the same CreateTask


@dataclass(frozen=True, slots=True)
class TaskExtensions:
    """What a task asked for beyond Tencent's CreateTask."""

    track_outcomes: bool = False
    convergence_window_s: int | None = None
    rollout: Rollout | None = None
    abort_criteria: tuple[AbortCriterion, ...] = ()
    deliver_on_connect: bool = False

    @property
    def tracks_outcomes(self) -> bool:
        """Outcomes are kept when asked for, and whenever another option needs them."""
        return (
            self.track_outcomes
            or self.convergence_window_s is not None
            or bool(self.abort_criteria)
            or self.deliver_on_connect
        )

    @property
    def convergence_window_ms(self) -> int | None:
        return None if self.convergence_window_s is None else self.convergence_window_s * 1000


@dataclass(frozen=True, slots=True)
class AbortCriterionDraft:
    """An element of ``AbortCriteria`` as the client sent it (the outcome still a string)."""

    outcome: str
    threshold_percent: int
    min_processed: int


def task_extensions(
    task_type: TaskType,
    *,
    track_outcomes: bool | None = None,
    convergence_window_s: int | None = None,
    rollout: Rollout | None = None,
    abort_criteria: Sequence[AbortCriterionDraft] = (),
    deliver_on_connect: bool | None = None,
) -> TaskExtensions | None:
    """The extensions of a CreateTask, checked against its type and each other; None when none is asked for.

    Ranges are the parameters' declarations (checked when the request is decoded); the rules between them are
    checked here, each failure naming the parameter and what to send instead.
    """
    if convergence_window_s is not None and task_type is not TaskType.UPDATE_SHADOW:
        raise InvalidParameterValue(
            "ConvergenceWindowInSeconds applies to UpdateShadow tasks only (a message has nothing to converge).",
            message_zh="ConvergenceWindowInSeconds 只适用于 UpdateShadow 任务（消息无所谓收敛）。",
        )
    if deliver_on_connect and task_type is not TaskType.PUBLISH_MESSAGE:
        raise InvalidParameterValue(
            "DeliverOnConnect applies to PublishMessage tasks only.",
            message_zh="DeliverOnConnect 只适用于 PublishMessage 任务。",
        )
    if rollout is not None:
        _check_rollout(rollout)
    criteria = tuple(_criterion(task_type, i, c, convergence_window_s) for i, c in enumerate(abort_criteria))
    extensions = TaskExtensions(
        track_outcomes=bool(track_outcomes),
        convergence_window_s=convergence_window_s,
        rollout=rollout,
        abort_criteria=criteria,
        deliver_on_connect=bool(deliver_on_connect),
    )
    return None if extensions == TaskExtensions() else extensions


def _check_rollout(rollout: Rollout) -> None:
    growth = (rollout.base_per_s, rollout.increment_percent, rollout.increment_every)
    given = [value is not None for value in growth]
    if any(given) and not all(given):
        raise InvalidParameterValue(
            "Rollout: BaseDevicesPerSecond, IncrementPercent and IncrementEveryDevices go together (an "
            "exponential rollout); send all three, or none for a constant MaxDevicesPerSecond.",
            message_zh="Rollout：BaseDevicesPerSecond、IncrementPercent 和 IncrementEveryDevices 须同时提供"
            "（指数式发布）；三者都传，或都不传以使用固定的 MaxDevicesPerSecond。",
        )
    if rollout.base_per_s is not None and rollout.base_per_s > rollout.max_per_s:
        raise InvalidParameterValue(
            f"Rollout.BaseDevicesPerSecond ({rollout.base_per_s}) must not exceed Rollout.MaxDevicesPerSecond "
            f"({rollout.max_per_s}).",
            message_zh=f"Rollout.BaseDevicesPerSecond（{rollout.base_per_s}）不能大于 "
            f"Rollout.MaxDevicesPerSecond（{rollout.max_per_s}）。",
        )


def _criterion(
    task_type: TaskType, index: int, draft: AbortCriterionDraft, convergence_window_s: int | None
) -> AbortCriterion:
    where = f"AbortCriteria[{index}].Outcome"
    allowed = sorted(outcome.value for outcome in FAILURE_OUTCOMES[task_type])
    try:
        outcome = DeviceOutcome(draft.outcome)
    except ValueError:
        outcome = None
    if outcome is None or outcome not in FAILURE_OUTCOMES[task_type]:
        raise InvalidParameterValue(
            f"{where} must be {' or '.join(allowed)} for a {task_type.value} task; got {draft.outcome!r}.",
            message_zh=f"{task_type.value} 任务的 {where} 必须为 {' 或 '.join(allowed)}；收到的是 {draft.outcome!r}。",
        )
    if outcome is DeviceOutcome.NOT_CONVERGED and convergence_window_s is None:
        raise InvalidParameterValue(
            f"{where} NotConverged needs ConvergenceWindowInSeconds: a device is not converged once that window "
            "has passed.",
            message_zh=f"{where} 为 NotConverged 时需要 ConvergenceWindowInSeconds："
            "设备在该时限过后仍未收敛即为未收敛。",
        )
    return AbortCriterion(outcome, draft.threshold_percent, draft.min_processed)


# --- idempotent creation -----------------------------------------------------------------------------------


def request_fingerprint(parameters: Mapping[str, Any]) -> str:
    """A digest of a CreateTask's parameters (ClientToken left out): the same token with other parameters is a
    client error, not the same request."""
    canonical = orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(canonical).hexdigest()

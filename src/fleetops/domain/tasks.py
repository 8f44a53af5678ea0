"""Batch task rules (iotcloud-actions section 1): status, transitions, schedule, deadline, progress, Tasks.

Times are Unix seconds (``_s``). Rules the vendor leaves open follow the spec's proposals; each says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

from fleetops.domain import limits
from fleetops.domain.messages import is_topic_suffix
from fleetops.domain.shadow import JSONObject, validate_state_document
from fleetops.errors import (
    ApiError,
    AsyncTaskAlreadyStarted,
    InvalidParameterValue,
    InvalidTaskTransition,
    MissingParameter,
)


class TaskStatus(IntEnum):
    WAITING = 1
    PROCESSING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


class TaskType(StrEnum):
    UPDATE_SHADOW = "UpdateShadow"
    PUBLISH_MESSAGE = "PublishMessage"


class TaskEvent(StrEnum):
    START = "start"  # the schedule time has come: the engine takes the task
    FINISH = "finish"  # every matched device is done
    DEADLINE = "deadline"  # MaxExecutionTimeInSeconds passed before the end
    CANCEL = "cancel"  # CancelTask


_TRANSITIONS: Final[dict[tuple[TaskStatus, TaskEvent], TaskStatus]] = {
    (TaskStatus.WAITING, TaskEvent.START): TaskStatus.PROCESSING,
    (TaskStatus.WAITING, TaskEvent.CANCEL): TaskStatus.CANCELLED,
    (TaskStatus.PROCESSING, TaskEvent.FINISH): TaskStatus.COMPLETED,
    (TaskStatus.PROCESSING, TaskEvent.DEADLINE): TaskStatus.FAILED,
}


def can_cancel(status: TaskStatus) -> bool:
    """Only a task that has not been scheduled yet can be cancelled."""
    return status is TaskStatus.WAITING


def transition(status: TaskStatus, event: TaskEvent) -> TaskStatus:
    """The status after ``event``.

    Cancelling a task that is not waiting raises AsyncTaskAlreadyStarted, also for a task cancelled already
    (spec proposal: the vendor's list has no better code). Any other illegal change raises
    InvalidTaskTransition: it means two actors raced (say the engine finishing a task a client cancelled).
    """
    new = _TRANSITIONS.get((status, event))
    if new is not None:
        return new
    if event is TaskEvent.CANCEL:
        raise AsyncTaskAlreadyStarted(
            f"The task cannot be cancelled: its status is {status.value} ({status.name.lower()}); "
            "only a waiting task (status 1) can be cancelled."
        )
    raise InvalidTaskTransition(f"A task in status {status.name} cannot take the event {event.value!r}.")


# --- schedule and deadline ---------------------------------------------------------------------------------


def effective_schedule_time(requested_s: int, now_s: int) -> int:
    """ScheduleTimeInSeconds: 0 means now; in the past is refused; beyond now+86400 is clamped (not refused).

    A value equal to the current second is accepted (spec proposal: ">= current time").
    """
    if requested_s == 0:
        return now_s
    if requested_s < now_s:
        raise InvalidParameterValue(
            f"ScheduleTimeInSeconds must be 0 (now) or >= the current time {now_s}; got {requested_s}."
        )
    return min(requested_s, now_s + limits.TASK_MAX_SCHEDULE_AHEAD_S)


def effective_max_execution_time(requested: int | None) -> int:
    """MaxExecutionTimeInSeconds: 0..86400, absent or 0 meaning the default 86400.

    The range permits 0 but a task that fails the moment it starts is useless; the spec proposes reading 0
    as "use the default".
    """
    if requested is None or requested == 0:
        return limits.TASK_MAX_EXECUTION_TIME_S
    if not 0 < requested <= limits.TASK_MAX_EXECUTION_TIME_S:
        raise InvalidParameterValue(
            f"MaxExecutionTimeInSeconds must be between 0 and {limits.TASK_MAX_EXECUTION_TIME_S} "
            f"(0 means {limits.TASK_MAX_EXECUTION_TIME_S}); got {requested}."
        )
    return requested


def deadline(schedule_time_s: int, max_execution_time_s: int) -> int:
    """The last second a task may run: the spec fails it when now > ScheduleTime + MaxExecutionTime."""
    return schedule_time_s + max_execution_time_s


def is_overdue(started_at_s: int, max_execution_time_s: int, now_s: int) -> bool:
    """``started_at_s`` is the task's effective ScheduleTime: the spec starts the clock there."""
    return now_s > deadline(started_at_s, max_execution_time_s)


# Our RetCode for a task failed by its deadline: the vendor documents no value, only that it is non-zero.
DEADLINE_RET_CODE: Final = 1


def failure_message(done: int, all_devices: int, max_execution_time_s: int) -> tuple[int, str]:
    """RetCode and ErrMsg of a task failed by its deadline, saying how far it got."""
    return (
        DEADLINE_RET_CODE,
        f"deadline of {max_execution_time_s} s passed after {done} of {all_devices} devices",
    )


def percent(done: int, all_devices: int, status: TaskStatus) -> int:
    """floor(100 * done / all); a completed task with no device is 100 (spec proposal; the vendor example
    shows 0 for a completed task, which tells a client nothing)."""
    if all_devices == 0:
        return 100 if status is TaskStatus.COMPLETED else 0
    return min(100, 100 * done // all_devices)


# --- the Tasks member of CreateTask ------------------------------------------------------------------------


def parse_task_type(value: object) -> TaskType:
    if isinstance(value, str) and value in TaskType.__members__.values():
        return TaskType(value)
    allowed = " or ".join(t.value for t in TaskType)
    raise InvalidParameterValue(f"TaskType must be {allowed}; got {value!r}.")


@dataclass(frozen=True, slots=True)
class UpdateShadowSpec:
    desired: JSONObject  # merged into each matched device's desired section


@dataclass(frozen=True, slots=True)
class PublishMessageSpec:
    topic: str  # suffix after "{ProductId}/{DeviceName}/"
    payload: bytes  # UTF-8 of the Payload string, published as is


TaskSpec = UpdateShadowSpec | PublishMessageSpec

_MEMBER: Final = {TaskType.UPDATE_SHADOW: "UpdateShadowTask", TaskType.PUBLISH_MESSAGE: "PublishMessageTask"}


def validate_tasks(task_type: TaskType, tasks: object) -> TaskSpec:
    """Check the ``Tasks`` object (wire names, already decoded) against the task type."""
    if tasks is None:
        raise MissingParameter("Tasks is required.")
    member = _MEMBER[task_type]
    body = tasks.get(member) if isinstance(tasks, dict) else None
    if not isinstance(body, dict) or not body:
        raise InvalidParameterValue(f"Tasks.{member} is required when TaskType is {task_type.value}.")
    if task_type is TaskType.UPDATE_SHADOW:
        return UpdateShadowSpec(_desired(body.get("Desired")))
    return PublishMessageSpec(_topic(body.get("Topic")), _payload(body.get("Payload")))


def _desired(value: Any) -> JSONObject:
    where = "Tasks.UpdateShadowTask.Desired"
    if not isinstance(value, str):
        raise InvalidParameterValue(f'{where} must be a JSON object serialized as a string, e.g. "{{\\"a\\":1}}".')
    try:
        desired = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameterValue(f"{where} is not valid JSON: {exc}.") from exc
    if not isinstance(desired, dict):
        raise InvalidParameterValue(f"{where} must be a JSON object (not wrapped in desired).")
    # The shadow limits apply as to UpdateDeviceShadow's State {"desired": ...}. CreateTask's error list has
    # only InvalidParameterValue, so the shadow's specific codes are reported under it.
    try:
        validate_state_document({"desired": desired}, allow_desired_only=True)
    except ApiError as exc:
        raise InvalidParameterValue(f"{where}: {exc.message}") from exc
    return desired


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not is_topic_suffix(value):
        raise InvalidParameterValue(
            "Tasks.PublishMessageTask.Topic must be the topic after {ProductId}/{DeviceName}/, "
            f"matching [a-zA-Z0-9:_-]{{1,{limits.TOPIC_SUFFIX_MAX_LENGTH}}} (e.g. control); got {value!r}."
        )
    return value


def _payload(value: Any) -> bytes:
    where = "Tasks.PublishMessageTask.Payload"
    if not isinstance(value, str) or not value:
        raise InvalidParameterValue(f"{where} must be a non-empty string.")
    payload = value.encode()
    if len(payload) > limits.PUBLISH_PAYLOAD_MAX_BYTES:
        raise InvalidParameterValue(
            f"{where} is {len(payload)} bytes of UTF-8; at most {limits.PUBLISH_PAYLOAD_MAX_BYTES}."
        )
    return payload

"""Batch task rules (docs/tasks.md#the-vendors-rules): status, transitions, schedule, deadline, progress, Tasks.

Times are Unix seconds (``_s``). Rules the vendor leaves open follow
docs/tasks.md#choices-where-the-vendor-is-silent-unsettled; each says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final

import orjson

from fleetops.domain import limits
from fleetops.domain.messages import is_topic_suffix
from fleetops.domain.shadow import JSONObject, json_error_zh, validate_state_document
from fleetops.errors import (
    ApiError,
    AsyncTaskAlreadyStarted,
    InvalidParameterValue,
    InvalidTaskTransition,
    TaskAlreadyEnded,
)


class TaskStatus(IntEnum):
    WAITING = 1
    PROCESSING = 2
    COMPLETED = 3
    FAILED = 4
    CANCELLED = 5


# how a status reads in a Chinese message
_STATUS_ZH: Final = {
    TaskStatus.WAITING: "等待中",
    TaskStatus.PROCESSING: "执行中",
    TaskStatus.COMPLETED: "已完成",
    TaskStatus.FAILED: "已失败",
    TaskStatus.CANCELLED: "已取消",
}


class TaskType(StrEnum):
    UPDATE_SHADOW = "UpdateShadow"
    PUBLISH_MESSAGE = "PublishMessage"


class TaskEvent(StrEnum):
    START = "start"  # the schedule time has come: the engine takes the task
    FINISH = "finish"  # every matched device is done
    DEADLINE = "deadline"  # MaxExecutionTimeInSeconds passed before the end
    CANCEL = "cancel"  # CancelTask (and StopTask of a task that has not started)
    ABORT = "abort"  # the task's abort criteria hold (extension: docs/extensions.md#abort)
    STOP = "stop"  # StopTask of a running task: it ends after the batch in flight (docs/extensions.md#stop)


# The one state machine: each event applies to the statuses listed and leads to one status. The store's
# conditional UPDATEs are built from this table (``sources`` / ``target``), so a status change that the domain
# refuses cannot happen in the database either, on any node.
TRANSITIONS: Final[Mapping[TaskEvent, tuple[frozenset[TaskStatus], TaskStatus]]] = {
    TaskEvent.START: (frozenset({TaskStatus.WAITING}), TaskStatus.PROCESSING),
    TaskEvent.CANCEL: (frozenset({TaskStatus.WAITING}), TaskStatus.CANCELLED),
    TaskEvent.FINISH: (frozenset({TaskStatus.PROCESSING}), TaskStatus.COMPLETED),
    TaskEvent.DEADLINE: (frozenset({TaskStatus.PROCESSING}), TaskStatus.FAILED),
    TaskEvent.ABORT: (frozenset({TaskStatus.PROCESSING}), TaskStatus.FAILED),
    TaskEvent.STOP: (frozenset({TaskStatus.PROCESSING}), TaskStatus.CANCELLED),
}

# A task the engine holds a lease on: the status every engine write is fenced on.
RUNNING: Final = TaskStatus.PROCESSING
# Waiting or processing: what the per-account pending cap counts.
OPEN_STATUSES: Final = frozenset({TaskStatus.WAITING, TaskStatus.PROCESSING})
# Nothing will change them any more: the retention purge may delete them.
FINISHED_STATUSES: Final = frozenset(TaskStatus) - OPEN_STATUSES


def sources(event: TaskEvent) -> frozenset[TaskStatus]:
    """The statuses ``event`` applies to."""
    return TRANSITIONS[event][0]


def target(event: TaskEvent) -> TaskStatus:
    """The status ``event`` leads to."""
    return TRANSITIONS[event][1]


def transition(status: TaskStatus, event: TaskEvent) -> TaskStatus:
    """The status after ``event``.

    Cancelling a task that is not waiting raises AsyncTaskAlreadyStarted, also for a task cancelled already
    (the vendor's list has no better code; docs/decisions.md). Any other illegal change raises
    InvalidTaskTransition: it means two actors raced (say the engine finishing a task a client cancelled).
    """
    from_statuses, to_status = TRANSITIONS[event]
    if status in from_statuses:
        return to_status
    if event is TaskEvent.CANCEL:
        raise AsyncTaskAlreadyStarted(
            f"The task cannot be cancelled: its status is {status.value} ({status.name.lower()}); "
            "only a waiting task (status 1) can be cancelled (StopTask stops a running one).",
            message_zh=f"任务无法取消：其状态为 {status.value}（{_STATUS_ZH[status]}）；"
            "只有等待中（状态 1）的任务可以取消（StopTask 可停止执行中的任务）。",
        )
    if event is TaskEvent.STOP and status in FINISHED_STATUSES:
        raise TaskAlreadyEnded(
            f"The task cannot be stopped: it has ended already (status {status.value}, {status.name.lower()}).",
            message_zh=f"任务无法停止：它已经结束（状态 {status.value}，{_STATUS_ZH[status]}）。",
        )
    raise InvalidTaskTransition(f"A task in status {status.name} cannot take the event {event.value!r}.")


# --- schedule and deadline ---------------------------------------------------------------------------------


def effective_schedule_time(requested_s: int, now_s: int) -> int:
    """ScheduleTimeInSeconds: 0 means now; in the past is refused; beyond now+86400 is clamped (not refused).

    A value equal to the current second is accepted (docs/tasks.md: ">= current time").
    """
    if requested_s == 0:
        return now_s
    if requested_s < now_s:
        raise InvalidParameterValue(
            f"ScheduleTimeInSeconds must be 0 (now) or >= the current time {now_s}; got {requested_s}.",
            message_zh=f"ScheduleTimeInSeconds 必须为 0（立即）或不早于当前时间 {now_s}，实际为 {requested_s}。",
        )
    return min(requested_s, now_s + limits.TASK_MAX_SCHEDULE_AHEAD_S)


def effective_max_execution_time(requested_s: int | None) -> int:
    """MaxExecutionTimeInSeconds: absent or 0 means the default, 86400 (docs/decisions.md).

    The range 0..86400 is the parameter's declaration (checked once, when the request is decoded); 0 is in the
    vendor's range but a task that fails the moment it starts is useless, so it reads as "the default".
    """
    if not requested_s:
        return limits.TASK_MAX_EXECUTION_TIME_S
    return requested_s


def deadline(schedule_time_s: int, max_execution_time_s: int) -> int:
    """The last second a task may run: docs/tasks.md fails it when now > ScheduleTime + MaxExecutionTime."""
    return schedule_time_s + max_execution_time_s


def is_overdue(started_at_s: int, max_execution_time_s: int, now_s: int) -> bool:
    """``started_at_s`` is the task's effective ScheduleTime: docs/tasks.md starts the clock there."""
    return now_s > deadline(started_at_s, max_execution_time_s)


# Our RetCode for a task failed by its deadline: the vendor documents no value, only that it is non-zero.
DEADLINE_RET_CODE: Final = 1


def stop_message(done: int, all_devices: int) -> str:
    """ErrMsg of a task stopped by StopTask (RetCode stays 0: the client asked for it)."""
    return f"stopped by StopTask after {done} of {all_devices} devices"


def failure_message(done: int, all_devices: int, max_execution_time_s: int) -> tuple[int, str]:
    """RetCode and ErrMsg of a task failed by its deadline, saying how far it got."""
    return (
        DEADLINE_RET_CODE,
        f"deadline of {max_execution_time_s} s passed after {done} of {all_devices} devices",
    )


def percent(done: int, all_devices: int, status: TaskStatus) -> int:
    """floor(100 * done / all); a completed task with no device is 100 (docs/tasks.md#percent; the vendor example
    shows 0 for a completed task, which tells a client nothing)."""
    if all_devices == 0:
        return 100 if status is TaskStatus.COMPLETED else 0
    return min(100, 100 * done // all_devices)


# --- the Tasks member of CreateTask ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateShadowSpec:
    desired: JSONObject  # merged into each matched device's desired section


@dataclass(frozen=True, slots=True)
class PublishMessageSpec:
    topic: str  # suffix after "{ProductId}/{DeviceName}/"
    payload: bytes  # UTF-8 of the Payload string, published as is


TaskSpec = UpdateShadowSpec | PublishMessageSpec

_MEMBER: Final = {TaskType.UPDATE_SHADOW: "UpdateShadowTask", TaskType.PUBLISH_MESSAGE: "PublishMessageTask"}


def task_spec(
    task_type: TaskType, *, desired: str | None = None, topic: str | None = None, payload: str | None = None
) -> TaskSpec:
    """The ``Tasks`` of CreateTask, checked against the task type.

    ``desired`` is ``Tasks.UpdateShadowTask.Desired``; ``topic`` and ``payload`` are
    ``Tasks.PublishMessageTask.Topic`` and ``.Payload`` (None when absent). The member named after the task
    type is required; a member for the other type is ignored, as the vendor documents one member per type.
    """
    if task_type is TaskType.UPDATE_SHADOW:
        if desired is None:
            raise _member_missing(task_type)
        return UpdateShadowSpec(_desired(desired))
    if topic is None and payload is None:
        raise _member_missing(task_type)
    return PublishMessageSpec(_topic(topic), _payload(payload))


def _member_missing(task_type: TaskType) -> InvalidParameterValue:
    member = _MEMBER[task_type]
    return InvalidParameterValue(
        f"Tasks.{member} is required when TaskType is {task_type.value}.",
        message_zh=f"TaskType 为 {task_type.value} 时必须提供 Tasks.{member}。",
    )


def _desired(value: Any) -> JSONObject:
    where = "Tasks.UpdateShadowTask.Desired"
    if not isinstance(value, str):
        raise InvalidParameterValue(
            f'{where} must be a JSON object serialized as a string, e.g. "{{\\"a\\":1}}".',
            message_zh=f'{where} 必须是序列化为字符串的 JSON 对象，例如 "{{\\"a\\":1}}"。',
        )
    try:
        desired = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameterValue(
            f"{where} is not valid JSON: {exc}.", message_zh=f"{where} {json_error_zh(exc)}"
        ) from exc
    if not isinstance(desired, dict):
        raise InvalidParameterValue(
            f"{where} must be a JSON object (not wrapped in desired).",
            message_zh=f"{where} 必须是 JSON 对象（不要包在 desired 中）。",
        )
    if (
        len(desired) == 1
        and next(iter(desired)) in ("desired", "reported")
        and isinstance(next(iter(desired.values())), dict)
    ):
        # UpdateDeviceShadow's State is {"desired": {...}}, CreateTask's Desired is the desired state itself:
        # a client mixing them up would otherwise write desired.desired.* on every device (docs/decisions.md)
        section = next(iter(desired))
        raise InvalidParameterValue(
            f'{where} is the desired state itself, e.g. {{"color":"red"}}, not wrapped in "{section}" as '
            "UpdateDeviceShadow's State is; send the inner object.",
            message_zh=f'{where} 就是期望状态本身，例如 {{"color":"red"}}，不要像 UpdateDeviceShadow 的 State '
            f'那样包在 "{section}" 中；请直接发送内层对象。',
        )
    # The shadow limits apply as to UpdateDeviceShadow's State {"desired": ...}. CreateTask's error list has
    # only InvalidParameterValue, so the shadow's specific codes are reported under it.
    try:
        validate_state_document({"desired": desired}, allow_desired_only=True)
    except ApiError as exc:
        raise InvalidParameterValue(f"{where}: {exc.message}", message_zh=f"{where}：{exc.localized('zh-CN')}") from exc
    return desired


def _topic(value: Any) -> str:
    if not isinstance(value, str) or not is_topic_suffix(value):
        pattern = f"[a-zA-Z0-9:_-]{{1,{limits.TOPIC_SUFFIX_MAX_LENGTH}}}"
        raise InvalidParameterValue(
            "Tasks.PublishMessageTask.Topic must be the topic after {ProductId}/{DeviceName}/, "
            f"matching {pattern} (e.g. control); got {value!r}.",
            message_zh="Tasks.PublishMessageTask.Topic 必须是 {ProductId}/{DeviceName}/ 之后的部分，"
            f"符合 {pattern}（例如 control），实际为 {value!r}。",
        )
    return value


def _payload(value: Any) -> bytes:
    where = "Tasks.PublishMessageTask.Payload"
    if not isinstance(value, str) or not value:
        raise InvalidParameterValue(f"{where} must be a non-empty string.", message_zh=f"{where} 必须是非空字符串。")
    payload = value.encode()
    if len(payload) > limits.PUBLISH_PAYLOAD_MAX_BYTES:
        raise InvalidParameterValue(
            f"{where} is {len(payload)} bytes of UTF-8; at most {limits.PUBLISH_PAYLOAD_MAX_BYTES}.",
            message_zh=f"{where} 的 UTF-8 编码为 {len(payload)} 字节，最多 {limits.PUBLISH_PAYLOAD_MAX_BYTES} 字节。",
        )
    return payload

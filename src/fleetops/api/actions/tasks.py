"""Batch task actions: CreateTask, DescribeTask, DescribeTasks, CancelTask (docs/api.md, docs/tasks.md).

CreateTask and DescribeTask also take the fleetops extension parameters (docs/extensions.md); absent, the
actions are Tencent's exactly. The extension actions (PreviewTask, StopTask, DescribeTaskDevices) are in
``api/actions/extensions.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetops import errors
from fleetops.api.actions.products import product_id
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire
from fleetops.backend.tasks import TaskDraft
from fleetops.domain.extensions import (
    ABORT_CRITERIA_MAX,
    CLIENT_TOKEN_PATTERN,
    CONVERGENCE_WINDOW_MAX_S,
    ROLLOUT_INCREMENT_PERCENT_RANGE,
    ROLLOUT_MAX_PER_S,
    AbortCriterionDraft,
)
from fleetops.domain.limits import (
    NAME_FILTER_MAX_LENGTH,
    PUBLISH_PAYLOAD_MAX_BYTES,
    SHADOW_MAX_DEPTH,
    SHADOW_STATE_MAX_BYTES,
    TASK_MAX_EXECUTION_TIME_S,
    TASK_MAX_SCHEDULE_AHEAD_S,
    TOPIC_SUFFIX_MAX_LENGTH,
)
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import Rollout
from fleetops.domain.tasks import TaskType, percent
from fleetops.ports.store import TaskRecord

EXTENSION = "(fleetops extension, docs/extensions.md) "


def task_id() -> Any:
    return wire("Id", required=True, max_length=64, doc="task id (24 hex characters)")


# The members of Tasks are optional for the decoder: which one is required depends on TaskType, and a missing
# one is InvalidParameterValue (domain.tasks.task_spec), not MissingParameter.
@dataclass(frozen=True, slots=True)
class UpdateShadowTask:
    desired: str | None = wire(
        "Desired",
        doc='a JSON object as a string, e.g. {"color":"red"} (not wrapped in desired); merged '
        f"into each device's desired section; at most {SHADOW_STATE_MAX_BYTES} bytes and "
        f"{SHADOW_MAX_DEPTH} levels as a shadow state",
    )


@dataclass(frozen=True, slots=True)
class PublishMessageTask:
    topic: str | None = wire(
        "Topic",
        doc="the topic after {ProductId}/{DeviceName}/, e.g. control; "
        f"[a-zA-Z0-9:_-]{{1,{TOPIC_SUFFIX_MAX_LENGTH}}}",
    )
    payload: str | None = wire("Payload", doc=f"the message, at most {PUBLISH_PAYLOAD_MAX_BYTES} bytes of UTF-8")


@dataclass(frozen=True, slots=True)
class TaskMembers:
    update_shadow_task: UpdateShadowTask | None = wire("UpdateShadowTask", doc="for UpdateShadow")
    publish_message_task: PublishMessageTask | None = wire("PublishMessageTask", doc="for PublishMessage")


@dataclass(frozen=True, slots=True)
class RolloutParam:
    max_devices_per_s: int = wire(
        "MaxDevicesPerSecond",
        required=True,
        min_value=1,
        max_value=ROLLOUT_MAX_PER_S,
        doc="the highest rate, devices (written or sent to) per second",
    )
    base_devices_per_s: int | None = wire(
        "BaseDevicesPerSecond",
        min_value=1,
        max_value=ROLLOUT_MAX_PER_S,
        doc="an exponential rollout's first rate (with the two below); absent: MaxDevicesPerSecond from the start",
    )
    increment_percent: int | None = wire(
        "IncrementPercent",
        min_value=ROLLOUT_INCREMENT_PERCENT_RANGE[0],
        max_value=ROLLOUT_INCREMENT_PERCENT_RANGE[1],
        doc="the rate grows by this many percent (x 1.01 .. x 5) ...",
    )
    increment_every_devices: int | None = wire(
        "IncrementEveryDevices", min_value=1, doc="... after every this many processed devices"
    )

    def rollout(self) -> Rollout:
        return Rollout(
            self.max_devices_per_s, self.base_devices_per_s, self.increment_percent, self.increment_every_devices
        )


@dataclass(frozen=True, slots=True)
class AbortCriterionParam:
    outcome: str = wire(
        "Outcome", required=True, doc="Offline (PublishMessage) or NotConverged (UpdateShadow, with a window)"
    )
    threshold_percent: int = wire(
        "ThresholdPercent",
        required=True,
        max_value=100,
        doc="abort when more than this share (%) of the processed devices has the outcome ...",
    )
    min_processed_devices: int = wire(
        "MinProcessedDevices", required=True, min_value=1, doc="... once at least this many are processed"
    )


@dataclass(frozen=True, slots=True)
class CreateTaskRequest:
    task_type: TaskType = wire("TaskType", required=True, doc="UpdateShadow or PublishMessage")
    product_id: str = product_id()
    device_name_filter: str = wire(
        "DeviceNameFilter",
        required=True,
        doc="RE2 regular expression searched in each device name (unanchored: use ^ and $ to "
        f'anchor); "" matches every device; at most {NAME_FILTER_MAX_LENGTH} characters',
    )
    schedule_time: int = wire(
        "ScheduleTimeInSeconds",
        required=True,
        doc=f"Unix time to start; 0 = now; in the past is refused; later than now+"
        f"{TASK_MAX_SCHEDULE_AHEAD_S} is clamped to it",
    )
    tasks: TaskMembers = wire(
        "Tasks", required=True, doc="what to do for each matched device; the member named after TaskType is required"
    )
    max_execution_time_s: int | None = wire(
        "MaxExecutionTimeInSeconds",
        min_value=0,
        max_value=TASK_MAX_EXECUTION_TIME_S,
        doc=f"the task fails (status 4) if not done this long after it started; 0 or absent = "
        f"{TASK_MAX_EXECUTION_TIME_S}",
    )
    # --- fleetops extensions: absent, CreateTask is Tencent's exactly ---
    client_token: str | None = wire(
        "ClientToken",
        max_length=64,
        pattern=CLIENT_TOKEN_PATTERN,
        doc=EXTENSION + "the same token from the same account within 24 hours returns the first task's TaskId "
        "and creates nothing; with other parameters it is InvalidParameterValue",
    )
    track_outcomes: bool | None = wire(
        "TrackOutcomes", doc=EXTENSION + "keep each matched device's outcome (DescribeTaskDevices)"
    )
    convergence_window_s: int | None = wire(
        "ConvergenceWindowInSeconds",
        min_value=1,
        max_value=CONVERGENCE_WINDOW_MAX_S,
        doc=EXTENSION + "UpdateShadow: a written device not converged this long after its write is NotConverged "
        "(implies TrackOutcomes)",
    )
    rollout: RolloutParam | None = wire("Rollout", doc=EXTENSION + "a maximum rate, optionally growing")
    abort_criteria: list[AbortCriterionParam] | None = wire(
        "AbortCriteria",
        max_items=ABORT_CRITERIA_MAX,
        doc=EXTENSION + "the task fails (status 4, RetCode 2) when one holds (implies TrackOutcomes)",
    )
    deliver_on_connect: bool | None = wire(
        "DeliverOnConnect",
        doc=EXTENSION + "PublishMessage: a matched device offline at send time gets the message when it connects, "
        "until MaxExecutionTimeInSeconds after the start (implies TrackOutcomes)",
    )

    def draft(self) -> TaskDraft:
        shadow, message = self.tasks.update_shadow_task, self.tasks.publish_message_task
        return TaskDraft(
            task_type=self.task_type,
            product_id=self.product_id,
            device_name_filter=self.device_name_filter,
            schedule_time=self.schedule_time,
            max_execution_time_s=self.max_execution_time_s,
            desired=shadow.desired if shadow is not None else None,
            topic=message.topic if message is not None else None,
            payload=message.payload if message is not None else None,
            client_token=self.client_token,
            track_outcomes=self.track_outcomes,
            convergence_window_s=self.convergence_window_s,
            rollout=self.rollout.rollout() if self.rollout is not None else None,
            abort_criteria=tuple(
                AbortCriterionDraft(c.outcome, c.threshold_percent, c.min_processed_devices)
                for c in self.abort_criteria or ()
            ),
            deliver_on_connect=self.deliver_on_connect,
        )


@dataclass(frozen=True, slots=True)
class DescribeTaskRequest:
    id: str = task_id()
    include_outcome_counts: bool | None = wire(
        "IncludeOutcomeCounts",
        doc=EXTENSION + "also answer OutcomeCounts, StopRequested and (a rollout) CurrentDevicesPerSecond",
    )


@dataclass(frozen=True, slots=True)
class DescribeTasksRequest:
    offset: int = wire("Offset", required=True, doc="from 0")
    limit: int = wire("Limit", required=True, min_value=1, max_value=250, doc="1..250")


@dataclass(frozen=True, slots=True)
class CancelTaskRequest:
    id: str = task_id()


def task_info(record: TaskRecord) -> dict[str, Any]:
    """TaskInfo (DescribeTasks): exactly the vendor's members - the SDK warns about unknown ones."""
    return {
        "Type": record.type.value,
        "Id": record.id,
        "ProductId": record.product_id,
        "Status": record.status.value,
        "CreateTime": record.created_at,
        "UpdateTime": record.updated_at,
        "RetCode": record.ret_code,
        "ErrMsg": record.err_msg,
    }


def describe_task_response(record: TaskRecord) -> dict[str, Any]:
    return {
        **task_info(record),
        "DoneTime": record.done_time,
        "ScheduleTime": record.schedule_time,
        "Percent": percent(record.done_device_cnt, record.all_device_cnt, record.status),
        "AllDeviceCnt": record.all_device_cnt,
        "DoneDeviceCnt": record.done_device_cnt,
    }


async def create_task(ctx: ActionContext, req: CreateTaskRequest) -> dict[str, Any]:
    return {"TaskId": await ctx.backend.tasks.create(ctx.account_id, req.draft())}


async def describe_task(ctx: ActionContext, req: DescribeTaskRequest) -> dict[str, Any]:
    record = await ctx.backend.tasks.describe(ctx.account_id, req.id)
    answer = describe_task_response(record)
    if req.include_outcome_counts:
        # only when asked: the SDK's DescribeTask model warns about members it does not know
        answer.update(await task_extension_members(ctx, record))
    return answer


async def task_extension_members(ctx: ActionContext, record: TaskRecord) -> dict[str, Any]:
    """DescribeTask's extension members (IncludeOutcomeCounts)."""
    counts = await ctx.backend.tasks.outcome_counts(record)
    members: dict[str, Any] = {
        "OutcomeCounts": outcome_counts(counts or {}),
        "StopRequested": record.stop_requested,
    }
    rollout = record.extensions.rollout if record.extensions is not None else None
    if rollout is not None:
        members["CurrentDevicesPerSecond"] = round(rollout.rate_at(record.done_device_cnt), 3)
    return members


def outcome_counts(counts: dict[DeviceOutcome, int]) -> list[dict[str, Any]]:
    """``OutcomeCounts``: one ``{Outcome, DeviceCnt}`` per outcome of the task's type ([] without outcomes)."""
    return [{"Outcome": outcome.value, "DeviceCnt": count} for outcome, count in counts.items()]


async def describe_tasks(ctx: ActionContext, req: DescribeTasksRequest) -> dict[str, Any]:
    total, records = await ctx.backend.tasks.page(ctx.account_id, req.offset, req.limit)
    return {"TotalCount": total, "Tasks": [task_info(r) for r in records]}


async def cancel_task(ctx: ActionContext, req: CancelTaskRequest) -> dict[str, Any]:
    await ctx.backend.tasks.cancel(ctx.account_id, req.id)
    return {}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="CreateTask",
        summary="Create a batch task: update the desired shadow of, or publish a message to, every device "
        "of a product whose name matches a regular expression, at a chosen time.",
        request=CreateTaskRequest,
        handler=create_task,
        response=("TaskId",),
        errors=(
            errors.InvalidParameterValue,
            errors.MissingParameter,
            errors.PengingOrProcessingTasksExceedLimit,
            errors.ProductNotExist,
        ),
        notes="At most `FLEETOPS_MAX_PENDING_TASKS` (default 10) tasks per account may be waiting or "
        "processing (status 1 or 2); one more is `LimitExceeded.PengingOrProcessingTasksExceedLimit` (the "
        "vendor's spelling). The device set is fixed when the task starts: devices created later are not "
        "included. UpdateShadow merges `Desired` into each matched device's desired section (version + 1, no "
        "version check) and pushes a delta (QoS 0) on `$shadow/operation/result/{ProductId}/{DeviceName}`; "
        "PublishMessage publishes `Payload` (QoS 0) on `{ProductId}/{DeviceName}/{Topic}`. See "
        "docs/tasks.md. The extension parameters (ClientToken, TrackOutcomes, ConvergenceWindowInSeconds, "
        "Rollout, AbortCriteria, DeliverOnConnect) are described in docs/extensions.md.",
    ),
    Action(
        name="DescribeTask",
        summary="Describe one task, with its live progress.",
        request=DescribeTaskRequest,
        handler=describe_task,
        response=(
            "Type",
            "Id",
            "ProductId",
            "Status",
            "CreateTime",
            "UpdateTime",
            "DoneTime",
            "ScheduleTime",
            "RetCode",
            "ErrMsg",
            "Percent",
            "AllDeviceCnt",
            "DoneDeviceCnt",
        ),
        errors=(errors.InvalidParameterValue, errors.TaskNotExist),
        notes="Status: 1 waiting, 2 processing, 3 completed, 4 failed (deadline passed; `ErrMsg` says "
        "how far it got), 5 cancelled. `Percent` = floor(100 * DoneDeviceCnt / AllDeviceCnt), 100 for a "
        "completed task with no device. `DoneTime` is 0 until the task completes or fails. `UpdateTime` is "
        "the last status change. A task shows status 2 only once its devices are counted: `AllDeviceCnt` is "
        "final from then on. Tasks are kept for one month. With the extension `IncludeOutcomeCounts` true, the "
        "answer also has `OutcomeCounts` (`[{Outcome, DeviceCnt}]`, every outcome of the task's type; `[]` for "
        "a task without outcomes), `StopRequested` and, for a rollout, `CurrentDevicesPerSecond` "
        "(docs/extensions.md).",
    ),
    Action(
        name="DescribeTasks",
        summary="List the account's tasks of the last month, newest first.",
        request=DescribeTasksRequest,
        handler=describe_tasks,
        response=("TotalCount", "Tasks"),
        errors=(errors.InvalidParameterValue,),
    ),
    Action(
        name="CancelTask",
        summary="Cancel a task that has not started yet (status 1 -> 5).",
        request=CancelTaskRequest,
        handler=cancel_task,
        errors=(errors.AsyncTaskAlreadyStarted, errors.InvalidParameterValue, errors.TaskNotExist),
        notes="A task that has started, ended or been cancelled already: `FailedOperation.AsyncTaskAlreadyStarted`.",
    ),
)

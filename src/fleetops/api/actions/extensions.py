"""The fleetops extension actions on batch tasks (docs/extensions.md): PreviewTask, StopTask, DescribeTaskDevices.

No iotcloud version has these names (tests/unit/test_extension_names.py checks both SDK versions' models), so
an official SDK calls them through its generic ``CommonClient.call_json``. CreateTask's and DescribeTask's
extension parameters are declared with those actions (``api/actions/tasks.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetops import errors
from fleetops.api.actions.tasks import CreateTaskRequest, task_id
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire
from fleetops.backend.tasks import PREVIEW_NAMES
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.ports.store import DeviceOutcomeRecord

DEVICES_PAGE_MAX = 250  # DescribeTaskDevices' Limit, as DescribeTasks'


async def preview_task(ctx: ActionContext, req: CreateTaskRequest) -> dict[str, Any]:
    preview = await ctx.backend.tasks.preview(ctx.account_id, req.draft())
    return {"MatchedDeviceCnt": preview.matched_device_cnt, "DeviceNames": preview.device_names}


@dataclass(frozen=True, slots=True)
class StopTaskRequest:
    id: str = task_id()


async def stop_task(ctx: ActionContext, req: StopTaskRequest) -> dict[str, Any]:
    return {"Status": (await ctx.backend.tasks.stop(ctx.account_id, req.id)).value}


@dataclass(frozen=True, slots=True)
class DescribeTaskDevicesRequest:
    id: str = task_id()
    offset: int = wire("Offset", required=True, doc="from 0, in device-name order")
    limit: int = wire("Limit", required=True, min_value=1, max_value=DEVICES_PAGE_MAX, doc=f"1..{DEVICES_PAGE_MAX}")
    outcome: DeviceOutcome | None = wire("Outcome", doc="only the devices with this outcome (one of the task type's)")


def task_device(record: DeviceOutcomeRecord) -> dict[str, Any]:
    return {
        "DeviceName": record.device_name,
        "Outcome": record.outcome.value,
        "WrittenVersion": record.version,
        "UpdateTime": record.at_ms // 1000,
    }


async def describe_task_devices(ctx: ActionContext, req: DescribeTaskDevicesRequest) -> dict[str, Any]:
    total, records = await ctx.backend.tasks.devices(ctx.account_id, req.id, req.outcome, req.offset, req.limit)
    return {"TotalCount": total, "TaskDevices": [task_device(r) for r in records]}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="PreviewTask",
        summary="A dry run of CreateTask: how many devices its filter matches now and the first names; nothing "
        "is created or changed.",
        request=CreateTaskRequest,
        handler=preview_task,
        response=("MatchedDeviceCnt", "DeviceNames"),
        errors=(
            errors.InvalidParameterValue,
            errors.MissingParameter,
            errors.PengingOrProcessingTasksExceedLimit,
            errors.ProductNotExist,
        ),
        notes="The same parameters as CreateTask (extensions included) and every error CreateTask would give, "
        "the pending cap included. `MatchedDeviceCnt` counts the product's devices whose name matches now (a "
        f"task's device set is fixed when it starts); `DeviceNames` are the first {PREVIEW_NAMES} of them by "
        "name. `ClientToken` is accepted and not looked up. See docs/extensions.md#preview.",
        extension=True,
    ),
    Action(
        name="StopTask",
        summary="Stop a task: a waiting one is cancelled at once, a processing one ends after the batch in "
        "flight (status 5).",
        request=StopTaskRequest,
        handler=stop_task,
        response=("Status",),
        errors=(errors.InvalidParameterValue, errors.TaskAlreadyEnded, errors.TaskNotExist),
        notes="`Status` is the task's status after the call: 5 (a waiting task, cancelled) or 2 (processing: it "
        "ends in 5 after the batch in flight, `DoneDeviceCnt` saying how far it got, `ErrMsg` `stopped by "
        "StopTask after D of A devices`). A task that has ended already: `FailedOperation`. CancelTask keeps "
        "Tencent's rule (a waiting task only). See docs/extensions.md#stop.",
        extension=True,
    ),
    Action(
        name="DescribeTaskDevices",
        summary="List a task's matched devices with their outcome (Written, Converged, Superseded, NotConverged; "
        "Sent, Offline, Acknowledged, Published), by name.",
        request=DescribeTaskDevicesRequest,
        handler=describe_task_devices,
        response=("TotalCount", "TaskDevices"),
        errors=(errors.InvalidParameterValue, errors.TaskNotExist),
        notes="For a task created with `TrackOutcomes` (or an option that implies it). `TaskDevices` is "
        "`[{DeviceName, Outcome, WrittenVersion, UpdateTime}]`: `WrittenVersion` the version an UpdateShadow task "
        "wrote (null for PublishMessage), `UpdateTime` when the outcome last changed (Unix s). `TotalCount` "
        "counts the devices of the `Outcome` asked for. A task without outcomes, or an outcome of the other "
        "task type: `InvalidParameterValue`. See docs/extensions.md#outcomes.",
        extension=True,
    ),
)

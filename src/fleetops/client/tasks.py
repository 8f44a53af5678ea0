"""``fleetops tasks create | list | describe | cancel``: the task actions from a terminal.

``tasks create`` takes the task as options and builds CreateTask's parameters; the server checks them (one
rule in one place: the filter, the JSON, the schedule and the deadline are validated by the node, whose
message is printed as is). Only what the options themselves mean is checked here: which ``Tasks`` member
the options describe, and the forms of ``--at`` and ``--max-execution``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from fleetops.client.api import ApiClient
from fleetops.client.output import columns, local_time, status_name
from fleetops.domain.tasks import TaskType

MAX_TASKS_PAGE: Final = 250  # DescribeTasks' Limit is 1..250
_DURATION: Final = re.compile(r"([0-9]+)\s*([smhd]?)")
_UNIT_S: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class OptionError(ValueError):
    """An option value that means nothing (the CLI reports it as a usage error, exit 2)."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


@dataclass(frozen=True)
class TaskOrder:
    """What ``fleetops tasks create`` was asked for, as typed."""

    product_id: str
    name_filter: str
    task_type: TaskType | None = None  # None: from --desired or --topic/--payload
    desired: str | None = None
    topic: str | None = None
    payload: str | None = None
    at: str = "now"
    max_execution: str | None = None


def parse_duration_s(text: str, option: str) -> int:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise OptionError(option, f"{text!r} is not a duration: give seconds (90) or 90s, 15m, 2h, 1d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def parse_schedule_time(text: str, now_s: int) -> int:
    """``--at``: ``now``, Unix seconds, ``+15m`` (from now) or an ISO 8601 time (local time without an offset).

    Returns CreateTask's ScheduleTimeInSeconds (0 for now). A time in the past is sent as is: the node refuses
    it with its own message.
    """
    given = text.strip()
    if given in ("now", "0", ""):
        return 0
    if given.isdigit():
        return int(given)
    if given.startswith("+"):
        return now_s + parse_duration_s(given[1:], "--at")
    try:
        moment = datetime.fromisoformat(given)
    except ValueError as exc:
        raise OptionError(
            "--at", f"{text!r} is not a time: give now, +15m, Unix seconds, or 2025-06-01T14:00 (ISO 8601)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.astimezone()  # a wall-clock time means this machine's time zone
    return int(moment.timestamp())


def _task_type(order: TaskOrder) -> TaskType:
    shadow = order.desired is not None
    message = order.topic is not None or order.payload is not None
    if shadow and message:
        raise OptionError("--desired", "give --desired (UpdateShadow) or --topic/--payload (PublishMessage), not both")
    inferred = TaskType.UPDATE_SHADOW if shadow else TaskType.PUBLISH_MESSAGE if message else None
    chosen = order.task_type or inferred
    if chosen is None:
        raise OptionError("--type", "say what to do: --desired JSON (UpdateShadow) or --topic and --payload")
    if chosen is TaskType.UPDATE_SHADOW and not shadow:
        raise OptionError("--desired", 'UpdateShadow needs --desired JSON, e.g. --desired \'{"color":"red"}\'')
    if chosen is TaskType.PUBLISH_MESSAGE and (order.topic is None or order.payload is None):
        raise OptionError("--topic", "PublishMessage needs --topic (after ProductId/DeviceName/) and --payload")
    return chosen


def create_task_params(order: TaskOrder, now_s: int) -> dict[str, Any]:
    """CreateTask's parameters for ``order``."""
    task_type = _task_type(order)
    params: dict[str, Any] = {
        "TaskType": task_type.value,
        "ProductId": order.product_id,
        "DeviceNameFilter": order.name_filter,
        "ScheduleTimeInSeconds": parse_schedule_time(order.at, now_s),
    }
    if task_type is TaskType.UPDATE_SHADOW:
        params["Tasks"] = {"UpdateShadowTask": {"Desired": order.desired}}
    else:
        params["Tasks"] = {"PublishMessageTask": {"Topic": order.topic, "Payload": order.payload}}
    if order.max_execution is not None:
        params["MaxExecutionTimeInSeconds"] = parse_duration_s(order.max_execution, "--max-execution")
    return params


def create_task(client: ApiClient, order: TaskOrder, now_s: int) -> str:
    """The new task's TaskId."""
    return str(client.call("CreateTask", create_task_params(order, now_s))["TaskId"])


def describe_task(client: ApiClient, task_id: str) -> dict[str, Any]:
    return client.call("DescribeTask", {"Id": task_id})


def cancel_task(client: ApiClient, task_id: str) -> None:
    client.call("CancelTask", {"Id": task_id})


def list_tasks(client: ApiClient, offset: int, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(TotalCount, the tasks from ``offset``), newest first; more than 250 are fetched page by page."""
    return client.collect("DescribeTasks", {}, "Tasks", page_limit=MAX_TASKS_PAGE, offset=offset, count=limit)


def task_rows(tasks: list[dict[str, Any]]) -> list[str]:
    header = ("TASK ID", "TYPE", "PRODUCT", "STATUS", "CREATED", "UPDATED")
    rows = [
        (
            t["Id"],
            t["Type"],
            t["ProductId"],
            status_name(t["Status"]),
            local_time(t["CreateTime"]),
            local_time(t["UpdateTime"]),
        )
        for t in tasks
    ]
    return columns(header, rows)


def task_lines(task: dict[str, Any]) -> list[str]:
    """DescribeTask for a person."""
    done, all_devices = int(task.get("DoneDeviceCnt", 0)), int(task.get("AllDeviceCnt", 0))
    lines = [
        f"task       {task['Id']}",
        f"type       {task['Type']} on product {task['ProductId']}",
        f"status     {status_name(task['Status'])}",
        f"progress   {done:,} of {all_devices:,} devices ({task.get('Percent', 0)} %)",
        f"created    {local_time(task.get('CreateTime'))}",
        f"scheduled  {local_time(task.get('ScheduleTime'))}",
        f"updated    {local_time(task.get('UpdateTime'))}",
        f"done       {local_time(task.get('DoneTime'))}",
    ]
    if task.get("RetCode"):
        lines.append(f"error      RetCode {task['RetCode']}: {task.get('ErrMsg', '')}")
    return lines

"""Batch task use cases: CreateTask, DescribeTask, DescribeTasks, CancelTask (iotcloud-actions.md section 1).

The rules are ``fleetops.domain.tasks`` (type, Tasks member, schedule, deadline, cancel) and
``fleetops.domain.name_filter`` (RE2); this module applies them and talks to the store. The engine
(``fleetops.engine``) runs what is created here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fleetops import errors
from fleetops.backend.products import ProductNames
from fleetops.domain.name_filter import compile_name_filter
from fleetops.domain.tasks import (
    TaskEvent,
    TaskType,
    effective_max_execution_time,
    effective_schedule_time,
    task_spec,
    transition,
)
from fleetops.ids import new_task_id
from fleetops.ports.store import NewTask, ProductStore, TaskRecord, TaskStore


@dataclass(frozen=True, slots=True)
class TaskDraft:
    """What CreateTask asks for, as decoded from the request (nothing checked beyond the declaration yet)."""

    task_type: TaskType
    product_id: str
    device_name_filter: str
    schedule_time: int  # Unix seconds; 0 = now
    max_execution_time_s: int | None = None  # None or 0 = the default
    desired: str | None = None  # Tasks.UpdateShadowTask.Desired (JSON text)
    topic: str | None = None  # Tasks.PublishMessageTask.Topic (the suffix after {pid}/{dn}/)
    payload: str | None = None  # Tasks.PublishMessageTask.Payload


def _not_found(task_id: str) -> errors.TaskNotExist:
    return errors.TaskNotExist(
        f"The task `{task_id}` does not exist in this account (tasks are kept for one month).",
        message_zh=f"该账号下不存在任务 `{task_id}`（任务保留一个月）。",
    )


class TaskService:
    def __init__(
        self,
        store: TaskStore,
        products: ProductStore,
        clock: Callable[[], float],
        *,
        max_open_tasks: int,
        retention_s: int,
        on_created: Callable[[], None] | None = None,
    ) -> None:
        """``on_created`` hears of each new task (the node's worker: an immediate task starts at once)."""
        self._store = store
        self._products = products
        self._product_names = ProductNames(products)
        self._clock = clock
        self._max_open_tasks = max_open_tasks
        self._retention_s = retention_s
        self._on_created = on_created

    def _visible_since(self) -> int:
        return int(self._clock()) - self._retention_s

    async def create(self, account_id: int, draft: TaskDraft) -> str:
        """Validate and store a task (status 1); returns its TaskId."""
        spec = task_spec(draft.task_type, desired=draft.desired, topic=draft.topic, payload=draft.payload)
        compile_name_filter(draft.device_name_filter)  # an invalid RE2 filter fails here, naming the problem
        now = int(self._clock())
        schedule_time = effective_schedule_time(draft.schedule_time, now)
        max_execution_s = effective_max_execution_time(draft.max_execution_time_s)
        product = await self._products.get(account_id, draft.product_id)
        if product is None:
            raise await self._product_names.not_exist(account_id, draft.product_id)
        task = NewTask(
            id=new_task_id(now),
            account_id=account_id,
            product_pk=product.pk,
            product_id=draft.product_id,
            type=draft.task_type,
            name_filter=draft.device_name_filter,
            spec=spec,
            created_at=now,
            schedule_time=schedule_time,
            max_execution_s=max_execution_s,
        )
        blocked_by = await self._store.insert_within_limit(task, self._max_open_tasks)
        if blocked_by is not None:
            raise errors.PengingOrProcessingTasksExceedLimit(
                f"The account has {blocked_by} tasks waiting or processing (status 1 or 2); at most "
                f"{self._max_open_tasks} are allowed. Wait for one to finish, or cancel a waiting one "
                "(CancelTask).",
                message_zh=f"该账号有 {blocked_by} 个等待中或执行中的任务（状态 1 或 2），最多允许 "
                f"{self._max_open_tasks} 个。请等待任务结束，或取消一个等待中的任务（CancelTask）。",
            )
        if self._on_created is not None:
            self._on_created()
        return task.id

    async def describe(self, account_id: int, task_id: str) -> TaskRecord:
        record = await self._store.get(account_id, task_id, self._visible_since())
        if record is None:
            raise _not_found(task_id)
        return record

    async def page(self, account_id: int, offset: int, limit: int) -> tuple[int, list[TaskRecord]]:
        return await self._store.page(account_id, offset, limit, self._visible_since())

    async def cancel(self, account_id: int, task_id: str) -> None:
        """Cancel a waiting task (1 -> 5); atomic against the engine starting it."""
        previous = await self._store.cancel(account_id, task_id, int(self._clock()), self._visible_since())
        if previous is None:
            raise _not_found(task_id)
        # WAITING: this call cancelled it. Any other status: AsyncTaskAlreadyStarted, naming that status
        # (a task cancelled before included, the spec's proposal).
        transition(previous, TaskEvent.CANCEL)

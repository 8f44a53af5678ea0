"""Batch task use cases: CreateTask, DescribeTask, DescribeTasks, CancelTask (docs/tasks.md#the-vendors-rules),
and the fleetops extensions (docs/extensions.md): ClientToken, PreviewTask, StopTask, per-device outcomes.

The rules are ``fleetops.domain.tasks`` (type, Tasks member, schedule, deadline, cancel),
``fleetops.domain.extensions`` (the extension parameters together) and ``fleetops.domain.name_filter``
(RE2); this module applies them and talks to the store. The engine (``fleetops.engine``) runs what is created
here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fleetops import errors
from fleetops.backend.products import ProductNames
from fleetops.domain.extensions import (
    CLIENT_TOKEN_TTL_S,
    AbortCriterionDraft,
    TaskExtensions,
    request_fingerprint,
    task_extensions,
)
from fleetops.domain.name_filter import NameFilter, compile_name_filter
from fleetops.domain.outcomes import OUTCOMES_BY_TYPE, DeviceOutcome, count_by_outcome
from fleetops.domain.rollout import Rollout
from fleetops.domain.tasks import (
    TaskEvent,
    TaskSpec,
    TaskStatus,
    TaskType,
    effective_max_execution_time,
    effective_schedule_time,
    task_spec,
    transition,
)
from fleetops.ids import new_task_id
from fleetops.ports.store import (
    ClientTokenClaim,
    DeviceBatches,
    DeviceOutcomeRecord,
    NewTask,
    ProductRecord,
    ProductStore,
    TaskOutcomes,
    TaskRecord,
    TaskStore,
)

PREVIEW_NAMES: Final = 10  # PreviewTask's DeviceNames: the first matching names
_EVERY_DEVICE: Final = 2**63 - 1  # a preview looks at the devices as they are now: no snapshot bound


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
    # fleetops extensions (docs/extensions.md); all absent: a Tencent CreateTask
    client_token: str | None = None
    track_outcomes: bool | None = None
    convergence_window_s: int | None = None
    rollout: Rollout | None = None
    abort_criteria: tuple[AbortCriterionDraft, ...] = ()
    deliver_on_connect: bool | None = None


@dataclass(frozen=True, slots=True)
class _Checked:
    """A draft that passed every check CreateTask makes before it touches the tasks."""

    spec: TaskSpec
    name_filter: NameFilter
    extensions: TaskExtensions | None
    schedule_time: int
    max_execution_s: int
    product: ProductRecord
    now_s: int


@dataclass(frozen=True, slots=True)
class Preview:
    """PreviewTask's answer: how many devices the filter matches now, and the first names."""

    matched_device_cnt: int
    device_names: list[str]


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
        batches: DeviceBatches | None = None,
        outcomes: TaskOutcomes | None = None,
        on_created: Callable[[], None] | None = None,
    ) -> None:
        """``batches`` and ``outcomes`` serve the extensions (PreviewTask, outcomes); ``on_created`` hears of
        each new task (the node's worker: an immediate task starts at once)."""
        self._store = store
        self._products = products
        self._product_names = ProductNames(products)
        self._clock = clock
        self._max_open_tasks = max_open_tasks
        self._retention_s = retention_s
        self._batches = batches
        self._outcomes = outcomes
        self._on_created = on_created

    def _visible_since(self) -> int:
        return int(self._clock()) - self._retention_s

    async def _check(self, account_id: int, draft: TaskDraft) -> _Checked:
        """Every check of CreateTask in its order, shared with PreviewTask: the same answer for the same draft."""
        spec = task_spec(draft.task_type, desired=draft.desired, topic=draft.topic, payload=draft.payload)
        name_filter = compile_name_filter(draft.device_name_filter)  # an invalid RE2 filter fails here
        extensions = task_extensions(
            draft.task_type,
            track_outcomes=draft.track_outcomes,
            convergence_window_s=draft.convergence_window_s,
            rollout=draft.rollout,
            abort_criteria=draft.abort_criteria,
            deliver_on_connect=draft.deliver_on_connect,
        )
        now = int(self._clock())
        schedule_time = effective_schedule_time(draft.schedule_time, now)
        max_execution_s = effective_max_execution_time(draft.max_execution_time_s)
        product = await self._products.get(account_id, draft.product_id)
        if product is None:
            raise await self._product_names.not_exist(account_id, draft.product_id)
        return _Checked(spec, name_filter, extensions, schedule_time, max_execution_s, product, now)

    def _at_the_cap(self, open_count: int) -> errors.PengingOrProcessingTasksExceedLimit:
        return errors.PengingOrProcessingTasksExceedLimit(
            f"The account has {open_count} tasks waiting or processing (status 1 or 2); at most "
            f"{self._max_open_tasks} are allowed. Wait for one to finish, or cancel a waiting one (CancelTask).",
            message_zh=f"该账号有 {open_count} 个等待中或执行中的任务（状态 1 或 2），最多允许 "
            f"{self._max_open_tasks} 个。请等待任务结束，或取消一个等待中的任务（CancelTask）。",
        )

    async def create(self, account_id: int, draft: TaskDraft) -> str:
        """Validate and store a task (status 1); returns its TaskId, or the TaskId its ClientToken created."""
        checked = await self._check(account_id, draft)
        now = checked.now_s
        token = None
        if draft.client_token is not None:
            parameters = dataclasses.asdict(dataclasses.replace(draft, client_token=None))
            token = ClientTokenClaim(draft.client_token, request_fingerprint(parameters), now - CLIENT_TOKEN_TTL_S)
        task = NewTask(
            id=new_task_id(now),
            account_id=account_id,
            product_pk=checked.product.pk,
            product_id=draft.product_id,
            type=draft.task_type,
            name_filter=draft.device_name_filter,
            spec=checked.spec,
            created_at=now,
            schedule_time=checked.schedule_time,
            max_execution_s=checked.max_execution_s,
            extensions=checked.extensions,
            client_token=token,
        )
        insertion = await self._store.insert_within_limit(task, self._max_open_tasks)
        if not insertion.created:
            if insertion.task_id is None:
                raise self._at_the_cap(insertion.open_count)
            assert token is not None  # only a token names an earlier task
            if insertion.fingerprint != token.fingerprint:
                raise errors.InvalidParameterValue(
                    f"ClientToken `{token.token}` was used in the last 24 hours by a CreateTask with other "
                    f"parameters (task `{insertion.task_id}`): send exactly the same parameters to get that "
                    "task again, or a new ClientToken for a new task.",
                    message_zh=f"ClientToken `{token.token}` 在过去 24 小时内已被参数不同的 CreateTask 使用"
                    f"（任务 `{insertion.task_id}`）：发送完全相同的参数以取回该任务，或为新任务使用新的 ClientToken。",
                )
            return insertion.task_id  # a retry: the first task's id, nothing created
        if self._on_created is not None:
            self._on_created()
        return task.id

    async def preview(self, account_id: int, draft: TaskDraft) -> Preview:
        """PreviewTask: CreateTask's checks and pending cap, then the devices the filter matches now. Nothing is
        written."""
        checked = await self._check(account_id, draft)
        open_count = await self._store.count_open(account_id)
        if open_count >= self._max_open_tasks:
            raise self._at_the_cap(open_count)
        assert self._batches is not None, "the node builds TaskService with the device batches"
        matched, names = await self._batches.count_matching(
            checked.product.pk, _EVERY_DEVICE, checked.name_filter, PREVIEW_NAMES
        )
        return Preview(matched, names)

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
        # (a task cancelled before included, docs/decisions.md#tasks).
        transition(previous, TaskEvent.CANCEL)

    async def stop(self, account_id: int, task_id: str) -> TaskStatus:
        """StopTask: a waiting task is cancelled now (5); a processing one ends in 5 after the batch in flight
        (the status stays 2 until then). Returns the status after the call; TaskAlreadyEnded for a task that
        has ended."""
        previous = await self._store.stop(account_id, task_id, int(self._clock()), self._visible_since())
        if previous is None:
            raise _not_found(task_id)
        if previous is TaskStatus.WAITING:
            return transition(previous, TaskEvent.CANCEL)
        transition(previous, TaskEvent.STOP)  # a task that has ended: TaskAlreadyEnded, naming its status
        return previous

    # --- per-device outcomes ------------------------------------------------------------------------------

    def _outcome_store(self) -> TaskOutcomes:
        assert self._outcomes is not None, "the node builds TaskService with the outcomes store"
        return self._outcomes

    async def outcome_counts(self, task: TaskRecord) -> dict[DeviceOutcome, int] | None:
        """Devices per outcome of a task that keeps them (every outcome of its type, 0 included); None if not."""
        if not task.tracks_outcomes or task.extensions is None:
            return None
        now_ms = int(self._clock() * 1000)
        counted = await self._outcome_store().counts(task.id, task.extensions.convergence_window_ms, now_ms)
        return count_by_outcome(task.type, counted)

    async def devices(
        self, account_id: int, task_id: str, outcome: DeviceOutcome | None, offset: int, limit: int
    ) -> tuple[int, list[DeviceOutcomeRecord]]:
        """DescribeTaskDevices: the task's devices (of one outcome), by name."""
        task = await self.describe(account_id, task_id)
        if not task.tracks_outcomes or task.extensions is None:
            raise errors.InvalidParameterValue(
                f"The task `{task_id}` keeps no per-device outcomes: it was created without TrackOutcomes (or "
                "another option that needs them, docs/extensions.md#outcomes).",
                message_zh=f"任务 `{task_id}` 没有记录每台设备的结果：它创建时未设置 TrackOutcomes"
                "（或其他需要结果的选项，见 docs/extensions.md#outcomes）。",
            )
        if outcome is not None and outcome not in OUTCOMES_BY_TYPE[task.type]:
            allowed = ", ".join(o.value for o in OUTCOMES_BY_TYPE[task.type])
            raise errors.InvalidParameterValue(
                f"Outcome {outcome.value} is not one of a {task.type.value} task's outcomes: {allowed}.",
                message_zh=f"Outcome {outcome.value} 不是 {task.type.value} 任务的结果之一：{allowed}。",
            )
        now_ms = int(self._clock() * 1000)
        window_ms = task.extensions.convergence_window_ms
        return await self._outcome_store().page(task.id, outcome, window_ms, now_ms, offset, limit)

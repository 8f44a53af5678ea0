"""Task use cases and their store on SQLite and PostgreSQL: CreateTask's rules, the pending cap under
concurrent creates (two nodes), cancel racing the engine's start, listing, retention."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest

from fleetops import errors
from fleetops.backend.tasks import TaskDraft, TaskService
from fleetops.domain.tasks import TaskStatus, TaskType, UpdateShadowSpec
from fleetops.ids import new_task_id
from fleetops.store.database import open_database
from fleetops.store.products import ProductStore
from fleetops.store.tasks import TaskStore
from tests.support import TaskEnv, task_env

DAY = 86_400


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[TaskEnv]:
    async with task_env(database_url, max_open_tasks=3) as env:
        yield env


async def test_create_stores_the_effective_values(env: TaskEnv) -> None:
    now = int(env.clock())
    immediate = await env.update_shadow_task("", {"color": "red"}, max_execution_time_s=0)
    far = await env.publish_task("^a", "control", "x", schedule_time_s=now + 5 * DAY, max_execution_time_s=60)

    task = await env.task(immediate)
    assert (task.type, task.status, task.schedule_time, task.max_execution_s) == (
        TaskType.UPDATE_SHADOW,
        TaskStatus.WAITING,
        now,
        DAY,
    )
    assert task.spec == UpdateShadowSpec({"color": "red"})
    assert (task.created_at, task.updated_at, task.done_time, task.applied_cursor) == (now, now, 0, None)
    later = await env.task(far)
    assert (later.schedule_time, later.max_execution_s, later.name_filter) == (now + DAY, 60, "^a")
    assert re.fullmatch("[0-9a-f]{24}", immediate) and immediate[:8] == f"{now:08x}"


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"device_name_filter": "(unclosed"}, errors.InvalidParameterValue, "missing \\)"),
        ({"device_name_filter": "(a)\\1"}, errors.InvalidParameterValue, "not a valid RE2"),
        ({"schedule_time": 1}, errors.InvalidParameterValue, "ScheduleTimeInSeconds"),
        ({"desired": None}, errors.InvalidParameterValue, "Tasks.UpdateShadowTask is required"),
        ({"desired": None, "topic": "a", "payload": "b"}, errors.InvalidParameterValue, "Update"),
        ({"desired": "[1]"}, errors.InvalidParameterValue, "JSON object"),
        ({"desired": '{"desired":{"a":1}}'}, errors.InvalidParameterValue, "the desired state itself"),
        ({"product_id": "NOTMINE123"}, errors.ProductNotExist, "NOTMINE123"),
    ],
)
async def test_create_refuses_bad_requests_naming_the_problem(
    env: TaskEnv, change: dict[str, object], error: type[errors.ApiError], message: str
) -> None:
    # TaskType, the range of MaxExecutionTimeInSeconds and a missing Tasks are the request's declaration,
    # checked when it is decoded (tests/e2e/test_tasks_api.py)
    fields: dict[str, object] = {
        "task_type": TaskType.UPDATE_SHADOW,
        "product_id": env.product_id,
        "device_name_filter": "",
        "schedule_time": 0,
        "desired": '{"a":1}',
    } | change
    with pytest.raises(error) as caught:
        await env.service.create(env.account_id, TaskDraft(**fields))  # type: ignore[arg-type]
    assert re.search(message, caught.value.message)
    assert (await env.service.page(env.account_id, 0, 10))[0] == 0


async def test_the_pending_cap_holds_for_concurrent_creates_on_two_nodes(env: TaskEnv) -> None:
    other_db = open_database(str(env.db.engine.url.render_as_string(hide_password=False)))
    other_node = TaskService(
        TaskStore(other_db), ProductStore(other_db), env.clock, max_open_tasks=3, retention_s=30 * DAY
    )

    async def create(service: TaskService) -> str | errors.ApiError:
        try:
            return await service.create(
                env.account_id,
                env.draft("PublishMessage", "", schedule_time=int(env.clock()) + 60, topic="control", payload="x"),
            )
        except errors.ApiError as exc:
            return exc

    try:
        results = await asyncio.gather(*(create(env.service if i % 2 else other_node) for i in range(12)))
    finally:
        await other_db.dispose()

    created = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, errors.ApiError)]
    assert len(created) == 3
    assert {type(r) for r in refused} == {errors.PengingOrProcessingTasksExceedLimit}
    assert refused[0].code == "LimitExceeded.PengingOrProcessingTasksExceedLimit"
    assert "at most 3 are allowed" in refused[0].message
    # a cancelled task frees its place
    await env.service.cancel(env.account_id, created[0])
    assert isinstance(await create(env.service), str)


async def test_cancel_and_the_engine_start_never_both_win(env: TaskEnv) -> None:
    # The engine claims a due task (still waiting: its devices are counted first), then starts it (1 -> 2);
    # a CancelTask may land before the claim, between claim and start, or after the start.
    store = TaskStore(env.db)
    for _round in range(6):
        task_id = await env.publish_task("", "control", "x")

        async def cancel(task_id: str = task_id) -> bool:
            try:
                await env.service.cancel(env.account_id, task_id)
            except errors.AsyncTaskAlreadyStarted:
                return False
            return True

        async def start(task_id: str = task_id) -> bool:
            now = int(env.clock())
            if await store.claim_next("node-a", now, 30) is None:
                return False
            await asyncio.sleep(0)  # let the cancel run between the claim and the start
            return await store.start(task_id, "node-a", 0, now, now + 30)

        cancelled, started = await asyncio.gather(cancel(), start())
        assert cancelled != started
        task = await env.task(task_id)
        assert task.status is (TaskStatus.CANCELLED if cancelled else TaskStatus.PROCESSING)
        if started:  # finish it, so the cap of 3 open tasks does not stop the next round
            assert await store.complete(task_id, "node-a", None, int(env.clock()))


async def test_cancel_answers_each_status(env: TaskEnv) -> None:
    store = TaskStore(env.db)
    waiting = await env.publish_task("", "control", "x", schedule_time_s=int(env.clock()) + 60)
    await env.service.cancel(env.account_id, waiting)
    assert (await env.task(waiting)).status is TaskStatus.CANCELLED
    with pytest.raises(errors.AsyncTaskAlreadyStarted, match="status is 5"):
        # cancelled already (docs/tasks.md#describetask-describetasks-canceltask)
        await env.service.cancel(env.account_id, waiting)

    started = await env.publish_task("", "control", "x")
    now = int(env.clock())
    assert (await store.claim_next("node-a", now, 30)) is not None
    assert await store.start(started, "node-a", 0, now, now + 30)
    with pytest.raises(errors.AsyncTaskAlreadyStarted, match="status is 2"):
        await env.service.cancel(env.account_id, started)

    with pytest.raises(errors.TaskNotExist):
        await env.service.cancel(env.account_id, "0" * 24)
    with pytest.raises(errors.TaskNotExist):  # another account's task looks like no task
        await env.service.cancel(env.account_id + 1000, started)


async def test_listing_is_newest_first_per_account_and_a_month_long(env: TaskEnv) -> None:
    ids = []
    for step in range(3):
        ids.append(await env.publish_task("", "control", str(step), schedule_time_s=int(env.clock()) + 60))
        await env.service.cancel(env.account_id, ids[-1])
        if step == 0:
            env.clock.advance(1)
    ids.append(await env.update_shadow_task("", {"a": 1}, schedule_time_s=int(env.clock()) + 60))

    total, page = await env.service.page(env.account_id, 0, 250)
    assert total == 4 and [t.id for t in page] == ids[::-1]  # same-second ties in creation order too
    total, page = await env.service.page(env.account_id, 1, 2)
    assert total == 4 and [t.id for t in page] == [ids[2], ids[1]]
    assert await env.service.page(env.account_id + 1000, 0, 10) == (0, [])
    with pytest.raises(errors.TaskNotExist):
        await env.service.describe(env.account_id + 1000, ids[0])

    env.clock.advance(30 * DAY)  # the first task is now older than a month, the others just not
    assert (await env.service.page(env.account_id, 0, 10))[0] == 3
    with pytest.raises(errors.TaskNotExist, match="kept for one month"):
        await env.service.describe(env.account_id, ids[0])
    assert (await env.service.describe(env.account_id, ids[1])).id == ids[1]

    # the purge deletes finished tasks past the retention, never a waiting one
    env.clock.advance(1)
    purged = await env.worker().scheduler.purge_if_due()
    assert purged == 3
    assert await env.task(ids[0]) is None and (await env.task(ids[3])).status is TaskStatus.WAITING


def test_task_ids_sort_by_creation_time() -> None:
    ids = [new_task_id(1_700_000_000 + t) for t in (0, 0, 0, 1, 2)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert all(re.fullmatch("[0-9a-f]{24}", i) for i in ids)

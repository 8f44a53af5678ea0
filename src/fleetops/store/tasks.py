"""Batch tasks: the rows the API reads and writes, and the lease and progress updates of the task engine.

Every API-facing method takes the account and sees only its tasks created within the retention window
(``created_after``); an older task is treated as gone even before the scheduler purges it.

Two races are closed here, in the database, so that they hold across nodes:

* **the pending cap**: counting the account's waiting/processing tasks and inserting the new one happen in one
  transaction that first takes a lock - ``BEGIN IMMEDIATE`` on SQLite (the database's single write lock), the
  account row ``SELECT ... FOR UPDATE`` on PostgreSQL - so two CreateTask calls at the limit cannot both pass;
* **cancel against start**: CancelTask is ``UPDATE ... WHERE status = 1`` and the engine's claim is
  ``UPDATE ... WHERE status = 1 AND schedule_time <= now``; one of the two changes the row, the other finds
  the status changed and changes nothing.

Engine writes are *fenced*: they only apply while the row says the task is processing, leased to this node,
with the progress cursor this node last wrote (``applied_cursor``). A node whose lease expired and was taken
over - or a second process started with the same node id - finds the cursor moved, its transaction changes
nothing and it drops the task. That compare-and-set on the cursor is what makes every batch apply once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.tasks import (
    FINISHED_STATUSES,
    OPEN_STATUSES,
    RUNNING,
    PublishMessageSpec,
    TaskEvent,
    TaskSpec,
    TaskStatus,
    TaskType,
    UpdateShadowSpec,
    sources,
    target,
)
from fleetops.ports.store import NewTask, Progress, TaskRecord
from fleetops.ports.store import TaskStore as TaskStorePort
from fleetops.store.database import Database
from fleetops.store.tables import accounts, devices, tasks


def _statuses(statuses: frozenset[TaskStatus]) -> list[int]:
    return sorted(status.value for status in statuses)


def _may(event: TaskEvent) -> sa.ColumnElement[bool]:
    """The row's status is one ``event`` applies to (the domain's state machine, ``domain.tasks.TRANSITIONS``)."""
    return tasks.c.status.in_(_statuses(sources(event)))


def spec_to_json(spec: TaskSpec) -> dict[str, Any]:
    if isinstance(spec, UpdateShadowSpec):
        # As JSON text: PostgreSQL's jsonb would reorder the keys, and the delta pushes should list them in
        # the order the client gave them (as UpdateDeviceShadow's pushes do).
        return {"desired": orjson.dumps(spec.desired).decode()}
    # The Payload string was UTF-8 encoded by the domain; decoding gives the same string back.
    return {"topic": spec.topic, "payload": spec.payload.decode()}


def spec_from_json(task_type: TaskType, value: dict[str, Any]) -> TaskSpec:
    if task_type is TaskType.UPDATE_SHADOW:
        return UpdateShadowSpec(orjson.loads(value["desired"]))
    return PublishMessageSpec(str(value["topic"]), str(value["payload"]).encode())


@asynccontextmanager
async def write_transaction(db: Database) -> AsyncIterator[AsyncConnection]:
    """A transaction that holds the write lock from its first statement on SQLite.

    Python's sqlite3 starts a transaction only at the first INSERT/UPDATE/DELETE, so a read before it runs
    outside the transaction, and a deferred transaction in WAL mode can fail with SQLITE_BUSY_SNAPSHOT when it
    upgrades to a writer. ``BEGIN IMMEDIATE`` takes the write lock at once (waiting up to busy_timeout), which
    makes read-then-write sequences serializable. On PostgreSQL this is a plain transaction; callers lock
    rows explicitly (``FOR UPDATE``).
    """
    async with db.connect() as conn:
        if db.is_sqlite:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            await conn.rollback()
            raise
        await conn.commit()


def _held_by(task_id: str, owner: str) -> sa.ColumnElement[bool]:
    """The fence of every engine write: the task is running under ``owner``'s lease."""
    return sa.and_(tasks.c.id == task_id, tasks.c.status == RUNNING.value, tasks.c.lease_owner == owner)


def progress_update(progress: Progress) -> sa.Update:
    """The fenced ``UPDATE tasks`` of one batch (its rowcount is 0 when the fence does not hold)."""
    return (
        sa.update(tasks)
        .where(
            _held_by(progress.task_id, progress.owner),
            tasks.c.applied_cursor.is_not_distinct_from(progress.expected_cursor),
        )
        .values(
            applied_cursor=progress.applied_cursor,
            pushed_cursor=progress.pushed_cursor,
            done_device_cnt=tasks.c.done_device_cnt + progress.done_delta,
            lease_until=progress.lease_until,
        )
    )


class TaskStore(TaskStorePort):
    """:class:`fleetops.ports.store.TaskStore` on SQLite / PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def _write(self, statement: sa.Update) -> bool:
        """One statement in its own transaction; True when it changed a row (its fence held)."""
        async with self._db.begin() as conn:
            return bool((await conn.execute(statement)).rowcount)

    # --- the API ------------------------------------------------------------------------------------------

    async def insert_within_limit(self, task: NewTask, max_open: int) -> int | None:
        """Insert ``task`` unless the account has ``max_open`` tasks waiting or processing already.

        Returns None when inserted, else the number of open tasks that blocked it. Race-free (module doc).
        """
        async with write_transaction(self._db) as conn:
            if not self._db.is_sqlite:
                await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == task.account_id).with_for_update())
            open_count = int(
                (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(tasks)
                        .where(tasks.c.account_id == task.account_id, tasks.c.status.in_(_statuses(OPEN_STATUSES)))
                    )
                ).scalar_one()
            )
            if open_count >= max_open:
                return open_count
            await conn.execute(
                sa.insert(tasks).values(
                    id=task.id,
                    account_id=task.account_id,
                    product_pk=task.product_pk,
                    product_id=task.product_id,
                    type=task.type.value,
                    name_filter=task.name_filter,
                    spec=spec_to_json(task.spec),
                    status=TaskStatus.WAITING.value,  # a new task waits for its schedule time
                    created_at=task.created_at,
                    updated_at=task.created_at,
                    schedule_time=task.schedule_time,
                    max_execution_s=task.max_execution_s,
                    done_time=0,
                    ret_code=0,
                    err_msg="",
                    all_device_cnt=0,
                    done_device_cnt=0,
                )
            )
        return None

    async def get(self, account_id: int, task_id: str, created_after: int) -> TaskRecord | None:
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(tasks).where(
                        tasks.c.id == task_id,
                        tasks.c.account_id == account_id,
                        tasks.c.created_at >= created_after,
                    )
                )
            ).first()
        return None if row is None else _record(row)

    async def page(self, account_id: int, offset: int, limit: int, created_after: int) -> tuple[int, list[TaskRecord]]:
        """The account's tasks, newest first (ties: the larger id first; ids start with the creation time)."""
        visible = sa.and_(tasks.c.account_id == account_id, tasks.c.created_at >= created_after)
        async with self._db.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(tasks).where(visible))).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(tasks)
                    .where(visible)
                    .order_by(tasks.c.created_at.desc(), tasks.c.id.desc())
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return int(total), [_record(r) for r in rows]

    async def cancel(self, account_id: int, task_id: str, now_s: int, created_after: int) -> TaskStatus | None:
        """Cancel a waiting task. Returns the status the task had: WAITING when this call cancelled it, any
        other the status that prevented it; None when there is no such task. Atomic against the engine
        starting the task (module doc)."""
        mine = sa.and_(tasks.c.id == task_id, tasks.c.account_id == account_id, tasks.c.created_at >= created_after)
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(tasks)
                .where(mine, _may(TaskEvent.CANCEL))
                .values(status=target(TaskEvent.CANCEL).value, updated_at=now_s)
                .returning(tasks.c.id)
            )
            if result.first() is not None:
                return TaskStatus.WAITING
            status = (await conn.execute(sa.select(tasks.c.status).where(mine))).scalar_one_or_none()
        return None if status is None else TaskStatus(status)

    # --- the engine: claims and leases --------------------------------------------------------------------

    async def claim_next(self, owner: str, now_s: int, lease_s: int, exclude: Sequence[str] = ()) -> TaskRecord | None:
        """Lease the next task to run: a waiting task whose time has come (it becomes processing, and its
        device snapshot is fixed in the same statement), or a processing task whose lease has expired."""
        due = sa.or_(
            sa.and_(_may(TaskEvent.START), tasks.c.schedule_time <= now_s),
            sa.and_(
                tasks.c.status == RUNNING.value, sa.or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now_s)
            ),
        )
        if exclude:
            due = sa.and_(due, tasks.c.id.not_in(list(exclude)))
        pick = (
            sa.select(tasks.c.id)
            .where(due)
            .order_by(tasks.c.schedule_time, tasks.c.created_at, tasks.c.id)
            .limit(1)
            .with_for_update(skip_locked=True)  # PostgreSQL: nodes claim different tasks; SQLite: ignored
            .scalar_subquery()
        )
        newest_device = sa.select(sa.func.coalesce(sa.func.max(devices.c.id), 0)).scalar_subquery()
        starting = _may(TaskEvent.START)
        statement = (
            sa.update(tasks)
            .where(tasks.c.id == pick, due)
            .values(
                status=target(TaskEvent.START).value,
                started_at=sa.func.coalesce(tasks.c.started_at, now_s),
                updated_at=sa.case((starting, now_s), else_=tasks.c.updated_at),
                snapshot_device_id=sa.func.coalesce(tasks.c.snapshot_device_id, newest_device),
                lease_owner=owner,
                lease_until=now_s + lease_s,
            )
            .returning(*tasks.c)
        )
        async with self._db.begin() as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else _record(row)

    async def release_owned(self, owner: str) -> int:
        """Expire every lease held under ``owner`` (a previous run of this node id): claimable at once."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(tasks)
                .where(tasks.c.lease_owner == owner, tasks.c.status == RUNNING.value)
                .values(lease_until=0)
            )
            return int(result.rowcount or 0)

    async def release(self, task_id: str, owner: str) -> None:
        """Give the lease up (stopping): another node, or this one restarted, resumes the task at once."""
        async with self._db.begin() as conn:
            await conn.execute(
                sa.update(tasks).where(tasks.c.id == task_id, tasks.c.lease_owner == owner).values(lease_until=0)
            )

    async def renew(self, task_id: str, owner: str, lease_until: int) -> bool:
        """Extend the lease while waiting; False when it is no longer ours."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
            )
            .values(lease_until=lease_until)
        )

    # --- the engine: progress and outcome -----------------------------------------------------------------

    async def set_device_count(self, task_id: str, owner: str, all_device_cnt: int, lease_until: int) -> bool:
        """Record AllDeviceCnt (before the first batch: the cursor is still None)."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
                tasks.c.applied_cursor.is_(None),
            )
            .values(all_device_cnt=all_device_cnt, done_device_cnt=0, lease_until=lease_until)
        )

    async def advance(self, progress: Progress) -> bool:
        """A progress write on its own (PublishMessage batches, pages without a matching device)."""
        return await self._write(progress_update(progress))

    async def complete(self, task_id: str, owner: str, expected_cursor: str | None, now_s: int) -> bool:
        """Status 3 with DoneTime; every push has gone out: pushed_cursor catches up with applied_cursor."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
                tasks.c.applied_cursor.is_not_distinct_from(expected_cursor),
            )
            .values(
                status=target(TaskEvent.FINISH).value,
                done_time=now_s,
                updated_at=now_s,
                pushed_cursor=tasks.c.applied_cursor,
                lease_owner=None,
                lease_until=None,
            )
        )

    async def fail(self, task_id: str, owner: str, ret_code: int, err_msg: str, now_s: int) -> bool:
        """Status 4 (the deadline passed) with RetCode/ErrMsg; DoneTime is the time it ended."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
            )
            .values(
                status=target(TaskEvent.DEADLINE).value,
                ret_code=ret_code,
                err_msg=err_msg,
                done_time=now_s,
                updated_at=now_s,
                lease_owner=None,
                lease_until=None,
            )
        )

    async def read(self, task_id: str) -> TaskRecord | None:
        """A task by id alone (the engine, tests)."""
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(tasks).where(tasks.c.id == task_id))).first()
        return None if row is None else _record(row)

    async def count_by_status(self) -> dict[TaskStatus, int]:
        """Every account's tasks by status (``fleetops_tasks``): one grouped count over the small task table."""
        async with self._db.connect() as conn:
            rows = (await conn.execute(sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status))).all()
        return {TaskStatus(int(status)): int(count) for status, count in rows}

    async def purge(self, created_before: int) -> int:
        """Delete finished tasks created before ``created_before`` (the retention window)."""
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.delete(tasks).where(
                    tasks.c.created_at < created_before, tasks.c.status.in_(_statuses(FINISHED_STATUSES))
                )
            )
            return int(result.rowcount or 0)


def _record(row: Any) -> TaskRecord:
    task_type = TaskType(row.type)
    return TaskRecord(
        id=row.id,
        account_id=int(row.account_id),
        product_pk=int(row.product_pk),
        product_id=row.product_id,
        type=task_type,
        name_filter=row.name_filter,
        spec=spec_from_json(task_type, dict(row.spec)),
        status=TaskStatus(row.status),
        created_at=int(row.created_at),
        updated_at=int(row.updated_at),
        schedule_time=int(row.schedule_time),
        started_at=None if row.started_at is None else int(row.started_at),
        done_time=int(row.done_time or 0),
        max_execution_s=int(row.max_execution_s),
        ret_code=int(row.ret_code or 0),
        err_msg=row.err_msg or "",
        all_device_cnt=int(row.all_device_cnt or 0),
        done_device_cnt=int(row.done_device_cnt or 0),
        snapshot_device_id=None if row.snapshot_device_id is None else int(row.snapshot_device_id),
        applied_cursor=row.applied_cursor,
        pushed_cursor=row.pushed_cursor,
        lease_owner=row.lease_owner,
        lease_until=None if row.lease_until is None else int(row.lease_until),
    )

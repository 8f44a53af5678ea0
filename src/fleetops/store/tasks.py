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
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.tasks import (
    FINISHED_STATUSES,
    OPEN_STATUSES,
    RUNNING,
    TaskEvent,
    TaskStatus,
    TaskType,
    sources,
    target,
)
from fleetops.ports.store import (
    Committed,
    DeviceResult,
    FenceLost,
    Insertion,
    NewTask,
    Progress,
    StopRequested,
    TaskRecord,
)
from fleetops.ports.store import TaskStore as TaskStorePort
from fleetops.store.database import Database, PointQuery
from fleetops.store.outcomes import insert_batch
from fleetops.store.tables import accounts, devices, task_batches, task_client_tokens, task_devices, tasks
from fleetops.store.task_json import extensions_from_json, extensions_to_json, spec_from_json, spec_to_json

# DescribeTask's read, built once (a statement composed per call costs more than the read, issue 12)
_TASK_BY_ID: Final = PointQuery(
    sa.select(tasks).where(
        tasks.c.id == sa.bindparam("id"),
        tasks.c.account_id == sa.bindparam("account_id"),
        tasks.c.created_at >= sa.bindparam("created_after"),
    )
)


def _statuses(statuses: frozenset[TaskStatus]) -> list[int]:
    return sorted(status.value for status in statuses)


def _may(event: TaskEvent) -> sa.ColumnElement[bool]:
    """The row's status is one ``event`` applies to (the domain's state machine, ``domain.tasks.TRANSITIONS``)."""
    return tasks.c.status.in_(_statuses(sources(event)))


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


def _leased_by(task_id: str, owner: str) -> sa.ColumnElement[bool]:
    """Held by ``owner``'s lease, waiting (its devices being counted before it starts) or running."""
    return sa.and_(tasks.c.id == task_id, tasks.c.status.in_(_statuses(OPEN_STATUSES)), tasks.c.lease_owner == owner)


async def write_progress(conn: AsyncConnection, progress: Progress) -> bool:
    """The fenced progress write of one batch, in ``conn``'s transaction; whether a StopTask is waiting.

    Raises FenceLost when the fence does not hold, StopRequested when ``progress.unless_stopped`` and a StopTask
    is waiting (the caller's transaction then rolls back)."""
    stop_requested = (await conn.execute(progress_update(progress).returning(tasks.c.stop_requested))).scalar()
    if stop_requested is None:
        if progress.unless_stopped:
            still_mine = sa.select(tasks.c.id).where(
                _held_by(progress.task_id, progress.owner), tasks.c.stop_requested.is_(True)
            )
            if (await conn.execute(still_mine)).first() is not None:
                raise StopRequested(progress.task_id)
        raise FenceLost(progress.task_id)
    return bool(stop_requested)


def progress_update(progress: Progress) -> sa.Update:
    """The fenced ``UPDATE tasks`` of one batch (it changes no row when the fence does not hold)."""
    fence = [
        _held_by(progress.task_id, progress.owner),
        tasks.c.applied_cursor.is_not_distinct_from(progress.expected_cursor),
    ]
    if progress.unless_stopped:
        fence.append(tasks.c.stop_requested.is_(False))
    return (
        sa.update(tasks)
        .where(*fence)
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

    async def insert_within_limit(self, task: NewTask, max_open: int) -> Insertion:
        """Insert ``task`` unless the account has ``max_open`` tasks waiting or processing already, or the
        task's client token names a task created within its validity (then that task is the answer).

        Race-free (module doc): the token lookup, the count and the inserts are one transaction under the lock.
        """
        token = task.client_token
        async with write_transaction(self._db) as conn:
            if not self._db.is_sqlite:
                await conn.execute(sa.select(accounts.c.id).where(accounts.c.id == task.account_id).with_for_update())
            if token is not None:
                mine = sa.and_(
                    task_client_tokens.c.account_id == task.account_id,
                    task_client_tokens.c.client_token == token.token,
                )
                earlier = (await conn.execute(sa.select(task_client_tokens).where(mine))).first()
                if earlier is not None and int(earlier.created_at) >= token.valid_since:
                    return Insertion(created=False, task_id=earlier.task_id, fingerprint=earlier.fingerprint)
                if earlier is not None:  # older than its validity: forgotten
                    await conn.execute(sa.delete(task_client_tokens).where(mine))
            open_count = await _count_open(conn, task.account_id)
            if open_count >= max_open:
                return Insertion(created=False, open_count=open_count)
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
                    extensions=_json_or_null(extensions_to_json(task.extensions)),
                )
            )
            if token is not None:
                await conn.execute(
                    sa.insert(task_client_tokens).values(
                        account_id=task.account_id,
                        client_token=token.token,
                        task_id=task.id,
                        fingerprint=token.fingerprint,
                        created_at=task.created_at,
                    )
                )
        return Insertion(created=True, task_id=task.id)

    async def count_open(self, account_id: int) -> int:
        async with self._db.connect() as conn:
            return await _count_open(conn, account_id)

    async def get(self, account_id: int, task_id: str, created_after: int) -> TaskRecord | None:
        rows = await self._db.point(
            _TASK_BY_ID, {"id": task_id, "account_id": account_id, "created_after": created_after}
        )
        return _record(rows[0]) if rows else None

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

    async def stop(self, account_id: int, task_id: str, now_s: int, created_after: int) -> TaskStatus | None:
        """StopTask: a waiting task is cancelled as CancelTask would; a processing one is marked, and the engine
        that runs it ends it after the batch in flight (``end_stopped``). Returns the status the task had."""
        previous = await self.cancel(account_id, task_id, now_s, created_after)
        if previous is not TaskStatus.PROCESSING:
            return previous
        mine = sa.and_(tasks.c.id == task_id, tasks.c.account_id == account_id, tasks.c.created_at >= created_after)
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(tasks).where(mine, _may(TaskEvent.STOP)).values(stop_requested=True).returning(tasks.c.id)
            )
            if result.first() is not None:
                return TaskStatus.PROCESSING
            status = (await conn.execute(sa.select(tasks.c.status).where(mine))).scalar_one_or_none()
        # it ended between the two statements: say how
        return None if status is None else TaskStatus(status)

    # --- the engine: claims and leases --------------------------------------------------------------------

    async def claim_next(self, owner: str, now_s: int, lease_s: int, exclude: Sequence[str] = ()) -> TaskRecord | None:
        """Lease the next task to run: a waiting task whose time has come (its device snapshot is fixed in the
        same statement; it stays waiting while its devices are counted, and ``start`` moves it to processing
        with AllDeviceCnt), or an open task whose lease has expired."""
        lease_expired = sa.or_(tasks.c.lease_until.is_(None), tasks.c.lease_until < now_s)
        due = sa.or_(
            sa.and_(_may(TaskEvent.START), tasks.c.schedule_time <= now_s, lease_expired),
            sa.and_(tasks.c.status == RUNNING.value, lease_expired),
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
        statement = (
            sa.update(tasks)
            .where(tasks.c.id == pick, due)
            .values(
                started_at=sa.func.coalesce(tasks.c.started_at, now_s),
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
                .where(tasks.c.lease_owner == owner, tasks.c.status.in_(_statuses(OPEN_STATUSES)))
                .values(lease_until=0)
            )
            return int(result.rowcount or 0)

    async def release(self, task_id: str, owner: str) -> None:
        """Give the lease up (stopping): another node, or this one restarted, resumes the task at once."""
        async with self._db.begin() as conn:
            await conn.execute(
                sa.update(tasks).where(tasks.c.id == task_id, tasks.c.lease_owner == owner).values(lease_until=0)
            )

    async def renew(self, task_id: str, owner: str, lease_until: int) -> bool | None:
        """Extend the lease while the task runs or its devices are counted: None when it is no longer ours,
        else whether a StopTask is waiting for it."""
        async with self._db.begin() as conn:
            stop_requested = (
                await conn.execute(
                    sa.update(tasks)
                    .where(_leased_by(task_id, owner))
                    .values(lease_until=lease_until)
                    .returning(tasks.c.stop_requested)
                )
            ).scalar()
        return None if stop_requested is None else bool(stop_requested)

    # --- the engine: progress and outcome -----------------------------------------------------------------

    async def start(self, task_id: str, owner: str, all_device_cnt: int, now_s: int, lease_until: int) -> bool:
        """Status 1 -> 2 with AllDeviceCnt: a task is shown as processing only once its devices are counted (a
        DescribeTask never shows a started task with AllDeviceCnt 0 that will match devices). False when a
        CancelTask came first, or the lease is no longer ours."""
        return await self._write(
            sa.update(tasks)
            .where(tasks.c.id == task_id, _may(TaskEvent.START), tasks.c.lease_owner == owner)
            .values(
                status=target(TaskEvent.START).value,
                updated_at=now_s,
                all_device_cnt=all_device_cnt,
                done_device_cnt=0,
                lease_until=lease_until,
            )
        )

    async def set_device_count(self, task_id: str, owner: str, all_device_cnt: int, lease_until: int) -> bool:
        """Record AllDeviceCnt of a task started before its count was kept (before the first batch: the cursor
        is still None)."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
                tasks.c.applied_cursor.is_(None),
            )
            .values(all_device_cnt=all_device_cnt, done_device_cnt=0, lease_until=lease_until)
        )

    async def advance(self, progress: Progress, results: Sequence[DeviceResult] = (), now_ms: int = 0) -> Committed:
        """A progress write on its own (PublishMessage batches, pages without a matching device), with the
        outcome row of each device in ``results`` in the same transaction. Raises FenceLost."""
        async with self._db.begin() as conn:
            if results:
                assert progress.applied_cursor is not None  # a batch with results reached devices
                reached = [(r.device_name, None, r.outcome) for r in results]
                await insert_batch(conn, progress.task_id, progress.applied_cursor, reached, now_ms)
            stop_requested = await write_progress(conn, progress)
        return Committed(written=[], stop_requested=stop_requested)

    async def complete(self, task_id: str, owner: str, expected_cursor: str | None, now_s: int) -> bool:
        """Status 3 with DoneTime; every push has gone out: pushed_cursor catches up with applied_cursor."""
        return await self._write(
            sa.update(tasks)
            .where(
                _held_by(task_id, owner),
                tasks.c.applied_cursor.is_not_distinct_from(expected_cursor),
            )
            .values(**_ended(TaskEvent.FINISH, now_s, pushed_cursor=tasks.c.applied_cursor))
        )

    async def fail(self, task_id: str, owner: str, ret_code: int, err_msg: str, now_s: int) -> bool:
        """Status 4 (the deadline passed, or the abort criteria held) with RetCode/ErrMsg; DoneTime is the time
        it ended."""
        return await self._write(
            sa.update(tasks)
            .where(_held_by(task_id, owner))
            .values(**_ended(TaskEvent.DEADLINE, now_s, ret_code=ret_code, err_msg=err_msg))
        )

    async def end_stopped(self, task_id: str, owner: str, err_msg: str, now_s: int) -> bool:
        """Status 2 -> 5 for a StopTask, after the batch in flight: DoneDeviceCnt says how far it got, DoneTime
        when it stopped."""
        return await self._write(
            sa.update(tasks)
            .where(_held_by(task_id, owner), tasks.c.stop_requested.is_(True))
            .values(**_ended(TaskEvent.STOP, now_s, err_msg=err_msg))
        )

    async def late_delivery_tasks(self, product_id: str, now_s: int) -> list[TaskRecord]:
        """Started tasks of the product with extensions, within MaxExecutionTimeInSeconds of their start."""
        query = sa.select(tasks).where(
            tasks.c.product_id == product_id,
            tasks.c.status.in_([TaskStatus.PROCESSING.value, TaskStatus.COMPLETED.value]),
            tasks.c.extensions.is_not(None),
            tasks.c.started_at + tasks.c.max_execution_s >= now_s,
        )
        async with self._db.connect() as conn:
            return [_record(row) for row in await conn.execute(query)]

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

    async def purge(self, created_before: int, tokens_created_before: int | None = None) -> int:
        """Delete finished tasks created before ``created_before`` (the retention window), with their device
        outcomes, and the client tokens recorded before ``tokens_created_before``."""
        old = sa.and_(tasks.c.created_at < created_before, tasks.c.status.in_(_statuses(FINISHED_STATUSES)))
        async with self._db.begin() as conn:
            old_ids = sa.select(tasks.c.id).where(old)
            for outcomes in (task_devices, task_batches):
                await conn.execute(sa.delete(outcomes).where(outcomes.c.task_id.in_(old_ids)))
            result = await conn.execute(sa.delete(tasks).where(old))
            if tokens_created_before is not None:
                await conn.execute(
                    sa.delete(task_client_tokens).where(task_client_tokens.c.created_at < tokens_created_before)
                )
            return int(result.rowcount or 0)


def _ended(event: TaskEvent, now_s: int, **values: Any) -> dict[str, Any]:
    """The values of a task's last status change (completed, failed, stopped): DoneTime, no lease any more."""
    return {
        "status": target(event).value,
        "done_time": now_s,
        "updated_at": now_s,
        "lease_owner": None,
        "lease_until": None,
        **values,
    }


async def _count_open(conn: AsyncConnection, account_id: int) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(tasks)
        .where(tasks.c.account_id == account_id, tasks.c.status.in_(_statuses(OPEN_STATUSES)))
    )
    return int((await conn.execute(query)).scalar_one())


def _json_or_null(value: dict[str, Any] | None) -> Any:
    """SQL NULL for None (a plain Tencent task), not the JSON value null."""
    return sa.null() if value is None else value


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
        extensions=extensions_from_json(row.extensions),
        stop_requested=bool(row.stop_requested),
    )

"""Per-device outcomes of tasks that keep them (``task_devices``; docs/extensions.md#outcomes).

Rows are written in the task's own batch transaction (``store/batches.py``: one ``COPY`` on PostgreSQL, one
``executemany`` on SQLite, so a million rows cost a few seconds), and moved on later, always by a conditional
``UPDATE ... WHERE outcome IN (...)`` built from ``domain.outcomes.NEXT``, so no outcome moves backwards:

* the **watch**: an outcome-tracking UpdateShadow task records itself in each device it writes
  (``devices.watch_task``); every later shadow write of that device (``store/shadows.py``: the device's own
  reports, UpdateDeviceShadow) then decides, in the same transaction, whether the device has Converged or was
  Superseded (:func:`decide_watch`). One watch per device: the newest tracking task that wrote it;
* acknowledgements and late deliveries of PublishMessage tasks (:meth:`TaskOutcomeStore.mark`).

``NotConverged`` is never stored: it is a Written row whose convergence window has passed, derived when read
(``domain.outcomes.effective_outcome``), so nothing has to run when each device's window ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.outcomes import (
    DeviceOutcome,
    contradicts,
    effective_outcome,
    shadow_verdict,
    sources,
    tracked_values,
)
from fleetops.domain.shadow import JSONObject, Shadow
from fleetops.domain.tasks import TaskType, UpdateShadowSpec
from fleetops.ports.store import DeviceOutcomeRecord
from fleetops.ports.store import TaskOutcomes as TaskOutcomesPort
from fleetops.store.database import Database
from fleetops.store.dialect import copy_rows
from fleetops.store.tables import task_devices, tasks
from fleetops.store.task_json import extensions_from_json, spec_from_json

_COLUMNS: Final = ("task_id", "device_name", "outcome", "version", "written_ms", "at_ms")
_WATCH_CACHE_SIZE: Final = 4096


async def insert_outcomes(
    conn: AsyncConnection, task_id: str, rows: Sequence[tuple[str, DeviceOutcome, int | None]], now_ms: int
) -> None:
    """One row per device reached by a batch: (device name, outcome, shadow version or None)."""
    await copy_rows(
        conn,
        task_devices,
        _COLUMNS,
        [(task_id, name, outcome.value, version, now_ms, now_ms) for name, outcome, version in rows],
    )


def _move(task_id: str, device_name: str, outcome: DeviceOutcome, now_ms: int) -> sa.Update:
    """The conditional change of one device's outcome (``domain.outcomes.NEXT``)."""
    return (
        sa.update(task_devices)
        .where(
            task_devices.c.task_id == task_id,
            task_devices.c.device_name == device_name,
            task_devices.c.outcome.in_(sorted(o.value for o in sources(outcome))),
        )
        .values(outcome=outcome.value, at_ms=now_ms)
    )


# --- the watch: convergence decided by the device's later shadow writes ------------------------------------


class WatchedTask(NamedTuple):
    values: JSONObject  # domain.outcomes.tracked_values of the task's Desired
    window_ms: int | None  # ConvergenceWindowInSeconds, in ms


class TaskWatches:
    """The watched tasks' tracked values, read once per task (a task's Desired never changes)."""

    def __init__(self) -> None:
        self._cache: dict[str, WatchedTask | None] = {}

    async def get(self, conn: AsyncConnection, task_id: str) -> WatchedTask | None:
        """None: the task is gone (purged) or keeps no outcomes."""
        if task_id in self._cache:
            return self._cache[task_id]
        row = (
            await conn.execute(sa.select(tasks.c.type, tasks.c.spec, tasks.c.extensions).where(tasks.c.id == task_id))
        ).first()
        watched = None
        if row is not None and row.type == TaskType.UPDATE_SHADOW.value:
            spec = spec_from_json(TaskType.UPDATE_SHADOW, dict(row.spec))
            extensions = extensions_from_json(row.extensions)
            if isinstance(spec, UpdateShadowSpec) and extensions is not None and extensions.tracks_outcomes:
                watched = WatchedTask(tracked_values(spec.desired), extensions.convergence_window_ms)
        if len(self._cache) >= _WATCH_CACHE_SIZE:
            self._cache.clear()
        self._cache[task_id] = watched
        return watched


def _decided(task_id: str, device_name: str, verdict: DeviceOutcome, task: WatchedTask, now_ms: int) -> sa.Update:
    statement = _move(task_id, device_name, verdict, now_ms)
    if task.window_ms is not None:  # after the window the device is NotConverged, for good
        statement = statement.where(task_devices.c.written_ms >= now_ms - task.window_ms)
    return statement


async def decide_watch(
    conn: AsyncConnection, watches: TaskWatches, task_id: str, device_name: str, new: Shadow
) -> tuple[str | None, sa.Update | None]:
    """Before a shadow write of a watched device: the watch to keep (None: nothing more to decide), and the
    outcome change to run in the write's transaction once the write has won (Converged or Superseded)."""
    task = await watches.get(conn, task_id)
    if task is None:
        return None, None
    verdict = shadow_verdict(task.values, new.reported, new.desired)
    if verdict is None:
        return task_id, None
    return None, _decided(task_id, device_name, verdict, task, new.timestamp_ms)


async def supersede_watches(
    conn: AsyncConnection, watches: TaskWatches, others: Sequence[tuple[str, str]], patch: JSONObject, now_ms: int
) -> None:
    """A tracking task is about to write ``patch`` over devices another tracking task watches (``others``:
    (device name, watching task)): that task's devices whose values the patch changes are Superseded."""
    written = tracked_values(patch)
    for device_name, task_id in others:
        task = await watches.get(conn, task_id)
        if task is not None and contradicts(written, task.values):
            await conn.execute(_decided(task_id, device_name, DeviceOutcome.SUPERSEDED, task, now_ms))


# --- reading outcomes --------------------------------------------------------------------------------------

_WRITTEN: Final = DeviceOutcome.WRITTEN.value


def _expired(window_ms: int | None, now_ms: int) -> sa.ColumnElement[bool]:
    """A Written row whose window has passed: effectively NotConverged."""
    if window_ms is None:
        return sa.false()
    return sa.and_(task_devices.c.outcome == _WRITTEN, task_devices.c.written_ms < now_ms - window_ms)


def _having(outcome: DeviceOutcome, window_ms: int | None, now_ms: int) -> sa.ColumnElement[bool]:
    if outcome is DeviceOutcome.NOT_CONVERGED:
        return _expired(window_ms, now_ms)
    if outcome is DeviceOutcome.WRITTEN:
        return sa.and_(task_devices.c.outcome == _WRITTEN, sa.not_(_expired(window_ms, now_ms)))
    return task_devices.c.outcome == outcome.value


class TaskOutcomeStore(TaskOutcomesPort):
    """:class:`fleetops.ports.store.TaskOutcomes` on SQLite / PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def counts(self, task_id: str, window_ms: int | None, now_ms: int) -> dict[DeviceOutcome, int]:
        # without a window nothing expires (and a constant in GROUP BY would name a column position)
        expired = _expired(window_ms, now_ms).label("expired") if window_ms is not None else sa.false()
        grouping = [task_devices.c.outcome] if window_ms is None else [task_devices.c.outcome, expired]
        query = (
            sa.select(task_devices.c.outcome, expired, sa.func.count())
            .where(task_devices.c.task_id == task_id)
            .group_by(*grouping)
        )
        counts: dict[DeviceOutcome, int] = {}
        async with self._db.connect() as conn:
            for outcome, is_expired, count in await conn.execute(query):
                key = DeviceOutcome.NOT_CONVERGED if is_expired else DeviceOutcome(outcome)
                counts[key] = counts.get(key, 0) + int(count)
        return counts

    async def page(
        self,
        task_id: str,
        outcome: DeviceOutcome | None,
        window_ms: int | None,
        now_ms: int,
        offset: int,
        limit: int,
    ) -> tuple[int, list[DeviceOutcomeRecord]]:
        where: list[sa.ColumnElement[bool]] = [task_devices.c.task_id == task_id]
        if outcome is not None:
            where.append(_having(outcome, window_ms, now_ms))
        async with self._db.connect() as conn:
            total = (await conn.execute(sa.select(sa.func.count()).select_from(task_devices).where(*where))).scalar()
            rows = await conn.execute(
                sa.select(task_devices)
                .where(*where)
                .order_by(task_devices.c.task_id, task_devices.c.device_name)
                .offset(offset)
                .limit(limit)
            )
            records = [_record(row, window_ms, now_ms) for row in rows]
        return int(total or 0), records

    async def pending_between(self, task_id: str, after: str | None, through: str) -> int:
        async with self._db.connect() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(task_devices)
                    .where(
                        task_devices.c.task_id == task_id,
                        task_devices.c.device_name > (after or ""),
                        task_devices.c.device_name <= through,
                        task_devices.c.outcome == _WRITTEN,
                    )
                )
            ).scalar()
        return int(count or 0)

    async def newest_write_ms(self, task_id: str) -> int | None:
        async with self._db.connect() as conn:
            newest = (
                await conn.execute(
                    sa.select(sa.func.max(task_devices.c.written_ms)).where(task_devices.c.task_id == task_id)
                )
            ).scalar()
        return None if newest is None else int(newest)

    async def mark(self, task_id: str, device_name: str, outcome: DeviceOutcome, now_ms: int) -> bool:
        return bool(await self.mark_many(task_id, [device_name], outcome, now_ms))

    async def mark_many(
        self, task_id: str, device_names: Sequence[str], outcome: DeviceOutcome, now_ms: int
    ) -> set[str]:
        moved: set[str] = set()
        async with self._db.begin() as conn:
            for chunk in _chunks(device_names):
                statement = (
                    sa.update(task_devices)
                    .where(
                        task_devices.c.task_id == task_id,
                        task_devices.c.device_name.in_(chunk),
                        task_devices.c.outcome.in_(sorted(o.value for o in sources(outcome))),
                    )
                    .values(outcome=outcome.value, at_ms=now_ms)
                    .returning(task_devices.c.device_name)
                )
                moved.update((await conn.execute(statement)).scalars())
        return moved

    async def with_outcome(self, task_id: str, device_names: Sequence[str], outcome: DeviceOutcome) -> list[str]:
        having = await self._names(task_id, device_names, task_devices.c.outcome == outcome.value)
        return [name for name in device_names if name in having]

    async def existing(self, task_id: str, device_names: Sequence[str]) -> set[str]:
        return await self._names(task_id, device_names, sa.true())

    async def _names(self, task_id: str, device_names: Sequence[str], condition: sa.ColumnElement[bool]) -> set[str]:
        found: set[str] = set()
        async with self._db.connect() as conn:
            for chunk in _chunks(device_names):
                query = sa.select(task_devices.c.device_name).where(
                    task_devices.c.task_id == task_id, task_devices.c.device_name.in_(chunk), condition
                )
                found.update((await conn.execute(query)).scalars())
        return found


def _chunks(names: Sequence[str], size: int = 500) -> list[Sequence[str]]:
    """IN lists of a bounded length (SQLite limits the bound parameters of one statement)."""
    return [names[i : i + size] for i in range(0, len(names), size)]


def _record(row: Any, window_ms: int | None, now_ms: int) -> DeviceOutcomeRecord:
    stored = DeviceOutcome(row.outcome)
    return DeviceOutcomeRecord(
        device_name=row.device_name,
        outcome=effective_outcome(stored, int(row.written_ms), window_ms, now_ms),
        version=None if row.version is None else int(row.version),
        at_ms=int(row.at_ms),
    )

"""Per-device outcomes of tasks that keep them (docs/extensions.md#outcomes): what each batch did, and what
changed for a device since.

Two tables, so that keeping outcomes costs a task almost nothing where it is hot - the batch:

* ``task_batches``: **one row per batch**, inserted in the batch's own transaction (``store/batches.py``,
  ``store/tasks.py``): the names of the devices the batch reached, the shadow version an UpdateShadow task
  wrote to each, each device's outcome then (Written or Converged; Sent, Offline or Published), and the counts.
  A million devices are 200 rows, not a million: the outcomes and ``DoneDeviceCnt`` never disagree, across a
  crash too, and a batch writes no more rows than before plus one.
* ``task_devices``: one row per device whose outcome **changed after its batch** (``base`` the batch's
  outcome, ``outcome`` the current one), always through a conditional write built from
  ``domain.outcomes.NEXT``, so no outcome moves backwards:

  - the **watch**: an UpdateShadow task that keeps outcomes records itself in each device it wrote and that was
    not Converged at once (``devices.watch_task``, set by the same UPDATE that merges the shadows); every later
    shadow write of such a device (``store/shadows.py``: the device's own reports, UpdateDeviceShadow) then
    decides, in the same transaction, whether it has Converged or was Superseded (:func:`decide_watch`). One
    watch per device: the newest tracking task that wrote it (:func:`supersede_watches`);
  - acknowledgements and late deliveries of PublishMessage tasks (:meth:`TaskOutcomeStore.move`).

A device's outcome is its ``task_devices`` row if it has one, else its batch's. ``NotConverged`` is never
stored: it is a Written device whose convergence window has passed, derived when read
(``domain.outcomes.effective_outcome``), so nothing has to run when each device's window ends.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.outcomes import (
    DeviceOutcome,
    contradicts,
    effective_outcome,
    shadow_verdict,
    sources,
    tracked_values,
    window_passed,
)
from fleetops.domain.shadow import JSONObject, Shadow
from fleetops.domain.tasks import TaskType, UpdateShadowSpec
from fleetops.ports.store import DeviceOutcomeRecord, Moved
from fleetops.ports.store import TaskOutcomes as TaskOutcomesPort
from fleetops.store.database import Database
from fleetops.store.tables import task_batches, task_devices, tasks
from fleetops.store.task_json import extensions_from_json, spec_from_json

_WATCH_CACHE_SIZE: Final = 4096
_BATCH_CACHE_SIZE: Final = 64  # parsed batches kept per store (a connect storm reads a few, many times)
_CHUNK: Final = 500  # names per IN list (SQLite bounds the parameters of one statement)
_WRITTEN: Final = DeviceOutcome.WRITTEN


# --- one row per batch ------------------------------------------------------------------------------------


async def insert_batch(
    conn: AsyncConnection,
    task_id: str,
    through: str,
    reached: Sequence[tuple[str, int | None, DeviceOutcome]],
    now_ms: int,
) -> None:
    """The batch's devices (name, shadow version or None, outcome), in the batch's transaction.

    Kept compact, because it is written on the task's hot path: the names as one newline-separated string (a
    device name has no newline), and a version or an outcome shared by every device of the batch (the common
    case: all Written at version n+1... or all Offline) stored once instead of per device.
    """
    if not reached:
        return
    names, versions, outcomes = zip(*sorted(reached), strict=True)  # name order: readers bisect
    counts = Counter(outcomes)
    devices: dict[str, Any] = {
        "n": "\n".join(names),
        "o": next(iter(counts)).value if len(counts) == 1 else [o.value for o in outcomes],
    }
    if any(v is not None for v in versions):
        devices["v"] = versions[0] if len(set(versions)) == 1 else versions
    await conn.execute(
        sa.insert(task_batches).values(
            task_id=task_id,
            through_name=through,
            written_ms=now_ms,
            devices=orjson.dumps(devices).decode(),
            counts=orjson.dumps({o.value: n for o, n in counts.items()}).decode(),
        )
    )


@dataclass(frozen=True, slots=True)
class Batch:
    through: str
    written_ms: int
    names: list[str]
    versions: list[int | None]
    outcomes: list[DeviceOutcome]

    def index(self, name: str) -> int | None:
        at = bisect_left(self.names, name)
        return at if at < len(self.names) and self.names[at] == name else None


def parse_batch(through: str, written_ms: int, devices: str) -> Batch:
    """The compact form of insert_batch, expanded."""
    value = orjson.loads(devices)
    names: list[str] = value["n"].split("\n")
    versions = value.get("v")
    if not isinstance(versions, list):
        versions = [versions] * len(names)
    outcomes = value["o"]
    if isinstance(outcomes, str):
        return Batch(through, written_ms, names, versions, [DeviceOutcome(outcomes)] * len(names))
    return Batch(through, written_ms, names, versions, [DeviceOutcome(o) for o in outcomes])


async def _batch_of(conn: AsyncConnection, task_id: str, name: str) -> tuple[str, int] | None:
    """(through, written_ms) of the batch that covers ``name`` (batches go in name order: the first whose last
    name is at or after it), or None when no such batch is committed."""
    row = (
        await conn.execute(
            sa.select(task_batches.c.through_name, task_batches.c.written_ms)
            .where(task_batches.c.task_id == task_id, task_batches.c.through_name >= name)
            .order_by(task_batches.c.task_id, task_batches.c.through_name)
            .limit(1)
        )
    ).first()
    return None if row is None else (row.through_name, int(row.written_ms))


def _insert_change(conn: AsyncConnection) -> Any:
    """INSERT ... ON CONFLICT of the dialect (both spell it alike)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(task_devices)


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


async def _decided(
    conn: AsyncConnection, task_id: str, device_name: str, verdict: DeviceOutcome, task: WatchedTask, now_ms: int
) -> Any | None:
    """The change of a watched (Written) device to ``verdict``, or None when its window has passed (it is
    NotConverged for good) or its batch is not there. Converged and Superseded are final: a device decided
    already keeps its first verdict (ON CONFLICT DO NOTHING)."""
    batch = await _batch_of(conn, task_id, device_name)
    if batch is None or window_passed(batch[1], task.window_ms, now_ms):
        return None
    return (
        _insert_change(conn)
        .values(
            task_id=task_id,
            device_name=device_name,
            base=_WRITTEN.value,
            outcome=verdict.value,
            batch=batch[0],
            written_ms=batch[1],
            at_ms=now_ms,
        )
        .on_conflict_do_nothing(index_elements=["task_id", "device_name"])
    )


async def decide_watch(
    conn: AsyncConnection, watches: TaskWatches, task_id: str, device_name: str, new: Shadow
) -> tuple[str | None, Any | None]:
    """Before a shadow write of a watched device: the watch to keep (None: nothing more to decide), and the
    outcome change to run in the write's transaction once the write has won (Converged or Superseded)."""
    task = await watches.get(conn, task_id)
    if task is None:
        return None, None
    verdict = shadow_verdict(task.values, new.reported, new.desired)
    if verdict is None:
        return task_id, None
    return None, await _decided(conn, task_id, device_name, verdict, task, new.timestamp_ms)


async def supersede_watches(
    conn: AsyncConnection, watches: TaskWatches, others: Sequence[tuple[str, str]], patch: JSONObject, now_ms: int
) -> None:
    """A tracking task is about to write ``patch`` over devices another tracking task watches (``others``:
    (device name, watching task)): that task's devices whose values the patch changes are Superseded."""
    written = tracked_values(patch)
    for device_name, task_id in others:
        task = await watches.get(conn, task_id)
        if task is not None and contradicts(written, task.values):
            change = await _decided(conn, task_id, device_name, DeviceOutcome.SUPERSEDED, task, now_ms)
            if change is not None:
                await conn.execute(change)


# --- reading and moving outcomes ---------------------------------------------------------------------------


class _Change(NamedTuple):
    outcome: DeviceOutcome
    at_ms: int


class _Counted(NamedTuple):
    written_ms: int
    counts: Counter[DeviceOutcome]


class TaskOutcomeStore(TaskOutcomesPort):
    """:class:`fleetops.ports.store.TaskOutcomes` on SQLite / PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._batches: OrderedDict[tuple[str, str], Batch] = OrderedDict()

    async def counts(self, task_id: str, window_ms: int | None, now_ms: int) -> dict[DeviceOutcome, int]:
        """Devices per effective outcome: the batches' counts (NotConverged for the Written devices of a batch
        whose window has passed), each later change moved from its base to its outcome."""
        total: Counter[DeviceOutcome] = Counter()
        async with self._db.connect() as conn:
            for counted in (await self._per_batch(conn, task_id, window_ms, now_ms)).values():
                total.update(counted.counts)
        return {outcome: count for outcome, count in total.items() if count}

    @staticmethod
    async def _per_batch(
        conn: AsyncConnection, task_id: str, window_ms: int | None, now_ms: int
    ) -> dict[str, _Counted]:
        """Each batch (by its last name, in name order) with its devices per effective outcome: two small reads,
        whatever the number of devices (a batch's own counts, and the changes grouped by batch)."""
        batches: dict[str, _Counted] = {}
        rows = await conn.execute(
            sa.select(task_batches.c.through_name, task_batches.c.written_ms, task_batches.c.counts)
            .where(task_batches.c.task_id == task_id)
            .order_by(task_batches.c.task_id, task_batches.c.through_name)
        )
        for through, written_ms, batch_counts in rows:
            counts: Counter[DeviceOutcome] = Counter()
            for outcome, count in orjson.loads(batch_counts).items():
                counts[effective_outcome(DeviceOutcome(outcome), int(written_ms), window_ms, now_ms)] += count
            batches[through] = _Counted(int(written_ms), counts)
        changes = await conn.execute(
            sa.select(task_devices.c.batch, task_devices.c.base, task_devices.c.outcome, sa.func.count())
            .where(task_devices.c.task_id == task_id)
            .group_by(task_devices.c.batch, task_devices.c.base, task_devices.c.outcome)
        )
        for through, base, outcome, count in changes:
            counted = batches.get(through)
            if counted is None:  # not possible: a change needs its batch; ignore rather than count twice
                continue
            counted.counts[effective_outcome(DeviceOutcome(base), counted.written_ms, window_ms, now_ms)] -= count
            counted.counts[DeviceOutcome(outcome)] += count
        return batches

    async def page(
        self,
        task_id: str,
        outcome: DeviceOutcome | None,
        window_ms: int | None,
        now_ms: int,
        offset: int,
        limit: int,
    ) -> tuple[int, list[DeviceOutcomeRecord]]:
        """The devices in name order. Whole batches before the page are skipped by their counts; only the
        batches that hold the page are read, with their changes."""
        records: list[DeviceOutcomeRecord] = []
        async with self._db.connect() as conn:
            batches = await self._per_batch(conn, task_id, window_ms, now_ms)
            sizes = {
                through: (sum(c.counts.values()) if outcome is None else c.counts.get(outcome, 0))
                for through, c in batches.items()
            }
            total, skip, after = sum(sizes.values()), offset, ""
            for through, size in sizes.items():
                start, after = after, through
                if skip >= size or size == 0:
                    skip -= min(skip, size)
                    continue
                devices = (
                    await conn.execute(
                        sa.select(task_batches.c.devices).where(
                            task_batches.c.task_id == task_id, task_batches.c.through_name == through
                        )
                    )
                ).scalar_one()
                batch = parse_batch(through, batches[through].written_ms, devices)
                changes = await self._changes_between(conn, task_id, start, through)
                for i, name in enumerate(batch.names):
                    change = changes.get(name)
                    if change is not None:
                        current, at_ms = change.outcome, change.at_ms
                    else:
                        current = effective_outcome(batch.outcomes[i], batch.written_ms, window_ms, now_ms)
                        at_ms = batch.written_ms
                    if outcome is not None and current is not outcome:
                        continue
                    if skip:
                        skip -= 1
                        continue
                    records.append(DeviceOutcomeRecord(name, current, batch.versions[i], at_ms))
                    if len(records) == limit:
                        return total, records
        return total, records

    @staticmethod
    async def _changes_between(conn: AsyncConnection, task_id: str, after: str, through: str) -> dict[str, _Change]:
        rows = await conn.execute(
            sa.select(task_devices.c.device_name, task_devices.c.outcome, task_devices.c.at_ms).where(
                task_devices.c.task_id == task_id,
                task_devices.c.device_name > after,
                task_devices.c.device_name <= through,
            )
        )
        return {name: _Change(DeviceOutcome(outcome), int(at_ms)) for name, outcome, at_ms in rows}

    async def pending_between(self, task_id: str, after: str | None, through: str) -> int:
        """Devices of the batches in ``(after, through]`` still Written: their Written count less the changes
        from Written among them."""
        async with self._db.connect() as conn:
            written = 0
            batches = await conn.execute(
                sa.select(task_batches.c.counts).where(
                    task_batches.c.task_id == task_id,
                    task_batches.c.through_name > (after or ""),
                    task_batches.c.through_name <= through,
                )
            )
            for (batch_counts,) in batches:
                written += int(orjson.loads(batch_counts).get(_WRITTEN.value, 0))
            changed = (
                await conn.execute(
                    sa.select(sa.func.count())
                    .select_from(task_devices)
                    .where(
                        task_devices.c.task_id == task_id,
                        task_devices.c.device_name > (after or ""),
                        task_devices.c.device_name <= through,
                        task_devices.c.base == _WRITTEN.value,
                    )
                )
            ).scalar()
        return written - int(changed or 0)

    async def newest_write_ms(self, task_id: str) -> int | None:
        async with self._db.connect() as conn:
            newest = (
                await conn.execute(
                    sa.select(sa.func.max(task_batches.c.written_ms)).where(task_batches.c.task_id == task_id)
                )
            ).scalar()
        return None if newest is None else int(newest)

    async def current(self, task_id: str, device_names: Sequence[str]) -> dict[str, DeviceOutcome]:
        """Each device's stored outcome (its change, else its batch's); devices of no committed batch are left
        out."""
        async with self._db.connect() as conn:
            return {name: state[0] for name, state in (await self._current(conn, task_id, device_names)).items()}

    async def _current(
        self, conn: AsyncConnection, task_id: str, device_names: Sequence[str]
    ) -> dict[str, tuple[DeviceOutcome, bool, Batch]]:
        """name -> (stored outcome, has a change row, its batch)."""
        found: dict[str, tuple[DeviceOutcome, bool, Batch]] = {}
        changed: dict[str, DeviceOutcome] = {}
        for chunk in _chunks(device_names):
            rows = await conn.execute(
                sa.select(task_devices.c.device_name, task_devices.c.outcome).where(
                    task_devices.c.task_id == task_id, task_devices.c.device_name.in_(chunk)
                )
            )
            changed.update({name: DeviceOutcome(outcome) for name, outcome in rows})
        for name in device_names:
            batch = await self._batch(conn, task_id, name)
            if batch is None:
                continue
            index = batch.index(name)
            if index is None:
                continue  # in the batch's range but not reached by it (not matched, deleted)
            if name in changed:
                found[name] = (changed[name], True, batch)
            else:
                found[name] = (batch.outcomes[index], False, batch)
        return found

    async def _batch(self, conn: AsyncConnection, task_id: str, name: str) -> Batch | None:
        """The committed batch covering ``name``, parsed (a small cache: batches never change)."""
        for key, cached in self._batches.items():
            if key[0] == task_id and cached.names and cached.names[0] <= name <= cached.through:
                self._batches.move_to_end(key)
                return cached
        row = (
            await conn.execute(
                sa.select(task_batches.c.through_name, task_batches.c.written_ms, task_batches.c.devices)
                .where(task_batches.c.task_id == task_id, task_batches.c.through_name >= name)
                .order_by(task_batches.c.task_id, task_batches.c.through_name)
                .limit(1)
            )
        ).first()
        if row is None:
            return None
        batch = parse_batch(row.through_name, int(row.written_ms), row.devices)
        self._batches[task_id, row.through_name] = batch
        while len(self._batches) > _BATCH_CACHE_SIZE:
            self._batches.popitem(last=False)
        return batch

    async def move(self, task_id: str, device_names: Sequence[str], outcome: DeviceOutcome, now_ms: int) -> Moved:
        """Move the devices' outcomes to ``outcome`` where ``domain.outcomes.NEXT`` allows it. Devices whose
        batch is not committed yet are ``pending`` (an acknowledgement can arrive before its batch commits)."""
        allowed = sources(outcome)
        moved: set[str] = set()
        async with self._db.begin() as conn:
            state = await self._current(conn, task_id, device_names)
            pending = {name for name in device_names if name not in state}
            updates = [name for name, (current, has_row, _b) in state.items() if has_row and current in allowed]
            inserts = [
                (name, batch) for name, (current, has_row, batch) in state.items() if not has_row and current in allowed
            ]
            for chunk in _chunks(updates):
                statement = (
                    sa.update(task_devices)
                    .where(
                        task_devices.c.task_id == task_id,
                        task_devices.c.device_name.in_(chunk),
                        task_devices.c.outcome.in_(sorted(o.value for o in allowed)),
                    )
                    .values(outcome=outcome.value, at_ms=now_ms)
                    .returning(task_devices.c.device_name)
                )
                moved.update((await conn.execute(statement)).scalars())
            for name, batch in inserts:
                index = batch.index(name)
                assert index is not None
                insert = (
                    _insert_change(conn)
                    .values(
                        task_id=task_id,
                        device_name=name,
                        base=batch.outcomes[index].value,
                        outcome=outcome.value,
                        batch=batch.through,
                        written_ms=batch.written_ms,
                        at_ms=now_ms,
                    )
                    .on_conflict_do_nothing(index_elements=["task_id", "device_name"])
                    .returning(task_devices.c.device_name)
                )
                moved.update((await conn.execute(insert)).scalars())
        return Moved(moved=moved, pending=pending)

    async def mark(self, task_id: str, device_name: str, outcome: DeviceOutcome, now_ms: int) -> bool:
        return device_name in (await self.move(task_id, [device_name], outcome, now_ms)).moved


def _chunks(names: Sequence[str], size: int = _CHUNK) -> list[Sequence[str]]:
    return [names[i : i + size] for i in range(0, len(names), size)]

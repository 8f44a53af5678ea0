"""The task engine's bulk work over ``devices``: keyset pages of names, and the batch transaction.

Pages walk the ``(product_pk, name)`` unique index after a cursor, restricted to the task's snapshot
(``id <= snapshot_device_id``: a device created after the task started is not part of it; one deleted and
created again under the same name has a new id and is not either).

A batch of UpdateShadow is ONE transaction: the desired merge of the batch's matching devices (version + 1, the
metadata timestamps of the written keys, ``shadow_ts_ms``: ``store/shadows.py``) and the task's fenced progress
write (``store.tasks.progress_update``). If the fence does not hold, nothing of the batch is kept.

A task that keeps outcomes (docs/extensions.md#outcomes) adds to the same transaction: the devices another
tracking task watches are looked up first (that task's outcome for them becomes Superseded when this patch
changes its values), and the merge makes this task each written device's watch and inserts one
``task_devices`` row per written device (Converged at once when the device reports the values already, else
Written: ``store/shadows.py``).

Neither merge path checks the 8 KB limit of the stored state after the merge per device (docs/tasks.md): the
patch itself is within the limits, checked by CreateTask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.name_filter import NameFilter
from fleetops.domain.outcomes import tracked_values
from fleetops.domain.shadow import JSONObject
from fleetops.domain.tasks import TaskType
from fleetops.ports.store import Committed, DesiredMerge, Progress
from fleetops.ports.store import DeviceBatches as DeviceBatchesPort
from fleetops.store.database import Database
from fleetops.store.outcomes import TaskWatches, supersede_watches
from fleetops.store.shadows import batch_bounds, merge_desired_each, merge_desired_flat
from fleetops.store.tables import devices, tasks
from fleetops.store.tasks import write_progress, write_transaction

# The smallest device name is one character, so every name sorts after "": the first page's lower bound.
_BEFORE_ALL: Final = ""
# Counting reads bigger pages than batches: no transaction, no write, just names through the filter.
COUNT_PAGE_SIZE: Final = 20_000


class DeviceBatches(DeviceBatchesPort):
    """:class:`fleetops.ports.store.DeviceBatches` for one database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._watches = TaskWatches()

    async def count(self, product_pk: int, snapshot_id: int) -> int:
        """Every device of the product in the snapshot (the empty filter)."""
        async with self._db.connect() as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count())
                        .select_from(devices)
                        .where(devices.c.product_pk == product_pk, devices.c.id <= snapshot_id)
                    )
                ).scalar_one()
            )

    async def names_after(self, product_pk: int, after: str | None, snapshot_id: int, limit: int) -> list[str]:
        """The next ``limit`` device names after ``after`` (None: from the first), in index order."""
        async with self._db.connect() as conn:
            names = (
                await conn.execute(
                    sa.select(devices.c.name)
                    .where(
                        devices.c.product_pk == product_pk,
                        devices.c.name > (after or _BEFORE_ALL),
                        devices.c.id <= snapshot_id,
                    )
                    .order_by(devices.c.product_pk, devices.c.name)
                    .limit(limit)
                )
            ).scalars()
            return list(names)

    async def versions_between(
        self, product_pk: int, snapshot_id: int, after: str | None, through: str, limit: int
    ) -> list[tuple[str, int]]:
        """(name, shadow version) of up to ``limit`` devices in ``(after, through]``: deltas to push again."""
        async with self._db.connect() as conn:
            rows = await conn.execute(
                sa.select(devices.c.name, devices.c.shadow_version)
                .where(
                    devices.c.product_pk == product_pk,
                    devices.c.name > (after or _BEFORE_ALL),
                    devices.c.name <= through,
                    devices.c.id <= snapshot_id,
                )
                .order_by(devices.c.product_pk, devices.c.name)
                .limit(limit)
            )
            return [(row.name, int(row.shadow_version)) for row in rows]

    async def count_matching(
        self, product_pk: int, snapshot_id: int, name_filter: NameFilter, sample: int = 0
    ) -> tuple[int, list[str]]:
        """The snapshot's devices whose name matches (AllDeviceCnt, PreviewTask), one page of names at a time
        (an empty filter is one SQL count), and the first ``sample`` matching names."""
        if not name_filter.pattern:
            first = await self.names_after(product_pk, None, snapshot_id, sample) if sample else []
            return await self.count(product_pk, snapshot_id), first
        matched, first, after = 0, [], None
        while True:
            names = await self.names_after(product_pk, after, snapshot_id, COUNT_PAGE_SIZE)
            hits = name_filter.filter(names)
            matched += len(hits)
            if len(first) < sample:
                first.extend(hits[: sample - len(first)])
            if len(names) < COUNT_PAGE_SIZE:
                return matched, first
            after = names[-1]

    async def merge_desired(
        self,
        progress: Progress,
        product_pk: int,
        snapshot_id: int,
        through: str,
        names: Sequence[str] | None,
        patch: JSONObject,
        now_ms: int,
        nested_merge: DesiredMerge | None = None,
        tracking: bool = False,
    ) -> Committed:
        """Merge ``patch`` into the desired section of the devices in ``(progress.expected_cursor, through]``
        (only ``names`` of them unless None) and write ``progress`` (its ``done_delta`` is replaced by the
        number of devices written), in one transaction. Returns (name, new version) per device written.

        ``nested_merge`` None: ``patch`` is flat and merged in SQL; otherwise each row goes through it.
        ``tracking``: the task keeps outcomes (module doc). Raises FenceLost (nothing written) when the task's
        row does not match ``progress``.
        """
        bounds = batch_bounds(product_pk, progress.expected_cursor or _BEFORE_ALL, through, snapshot_id)
        watch = progress.task_id if tracking else None
        async with write_transaction(self._db) as conn:
            if watch is not None and await self._may_be_watched(conn, product_pk, watch):
                others = await self._watched_by_others(conn, bounds, names, watch)
                await supersede_watches(conn, self._watches, others, patch, now_ms)
            if nested_merge is None:
                rows = await merge_desired_flat(conn, bounds, names, patch, now_ms, watch)
            else:
                rows = await merge_desired_each(conn, bounds, names, nested_merge, now_ms, watch, tracked_values(patch))
            fenced = Progress(
                task_id=progress.task_id,
                owner=progress.owner,
                expected_cursor=progress.expected_cursor,
                applied_cursor=progress.applied_cursor,
                pushed_cursor=progress.pushed_cursor,
                done_delta=len(rows),
                lease_until=progress.lease_until,
                unless_stopped=progress.unless_stopped,
            )
            stop_requested = await write_progress(conn, fenced)
        return Committed(rows, stop_requested)

    @staticmethod
    async def _may_be_watched(conn: AsyncConnection, product_pk: int, me: str) -> bool:
        """Whether another UpdateShadow task with extensions exists for the product (only such a task can watch
        its devices): one look at the small tasks table saves reading the batch's rows when none does."""
        other = (
            sa.select(tasks.c.id)
            .where(
                tasks.c.product_pk == product_pk,
                tasks.c.type == TaskType.UPDATE_SHADOW.value,
                tasks.c.extensions.is_not(None),
                tasks.c.id != me,
            )
            .limit(1)
        )
        return (await conn.execute(other)).first() is not None

    @staticmethod
    async def _watched_by_others(
        conn: AsyncConnection, bounds: dict[str, Any], names: Sequence[str] | None, me: str
    ) -> list[tuple[str, str]]:
        """(device name, watching task) of the batch's devices that another tracking task watches."""
        rows = await conn.execute(
            sa.select(devices.c.name, devices.c.watch_task).where(
                devices.c.product_pk == bounds["pk"],
                devices.c.name > bounds["after"],
                devices.c.name <= bounds["through"],
                devices.c.id <= bounds["snapshot"],
                devices.c.watch_task.is_not(None),
                devices.c.watch_task != me,
            )
        )
        wanted = None if names is None else set(names)
        return [(row.name, row.watch_task) for row in rows if wanted is None or row.name in wanted]

"""The task engine's bulk work over ``devices``: keyset pages of names, and the batch transaction.

Pages walk the ``(product_pk, name)`` unique index after a cursor, restricted to the task's snapshot
(``id <= snapshot_device_id``: a device created after the task started is not part of it; one deleted and
created again under the same name has a new id and is not either).

A batch of UpdateShadow is ONE transaction: the desired merge of the batch's matching devices (version + 1, the
metadata timestamps of the written keys, ``shadow_ts_ms``: ``store/shadows.py``) and the task's fenced progress
write (``store.tasks.progress_update``). If the fence does not hold, nothing of the batch is kept.

Neither merge path checks the 8 KB limit of the stored state after the merge per device (docs/tasks.md): the
patch itself is within the limits, checked by CreateTask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import sqlalchemy as sa

from fleetops.domain.shadow import JSONObject
from fleetops.ports.store import DesiredMerge, FenceLost, Progress
from fleetops.ports.store import DeviceBatches as DeviceBatchesPort
from fleetops.store.database import Database
from fleetops.store.shadows import batch_bounds, merge_desired_each, merge_desired_flat
from fleetops.store.tables import devices
from fleetops.store.tasks import progress_update, write_transaction

# The smallest device name is one character, so every name sorts after "": the first page's lower bound.
_BEFORE_ALL: Final = ""


class DeviceBatches(DeviceBatchesPort):
    """:class:`fleetops.ports.store.DeviceBatches` for one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
    ) -> list[tuple[str, int]]:
        """Merge ``patch`` into the desired section of the devices in ``(progress.expected_cursor, through]``
        (only ``names`` of them unless None) and write ``progress`` (its ``done_delta`` is replaced by the
        number of devices written), in one transaction. Returns (name, new version) per device written.

        ``nested_merge`` None: ``patch`` is flat and merged in SQL; otherwise each row goes through it.
        Raises FenceLost (nothing written) when the task's row does not match ``progress``.
        """
        bounds = batch_bounds(product_pk, progress.expected_cursor or _BEFORE_ALL, through, snapshot_id)
        async with write_transaction(self._db) as conn:
            if nested_merge is None:
                written = await merge_desired_flat(conn, bounds, names, patch, now_ms)
            else:
                written = await merge_desired_each(conn, bounds, names, nested_merge, now_ms)
            fenced = Progress(
                task_id=progress.task_id,
                owner=progress.owner,
                expected_cursor=progress.expected_cursor,
                applied_cursor=progress.applied_cursor,
                pushed_cursor=progress.pushed_cursor,
                done_delta=len(written),
                lease_until=progress.lease_until,
            )
            if not (await conn.execute(progress_update(fenced))).rowcount:
                raise FenceLost(progress.task_id)
        return written

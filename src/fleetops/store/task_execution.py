"""The task executor's bulk queries over ``devices``: keyset pages of names, and the batched desired merge.

Pages walk the ``(product_pk, name)`` unique index after a cursor, restricted to the task's snapshot
(``id <= snapshot_device_id``: a device created after the task started is not part of it; one deleted and
created again under the same name has a new id and is not either).

A batch of UpdateShadow is ONE transaction: the desired merge of the batch's matching devices (version + 1,
the metadata timestamps of the written keys, ``shadow_ts_ms``) and the task's fenced progress write
(``store.tasks.progress_update``). If the fence does not hold, nothing of the batch is kept. The merge is the
RFC 7396 merge of ``domain.shadow`` done by the database:

* a *flat* patch (no object among its values, the common case) is merged in SQL: SQLite's built-in
  ``json_patch``; on PostgreSQL ``(desired - null_keys) || non_null_values``. The metadata of each
  written key becomes ``{"timestamp": now}`` and deleted keys lose theirs, exactly what
  ``domain.shadow.stamp_metadata`` does for a flat patch;
* a patch with nested objects is merged in Python with ``domain.shadow.merge_patch`` / ``stamp_metadata``
  on the batch's rows, read under the batch's lock (SQLite ``BEGIN IMMEDIATE``, PostgreSQL ``FOR UPDATE``)
  and written back with one ``executemany``. The metadata of a nested write depends on each device's old
  value (an object written over a scalar drops the scalar's timestamp leaf), which no constant SQL patch can
  express; the Python rules are the same ones UpdateDeviceShadow applies, so both paths agree.

Neither path checks the 8 KB limit of the stored state after the merge per device (docs/tasks.md): the patch
itself is within the limits, checked by CreateTask.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.shadow import JSONObject, merge_patch, stamp_metadata
from fleetops.store.database import Database
from fleetops.store.tables import devices
from fleetops.store.tasks import Progress, progress_update, write_transaction

# The smallest device name is one character, so every name sorts after "": the first page's lower bound.
_BEFORE_ALL: Final = ""

_RANGE = "product_pk = :pk AND name > :after AND name <= :through AND id <= :snapshot"

_SQLITE_FLAT_MERGE: Final = (
    "UPDATE devices SET "
    "shadow_desired = json_patch(coalesce(shadow_desired, '{{}}'), :patch), "
    "shadow_meta_desired = CASE WHEN json_type(shadow_desired) = 'object' "
    "THEN json_patch(json_patch(shadow_meta_desired, :clear), :stamps) ELSE :stamps END, "
    "shadow_version = shadow_version + 1, shadow_ts_ms = :now_ms "
    "WHERE " + _RANGE + "{names} RETURNING name, shadow_version"
)
_SQLITE_NAMES: Final = " AND name IN (SELECT value FROM json_each(:names))"

_POSTGRESQL_FLAT_MERGE: Final = (
    "UPDATE devices SET "
    "shadow_desired = (CASE WHEN jsonb_typeof(shadow_desired) = 'object' THEN shadow_desired "
    "ELSE '{{}}'::jsonb END - CAST(:null_keys AS text[])) || CAST(:values AS jsonb), "
    "shadow_meta_desired = CASE WHEN jsonb_typeof(shadow_desired) = 'object' "
    "THEN shadow_meta_desired - CAST(:keys AS text[]) ELSE '{{}}'::jsonb END || CAST(:stamps AS jsonb), "
    "shadow_version = shadow_version + 1, shadow_ts_ms = :now_ms "
    "WHERE " + _RANGE + "{names} RETURNING name, shadow_version"
)
_POSTGRESQL_NAMES: Final = " AND name = ANY(CAST(:names AS text[]))"


def _statements(template: str, names_clause: str) -> tuple[sa.TextClause, sa.TextClause]:
    """(every device of the range, only the listed names) variants, built once."""
    return sa.text(template.format(names="")), sa.text(template.format(names=names_clause))


_SQLITE_MERGES: Final = _statements(_SQLITE_FLAT_MERGE, _SQLITE_NAMES)
_POSTGRESQL_MERGES: Final = _statements(_POSTGRESQL_FLAT_MERGE, _POSTGRESQL_NAMES)

_JSON_OR_NULL = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_WRITE_BACK: Final = (
    sa.update(devices)
    .where(devices.c.id == sa.bindparam("b_id"))
    .values(
        shadow_desired=sa.bindparam("b_desired", type_=_JSON_OR_NULL),
        shadow_meta_desired=sa.bindparam("b_meta", type_=_JSON_OR_NULL),
        shadow_version=sa.bindparam("b_version", type_=sa.BigInteger),
        shadow_ts_ms=sa.bindparam("b_ts_ms", type_=sa.BigInteger),
    )
)


class FenceLost(Exception):
    """The task's row no longer says this node may write this batch; the batch was rolled back."""


def is_flat(patch: JSONObject) -> bool:
    """No object among the values: the merge and the metadata need no knowledge of the old values."""
    return not any(isinstance(value, dict) for value in patch.values())


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class DeviceBatches:
    """Device pages and batched writes for one database."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def newest_device_id(self) -> int:
        async with self._db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.coalesce(sa.func.max(devices.c.id), 0)))).scalar_one())

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
    ) -> list[tuple[str, int]]:
        """Merge ``patch`` into the desired section of the devices in ``(progress.expected_cursor, through]``
        (only ``names`` of them unless None) and write ``progress`` (its ``done_delta`` is replaced by the
        number of devices written), in one transaction. Returns (name, new version) per device written.

        Raises FenceLost (nothing written) when the task's row does not match ``progress``.
        """
        bounds = {
            "pk": product_pk,
            "after": progress.expected_cursor or _BEFORE_ALL,
            "through": through,
            "snapshot": snapshot_id,
        }
        async with write_transaction(self._db) as conn:
            if is_flat(patch):
                written = await self._merge_in_sql(conn, bounds, names, patch, now_ms)
            else:
                written = await self._merge_in_python(conn, bounds, names, patch, now_ms)
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

    async def _merge_in_sql(
        self,
        conn: AsyncConnection,
        bounds: dict[str, Any],
        names: Sequence[str] | None,
        patch: JSONObject,
        now_ms: int,
    ) -> list[tuple[str, int]]:
        values = {key: value for key, value in patch.items() if value is not None}
        stamps = _dumps({key: {"timestamp": now_ms} for key in values})
        params: dict[str, Any] = {**bounds, "stamps": stamps, "now_ms": now_ms}
        if self._db.is_sqlite:
            every, listed = _SQLITE_MERGES
            params.update(patch=_dumps(patch), clear=_dumps(dict.fromkeys(patch)))
            if names is not None:
                params["names"] = _dumps(list(names))
        else:
            every, listed = _POSTGRESQL_MERGES
            params.update(
                null_keys=[key for key, value in patch.items() if value is None],
                values=_dumps(values),
                keys=list(patch),
            )
            if names is not None:
                params["names"] = list(names)
        result = await conn.execute(every if names is None else listed, params)
        return [(name, int(version)) for name, version in result]

    async def _merge_in_python(
        self,
        conn: AsyncConnection,
        bounds: dict[str, Any],
        names: Sequence[str] | None,
        patch: JSONObject,
        now_ms: int,
    ) -> list[tuple[str, int]]:
        query = (
            sa.select(
                devices.c.id,
                devices.c.name,
                devices.c.shadow_desired,
                devices.c.shadow_meta_desired,
                devices.c.shadow_version,
            )
            .where(
                devices.c.product_pk == bounds["pk"],
                devices.c.name > bounds["after"],
                devices.c.name <= bounds["through"],
                devices.c.id <= bounds["snapshot"],
            )
            .order_by(devices.c.product_pk, devices.c.name)
        )
        if not self._db.is_sqlite:
            query = query.with_for_update()  # SQLite: BEGIN IMMEDIATE already excludes every other writer
        wanted = None if names is None else set(names)
        updates: list[dict[str, Any]] = []
        written: list[tuple[str, int]] = []
        for row in await conn.execute(query):
            if wanted is not None and row.name not in wanted:
                continue
            old = row.shadow_desired if isinstance(row.shadow_desired, dict) else None
            version = int(row.shadow_version) + 1
            updates.append(
                {
                    "b_id": row.id,
                    "b_desired": merge_patch(old, patch),
                    "b_meta": stamp_metadata(old, row.shadow_meta_desired, patch, now_ms),
                    "b_version": version,
                    "b_ts_ms": now_ms,
                }
            )
            written.append((row.name, version))
        if updates:
            await conn.execute(_WRITE_BACK, updates)
        return written

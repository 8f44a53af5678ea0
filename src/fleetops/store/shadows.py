"""Device shadows: read, and write without lost updates.

The cloud API, the device (MQTT ``update``) and batch tasks may all write one shadow at the same moment. A
write here is optimistic: read the row, let a pure function compute the new document
(``fleetops.domain.shadow``), then ``UPDATE ... WHERE id = :id AND shadow_version = :read_version``. If
another writer got there first the update touches no row; the whole read-compute-write is then repeated on the
fresh document, a bounded number of times. The same statements run on SQLite and PostgreSQL, so both behave
alike; no database lock is held while Python computes. Every other writer (the task executor's SQL-side
merge included) must increment ``shadow_version``: that is what makes the compare-and-set sound.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.shadow import Shadow
from fleetops.store.database import Database
from fleetops.store.tables import devices, products

T = TypeVar("T")

# Enough for dozens of writers on other nodes hammering one shadow; a lost round costs a read and a pause.
DEFAULT_MAX_ATTEMPTS = 100
_BACKOFF_CAP_S = 0.01


class ShadowMissing(Exception):
    """The account has no such product, or the product no such device."""


class ShadowContention(Exception):
    """The shadow kept changing under this writer; it gave up after the bounded number of attempts."""


# The two hot statements are built once: constructing a Core statement costs about as much as running it on
# SQLite. Values go in as bound parameters.
_READ = (
    sa.select(
        devices.c.id,
        devices.c.shadow_reported,
        devices.c.shadow_desired,
        devices.c.shadow_meta_reported,
        devices.c.shadow_meta_desired,
        devices.c.shadow_version,
        devices.c.shadow_ts_ms,
    )
    .select_from(devices.join(products, products.c.id == devices.c.product_pk))
    .where(
        products.c.account_id == sa.bindparam("account_id"),
        products.c.product_id == sa.bindparam("product_id"),
        devices.c.name == sa.bindparam("device_name"),
    )
)

# None must become SQL NULL ("no desired section"), not the JSON value null.
_JSON_OR_NULL = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_COMPARE_AND_SET = (
    sa.update(devices)
    .where(devices.c.id == sa.bindparam("pk"), devices.c.shadow_version == sa.bindparam("read_version"))
    .values(
        shadow_reported=sa.bindparam("reported", type_=_JSON_OR_NULL),
        shadow_desired=sa.bindparam("desired", type_=_JSON_OR_NULL),
        shadow_meta_reported=sa.bindparam("meta_reported", type_=_JSON_OR_NULL),
        shadow_meta_desired=sa.bindparam("meta_desired", type_=_JSON_OR_NULL),
        shadow_version=sa.bindparam("version", type_=sa.BigInteger),
        shadow_ts_ms=sa.bindparam("ts_ms", type_=sa.BigInteger),
    )
)


class ShadowStore:
    """Shadow reads and compare-and-set writes.

    Writers that share one ShadowStore (one node) also queue on an in-process lock per shadow, so they take
    turns instead of failing each other's compare-and-set and retrying; the compare-and-set still guards
    against every other writer (other nodes, other stores, the task executor).
    """

    def __init__(self, db: Database, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._db = db
        self._max_attempts = max_attempts
        self._turns: dict[tuple[str, str], tuple[asyncio.Lock, list[int]]] = {}

    async def read(self, account_id: int, product_id: str, device_name: str) -> Shadow:
        """The current shadow. Raises ShadowMissing."""
        async with self._db.connect() as conn:
            _pk, shadow = await _read(conn, account_id, product_id, device_name)
        return shadow

    async def update(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        change: Callable[[Shadow], tuple[Shadow | None, T]],
    ) -> T:
        """Apply ``change`` atomically with respect to every other writer, and return its result.

        ``change(current)`` returns ``(new, result)``; ``new`` None means "write nothing" (a refused update,
        such as a version mismatch reported as a result). ``change`` must be pure: it may run more than once,
        each time on a fresher document, and only its last result is returned. Exceptions it raises propagate
        and nothing is written. Raises ShadowMissing, ShadowContention.
        """
        async with self._turn((product_id, device_name)):
            for attempt in range(self._max_attempts):
                # One connection for the read and the write. PostgreSQL (READ COMMITTED) re-checks the WHERE
                # against the newest committed row; SQLite runs the SELECT outside a transaction (the driver
                # begins one before the UPDATE only), so the write waits on busy_timeout, never on a stale
                # snapshot.
                async with self._db.connect() as conn:
                    pk, current = await _read(conn, account_id, product_id, device_name)
                    new, result = change(current)
                    if new is None:
                        return result
                    written = await self._compare_and_set(conn, pk, current.version, new)
                    await conn.commit()
                if written:
                    return result
                # Someone else wrote in between: back off a little (jittered, so losers spread out) and redo.
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, 0.0002 * 2**attempt)))
        raise ShadowContention(f"{product_id}/{device_name}: gave up after {self._max_attempts} attempts")

    @contextlib.asynccontextmanager
    async def _turn(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """An in-process lock per shadow, dropped when nobody holds or waits for it."""
        entry = self._turns.get(key)
        if entry is None:
            entry = self._turns[key] = (asyncio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._turns[key]

    async def _compare_and_set(self, conn: AsyncConnection, device_pk: int, read_version: int, new: Shadow) -> bool:
        result = await conn.execute(
            _COMPARE_AND_SET,
            {
                "pk": device_pk,
                "read_version": read_version,
                "reported": new.reported,
                "desired": new.desired,
                "meta_reported": new.metadata_reported,
                "meta_desired": new.metadata_desired,
                "version": new.version,
                "ts_ms": new.timestamp_ms,
            },
        )
        return bool(result.rowcount)


async def _read(conn: AsyncConnection, account_id: int, product_id: str, device_name: str) -> tuple[int, Shadow]:
    params = {"account_id": account_id, "product_id": product_id, "device_name": device_name}
    row = (await conn.execute(_READ, params)).first()
    if row is None:
        raise ShadowMissing(f"{product_id}/{device_name}")
    return int(row.id), Shadow(
        reported=dict(row.shadow_reported or {}),
        desired=None if row.shadow_desired is None else dict(row.shadow_desired),
        metadata_reported=dict(row.shadow_meta_reported or {}),
        metadata_desired=dict(row.shadow_meta_desired or {}),
        version=int(row.shadow_version),
        timestamp_ms=int(row.shadow_ts_ms),
    )

"""Devices, always reached through their product's account (the API) or their own credentials (MQTT).

Every API-facing query joins ``products`` and filters on ``products.account_id``: an account can neither see
nor change another account's devices, and cannot tell them from devices that do not exist. The MQTT-facing
methods (:meth:`DeviceStore.device_credentials` and :meth:`DeviceStore.set_online`, the ``DeviceDirectory``
of ``ports/messaging.py``) take the globally unique ProductId instead: the device proves who it is with its
PSK, and has no account to speak of.

A device and its shadow are one row (``devices.shadow_*``): deleting the device deletes the shadow, and a new
device starts with the empty shadow at version 0 (docs/device-protocol.md#document-model). The shadow columns are
written only by ``store/shadows.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.ports.messaging import DeviceCredentials, PresenceChange
from fleetops.ports.store import (
    DeviceLimitReached,
    DeviceMissing,
    DeviceNameTaken,
    DevicePage,
    DeviceRecord,
    NewDevice,
    ProductMissing,
)
from fleetops.store import dialect
from fleetops.store.database import Database, PointQuery
from fleetops.store.shadows import NEW_SHADOW_COLUMN_NAMES, NEW_SHADOW_COLUMNS, NEW_SHADOW_TEXT
from fleetops.store.tables import devices, products

# Large IN lists are split: SQLite allows 32,766 bound parameters, PostgreSQL 32,767 per statement.
_IN_CHUNK = 1000

_EMPTY_ARRAY = "[]"


_DEVICE_COLUMNS = (
    devices.c.id,
    devices.c.product_pk,
    devices.c.name,
    devices.c.psk,
    devices.c.enabled,
    devices.c.tags,
    devices.c.created_at,
    devices.c.online,
    devices.c.login_time,
    devices.c.first_online_time,
    devices.c.last_offline_time,
    devices.c.client_ip,
)
# DescribeDevice's read, built once (a statement composed per call costs more than the read, issue 12): the
# product's row always, the device's when it exists, so one query tells a missing product from a missing device
_DEVICE_BY_NAME: Final = PointQuery(
    sa.select(products.c.id.label("owner_pk"), *_DEVICE_COLUMNS)
    .select_from(
        products.outerjoin(
            devices, sa.and_(devices.c.product_pk == products.c.id, devices.c.name == sa.bindparam("name"))
        )
    )
    .where(products.c.account_id == sa.bindparam("account_id"), products.c.product_id == sa.bindparam("product_id"))
)

# Columns written by the bulk insert, in this order. The others take their server defaults, which are the
# values of a new device: enabled, offline, LoginTime 0, no desired section, shadow version 0 and time 0
# (tests/integration/test_device_store.py checks both insert paths give the same device and shadow). Fewer
# columns make the COPY measurably faster.
_BULK_COLUMNS = ("product_pk", "name", "psk", "tags", "created_at", *NEW_SHADOW_COLUMN_NAMES)


class DeviceStore:
    """:class:`fleetops.ports.store.DeviceStore` and :class:`fleetops.ports.messaging.DeviceDirectory`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- products, as seen from the device side -------------------------------------------------------------

    async def product_pk(self, account_id: int, product_id: str) -> int:
        """The product's primary key; raises ProductMissing."""
        async with self._db.connect() as conn:
            return await _product_pk(conn, account_id, product_id)

    async def product_owner(self, product_id: str) -> int | None:
        """The account that owns ``product_id`` (for the MQTT side, which knows only the ProductId)."""
        async with self._db.connect() as conn:
            row = (
                await conn.execute(sa.select(products.c.account_id).where(products.c.product_id == product_id))
            ).first()
        return None if row is None else int(row.account_id)

    async def count(self, account_id: int, product_id: str) -> int:
        async with self._db.connect() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            return await _count(conn, pk)

    # --- create -------------------------------------------------------------------------------------------

    async def insert(
        self, account_id: int, product_id: str, device: NewDevice, now_s: int, max_devices: int
    ) -> DeviceRecord:
        """Insert one device with an empty shadow.

        Raises ProductMissing, DeviceLimitReached, DeviceNameTaken.
        """
        async with self._db.begin() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            if await _count(conn, pk) >= max_devices:
                raise DeviceLimitReached(max_devices)
            try:
                async with conn.begin_nested():
                    device_pk = (
                        await conn.execute(
                            sa.insert(devices)
                            .values(
                                product_pk=pk,
                                name=device.name,
                                psk=device.psk,
                                enabled=True,
                                tags=device.tags or [],
                                created_at=now_s,
                                online=False,
                                login_time=0,
                                **NEW_SHADOW_COLUMNS,
                            )
                            .returning(devices.c.id)
                        )
                    ).scalar_one()
            except IntegrityError as exc:
                raise DeviceNameTaken(device.name) from exc
        return DeviceRecord(
            pk=int(device_pk),
            product_pk=pk,
            product_id=product_id,
            name=device.name,
            psk=device.psk,
            enabled=True,
            tags=list(device.tags or []),
            created_at=now_s,
            online=False,
            login_time=0,
            first_online_time=None,
            last_offline_time=None,
            client_ip=None,
        )

    async def insert_many(
        self,
        account_id: int,
        product_id: str,
        batch: Sequence[NewDevice],
        now_s: int,
        max_devices: int | None,
    ) -> int:
        """Insert a batch in one transaction (all or nothing); returns how many were inserted.

        Raises ProductMissing, DeviceLimitReached (the batch would pass ``max_devices``) and DeviceNameTaken
        (some name exists already; nothing of the batch is kept). Callers that want speed make the batch large
        (thousands), check names beforehand (:meth:`existing_names`) and, having checked the limit for the
        whole run, pass ``max_devices=None``: counting a million-device product costs tens of milliseconds.
        """
        if not batch:
            return 0
        async with self._db.begin() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            if max_devices is not None and await _count(conn, pk) + len(batch) > max_devices:
                raise DeviceLimitReached(max_devices)
            rows = [
                (
                    pk,
                    d.name,
                    d.psk,
                    _json_text(d.tags) if d.tags else _EMPTY_ARRAY,
                    now_s,
                    *NEW_SHADOW_TEXT,
                )
                for d in batch
            ]
            try:
                await dialect.copy_rows(conn, devices, _BULK_COLUMNS, rows)
            except IntegrityError as exc:
                raise DeviceNameTaken(str(exc.orig)) from exc
        return len(batch)

    async def existing_names(self, account_id: int, product_id: str, names: Iterable[str]) -> set[str]:
        """Which of ``names`` the product already has."""
        wanted = list(dict.fromkeys(names))
        found: set[str] = set()
        async with self._db.connect() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                rows = await conn.execute(
                    sa.select(devices.c.name).where(devices.c.product_pk == pk, devices.c.name.in_(chunk))
                )
                found.update(r.name for r in rows)
        return found

    # --- read ---------------------------------------------------------------------------------------------

    async def get(self, account_id: int, product_id: str, name: str) -> DeviceRecord:
        """One device. Raises ProductMissing or DeviceMissing (one query tells them apart)."""
        rows = await self._db.point(_DEVICE_BY_NAME, {"name": name, "account_id": account_id, "product_id": product_id})
        if not rows:
            raise ProductMissing(product_id)
        row = rows[0]
        if row.id is None:
            raise DeviceMissing([name])
        return _record(row, product_id)

    async def page(
        self,
        account_id: int,
        product_id: str,
        offset: int,
        limit: int,
        *,
        name_contains: str | None = None,
        enabled: bool | None = None,
    ) -> DevicePage:
        """One page of the product's devices in name order, and how many match in all.

        Both queries walk the ``(product_pk, name)`` unique index: the product's range of it, in order, so a
        page costs ``offset + limit`` index entries and no sort. Raises ProductMissing.
        """

        def page(conn: sa.Connection) -> DevicePage:
            found = conn.execute(_PRODUCT_PK, {"account_id": account_id, "product_id": product_id}).first()
            if found is None:
                raise ProductMissing(product_id)
            conditions: list[Any] = [devices.c.product_pk == found.id]
            if name_contains:
                conditions.append(dialect.contains(conn.dialect.name, devices.c.name, name_contains))
            if enabled is not None:
                conditions.append(devices.c.enabled == enabled)
            total = conn.execute(sa.select(sa.func.count()).select_from(devices).where(*conditions)).scalar_one()
            rows = conn.execute(
                sa.select(*_DEVICE_COLUMNS)
                .where(*conditions)
                .order_by(devices.c.product_pk, devices.c.name)
                .offset(offset)
                .limit(limit)
            ).all()
            return DevicePage(int(total), [_record(r, product_id) for r in rows])

        return await self._db.scan(page)

    async def iter_names(self, account_id: int, product_id: str, batch_size: int = 10_000) -> AsyncIterator[str]:
        """Every device name of the product, in order, read in keyset pages (short transactions)."""
        async with self._db.connect() as conn:
            pk = await _product_pk(conn, account_id, product_id)
        after: str | None = None
        while True:
            async with self._db.connect() as conn:
                conditions: list[Any] = [devices.c.product_pk == pk]
                if after is not None:
                    conditions.append(devices.c.name > after)
                names = (
                    (
                        await conn.execute(
                            sa.select(devices.c.name)
                            .where(*conditions)
                            .order_by(devices.c.product_pk, devices.c.name)
                            .limit(batch_size)
                        )
                    )
                    .scalars()
                    .all()
                )
            for name in names:
                yield name
            if len(names) < batch_size:
                return
            after = names[-1]

    # --- change -------------------------------------------------------------------------------------------

    async def delete(self, account_id: int, product_id: str, name: str) -> None:
        """Delete the device and with it its shadow (same row). Raises ProductMissing or DeviceMissing."""
        async with self._db.begin() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            result = await conn.execute(sa.delete(devices).where(devices.c.product_pk == pk, devices.c.name == name))
            if not result.rowcount:
                raise DeviceMissing([name])

    async def set_enabled(self, account_id: int, product_id: str, names: Sequence[str], enabled: bool) -> int:
        """Enable or disable every named device, or none of them.

        Raises ProductMissing, or DeviceMissing listing every name the product does not have (then nothing has
        changed). Returns the number of distinct devices named.
        """
        wanted = list(dict.fromkeys(names))
        async with self._db.begin() as conn:
            pk = await _product_pk(conn, account_id, product_id)
            found: set[str] = set()
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                rows = await conn.execute(
                    sa.select(devices.c.name).where(devices.c.product_pk == pk, devices.c.name.in_(chunk))
                )
                found.update(r.name for r in rows)
            missing = [n for n in wanted if n not in found]
            if missing:
                raise DeviceMissing(missing)
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                await conn.execute(
                    sa.update(devices)
                    .where(devices.c.product_pk == pk, devices.c.name.in_(chunk))
                    .values(enabled=enabled)
                )
        return len(wanted)

    # --- the MQTT side: lookups by the globally unique ProductId ----------------------------------------

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        """The device's PSK and EnableState for MQTT authentication (``DeviceDirectory``)."""
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(devices.c.psk, devices.c.enabled)
                    .select_from(devices.join(products, products.c.id == devices.c.product_pk))
                    .where(products.c.product_id == product_id, devices.c.name == device_name)
                )
            ).first()
        if row is None:
            return None
        return DeviceCredentials(product_id=product_id, device_name=device_name, psk=row.psk, enabled=bool(row.enabled))

    async def credentials_many(self, wanted: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceCredentials]:
        """The credentials of each ``(product_id, device_name)`` that exists (``DeviceDirectory``): one query
        per product and 1000 names, for the CONNECTs the gateway coalesced."""
        by_product: dict[str, list[str]] = {}
        for product_id, device_name in dict.fromkeys(wanted):
            by_product.setdefault(product_id, []).append(device_name)
        found: dict[tuple[str, str], DeviceCredentials] = {}
        async with self._db.connect() as conn:
            for product_id, names in by_product.items():
                for start in range(0, len(names), _IN_CHUNK):
                    rows = await conn.execute(
                        sa.select(devices.c.name, devices.c.psk, devices.c.enabled).where(
                            devices.c.product_pk == _product_pk_by_id(product_id),
                            devices.c.name.in_(names[start : start + _IN_CHUNK]),
                        )
                    )
                    for row in rows:
                        found[(product_id, row.name)] = DeviceCredentials(
                            product_id=product_id, device_name=row.name, psk=row.psk, enabled=bool(row.enabled)
                        )
        return found

    async def online_among(self, product_id: str, names: Sequence[str]) -> set[str]:
        """Which of ``names`` are recorded online (:class:`fleetops.ports.store.DevicePresence`): one query, an
        index range scan of the (product_pk, name) key from the least to the greatest of ``names`` (in the
        database's own order: the bounds are taken there) reading the online devices in it. A task's batch is
        one key range, so this reads no more than the batch (probing each name took twice as long)."""
        if not names:
            return set()
        wanted = list(names)
        async with self._db.connect() as conn:
            statement = _SQLITE_ONLINE_AMONG if conn.dialect.name == "sqlite" else _POSTGRESQL_ONLINE_AMONG
            rows = await conn.execute(statement, {"product_id": product_id, "names": orjson.dumps(wanted).decode()})
            found = {row.name for row in rows}
        return found.intersection(wanted)

    async def set_online(
        self, product_id: str, device_name: str, online: bool, client_ip: str | None, now_s: int
    ) -> None:
        """One presence change (:meth:`record_presence`)."""
        await self.record_presence([PresenceChange(product_id, device_name, online, client_ip, now_s)])

    async def record_presence(self, changes: Sequence[PresenceChange]) -> None:
        """Connects (Online 1, LoginTime, FirstOnlineTime once, ClientIP) and lost connections (Online 0,
        LastOfflineTime), in the order they happened, in one transaction (``DeviceDirectory``).

        Reduced to one row per device first (the latest state wins; an earlier connect of the same batch
        still sets LoginTime and ClientIP, an earlier disconnect LastOfflineTime), then written with two
        statements, each executed for many rows. A device deleted meanwhile is ignored.
        """
        came_online, went_offline = _latest_presence(changes)
        async with self._db.begin() as conn:
            if came_online:
                await conn.execute(_ONLINE_UPDATE, came_online)
            if went_offline:
                await conn.execute(_OFFLINE_UPDATE, went_offline)

    async def set_all_offline(self, now_s: int) -> int:
        """Mark every online device offline (a broker that starts knows no connection yet)."""
        async with self._db.begin() as conn:
            return await mark_all_offline(conn, now_s)


_ONLINE_AMONG = (
    "WITH b AS (SELECT min({n}) AS lo, max({n}) AS hi FROM {names}) "
    "SELECT d.name FROM devices AS d, b WHERE d.product_pk = (SELECT id FROM products WHERE product_id = :product_id) "
    "AND d.name >= b.lo AND d.name <= b.hi AND d.online"
)
# the names as one JSON text on both: on PostgreSQL a third faster than a text[] (measured, 5,000 names)
_SQLITE_ONLINE_AMONG: Final = sa.text(_ONLINE_AMONG.format(n="value", names="json_each(:names)"))
_POSTGRESQL_ONLINE_AMONG: Final = sa.text(
    _ONLINE_AMONG.format(n="n", names="jsonb_array_elements_text(CAST(:names AS jsonb)) AS n")
)


async def mark_all_offline(conn: AsyncConnection, now_s: int) -> int:
    """Mark every online device offline at ``now_s`` within the caller's transaction; how many."""
    result = await conn.execute(
        sa.update(devices).where(devices.c.online == sa.true()).values(online=False, last_offline_time=now_s)
    )
    return int(result.rowcount or 0)


_PRODUCT_PK: Final = sa.select(products.c.id).where(
    products.c.account_id == sa.bindparam("account_id"), products.c.product_id == sa.bindparam("product_id")
)


async def _product_pk(conn: AsyncConnection, account_id: int, product_id: str) -> int:
    row = (await conn.execute(_PRODUCT_PK, {"account_id": account_id, "product_id": product_id})).first()
    if row is None:
        raise ProductMissing(product_id)
    return int(row.id)


def _product_pk_by_id(product_id: str) -> sa.ScalarSelect[int]:
    return sa.select(products.c.id).where(products.c.product_id == product_id).scalar_subquery()


def _device_row(product_id_param: str, name_param: str) -> Any:
    return sa.and_(
        devices.c.product_pk
        == sa.select(products.c.id).where(products.c.product_id == sa.bindparam(product_id_param)).scalar_subquery(),
        devices.c.name == sa.bindparam(name_param),
    )


# Presence, one statement each for many rows (executemany). Parameters: ``p_pid``, ``p_name`` and the values; a
# None ``p_login`` / ``p_offline`` keeps the stored value (no connect / disconnect of that kind in the batch).
_ONLINE_UPDATE = (
    sa.update(devices)
    .where(_device_row("p_pid", "p_name"))
    .values(
        online=True,
        login_time=sa.bindparam("p_login"),
        first_online_time=sa.func.coalesce(devices.c.first_online_time, sa.bindparam("p_login_first")),
        client_ip=sa.bindparam("p_ip"),
        last_offline_time=sa.func.coalesce(sa.bindparam("p_offline", type_=sa.BigInteger), devices.c.last_offline_time),
    )
)
_OFFLINE_UPDATE = (
    sa.update(devices)
    .where(_device_row("p_pid", "p_name"))
    .values(
        online=False,
        last_offline_time=sa.bindparam("p_offline"),
        login_time=sa.func.coalesce(sa.bindparam("p_login", type_=sa.BigInteger), devices.c.login_time),
        first_online_time=sa.func.coalesce(
            devices.c.first_online_time, sa.bindparam("p_login_first", type_=sa.BigInteger)
        ),
        client_ip=sa.func.coalesce(sa.bindparam("p_ip", type_=sa.String), devices.c.client_ip),
    )
)


def _latest_presence(changes: Iterable[PresenceChange]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parameter rows for ``_ONLINE_UPDATE`` and ``_OFFLINE_UPDATE``: one per device, its latest state."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for change in changes:
        row = latest.setdefault(
            (change.product_id, change.device_name),
            {
                "p_pid": change.product_id,
                "p_name": change.device_name,
                "p_login": None,
                "p_login_first": None,
                "p_ip": None,
                "p_offline": None,
            },
        )
        row["online"] = change.online
        if change.online:
            row["p_login"], row["p_ip"] = change.at_s, change.client_ip
            if row["p_login_first"] is None:  # FirstOnlineTime: the earliest connect, if none is stored
                row["p_login_first"] = change.at_s
        else:
            row["p_offline"] = change.at_s
    came_online: list[dict[str, Any]] = []
    went_offline: list[dict[str, Any]] = []
    for row in latest.values():
        (came_online if row.pop("online") else went_offline).append(row)
    return came_online, went_offline


async def _count(conn: AsyncConnection, product_pk: int) -> int:
    return int(
        (
            await conn.execute(
                sa.select(sa.func.count()).select_from(devices).where(devices.c.product_pk == product_pk)
            )
        ).scalar_one()
    )


def _json_text(value: Any) -> str:
    return orjson.dumps(value or []).decode()


def _record(row: Any, product_id: str) -> DeviceRecord:
    return DeviceRecord(
        pk=int(row.id),
        product_pk=int(row.product_pk),
        product_id=product_id,
        name=row.name,
        psk=row.psk,
        enabled=bool(row.enabled),
        tags=list(row.tags or []),
        created_at=int(row.created_at),
        online=bool(row.online),
        login_time=int(row.login_time or 0),
        first_online_time=None if row.first_online_time is None else int(row.first_online_time),
        last_offline_time=None if row.last_offline_time is None else int(row.last_offline_time),
        client_ip=row.client_ip,
    )

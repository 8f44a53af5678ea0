"""Issue: devices and device shadows in the store, on SQLite and on PostgreSQL (every test runs on both)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.shadow import DeviceUpdate, Shadow, apply_desired, apply_device_update
from fleetops.ports.messaging import PresenceChange
from fleetops.ports.store import (
    DeviceLimitReached,
    DeviceMissing,
    DeviceNameTaken,
    NewDevice,
    ProductMissing,
    ShadowContention,
    ShadowMissing,
)
from fleetops.store.accounts import AccountStore
from fleetops.store.database import Database, open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore
from fleetops.store.shadows import ShadowStore

PID, OTHER_PID = "PROD000001", "PROD000002"
BIG = 1_000_000


@dataclass
class Env:
    db: Database
    devices: DeviceStore
    shadows: ShadowStore
    owner: int  # owns PID
    stranger: int  # owns OTHER_PID


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[Env]:
    db = open_database(database_url)
    await upgrade(db)
    accounts, products = AccountStore(db), ProductStore(db)
    owner = await accounts.create_account("owner", 0)
    stranger = await accounts.create_account("stranger", 0)
    await products.insert(owner, PID, "lamps", {}, 0, 10)
    await products.insert(stranger, OTHER_PID, "lamps", {}, 0, 10)
    try:
        yield Env(db, DeviceStore(db), ShadowStore(db), owner, stranger)
    finally:
        await db.dispose()


async def test_insert_get_and_account_isolation(env: Env) -> None:
    created = await env.devices.insert(env.owner, PID, NewDevice("lamp-1", "cHNr", [{"tag": "a"}]), 100, BIG)
    got = await env.devices.get(env.owner, PID, "lamp-1")
    assert got == created
    assert (got.name, got.psk, got.tags, got.created_at, got.enabled, got.online) == (
        "lamp-1",
        "cHNr",
        [{"tag": "a"}],
        100,
        True,
        False,
    )
    with pytest.raises(DeviceNameTaken):
        await env.devices.insert(env.owner, PID, NewDevice("lamp-1", "x"), 101, BIG)
    with pytest.raises(DeviceMissing) as missing:
        await env.devices.get(env.owner, PID, "lamp-2")
    assert missing.value.names == ("lamp-2",)
    # another account sees neither the product nor its devices, and cannot create or delete there
    with pytest.raises(ProductMissing):
        await env.devices.get(env.stranger, PID, "lamp-1")
    with pytest.raises(ProductMissing):
        await env.devices.insert(env.stranger, PID, NewDevice("lamp-9", "x"), 101, BIG)
    with pytest.raises(ProductMissing):
        await env.devices.delete(env.stranger, PID, "lamp-1")
    with pytest.raises(ProductMissing):
        await env.devices.set_enabled(env.stranger, PID, ["lamp-1"], False)
    with pytest.raises(ProductMissing):
        await env.devices.page(env.stranger, PID, 0, 10)
    with pytest.raises(ShadowMissing):
        await env.shadows.read(env.stranger, PID, "lamp-1")
    assert (await env.devices.get(env.owner, PID, "lamp-1")).enabled
    # the same name may exist in another product
    await env.devices.insert(env.stranger, OTHER_PID, NewDevice("lamp-1", "eA=="), 102, BIG)
    assert (await env.devices.get(env.stranger, OTHER_PID, "lamp-1")).psk == "eA=="


async def test_device_limit(env: Env) -> None:
    for i in range(3):
        await env.devices.insert(env.owner, PID, NewDevice(f"d{i}", "x"), 1, 3)
    with pytest.raises(DeviceLimitReached):
        await env.devices.insert(env.owner, PID, NewDevice("d3", "x"), 1, 3)
    with pytest.raises(DeviceLimitReached):
        await env.devices.insert_many(env.owner, PID, [NewDevice("d4", "x")], 1, 3)
    assert await env.devices.count(env.owner, PID) == 3


async def test_new_devices_start_with_the_empty_shadow_on_both_insert_paths(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("one", "x"), 1, BIG)
    await env.devices.insert_many(env.owner, PID, [NewDevice("bulk", "x")], 1, BIG)
    assert await env.shadows.read(env.owner, PID, "one") == Shadow.new()
    assert await env.shadows.read(env.owner, PID, "bulk") == Shadow.new()
    bulk = await env.devices.get(env.owner, PID, "bulk")
    assert (bulk.tags, bulk.enabled, bulk.online, bulk.login_time) == ([], True, False, 0)


async def test_bulk_insert_is_all_or_nothing_per_batch(env: Env) -> None:
    batch = [NewDevice(f"dev-{i:05d}", f"psk{i}") for i in range(3000)]
    assert await env.devices.insert_many(env.owner, PID, batch, 7, BIG) == 3000
    with pytest.raises(DeviceNameTaken):
        await env.devices.insert_many(env.owner, PID, [NewDevice("fresh-1", "x"), NewDevice("dev-00042", "x")], 8, BIG)
    assert await env.devices.count(env.owner, PID) == 3000
    with pytest.raises(DeviceMissing):
        await env.devices.get(env.owner, PID, "fresh-1")
    got = await env.devices.get(env.owner, PID, "dev-02999")
    assert (got.psk, got.created_at) == ("psk2999", 7)
    with pytest.raises(ProductMissing):
        await env.devices.insert_many(env.stranger, PID, [NewDevice("x", "x")], 8, BIG)
    assert await env.devices.existing_names(env.owner, PID, ["dev-00001", "nope", "dev-02999"]) == {
        "dev-00001",
        "dev-02999",
    }
    names = [n async for n in env.devices.iter_names(env.owner, PID, batch_size=700)]
    assert names == sorted(d.name for d in batch)


async def test_page_in_name_order_with_filters(env: Env) -> None:
    names = ["b_2", "a%1", "bx2", "A-3", "c:4", "lamp_b", "lampab"]
    for name in names:
        await env.devices.insert(env.owner, PID, NewDevice(name, "x"), 1, BIG)
    await env.devices.set_enabled(env.owner, PID, ["bx2", "c:4"], False)

    page = await env.devices.page(env.owner, PID, 0, 10)
    assert page.total == 7
    assert [d.name for d in page.devices] == sorted(names)  # byte order on both databases
    page = await env.devices.page(env.owner, PID, 2, 3)
    assert (page.total, [d.name for d in page.devices]) == (7, sorted(names)[2:5])
    # substring, case-sensitive, with _ and % taken literally (they are LIKE wildcards)
    assert [d.name for d in (await env.devices.page(env.owner, PID, 0, 10, name_contains="_")).devices] == [
        "b_2",
        "lamp_b",
    ]
    assert [d.name for d in (await env.devices.page(env.owner, PID, 0, 10, name_contains="%")).devices] == ["a%1"]
    assert (await env.devices.page(env.owner, PID, 0, 10, name_contains="LAMP")).total == 0
    disabled = await env.devices.page(env.owner, PID, 0, 10, enabled=False)
    assert (disabled.total, [d.name for d in disabled.devices]) == (2, ["bx2", "c:4"])
    both = await env.devices.page(env.owner, PID, 0, 10, name_contains="b", enabled=True)
    assert [d.name for d in both.devices] == ["b_2", "lamp_b", "lampab"]


async def test_page_walks_the_product_name_index(env: Env) -> None:
    await env.devices.insert_many(env.owner, PID, [NewDevice(f"n{i:05d}", "x") for i in range(5000)], 1, BIG)
    async with env.db.connect() as conn:
        pk = (await conn.execute(sa.text("SELECT id FROM products WHERE product_id = :p"), {"p": PID})).scalar()
        query = f"SELECT name FROM devices WHERE product_pk = {pk} ORDER BY product_pk, name LIMIT 10 OFFSET 100"
        if env.db.is_sqlite:
            plan = " ".join(str(r[-1]) for r in await conn.execute(sa.text("EXPLAIN QUERY PLAN " + query)))
            assert "uq_devices_product_name" in plan or "sqlite_autoindex_devices" in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # no sort step
        else:
            await conn.execute(sa.text("ANALYZE devices"))
            plan = " ".join(str(r[0]) for r in await conn.execute(sa.text("EXPLAIN " + query)))
            assert "uq_devices_product_name" in plan, plan
            assert "Sort" not in plan, plan


async def test_delete_removes_device_and_shadow(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("gone", "x"), 1, BIG)
    await env.shadows.update(env.owner, PID, "gone", lambda s: (apply_desired(s, {"a": 1}, 5)[0], None))
    await env.devices.delete(env.owner, PID, "gone")
    with pytest.raises(DeviceMissing):
        await env.devices.delete(env.owner, PID, "gone")
    with pytest.raises(ShadowMissing):
        await env.shadows.read(env.owner, PID, "gone")
    # a device created again under the name starts from an empty shadow
    await env.devices.insert(env.owner, PID, NewDevice("gone", "x"), 2, BIG)
    assert await env.shadows.read(env.owner, PID, "gone") == Shadow.new()


async def test_enable_state_is_all_or_nothing(env: Env) -> None:
    for name in ("a", "b", "c"):
        await env.devices.insert(env.owner, PID, NewDevice(name, "x"), 1, BIG)
    with pytest.raises(DeviceMissing) as missing:
        await env.devices.set_enabled(env.owner, PID, ["a", "zz", "b", "yy"], False)
    assert missing.value.names == ("zz", "yy")
    assert [(await env.devices.get(env.owner, PID, n)).enabled for n in ("a", "b", "c")] == [True] * 3
    assert await env.devices.set_enabled(env.owner, PID, ["a", "b", "a"], False) == 2
    states = {n: (await env.devices.get(env.owner, PID, n)).enabled for n in ("a", "b", "c")}
    assert states == {"a": False, "b": False, "c": True}
    creds = await env.devices.device_credentials(PID, "a")
    assert creds is not None and not creds.enabled
    await env.devices.set_enabled(env.owner, PID, ["a"], True)
    creds = await env.devices.device_credentials(PID, "a")
    assert creds is not None and creds.enabled


async def test_device_directory_credentials_and_online_state(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("lamp", "MDEyMzQ1Njc4OWFiY2RlZg=="), 10, BIG)
    creds = await env.devices.device_credentials(PID, "lamp")
    assert creds is not None
    assert (creds.product_id, creds.device_name, creds.psk, creds.enabled) == (
        PID,
        "lamp",
        "MDEyMzQ1Njc4OWFiY2RlZg==",
        True,
    )
    assert await env.devices.device_credentials(PID, "nope") is None
    assert await env.devices.device_credentials(OTHER_PID, "lamp") is None
    assert await env.devices.product_owner(PID) == env.owner
    assert await env.devices.product_owner("NOPE000000") is None

    await env.devices.set_online(PID, "lamp", True, "10.0.0.7", 20)
    d = await env.devices.get(env.owner, PID, "lamp")
    assert (d.online, d.login_time, d.first_online_time, d.client_ip) == (True, 20, 20, "10.0.0.7")
    await env.devices.set_online(PID, "lamp", False, None, 30)
    d = await env.devices.get(env.owner, PID, "lamp")
    assert (d.online, d.last_offline_time, d.first_online_time) == (False, 30, 20)
    await env.devices.set_online(PID, "lamp", True, "10.0.0.8", 40)
    d = await env.devices.get(env.owner, PID, "lamp")
    assert (d.online, d.login_time, d.first_online_time, d.client_ip) == (True, 40, 20, "10.0.0.8")
    await env.devices.set_online(PID, "ghost", True, "10.0.0.9", 50)  # deleted meanwhile: ignored
    assert await env.devices.set_all_offline(60) == 1
    assert not (await env.devices.get(env.owner, PID, "lamp")).online


async def test_batched_credentials_and_presence_for_the_gateway(env: Env) -> None:
    """credentials_many answers a whole batch of CONNECTs; record_presence applies the latest change per device."""
    for name in ("a", "b", "c"):
        await env.devices.insert(env.owner, PID, NewDevice(name, "cHNr"), 10, BIG)
    await env.devices.insert(env.stranger, OTHER_PID, NewDevice("a", "b3RoZXI="), 10, BIG)
    wanted = [(PID, "a"), (PID, "c"), (PID, "ghost"), (OTHER_PID, "a"), ("NOPE000000", "a"), (PID, "a")]
    found = await env.devices.credentials_many(wanted)
    assert sorted(found) == [(PID, "a"), (PID, "c"), (OTHER_PID, "a")]
    assert found[(OTHER_PID, "a")].psk == "b3RoZXI=" and found[(PID, "c")].device_name == "c"
    names = [f"bulk-{n:04d}" for n in range(2500)]  # more than one IN chunk
    await env.devices.insert_many(env.owner, PID, [NewDevice(n, "cHNr") for n in names], 10, None)
    assert len(await env.devices.credentials_many([(PID, n) for n in names])) == 2500

    await env.devices.record_presence(
        [
            PresenceChange(PID, "a", True, "10.0.0.1", 20),  # a: online, then offline, then online again
            PresenceChange(PID, "b", True, "10.0.0.2", 21),  # b: online, then offline
            PresenceChange(PID, "a", False, None, 22),
            PresenceChange(PID, "b", False, None, 23),
            PresenceChange(PID, "a", True, "10.0.0.3", 24),
            PresenceChange(PID, "ghost", True, "10.0.0.9", 25),  # deleted meanwhile: ignored
        ]
    )
    a, b, c = [await env.devices.get(env.owner, PID, name) for name in "abc"]
    assert (a.online, a.login_time, a.first_online_time, a.client_ip, a.last_offline_time) == (
        True,
        24,
        20,
        "10.0.0.3",
        22,
    )
    assert (b.online, b.login_time, b.first_online_time, b.client_ip, b.last_offline_time) == (
        False,
        21,
        21,
        "10.0.0.2",
        23,
    )
    assert (c.online, c.login_time, c.first_online_time, c.last_offline_time) == (False, 0, None, None)
    await env.devices.record_presence([PresenceChange(PID, n, True, "10.1.1.1", 30) for n in names])
    async with env.db.connect() as conn:
        online = (await conn.execute(sa.text("SELECT count(*) FROM devices WHERE online"))).scalar_one()
    assert online == 2501


async def test_concurrent_shadow_writers_lose_no_update(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("hot", "x"), 1, BIG)
    writers, rounds = 20, 10

    def cloud_write(key: str) -> Callable[[Shadow], tuple[Shadow, None]]:
        return lambda s: (apply_desired(s, {key: True}, 1)[0], None)

    def device_write(key: str) -> Callable[[Shadow], tuple[Shadow | None, None]]:
        request = DeviceUpdate({"reported": {key: True}})

        def change(s: Shadow) -> tuple[Shadow | None, None]:
            outcome = apply_device_update(s, request, 1)
            return (outcome.shadow if outcome.accepted else None), None

        return change

    async def writer(w: int, store: ShadowStore) -> None:
        for r in range(rounds):
            # half write desired like the API, half reported like a device
            change = cloud_write(f"w{w}r{r}") if w % 2 else device_write(f"w{w}r{r}")
            await store.update(env.owner, PID, "hot", change)

    # A store per writer, as if each were another node: only the compare-and-set keeps them apart (writers
    # sharing a store also take turns on an in-process lock, which would hide a broken compare-and-set).
    await asyncio.gather(*(writer(w, ShadowStore(env.db)) for w in range(writers)))
    shadow = await env.shadows.read(env.owner, PID, "hot")
    assert shadow.version == writers * rounds
    written = set(shadow.reported) | set(shadow.desired or {})
    assert written == {f"w{w}r{r}" for w in range(writers) for r in range(rounds)}

    # and writers sharing one store (one node): same outcome, and the per-shadow locks are released
    await asyncio.gather(*(writer(w, env.shadows) for w in range(writers)))
    shadow = await env.shadows.read(env.owner, PID, "hot")
    assert shadow.version == 2 * writers * rounds
    assert env.shadows._queues == {}


async def test_shadow_update_results_and_refusals(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("s", "x"), 1, BIG)
    # a change that returns None writes nothing and hands back its result
    assert await env.shadows.update(env.owner, PID, "s", lambda s: (None, "refused")) == "refused"
    assert (await env.shadows.read(env.owner, PID, "s")).version == 0

    def fail(_s: Shadow) -> tuple[Shadow | None, None]:
        raise ValueError("rule broken")

    with pytest.raises(ValueError):
        await env.shadows.update(env.owner, PID, "s", fail)
    with pytest.raises(ShadowMissing):
        await env.shadows.update(env.owner, PID, "nope", lambda s: (s, None))

    new = await env.shadows.update(
        env.owner, PID, "s", lambda s: (r := apply_desired(s, {"color": "red", "n": {"x": 1}}, 1234)[0], r)
    )
    stored = await env.shadows.read(env.owner, PID, "s")
    assert stored == new
    assert (stored.desired, stored.version, stored.timestamp_ms) == ({"color": "red", "n": {"x": 1}}, 1, 1234)
    assert stored.metadata_desired == {"color": {"timestamp": 1234}, "n": {"x": {"timestamp": 1234}}}
    # removing the desired section stores SQL NULL, read back as None (not a JSON null value)
    await env.shadows.update(env.owner, PID, "s", lambda s: (apply_desired(s, None, 1300)[0], None))
    assert (await env.shadows.read(env.owner, PID, "s")).desired is None


async def test_shadow_writer_gives_up_after_bounded_attempts(env: Env) -> None:
    await env.devices.insert(env.owner, PID, NewDevice("busy", "x"), 1, BIG)
    impatient = ShadowStore(env.db, max_attempts=3)
    original = impatient._compare_and_set
    calls = 0

    def mine(s: Shadow) -> tuple[Shadow, None]:
        nonlocal calls
        calls += 1
        return dataclasses.replace(s, version=s.version + 1, reported={"mine": calls}), None

    async def overtaken(
        conn: AsyncConnection | None, device_pk: int, read_version: int, new: Shadow, watch: str | None
    ) -> bool:
        # every time, another writer changes the shadow between our read and our write
        await env.shadows.update(
            env.owner, PID, "busy", lambda cur: (dataclasses.replace(cur, version=cur.version + 1), None)
        )
        return await original(conn, device_pk, read_version, new, watch)

    impatient._compare_and_set = overtaken  # type: ignore[method-assign]
    with pytest.raises(ShadowContention):
        await impatient.update(env.owner, PID, "busy", mine)
    assert calls == 3
    stored = await env.shadows.read(env.owner, PID, "busy")
    assert stored.version == 3 and "mine" not in stored.reported

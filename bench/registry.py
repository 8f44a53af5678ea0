"""Device registry figures: bulk registration, DescribeDevices pages, shadow reads and writes.

    .venv/bin/python bench/registry.py --database sqlite --count 100000
    .venv/bin/python bench/registry.py --database postgresql --count 1000000

``--database`` is ``sqlite`` (a fresh file in a temp directory), ``postgresql`` (a fresh database on
127.0.0.1:5432, dropped afterwards) or a full URL (used as is; the product is created in it). Everything goes
through the store and the backend use cases, not HTTP: the figures are what the database side costs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable

import sqlalchemy as sa
from benchdb import bench_database

from fleetops.backend.devices import DeviceFilter, DeviceService
from fleetops.backend.products import ProductNames
from fleetops.backend.registration import register_devices
from fleetops.backend.shadows import ShadowService
from fleetops.ports.messaging import Delivery, DeliveryView
from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore
from fleetops.store.shadows import ShadowStore

PID = "BENCH00001"
PAGE_LIMIT = 250


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


class NoDevices:
    """``DeviceMessages`` with no device connected: the shadow figures measure the store alone."""

    async def push_delta(self, *_args: object) -> None:
        return None

    async def push_deltas(self, *_args: object) -> None:
        return None

    async def publish_to_devices(self, *_args: object) -> list[Delivery]:
        return []

    async def publish_to_devices_acked(self, *_args: object) -> list[Delivery] | None:
        return None

    def is_online(self, *_args: object) -> bool | None:
        return None

    def presence_recorded(self) -> bool:
        return False

    def reaches(self, *_args: object) -> bool:
        return False

    async def publish(self, *_args: object) -> None:
        return None

    def delivery_view(self, product_id: str, device_name: str, topic: str) -> DeliveryView:
        return DeliveryView(online=False, subscribed=False, offline_room=None)


async def timed(fn: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return samples


async def rate(op: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> float:
    """Operations per second of ``total`` calls of ``op(i)``, ``concurrency`` at a time."""
    queue = iter(range(total))

    async def worker() -> None:
        for i in queue:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


async def run(url: str, count: int, batch_size: int, shadow_ops: int) -> None:
    db = open_database(url, pool_size=20)
    await upgrade(db)
    account = await AccountStore(db).create_account("bench-" + secrets.token_hex(3), 0)
    await ProductStore(db).insert(account, PID, "bench" + secrets.token_hex(3), {}, 0, 10_000)
    store = DeviceStore(db)
    dialect = db.engine.dialect.name
    print(f"database: {dialect}, devices: {count:,}, batch size: {batch_size:,}")

    names = [f"dev-{i:07d}" for i in range(count)]
    report = await register_devices(
        store, account, PID, names, now_s=int(time.time()), max_devices=count, batch_size=batch_size
    )
    print(f"bulk registration: {report.created:,} devices in {report.elapsed_s:.1f} s = {report.rate_per_s:,.0f}/s")
    if dialect == "postgresql":
        async with db.begin() as conn:
            await conn.execute(sa.text("ANALYZE devices"))

    product_names = ProductNames(ProductStore(db))
    devices = DeviceService(store, time.time, sessions=None, product_names=product_names, max_devices_per_product=count)
    everything = DeviceFilter()
    first = await timed(lambda: devices.page(account, PID, 0, PAGE_LIMIT, everything), 7)
    deep_offset = max(0, count - PAGE_LIMIT)
    deep = await timed(lambda: devices.page(account, PID, deep_offset, PAGE_LIMIT, everything), 7)
    filtered = await timed(lambda: devices.page(account, PID, 0, PAGE_LIMIT, DeviceFilter(name_contains="99")), 5)
    print(
        f"DescribeDevices (Limit {PAGE_LIMIT}, with TotalCount): first page {median_ms(first):.1f} ms, "
        f"deep page (Offset {deep_offset:,}) {median_ms(deep):.1f} ms, "
        f"name filter '99' {median_ms(filtered):.1f} ms"
    )

    shadows = ShadowService(ShadowStore(db), NoDevices(), time.time, product_names=product_names)
    picks = [random.choice(names) for _ in range(shadow_ops)]

    async def read(i: int) -> None:
        await shadows.describe(account, PID, picks[i])

    async def write(i: int) -> None:
        await shadows.update(account, PID, picks[i], f'{{"desired":{{"level":{i},"color":"red"}}}}', 0)

    hot = names[0]

    async def write_hot(i: int) -> None:
        await shadows.update(account, PID, hot, f'{{"desired":{{"k{i % 50}":{i}}}}}', 0)

    for concurrency in (1, 16):
        r = await rate(read, shadow_ops, concurrency)
        w = await rate(write, shadow_ops, concurrency)
        print(f"shadow, {concurrency:>2} concurrent: read {r:,.0f}/s, write (CAS) {w:,.0f}/s")
    contended = await rate(write_hot, min(shadow_ops, 2000), 16)
    print(f"shadow, 16 writers on ONE shadow: {contended:,.0f} writes/s (no update lost)")
    version = (await ShadowStore(db).read(account, PID, hot)).version
    assert version >= min(shadow_ops, 2000), version
    await db.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="sqlite | postgresql | a database URL")
    parser.add_argument("--count", type=int, default=100_000, help="devices to register (default 100,000)")
    parser.add_argument("--batch-size", type=int, default=10_000, help="devices per transaction")
    parser.add_argument("--shadow-ops", type=int, default=5_000, help="shadow reads and writes per measurement")
    args = parser.parse_args()
    with bench_database(args.database) as url:
        asyncio.run(run(url, args.count, args.batch_size, args.shadow_ops))


if __name__ == "__main__":
    main()

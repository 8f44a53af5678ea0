"""Batch task figures: an UpdateShadow task and a PublishMessage task over every device of a product.

    .venv/bin/python bench/tasks.py --database sqlite --broker embedded               # 100,000 devices
    .venv/bin/python bench/tasks.py --database postgresql --broker mosquitto --count 1000000
    .venv/bin/python bench/tasks.py --profile tasks.prof ...                           # cProfile the tasks

``--database`` is ``sqlite`` (a fresh file in a temp directory), ``postgresql`` (a fresh database on
127.0.0.1:5432, dropped afterwards) or a database URL. ``--broker`` is ``embedded`` (the in-process broker:
with no device subscribed it routes nothing, so this measures fleetops alone) or ``mosquitto`` (fleetops as
a client of the Mosquitto at 127.0.0.1:1883, or ``--mqtt-url``: every delta and message goes over the wire).

Devices are registered straight through the store; the tasks are created with the CreateTask use case and
run by the task worker's loop, as ``fleetops serve`` runs them. For each task it prints the end-to-end time
(CreateTask to status 3), devices per second, and the process's peak RSS while the task ran (psutil,
sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from benchdb import bench_database

from fleetops.backend.registration import register_devices
from fleetops.backend.shadows import ShadowService
from fleetops.backend.tasks import TaskService
from fleetops.domain.tasks import TaskStatus
from fleetops.engine.worker import TaskWorker
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.messaging.external import ExternalBroker, ExternalOptions
from fleetops.ports.messaging import Publisher
from fleetops.settings import Settings
from fleetops.store.accounts import AccountStore
from fleetops.store.database import Database, open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.tasks import TaskStore

PID = "BENCHTASK1"


class PeakRss:
    """Samples this process's RSS in the background; ``peak_mb`` since the last ``reset``."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        self.peak = self._process.memory_info().rss

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self._process.memory_info().rss)
            await asyncio.sleep(0.02)

    def start(self) -> None:
        self.reset()
        self._task = asyncio.create_task(self._sample())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


async def run_task(
    store: TaskStore,
    service: TaskService,
    account_id: int,
    rss: PeakRss,
    label: str,
    task_type: str,
    tasks: dict[str, Any],
    name_filter: str,
) -> None:
    rss.reset()
    started = time.perf_counter()
    task_id = await service.create(
        account_id,
        task_type=task_type,
        product_id=PID,
        device_name_filter=name_filter,
        schedule_time_s=0,
        tasks=tasks,
        max_execution_time_s=None,
    )
    while True:
        task = await store.read(task_id)
        assert task is not None
        if task.status not in (TaskStatus.WAITING, TaskStatus.PROCESSING):
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    assert task.status is TaskStatus.COMPLETED, (task.status, task.err_msg)
    rate = task.done_device_cnt / elapsed
    print(
        f"{label:<15} {task.done_device_cnt:>9,} devices in {elapsed:6.1f} s = {rate:>9,.0f} devices/s, "
        f"peak RSS {rss.peak_mb:,.0f} MB",
        flush=True,
    )


async def open_broker(kind: str, db: Database, mqtt_url: str) -> tuple[Publisher, Any]:
    shadows = ShadowService(ShadowStore(db), DeviceStore(db), time.time)
    if kind == "embedded":
        embedded = EmbeddedBroker(DeviceStore(db), shadows, port=0)
        await embedded.start()
        return embedded.publisher, embedded
    external = ExternalBroker(mqtt_url, shadows, options=ExternalOptions(share_group=""))
    await external.start()
    return external.publisher, external


async def run(args: argparse.Namespace, url: str) -> None:
    db = open_database(url, pool_size=10)
    await upgrade(db)
    dialect = db.engine.dialect.name
    account_id = await AccountStore(db).create_account("bench-" + secrets.token_hex(3), 0)
    await ProductStore(db).insert(account_id, PID, "bench" + secrets.token_hex(3), {}, 0, 10)
    print(f"database: {dialect}, broker: {args.broker}, devices: {args.count:,}, batch: {args.batch_size:,}")
    names = [f"dev-{i:07d}" for i in range(args.count)]
    report = await register_devices(
        DeviceStore(db), account_id, PID, names, now_s=int(time.time()), max_devices=args.count
    )
    del names
    print(
        f"registration    {report.created:>9,} devices in {report.elapsed_s:6.1f} s = "
        f"{report.rate_per_s:>9,.0f} devices/s"
    )
    if dialect == "postgresql":
        async with db.begin() as conn:
            await conn.exec_driver_sql("ANALYZE devices")

    publisher, broker = await open_broker(args.broker, db, args.mqtt_url)
    settings = Settings(task_batch_size=args.batch_size, task_poll_interval_s=0.05, node_id="bench")
    worker = TaskWorker.create(db, settings, time.time, publisher)
    service = TaskService(
        TaskStore(db),
        ProductStore(db),
        time.time,
        max_open_tasks=10,
        retention_s=86400,
        on_created=worker.wake,
    )
    rss = PeakRss()
    rss.start()
    await worker.start()
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()
        await run_task(
            TaskStore(db),
            service,
            account_id,
            rss,
            "UpdateShadow",
            "UpdateShadow",
            {"UpdateShadowTask": {"Desired": args.desired}},
            args.filter,
        )
        await run_task(
            TaskStore(db),
            service,
            account_id,
            rss,
            "PublishMessage",
            "PublishMessage",
            {"PublishMessageTask": {"Topic": "control", "Payload": "reboot"}},
            args.filter,
        )
    finally:
        if profiler is not None:
            profiler.disable()
        await worker.stop()
        rss.stop()
        await broker.stop()
        await db.dispose()
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="sqlite | postgresql | a database URL")
    parser.add_argument("--broker", default="embedded", choices=("embedded", "mosquitto"))
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="the Mosquitto for --broker mosquitto")
    parser.add_argument("--count", type=int, default=100_000, help="devices (default 100,000)")
    parser.add_argument("--batch-size", type=int, default=Settings().task_batch_size, help="devices per batch")
    parser.add_argument("--filter", default="", help="DeviceNameFilter of both tasks (default: every device)")
    parser.add_argument(
        "--desired",
        default='{"color":"red","brightness":80}',
        help="Desired of the UpdateShadow task; one with a nested object takes the Python merge path",
    )
    parser.add_argument("--profile", default="", help="write a cProfile of the two tasks to this file")
    args = parser.parse_args()
    with bench_database(args.database) as url:
        asyncio.run(run(args, url))


if __name__ == "__main__":
    main()

"""Batch task figures: an UpdateShadow task and a PublishMessage task over every device of a product.

    .venv/bin/python bench/tasks.py --database sqlite --broker embedded               # 100,000 devices
    .venv/bin/python bench/tasks.py --database postgresql --broker mosquitto --count 1000000
    .venv/bin/python bench/tasks.py --database postgresql --broker mosquitto-plugin --devices 1000 --count 1000000
    .venv/bin/python bench/tasks.py --profile tasks.prof ...                           # cProfile the tasks
    .venv/bin/python bench/tasks.py --outcomes ...                  # the same tasks keeping per-device outcomes
    .venv/bin/python bench/tasks.py --rollout-rate 5000 ...         # rate-limited: measured against asked

``--database`` is ``sqlite`` (a fresh file in a temp directory), ``postgresql`` (a fresh database on
127.0.0.1:5432, dropped afterwards) or a database URL. ``--broker`` is ``embedded`` (the in-process broker:
with no device subscribed it routes nothing, so this measures fleetops alone) or ``mosquitto`` (fleetops as
a client of the Mosquitto at 127.0.0.1:1883, or ``--mqtt-url``: every delta and message goes over the wire),
``mosquitto-plugin`` (a private Mosquitto configured as ``fleetops mosquitto config`` does, with the plugin; the
node logs in as the service identity from the database; PostgreSQL only) or ``mosquitto-private`` (the same
configuration without the plugin, to compare with). ``--devices N`` connects the first N devices (paho, in
child processes, signed) subscribed to their ``control`` and shadow result topics while the tasks run, and
prints how many messages they got. With a private broker each task's line also says how much CPU the broker
used for it (steadier than the times on a machine shared with other work).

The node is built by the composition root (``fleetops.node.Node``) exactly as ``fleetops serve`` builds it,
without the HTTP side. Devices are registered straight through the store; the tasks are created with the
CreateTask use case and run by the node's task engine. For each task it prints the end-to-end time
(CreateTask to status 3), devices per second, and the process's peak RSS while the task ran (psutil,
sampled every 20 ms).

``--preview FILTER`` times PreviewTask over the product's names first. ``--outcomes`` creates both tasks with
the extension TrackOutcomes (each batch's outcomes written in its transaction; docs/extensions.md) and checks
that every device has its outcome; ``--rollout-rate`` gives both a Rollout of that many devices per second and
prints the measured rate beside the asked one; ``--tasks`` picks which run. Without them, the tasks are plain
Tencent tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import pstats
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import benchbroker
import mqtt
from benchdb import bench_database

from fleetops.backend.registration import register_devices
from fleetops.backend.tasks import TaskDraft
from fleetops.domain.rollout import Rollout
from fleetops.domain.tasks import TaskStatus, TaskType
from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.messaging.external import BrokerAddress
from fleetops.node import Node
from fleetops.settings import Settings

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
    node: Node, account_id: int, rss: PeakRss, label: str, draft: TaskDraft, broker: psutil.Process | None = None
) -> None:
    rss.reset()
    broker_cpu_s = _cpu_s(broker)
    started = time.perf_counter()
    task_id = await node.backend.tasks.create(account_id, draft)
    while True:
        task = await node.stores.tasks.read(task_id)
        assert task is not None
        if task.status not in (TaskStatus.WAITING, TaskStatus.PROCESSING):
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    assert task.status is TaskStatus.COMPLETED, (task.status, task.err_msg)
    rate = task.done_device_cnt / elapsed
    used = f", broker CPU {_cpu_s(broker) - broker_cpu_s:5.1f} s" if broker is not None else ""
    asked = f" (asked {draft.rollout.max_per_s:,}/s: {rate / draft.rollout.max_per_s:.3f}x)" if draft.rollout else ""
    print(
        f"{label:<15} {task.done_device_cnt:>9,} devices in {elapsed:6.1f} s = {rate:>9,.0f} devices/s{asked}, "
        f"peak RSS {rss.peak_mb:,.0f} MB{used}",
        flush=True,
    )
    if draft.track_outcomes:
        counts = await node.stores.outcomes.counts(task_id, None, 0)
        assert sum(counts.values()) == task.done_device_cnt, (counts, task.done_device_cnt)


def _cpu_s(process: psutil.Process | None) -> float:
    """User + system CPU seconds of a private broker (what the plugin costs it, whatever else the machine runs)."""
    if process is None:
        return 0.0
    times = process.cpu_times()
    return float(times.user + times.system)


async def run(args: argparse.Namespace, url: str, data_dir: Path) -> None:
    private_port = benchbroker.free_port() if args.broker.startswith("mosquitto-") else 0
    mqtt_url = f"mqtt://127.0.0.1:{private_port}" if private_port else ""
    settings = Settings(
        data_dir=data_dir,
        database_url=url,
        mqtt_url=args.mqtt_url if args.broker == "mosquitto" else mqtt_url,
        mqtt_port=0,
        task_batch_size=args.batch_size,
        task_poll_interval_s=0.05,
        node_id="bench",
    )
    # the node as `fleetops serve` builds it (the composition root), without the HTTP side
    node = await Node.open(settings)
    db = node.stores.db
    dialect = db.engine.dialect.name
    account_id = await node.stores.accounts.create_account("bench-" + secrets.token_hex(3), 0)
    await node.stores.products.insert(account_id, PID, "bench" + secrets.token_hex(3), {}, 0, 10)
    print(f"database: {dialect}, broker: {args.broker}, devices: {args.count:,}, batch: {args.batch_size:,}")
    names = [f"dev-{i:07d}" for i in range(args.count)]
    report = await register_devices(
        node.stores.devices, account_id, PID, names, now_s=int(time.time()), max_devices=args.count
    )
    del names
    print(
        f"registration    {report.created:>9,} devices in {report.elapsed_s:6.1f} s = "
        f"{report.rate_per_s:>9,.0f} devices/s"
    )
    if dialect == "postgresql":
        async with db.begin() as conn:
            await conn.exec_driver_sql("ANALYZE devices")

    with contextlib.ExitStack() as stack:
        broker = None
        if private_port:
            database = url if args.broker == "mosquitto-plugin" else None
            private = stack.enter_context(benchbroker.private_mosquitto(database, port=private_port))
            broker = psutil.Process(private.process.pid)
        await run_tasks(args, node, account_id, stack, broker)


async def connect_devices(args: argparse.Namespace, node: Node) -> Any:
    """``--devices`` paho devices connected and subscribed to their control and shadow result topics."""
    names = [f"dev-{i:07d}" for i in range(args.devices)]
    async with node.stores.db.begin() as conn:  # they sign with the bench PSK
        await conn.exec_driver_sql(f"UPDATE devices SET psk = '{mqtt.PSK}' WHERE name <= '{names[-1]}'")
    logins = []
    for name in names:
        username = make_username(PID + name, 4_000_000_000)
        password = sign_password(username, mqtt.PSK)
        topics = [[f"{PID}/{name}/control", 0], [f"$shadow/operation/result/{PID}/{name}", 0]]
        logins.append({"client_id": PID + name, "username": username, "password": password, "topic": topics})
    messaging = node.messaging
    port = messaging.port if isinstance(messaging, EmbeddedBroker) else BrokerAddress.parse(node.settings.mqtt_url).port
    devices = mqtt.DeviceProcesses("127.0.0.1", port, 0, logins, 2)
    await devices.ready()
    subscribed, elapsed = await devices.connect(120)
    print(f"devices         {subscribed:>9,} connected and subscribed in {elapsed:6.1f} s")
    return devices


async def run_tasks(
    args: argparse.Namespace, node: Node, account_id: int, stack: contextlib.ExitStack, broker: psutil.Process | None
) -> None:
    if args.preview:
        draft = TaskDraft(TaskType.UPDATE_SHADOW, PID, args.preview, 0, desired=args.desired)
        for _ in range(3):
            started = time.perf_counter()
            preview = await node.backend.tasks.preview(account_id, draft)
            elapsed = time.perf_counter() - started
            print(
                f"PreviewTask     {args.count:>9,} names through {args.preview!r} in {elapsed:6.2f} s: "
                f"{preview.matched_device_cnt:,} match",
                flush=True,
            )
    rss = PeakRss()
    rss.start()
    await node.start()
    devices = await connect_devices(args, node) if args.devices else None
    if devices is not None:
        stack.callback(devices.stop)
        devices.start_count(2 * args.devices, 900)  # a delta and a message each; they read their sockets meanwhile
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()
        track = args.outcomes or None
        rollout = Rollout(args.rollout_rate) if args.rollout_rate else None
        if "UpdateShadow" in args.tasks:
            shadow = TaskDraft(
                TaskType.UPDATE_SHADOW, PID, args.filter, 0, desired=args.desired, track_outcomes=track, rollout=rollout
            )
            await run_task(node, account_id, rss, "UpdateShadow", shadow, broker)
        if "PublishMessage" in args.tasks:
            message = TaskDraft(
                TaskType.PUBLISH_MESSAGE,
                PID,
                args.filter,
                0,
                topic="control",
                payload="reboot",
                track_outcomes=track,
                rollout=rollout,
            )
            await run_task(node, account_id, rss, "PublishMessage", message, broker)
        if devices is not None:
            print(f"devices         {await devices.received():>9,} messages received (of {2 * args.devices:,})")
    finally:
        if profiler is not None:
            profiler.disable()
        await node.stop()
        rss.stop()
        await node.close()
    if profiler is not None:
        profiler.dump_stats(args.profile)
        stats = pstats.Stats(profiler)
        stats.sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="sqlite | postgresql | a database URL")
    parser.add_argument(
        "--broker", default="embedded", choices=("embedded", "mosquitto", "mosquitto-plugin", "mosquitto-private")
    )
    parser.add_argument("--devices", type=int, default=0, help="devices connected and subscribed during the tasks")
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
    parser.add_argument("--outcomes", action="store_true", help="both tasks keep per-device outcomes (extension)")
    parser.add_argument("--rollout-rate", type=int, default=0, help="both tasks at most this many devices/s")
    parser.add_argument(
        "--tasks", default="UpdateShadow,PublishMessage", help="which tasks to run (default: both, in this order)"
    )
    parser.add_argument("--preview", default="", help="time PreviewTask with this filter (3 times) before the tasks")
    args = parser.parse_args()
    with bench_database(args.database) as url, tempfile.TemporaryDirectory(prefix="fleetops-bench-") as data_dir:
        asyncio.run(run(args, url, Path(data_dir)))


if __name__ == "__main__":
    main()

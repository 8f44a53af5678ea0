"""Durability of batch tasks against real failures:

* ``kill -9`` of a ``fleetops serve`` process (SQLite) in the middle of an UpdateShadow task over 100,000
  devices; started again, it resumes from the last committed batch and every matching shadow's version rose
  by exactly one;
* a Mosquitto that really goes away (stopped by its PID) in the middle of a PublishMessage task: the task
  waits, then finishes when the broker is back, and every device got its message once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.domain.tasks import TaskStatus
from fleetops.errors import BrokerUnavailable
from fleetops.messaging.external import ExternalBroker, ExternalOptions
from fleetops.ports.messaging import Delivery, DeviceCredentials, Publisher
from fleetops.store.tasks import TaskStore
from tests.mqtt_support import EchoShadowHandler, MosquittoProcess, PahoDevice, random_psk
from tests.serve_process import ServeProcess
from tests.support import LiveServer, TaskEnv, free_port, open_task_env, sdk_client, wait_until

DEVICES = 100_000


# --- kill -9 -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    endpoint: str
    secret_id: str
    secret_key: str


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {
        **os.environ,
        "FLEETOPS_DATA_DIR": str(data_dir),
        "FLEETOPS_DATABASE_URL": f"sqlite:///{tmp_path / 'fleetops.db'}",
        "FLEETOPS_PORT": str(free_port()),
        "FLEETOPS_MQTT_PORT": str(free_port()),
        "FLEETOPS_TASK_BATCH_SIZE": "250",  # 400 batches: a kill lands in the middle
        "FLEETOPS_TASK_POLL_INTERVAL_S": "0.1",
        # a stable node id: the restarted process takes its own expired leases back at once
        "FLEETOPS_NODE_ID": "durable-node",
        "FLEETOPS_LOG_LEVEL": "WARNING",
    }
    process = ServeProcess(data_dir, env)
    try:
        yield process
    finally:
        process.kill()


def prepare_database(database_url: str) -> tuple[str, str, str]:
    """An account with a key, a product and 100,000 devices whose shadows are at varied versions."""

    async def prepare() -> tuple[str, str, str]:
        env = await open_task_env(database_url)
        try:
            key = await _key(env)
            await env.add_devices([f"dev{i:06d}" for i in range(DEVICES)])
            async with env.db.begin() as conn:
                await conn.exec_driver_sql("UPDATE devices SET shadow_version = id % 7")
            return key[0], key[1], env.product_id
        finally:
            await env.close()

    return asyncio.run(prepare())


async def _key(env: TaskEnv) -> tuple[str, str]:
    from fleetops.store.accounts import AccountStore

    key = await AccountStore(env.db).create_key(env.account_id, 0)
    return key.secret_id, key.secret_key


def versions(db_path: Path) -> dict[str, tuple[int, str | None]]:
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT name, shadow_version, shadow_desired FROM devices").fetchall()
    return {name: (version, desired) for name, version, desired in rows}


def test_kill_9_mid_task_resumes_and_every_shadow_changes_exactly_once(serve: ServeProcess, tmp_path: Path) -> None:
    secret_id, secret_key, pid = prepare_database(serve.env["FLEETOPS_DATABASE_URL"])
    before = versions(tmp_path / "fleetops.db")
    serve.start()
    endpoint = Endpoint(f"127.0.0.1:{serve.port}", secret_id, secret_key)
    client = sdk_client(cast(LiveServer, endpoint))  # sdk_client reads only these three attributes

    req = models.CreateTaskRequest()
    req.from_json_string(
        json.dumps(
            {
                "TaskType": "UpdateShadow",
                "ProductId": pid,
                "DeviceNameFilter": "[02468]$",
                "ScheduleTimeInSeconds": 0,
                "Tasks": {"UpdateShadowTask": {"Desired": '{"fw":"2.0"}'}},
            }
        )
    )
    task_id = client.CreateTask(req).TaskId
    describe = models.DescribeTaskRequest()
    describe.Id = task_id
    deadline = time.monotonic() + 20
    while (progress := client.DescribeTask(describe)).DoneDeviceCnt < 5_000:
        assert time.monotonic() < deadline and progress.Status in (1, 2)
        time.sleep(0.005)
    serve.kill(signal.SIGKILL)
    assert 0 < progress.DoneDeviceCnt < 50_000  # killed in the middle

    killed = versions(tmp_path / "fleetops.db")
    assert 0 < sum(killed[n] != before[n] for n in before) < 50_000

    serve.start()
    deadline = time.monotonic() + 30
    while (task := client.DescribeTask(describe)).Status != 3:
        assert time.monotonic() < deadline and task.Status == 2
        time.sleep(0.05)
    assert task.AllDeviceCnt == task.DoneDeviceCnt == 50_000 and task.Percent == 100

    after = versions(tmp_path / "fleetops.db")
    for name, (version, desired) in after.items():
        if name[-1] in "02468":
            assert (version, desired) == (before[name][0] + 1, '{"fw":"2.0"}'), name
        else:
            assert (version, desired) == before[name], name


# --- broker outage -----------------------------------------------------------------------------------------


class OutagePublisher:
    """The external broker's publisher; before the ``outage_at``-th batch, once everything published so far
    has reached the devices, it kills the Mosquitto process and starts it again ``outage_s`` later."""

    def __init__(
        self,
        inner: Publisher,
        mosquitto: MosquittoProcess,
        delivered: Callable[[], Awaitable[int]],
        during_outage: Callable[[], Awaitable[None]],
        *,
        outage_at: int = 3,
        outage_s: float = 1.5,
    ) -> None:
        self.inner = inner
        self.mosquitto = mosquitto
        self.delivered = delivered
        self.during_outage = during_outage
        self.outage_at = outage_at
        self.outage_s = outage_s
        self.batches = 0
        self.published = 0
        self.unavailable = 0
        self.restarted: asyncio.Task[None] | None = None

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many([(topic, payload)], qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        if self.restarted is None:
            self.batches += 1
            if self.batches == self.outage_at:
                await wait_until(self._all_delivered)  # QoS 0: what the dead broker held would be lost
                await self.mosquitto.stop(signal.SIGTERM)
                self.restarted = asyncio.create_task(self._restart())
        try:
            statuses = await self.inner.publish_many(messages, qos)
        except BrokerUnavailable:
            self.unavailable += 1
            raise
        self.published += len(messages)
        return statuses

    async def _all_delivered(self) -> bool:
        return await self.delivered() == self.published

    async def _restart(self) -> None:
        await asyncio.sleep(self.outage_s)
        await self.during_outage()
        await self.mosquitto.start()

    def subscribed(self, topic: str) -> bool | None:
        return None

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoProcess]:
    if not MosquittoProcess.available():
        pytest.skip("the mosquitto binary is not installed")
    broker = MosquittoProcess(tmp_path)
    # Devices keep persistent sessions (saved on SIGTERM); QoS 0 messages are queued for them while they
    # reconnect after the restart, as they would be for QoS 1.
    broker.config.write_text(broker.config.read_text() + "queue_qos0_messages true\n")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_a_broker_outage_makes_the_task_wait_then_every_device_gets_its_message(
    mosquitto: MosquittoProcess, tmp_path: Path
) -> None:
    env = await open_task_env(f"sqlite:///{tmp_path / 'fleetops.db'}")
    names = [f"dev-{i:02d}" for i in range(40)]
    await env.add_devices(names)
    devices = [
        PahoDevice(
            DeviceCredentials(env.product_id, name, random_psk(), True),
            clean_session=False,
            reconnect=True,
            resubscribe=((f"{env.product_id}/{name}/control", 1),),
        )
        for name in names
    ]
    received: dict[str, list[bytes]] = {name: [] for name in names}
    external = ExternalBroker(
        f"mqtt://127.0.0.1:{mosquitto.port}",
        EchoShadowHandler(),
        options=ExternalOptions(
            broker_wait_s=0.3,
            connect_timeout_s=1,
            reconnect_delay_s=0.1,
            max_reconnect_delay_s=0.2,
            share_group="",
        ),
    )
    outage: dict[str, object] = {}

    async def delivered() -> int:
        for device, name in zip(devices, names, strict=True):
            while not device.messages.empty():
                received[name].append(device.messages.get_nowait().payload)
        return sum(len(got) for got in received.values())

    async def during_outage() -> None:
        task = await TaskStore(env.db).read(task_id)
        assert task is not None
        outage.update(status=task.status, done=task.done_device_cnt)

    try:
        for device in devices:
            assert await device.connect(mosquitto.port) == 0
            await device.wait(device.subacks)
        await external.start()
        publisher = OutagePublisher(external.publisher, mosquitto, delivered, during_outage)
        task_id = await env.publish_task("", "control", "reboot")
        worker = env.worker(batch_size=10, publisher=publisher)
        await worker.start()
        try:
            await wait_until(lambda: _completed(env, task_id), timeout_s=20)
            await wait_until(lambda: _equals(delivered, 40), timeout_s=10)
        finally:
            await worker.stop()
    finally:
        await external.stop()
        for device in devices:
            device.close()
        await env.close()

    assert outage == {"status": TaskStatus.PROCESSING, "done": 20}  # waiting at the third batch
    assert publisher.unavailable >= 1
    assert received == {name: [b"reboot"] for name in names}


async def _completed(env: TaskEnv, task_id: str) -> bool:
    task = await env.task(task_id)
    return bool(task.status is TaskStatus.COMPLETED and task.done_device_cnt == 40)


async def _equals(count: Callable[[], Awaitable[int]], expected: int) -> bool:
    return bool(await count() == expected)

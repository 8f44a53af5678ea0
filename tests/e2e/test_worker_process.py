"""`fleetops worker`: a node without the HTTP API runs the tasks of a shared database and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from fleetops.backend.registration import register_devices
from fleetops.domain.tasks import TaskStatus
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.tables import devices, tasks
from tests.support import MOSQUITTO_HOST, MOSQUITTO_PORT, FakeClock, open_task_env, require_service

FLEETOPS = str(Path(sys.executable).parent / "fleetops")


def _prepare(url: str) -> str:
    async def prepare() -> str:
        env = await open_task_env(url, clock=FakeClock(time.time()))
        try:
            names = [f"lamp-{i:04d}" for i in range(300)]
            await register_devices(
                DeviceStore(env.db), env.account_id, env.product_id, names, now_s=int(time.time()), max_devices=10**6
            )
            task_id = await env.update_shadow_task("^lamp-00", {"color": "red"})
            return task_id
        finally:
            await env.db.dispose()

    return asyncio.run(prepare())


def _state(url: str, task_id: str) -> tuple[int, int, int, int]:
    async def read() -> tuple[int, int, int, int]:
        db = open_database(url)
        try:
            async with db.connect() as conn:
                row = (
                    await conn.execute(
                        sa.select(tasks.c.status, tasks.c.all_device_cnt, tasks.c.done_device_cnt).where(
                            tasks.c.id == task_id
                        )
                    )
                ).one()
                bumped = (
                    await conn.execute(sa.select(sa.func.count()).where(devices.c.shadow_version == 1))
                ).scalar_one()
            return int(row.status), int(row.all_device_cnt), int(row.done_device_cnt), int(bumped)
        finally:
            await db.dispose()

    return asyncio.run(read())


@pytest.mark.mosquitto
def test_a_worker_runs_the_task_then_stops_on_sigterm(tmp_path: Path) -> None:
    require_service("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    url = f"sqlite:///{tmp_path / 'fleetops.db'}"
    task_id = _prepare(url)
    env = {
        **os.environ,
        "FLEETOPS_DATABASE_URL": url,
        "FLEETOPS_DATA_DIR": str(tmp_path),
        "FLEETOPS_MQTT_URL": f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}",
        "FLEETOPS_TASK_POLL_INTERVAL_S": "0.1",
    }
    with (tmp_path / "worker.log").open("wb") as log:
        process = subprocess.Popen([FLEETOPS, "worker", "--node-id", "worker-1"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while _state(url, task_id)[0] != TaskStatus.COMPLETED:
            assert process.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the worker did not finish the task"
            time.sleep(0.2)
        # "^lamp-00" matches lamp-0000 .. lamp-0099: exactly those shadows changed, once each
        assert _state(url, task_id) == (TaskStatus.COMPLETED, 100, 100, 100)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()


def test_a_worker_without_an_external_broker_is_refused(tmp_path: Path) -> None:
    out = subprocess.run(
        [FLEETOPS, "--data-dir", str(tmp_path), "worker"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "FLEETOPS_MQTT_URL"},
        check=False,
    )
    assert out.returncode != 0
    assert "external MQTT broker" in out.stderr and "Traceback" not in out.stderr

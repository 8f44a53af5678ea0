"""What Prometheus scrapes from a live node, and what /readyz says, as the things they count happen for real:
paho devices on the node's gateway, tasks run by its engine, a PostgreSQL database dropped under it, a
private Mosquitto stopped under it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from fleetops.ports.messaging import DeviceCredentials
from tests.mqtt_support import MosquittoProcess, PahoDevice
from tests.support import IN_CI, PG_HOST, PG_PORT, LiveServer, new_product, sdk_client, server_on

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: LiveServer) -> Samples:
    response = requests.get(server.url + "metrics", timeout=5)
    assert response.status_code == 200
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(server: LiveServer, check: Callable[[Samples], bool], timeout_s: float = 10) -> Samples:
    """Scrape until ``check`` holds (the gateway handles a device's packets on its own schedule)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await asyncio.to_thread(scrape, server)
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: {found}")
        await asyncio.sleep(0.05)


def readyz(server: LiveServer) -> tuple[int, str]:
    response = requests.get(server.url + "readyz", timeout=10)
    return response.status_code, response.text


def _call(client: Any, action: str, params: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = json.loads(client.call(action, params))["Response"]
    return response


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A node of its own (SQLite, embedded gateway): its counters start at zero."""
    with server_on("sqlite", tmp_path, task_poll_interval_s=0.05) as live:
        yield live


@pytest.fixture
async def mosquitto(tmp_path: Path) -> AsyncIterator[MosquittoProcess]:
    if not MosquittoProcess.available():
        if IN_CI:
            pytest.fail("the mosquitto binary is not installed")
        pytest.skip("the mosquitto binary is not installed")
    (tmp_path / "mosquitto").mkdir()
    broker = MosquittoProcess(tmp_path / "mosquitto")
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


@pytest.fixture
def external_server(tmp_path: Path, mosquitto: MosquittoProcess) -> Iterator[LiveServer]:
    """A node on the private Mosquitto; short waits, so that a publish to a broker that is down fails fast."""
    url = f"mqtt://127.0.0.1:{mosquitto.port}"
    with server_on("sqlite", tmp_path / "node", mqtt_url=url, delta_publish_timeout_s=0.5, broker_wait_s=0.5) as live:
        yield live


async def test_metrics_follow_tasks_shadows_and_devices(server: LiveServer) -> None:
    client = sdk_client(server)
    pid = new_product(client)
    psks = {
        name: _call(client, "CreateDevice", {"ProductId": pid, "DeviceName": name})["DevicePsk"]
        for name in ("d1", "d2", "other")
    }
    # a task over two of the three devices; nothing is scraped before it ends (task counts are cached 5 s)
    task = {"TaskType": "UpdateShadow", "ProductId": pid, "DeviceNameFilter": "^d", "ScheduleTimeInSeconds": 0}
    task_id = _call(client, "CreateTask", task | {"Tasks": {"UpdateShadowTask": {"Desired": '{"on":true}'}}})
    deadline = time.monotonic() + 20
    while _call(client, "DescribeTask", {"Id": task_id["TaskId"]})["Status"] != 3:
        assert time.monotonic() < deadline, "the task did not complete"
        await asyncio.sleep(0.05)
    found = await asyncio.to_thread(scrape, server)
    assert value(found, "fleetops_tasks", status="completed") == 1
    assert value(found, "fleetops_tasks", status="waiting") == 0
    assert value(found, "fleetops_task_devices_processed_total", type="UpdateShadow") == 2
    assert value(found, "fleetops_shadow_writes_total", source="task") == 2
    assert value(found, "fleetops_task_duration_seconds_count", type="UpdateShadow", outcome="completed") == 1
    assert value(found, "fleetops_api_requests_total", action="CreateTask", outcome="OK") == 1
    assert value(found, "fleetops_mqtt_connections") == 0 and value(found, "fleetops_mqtt_devices_online") == 0

    port = server.node.messaging.port  # type: ignore[attr-defined]
    device = PahoDevice(DeviceCredentials(pid, "d1", psks["d1"], True))
    intruder = PahoDevice(DeviceCredentials(pid, "d2", "V3JvbmdLZXlXcm9uZ0tleQ==", True))  # not d2's key
    try:
        assert await device.connect(port) == 0
        assert await device.subscribe(f"$shadow/operation/result/{pid}/d1") == 0
        found = await until(server, lambda f: value(f, "fleetops_mqtt_devices_online") == 1)
        assert value(found, "fleetops_mqtt_connections") == 1
        assert await intruder.connect(port) != 0
        found = await until(server, lambda f: value(f, "fleetops_mqtt_connects_refused_total") == 1)
        assert value(found, "fleetops_mqtt_devices_online") == 1

        device.publish(f"{pid}/other/data", b"not mine")  # another device's topic: dropped
        await until(server, lambda f: value(f, "fleetops_mqtt_messages_refused_total") == 1)

        # a cloud-side write: counted, and its delta push is a message delivered to the device
        state = json.dumps({"desired": {"color": "red"}})
        _call(client, "UpdateDeviceShadow", {"ProductId": pid, "DeviceName": "d1", "State": state, "ShadowVersion": 0})
        assert json.loads((await device.receive()).payload)["type"] == "delta"
        found = await until(server, lambda f: value(f, "fleetops_mqtt_messages_published_total") >= 1)
        assert value(found, "fleetops_shadow_writes_total", source="api") == 1

        # the device's own update: counted as a device write; its reply is one more delivered message
        update = {"type": "update", "state": {"reported": {"color": "red"}}, "version": 0, "clientToken": "t1"}
        device.publish(f"$shadow/operation/{pid}/d1", json.dumps(update).encode())
        assert json.loads((await device.receive()).payload)["clientToken"] == "t1"
        found = await until(server, lambda f: value(f, "fleetops_shadow_writes_total", source="device") == 1)
        assert value(found, "fleetops_mqtt_messages_published_total") == 2
    finally:
        device.close()
        intruder.close()
    await until(server, lambda f: value(f, "fleetops_mqtt_devices_online") == 0)
    assert readyz(server) == (200, "ready\ndatabase: ok\nbroker: ok\n")


@pytest.mark.postgres
def test_readyz_says_the_database_is_down_while_healthz_stays_up(tmp_path: Path) -> None:
    with server_on("postgresql", tmp_path) as server:
        assert readyz(server)[0] == 200
        name = server.settings.database_url.rsplit("/", 1)[1]
        with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # an outage nothing comes back from
        status, body = readyz(server)
        assert status == 503
        lines = body.splitlines()
        assert lines[0] == "not ready"
        assert lines[1] == "database: the database does not exist"  # no address: anyone may ask /readyz
        assert len(lines) == 2  # the broker is fine and is not listed
        assert requests.get(server.url + "healthz", timeout=5).text == "ok"
        # an API call fails on the database: counted
        with pytest.raises(TencentCloudSDKException):
            sdk_client(server).call("DescribeTasks", {"Offset": 0, "Limit": 10})
        assert value(scrape(server), "fleetops_database_errors_total") >= 1
        assert "fleetops_tasks{" not in requests.get(server.url + "metrics", timeout=5).text  # no stale counts


async def test_readyz_says_the_broker_is_down_until_it_is_back(
    external_server: LiveServer, mosquitto: MosquittoProcess
) -> None:
    server, broker = external_server, mosquitto
    assert await asyncio.to_thread(readyz, server) == (200, "ready\ndatabase: ok\nbroker: ok\n")
    client = sdk_client(server)
    pid = new_product(client)
    _call(client, "CreateDevice", {"ProductId": pid, "DeviceName": "d1"})
    await broker.stop()
    deadline = time.monotonic() + 10
    while (await asyncio.to_thread(readyz, server))[0] != 503:
        assert time.monotonic() < deadline, "/readyz never noticed the broker was gone"
        await asyncio.sleep(0.05)
    status, body = await asyncio.to_thread(readyz, server)
    assert (status, body) == (
        503,
        "not ready\nbroker: not connected to the external MQTT broker (reconnecting)\n",
    )
    # a PublishMessage now cannot be taken by the broker: refused to the client, and counted
    message = {"ProductId": pid, "DeviceName": "d1", "Topic": f"{pid}/d1/data", "Payload": "hi"}
    with pytest.raises(TencentCloudSDKException) as info:
        await asyncio.to_thread(client.call, "PublishMessage", message)
    assert info.value.get_code() == "FailedOperation"
    found = await asyncio.to_thread(scrape, server)
    assert value(found, "fleetops_broker_errors_total") == 1
    assert "fleetops_mqtt_connections" not in str(found)  # an external broker reports its own
    await broker.start()
    deadline = time.monotonic() + 20
    while (await asyncio.to_thread(readyz, server))[0] != 200:
        assert time.monotonic() < deadline, "/readyz never saw the broker back"
        await asyncio.sleep(0.1)

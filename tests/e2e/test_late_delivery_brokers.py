"""PublishMessage outcomes and late delivery (docs/extensions.md#late-delivery) on every broker a node serves
devices with: the embedded gateway, and Mosquitto with the fleetops plugin, whose presence is recorded in the
database and tells the outcome of each message. The official SDK (``CommonClient`` for the extensions) and
paho devices. Then Mosquitto without the plugin (the shared one on 127.0.0.1:1883), where nothing records
presence: the outcome is Published.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.ports.messaging import DeviceCredentials
from tests.brokers import BROKERS, EMBEDDED, DeviceSide, node_with_broker
from tests.e2e.test_extensions_api import call, eventually, message_task, outcomes, status, task_params
from tests.e2e.test_tasks_api import create_devices
from tests.mqtt_support import PahoDevice
from tests.support import (
    MOSQUITTO_HOST,
    MOSQUITTO_PORT,
    common_client,
    new_product,
    require_service,
    sdk_client,
    server_on,
)

COMPLETED = 3


@pytest.fixture(scope="module", params=BROKERS)
def side(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceSide]:
    plugin: Path | None = None if request.param == EMBEDDED else request.getfixturevalue("built_plugin")
    data = tmp_path_factory.mktemp(f"late-{request.param}")
    with node_with_broker(request.param, data, plugin, task_batch_size=3, task_poll_interval_s=0.1) as device_side:
        yield device_side


def online(client: Any, pid: str, name: str) -> bool:
    req = models.DescribeDeviceRequest()
    req.ProductID, req.DeviceName = pid, name  # the SDK model spells it ProductID
    return bool(client.DescribeDevice(req).Online)


async def subscribed_device(port: int, pid: str, name: str, psk: str, suffix: str = "cmd") -> PahoDevice:
    paho = PahoDevice(DeviceCredentials(pid, name, psk, True))
    assert await paho.connect(port) == 0
    assert await paho.subscribe(f"{pid}/{name}/{suffix}", 1) == 1
    return paho


async def test_connected_devices_are_sent_and_offline_ones_get_it_once_when_they_subscribe(side: DeviceSide) -> None:
    client, common = sdk_client(side.server), common_client(side.server)
    pid = new_product(client)
    names = [f"late-{i:02d}" for i in range(8)]
    psks = create_devices(client, pid, names)
    connected = names[0:8:2]  # late-00, -02, -04, -06; the others are offline when the task runs
    # the best a connected device reaches: its PUBACK where the broker tells it (the embedded gateway only)
    reached = "Acknowledged" if side.kind == EMBEDDED else "Sent"
    devices: list[PahoDevice] = []
    try:
        for name in connected:
            devices.append(await subscribed_device(side.port, pid, name, psks[name]))
        for name in connected:  # on Mosquitto, the plugin's presence is written by the node
            await eventually(lambda n=name: online(client, pid, n))
        params = task_params(pid, "^late-", message_task("cmd", "go"), TrackOutcomes=True, DeliverOnConnect=True)
        task_id = call(common, "CreateTask", params)["TaskId"]
        await eventually(lambda: status(common, task_id)["Status"] == COMPLETED)
        offline = [name for name in names if name not in connected]
        expected = dict.fromkeys(connected, reached) | dict.fromkeys(offline, "Offline")
        await eventually(lambda: outcomes(common, task_id) == expected)
        for paho in devices:  # each connected device got the message, once
            got = await paho.receive()
            assert got.payload == b"go" and await paho.nothing_received(0.3)

        # late-01 connects and subscribes: it gets the message once, with its subscription's QoS 1
        late = await subscribed_device(side.port, pid, "late-01", psks["late-01"])
        devices.append(late)
        got = await late.receive()
        assert (got.topic, got.payload, got.qos) == (f"{pid}/late-01/cmd", b"go", 1)
        await eventually(lambda: outcomes(common, task_id)["late-01"] == reached)
        assert await late.nothing_received(0.5)
        late.close()
        await eventually(lambda: not online(client, pid, "late-01"))

        # back again: once is once
        again = await subscribed_device(side.port, pid, "late-01", psks["late-01"])
        devices.append(again)
        assert await again.nothing_received(0.8)

        # late-03 subscribes to another topic first: nothing; then to the task's: delivered then
        other = await subscribed_device(side.port, pid, "late-03", psks["late-03"], "other")
        devices.append(other)
        assert await other.nothing_received(0.5)
        assert outcomes(common, task_id)["late-03"] == "Offline"
        assert await other.subscribe(f"{pid}/late-03/cmd", 1) == 1
        assert (await other.receive()).payload == b"go"
        await eventually(lambda: outcomes(common, task_id)["late-03"] == reached)

        answer = call(common, "DescribeTask", {"Id": task_id, "IncludeOutcomeCounts": True})
        counts = {c["Outcome"]: c["DeviceCnt"] for c in answer["OutcomeCounts"]}
        assert counts[reached] == 6 and counts["Offline"] == 2 and counts["Published"] == 0
    finally:
        for paho in devices:
            paho.close()


@pytest.mark.mosquitto
async def test_without_the_plugin_nothing_records_presence_and_the_outcome_is_published(tmp_path: Path) -> None:
    require_service("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    mqtt_url = f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"
    with server_on("sqlite", tmp_path, mqtt_url=mqtt_url, task_poll_interval_s=0.1) as server:
        client, common = sdk_client(server), common_client(server)
        pid = new_product(client)
        psks = create_devices(client, pid, ["plain-0", "plain-1"])
        paho = await subscribed_device(MOSQUITTO_PORT, pid, "plain-0", psks["plain-0"])
        try:
            params = task_params(pid, "^plain-", message_task("cmd", "hi"), TrackOutcomes=True, DeliverOnConnect=True)
            task_id = call(common, "CreateTask", params)["TaskId"]
            await eventually(lambda: status(common, task_id)["Status"] == COMPLETED)
            assert outcomes(common, task_id) == {"plain-0": "Published", "plain-1": "Published"}
            assert (await paho.receive()).payload == b"hi"  # the connected device got it all the same
        finally:
            paho.close()

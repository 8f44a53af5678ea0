"""The issue's "done when" for devices: a device built from docs/device-protocol.md alone (paho-mqtt, its PSK
from CreateDevice) connects, gets its shadow, reports state, receives a delta after UpdateDeviceShadow and a message
after PublishMessage, and cannot touch another device's topics; on the embedded broker and on Mosquitto with the
fleetops plugin (started on what `fleetops mosquitto config` printed); the journey alone on a plain Mosquitto.

The device signs its own credentials here with hmac, as the device protocol describes, instead of fleetops'
helpers, so the test does not share code with the server it checks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from tencentcloud.iotcloud.v20180614 import models

from tests.brokers import BROKERS, DeviceSide, node_with_broker
from tests.support import (
    MOSQUITTO_HOST,
    MOSQUITTO_PORT,
    LiveServer,
    new_product,
    require_service,
    sdk_client,
    start_server,
)

WAIT_S = 10.0


class SpecDevice:
    """An IoT Hub device written from the protocol description: client id, signed username and password."""

    def __init__(self, product_id: str, device_name: str, psk: str) -> None:
        self.pid, self.dn = product_id, device_name
        username = f"{product_id}{device_name};12010126;{secrets.token_hex(3)[:5]};{int(time.time()) + 3600}"
        token = hmac.new(base64.b64decode(psk), username.encode(), hashlib.sha256).hexdigest()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=product_id + device_name, protocol=paho.MQTTv311
        )
        self.client.username_pw_set(username, token + ";hmacsha256")
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.acks: queue.Queue[Any] = queue.Queue()
        self.client.on_connect = lambda c, u, f, reason, p: self.acks.put(("connack", reason.value))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.acks.put(("suback", [x.value for x in codes]))
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))

    def connect(self, port: int) -> int:
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        kind, code = self.acks.get(timeout=WAIT_S)
        assert kind == "connack"
        return int(code)

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, 0)
        kind, codes = self.acks.get(timeout=WAIT_S)
        assert kind == "suback"
        return int(codes[0])

    def shadow(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a shadow request and return the reply that echoes its clientToken."""
        self.client.publish(f"$shadow/operation/{self.pid}/{self.dn}", json.dumps(request), 0)
        while True:
            topic, payload = self.inbox.get(timeout=WAIT_S)
            message = json.loads(payload)
            if topic.startswith("$shadow/operation/result/") and message.get("clientToken") == request["clientToken"]:
                assert topic == f"$shadow/operation/result/{self.pid}/{self.dn}"
                return dict(message)

    def next_message(self, topic: str) -> bytes:
        while True:
            got_topic, payload = self.inbox.get(timeout=WAIT_S)
            if got_topic == topic:
                return payload

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _create_device(client: Any, pid: str) -> tuple[str, str]:
    req = models.CreateDeviceRequest()
    req.ProductId, req.DeviceName = pid, "lamp-" + secrets.token_hex(3)
    return req.DeviceName, str(client.CreateDevice(req).DevicePsk)


def _journey(server: LiveServer, port: int) -> SpecDevice:
    client = sdk_client(server)
    pid = new_product(client)
    name, psk = _create_device(client, pid)
    device = SpecDevice(pid, name, psk)
    assert device.connect(port) == 0
    result_topic = f"$shadow/operation/result/{pid}/{name}"
    assert device.subscribe(result_topic) == 0
    assert device.subscribe(f"{pid}/{name}/control") == 0

    got = device.shadow({"type": "get", "clientToken": "t-0"})
    assert (got["type"], got["result"], got["payload"]["version"]) == ("get", 0, 0)
    assert got["payload"]["state"] == {"reported": {}}

    reported = device.shadow(
        {"type": "update", "state": {"reported": {"power": "off"}}, "version": 0, "clientToken": "t-1"}
    )
    assert (reported["result"], reported["payload"]["version"]) == (0, 1)
    assert reported["payload"]["state"] == {"reported": {"power": "off"}}

    update = models.UpdateDeviceShadowRequest()
    update.ProductId, update.DeviceName = pid, name
    update.State, update.ShadowVersion = json.dumps({"desired": {"power": "on"}}), 1
    client.UpdateDeviceShadow(update)
    delta = json.loads(device.next_message(result_topic))
    assert delta["type"] == "delta"
    assert (delta["payload"]["state"], delta["payload"]["version"]) == ({"power": "on"}, 2)

    again = device.shadow({"type": "get", "clientToken": "t-2"})
    assert again["payload"]["state"]["delta"] == {"power": "on"}

    publish = models.PublishMessageRequest()
    publish.ProductId, publish.DeviceName = pid, name
    publish.Topic, publish.Payload = f"{pid}/{name}/control", "hello lamp"
    client.PublishMessage(publish)
    assert device.next_message(f"{pid}/{name}/control") == b"hello lamp"
    return device


@pytest.fixture(params=BROKERS)
def side(request: pytest.FixtureRequest, tmp_path: Path, built_plugin: Path) -> Iterator[DeviceSide]:
    with node_with_broker(request.param, tmp_path, built_plugin) as device_side:
        yield device_side


def test_the_journey_and_the_acl(side: DeviceSide) -> None:
    device = _journey(side.server, side.port)
    try:
        client = sdk_client(side.server)
        other_name, other_psk = _create_device(client, device.pid)
        other = SpecDevice(device.pid, other_name, other_psk)
        try:
            assert other.connect(side.port) == 0
            assert other.subscribe(f"{device.pid}/{other_name}/control") == 0
            # the first device may not read or write the other device's topics
            assert device.subscribe(f"{device.pid}/{other_name}/control") == 0x80
            assert device.subscribe(f"$shadow/operation/result/{device.pid}/{other_name}") == 0x80
            device.client.publish(f"{device.pid}/{other_name}/control", b"spoofed", 0)
            spoofed_update = {"type": "update", "state": {"reported": {"power": "spoofed"}}, "clientToken": "s-1"}
            device.client.publish(f"$shadow/operation/{device.pid}/{other_name}", json.dumps(spoofed_update), 0)
            # the broker reads one connection in order: once the device's own request is answered, the spoofed
            # publishes before it have been handled (dropped, or they would have been routed)
            assert device.shadow({"type": "get", "clientToken": "t-3"})["result"] == 0
            publish = models.PublishMessageRequest()
            publish.ProductId, publish.DeviceName = device.pid, other_name
            publish.Topic, publish.Payload = f"{device.pid}/{other_name}/control", "from the cloud"
            client.PublishMessage(publish)
            assert other.next_message(f"{device.pid}/{other_name}/control") == b"from the cloud"
            shadow = models.DescribeDeviceShadowRequest()
            shadow.ProductId, shadow.DeviceName = device.pid, other_name
            data = json.loads(client.DescribeDeviceShadow(shadow).Data)
            assert (data["payload"]["version"], data["payload"]["state"]) == (0, {"reported": {}}), data
            # DescribeDevice shows the connected device online on either broker
            describe = models.DescribeDeviceRequest()
            describe.ProductID, describe.DeviceName = device.pid, other_name
            assert client.DescribeDevice(describe).Online == 1
        finally:
            other.close()
    finally:
        device.close()


@pytest.mark.mosquitto
def test_the_journey_on_mosquitto(tmp_path: Path) -> None:
    require_service("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    live = start_server(
        tmp_path / "data", f"sqlite:///{tmp_path / 'fleetops.db'}", mqtt_url=f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"
    )
    try:
        # Mosquitto here is anonymous: nothing checks the device's credentials or topics (on an external broker
        # that is the broker's HTTP hook calling fleetops, docs/mqtt.md), so only the journey itself is asserted.
        _journey(live, MOSQUITTO_PORT).close()
    finally:
        live.stop()

"""PublishMessage through the official SDK, received by real paho-mqtt devices on the node's embedded broker (and,
for the delivery itself, on Mosquitto with the fleetops plugin)."""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.iotcloud.v20180614 import models

from fleetops.errors import BrokerUnavailable
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.ports.messaging import Delivery, DeviceCredentials
from tests.brokers import BROKERS, EMBEDDED, DeviceSide, node_with_broker
from tests.mqtt_support import PahoDevice
from tests.support import LiveServer, QuietMessaging, new_product, sdk_client, sdk_error_code, server_on


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with server_on("sqlite", tmp_path_factory.mktemp("publish")) as live:
        yield live


@pytest.fixture(scope="module", params=BROKERS)
def side(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceSide]:
    """The module's embedded server, or a node on Mosquitto with the plugin."""
    if request.param == EMBEDDED:
        server: LiveServer = request.getfixturevalue("server")
        yield DeviceSide(EMBEDDED, server, _port(server))
        return
    plugin: Path = request.getfixturevalue("built_plugin")
    with node_with_broker(request.param, tmp_path_factory.mktemp("publish-plugin"), plugin) as device_side:
        yield device_side


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


def _device(client: Any, pid: str) -> DeviceCredentials:
    req = models.CreateDeviceRequest()
    req.ProductId, req.DeviceName = pid, "dev-" + secrets.token_hex(3)
    return DeviceCredentials(pid, req.DeviceName, str(client.CreateDevice(req).DevicePsk), True)


def _publish(client: Any, creds: DeviceCredentials, suffix: str, payload: str, **extra: Any) -> Any:
    req = models.PublishMessageRequest()
    req.ProductId, req.DeviceName = creds.product_id, creds.device_name
    req.Topic = f"{creds.product_id}/{creds.device_name}/{suffix}"
    req.Payload = payload
    for key, value in extra.items():
        setattr(req, key, value)
    return client.PublishMessage(req)


def _port(server: LiveServer) -> int:
    broker = server.node.messaging
    assert isinstance(broker, EmbeddedBroker)
    return broker.port


@pytest.mark.parametrize("qos", [0, 1])
async def test_the_subscribed_device_gets_the_payload_byte_for_byte(side: DeviceSide, qos: int) -> None:
    client = sdk_client(side.server)
    creds = _device(client, new_product(client))
    device = PahoDevice(creds)
    try:
        assert await device.connect(side.port) == 0
        assert await device.subscribe(f"{creds.product_id}/{creds.device_name}/control", 1) == 1  # granted QoS 1
        _publish(client, creds, "control", "turn on ☀", Qos=qos)
        got = await device.receive()
        assert got.topic == f"{creds.product_id}/{creds.device_name}/control"
        assert got.payload == "turn on ☀".encode()
        assert got.qos == qos
        raw = bytes(range(256))
        _publish(client, creds, "control", base64.b64encode(raw).decode(), PayloadEncoding="base64")
        assert (await device.receive()).payload == raw
        assert await device.nothing_received(0.3)
    finally:
        device.close()


async def test_delivery_errors(server: LiveServer, client: Any) -> None:
    creds = _device(client, new_product(client))
    assert sdk_error_code(lambda: _publish(client, creds, "control", "x")) == "FailedOperation.DeviceOffline"
    device = PahoDevice(creds)
    try:
        assert await device.connect(_port(server)) == 0
        code = sdk_error_code(lambda: _publish(client, creds, "control", "x"))
        assert code == "FailedOperation.DeviceNoSubscription"
    finally:
        device.close()


def test_input_errors(client: Any) -> None:
    pid = new_product(client)
    creds = _device(client, pid)
    other = _device(client, pid)

    def to_other_device() -> Any:
        req = models.PublishMessageRequest()
        req.ProductId, req.DeviceName = pid, creds.device_name
        req.Topic, req.Payload = f"{pid}/{other.device_name}/control", "x"
        return client.PublishMessage(req)

    assert sdk_error_code(to_other_device) == "FailedOperation.InvalidTopicName"
    assert sdk_error_code(lambda: _publish(client, creds, "bad/topic", "x")) == "FailedOperation.InvalidTopicName"
    assert sdk_error_code(lambda: _publish(client, creds, "control", "")) == "FailedOperation.InvalidMsgLen"
    big = "x" * 16385
    assert sdk_error_code(lambda: _publish(client, creds, "control", big)) == "InvalidParameterValue.PayloadOverLimit"
    bad64 = lambda: _publish(client, creds, "control", "***", PayloadEncoding="base64")  # noqa: E731
    assert sdk_error_code(bad64) == "InvalidParameterValue"
    hex_encoding = lambda: _publish(client, creds, "control", "78", PayloadEncoding="hex")  # noqa: E731
    assert sdk_error_code(hex_encoding) == "InvalidParameterValue"
    long_topic = lambda: _publish(client, creds, "t" * 129, "x")  # noqa: E731
    assert sdk_error_code(long_topic) == "FailedOperation.InvalidTopicName"
    assert sdk_error_code(lambda: _publish(client, creds, "t" * 300, "x")) == "FailedOperation.InvalidTopicName"
    # the limit is on bytes after decoding: at the limit the payload passes (and meets the offline device)
    offline = "FailedOperation.DeviceOffline"
    assert sdk_error_code(lambda: _publish(client, creds, "t" * 128, "x" * 16384)) == offline
    assert (
        sdk_error_code(lambda: _publish(client, creds, "control", "é" * 8193))
        == "InvalidParameterValue.PayloadOverLimit"
    )
    at_limit = base64.b64encode(b"\0" * 16384).decode()
    assert sdk_error_code(lambda: _publish(client, creds, "control", at_limit, PayloadEncoding="base64")) == offline
    over = base64.b64encode(b"\0" * 16385).decode()
    code = sdk_error_code(lambda: _publish(client, creds, "control", over, PayloadEncoding="base64"))
    assert code == "InvalidParameterValue.PayloadOverLimit"
    empty64 = lambda: _publish(client, creds, "control", "", PayloadEncoding="base64")  # noqa: E731
    assert sdk_error_code(empty64) == "FailedOperation.InvalidMsgLen"
    assert sdk_error_code(lambda: _publish(client, creds, "control", "x", Qos=2)) == "InvalidParameterValue"

    gone = DeviceCredentials(pid, "no-such-device", "", True)
    assert sdk_error_code(lambda: _publish(client, gone, "control", "x")) == "ResourceNotFound.DeviceNotExist"
    no_product = DeviceCredentials("NOPE000000", "d", "", True)
    code = sdk_error_code(lambda: _publish(client, no_product, "control", "x"))
    assert code == "ResourceNotFound.ProductOrDeviceNotExist"

    disable = models.UpdateDevicesEnableStateRequest()
    disable.ProductID, disable.DeviceNames, disable.Status = pid, [creds.device_name], 0
    client.UpdateDevicesEnableState(disable)
    code = sdk_error_code(lambda: _publish(client, creds, "control", "x"))
    assert code == "FailedOperation.DeviceAlreadyDisabled"


def test_another_account_cannot_publish_to_the_device(server: LiveServer, client: Any) -> None:
    creds = _device(client, new_product(client))
    sid, skey = server.new_account()
    stranger = sdk_client(server, secret_id=sid, secret_key=skey)
    code = sdk_error_code(lambda: _publish(stranger, creds, "control", "x"))
    assert code == "ResourceNotFound.ProductOrDeviceNotExist"


async def test_qos1_to_an_offline_persistent_session_is_queued_and_delivered(server: LiveServer, client: Any) -> None:
    creds = _device(client, new_product(client))
    topic = f"{creds.product_id}/{creds.device_name}/control"
    device = PahoDevice(creds, clean_session=False)
    assert await device.connect(_port(server)) == 0
    assert await device.subscribe(topic, 1) == 1
    device.close()
    await device.wait_disconnected()
    assert sdk_error_code(lambda: _publish(client, creds, "control", "x", Qos=0)) == "FailedOperation.DeviceOffline"
    _publish(client, creds, "control", "kept for you", Qos=1)
    back = PahoDevice(creds, clean_session=False)
    try:
        assert await back.connect(_port(server)) == 0
        got = await back.receive()
        assert (got.topic, got.payload) == (topic, b"kept for you")
    finally:
        back.close()


async def test_a_full_offline_queue_or_a_qos0_session_refuses_instead_of_dropping(
    server: LiveServer, client: Any
) -> None:
    pid = new_product(client)
    full, qos0 = _device(client, pid), _device(client, pid)
    for creds, granted in ((full, 1), (qos0, 0)):
        device = PahoDevice(creds, clean_session=False)
        assert await device.connect(_port(server)) == 0
        assert await device.subscribe(f"{pid}/{creds.device_name}/control", granted) == granted
        device.close()
        await device.wait_disconnected()

    # a session subscribed with QoS 0 keeps nothing: a QoS 1 message would be lost, so it is refused
    assert sdk_error_code(lambda: _publish(client, qos0, "control", "x", Qos=1)) == "FailedOperation.DeviceOffline"

    # fill the other device's queue (150 messages) through the broker, then the API refuses the 151st
    broker = server.node.messaging
    assert isinstance(broker, EmbeddedBroker)
    topic = f"{pid}/{full.device_name}/control"
    server.run(broker.publisher.publish_many([(topic, b"queued %d" % i) for i in range(150)], 1))
    code = sdk_error_code(lambda: _publish(client, full, "control", "one too many", Qos=1))
    assert code == "LimitExceeded.OfflineMessageExceedLimit"
    back = PahoDevice(full, clean_session=False)
    try:
        assert await back.connect(_port(server)) == 0
        assert (await back.receive()).payload == b"queued 0"
    finally:
        back.close()


class _UnreachableBroker:
    """A publisher whose broker is down: it raises BrokerUnavailable, or never answers (``hang``)."""

    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang
        self.attempts = 0

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many([(topic, payload)], qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        self.attempts += 1
        if self.hang:
            await asyncio.Event().wait()
        raise BrokerUnavailable("the MQTT broker acknowledged nothing for 2 s")

    def subscribed(self, topic: str) -> bool | None:
        return None  # an external broker cannot tell

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None


@pytest.mark.parametrize("hang", [False, True])
def test_an_unreachable_broker_is_a_clear_failure_not_an_internal_error(tmp_path: Path, hang: bool) -> None:
    side = QuietMessaging(_UnreachableBroker(hang=hang))  # an MQTT side whose broker is down
    with server_on("sqlite", tmp_path, messaging_factory=lambda _handler: side) as down_server:
        client = sdk_client(down_server)
        creds = _device(client, new_product(client))
        started = time.monotonic()
        with pytest.raises(TencentCloudSDKException) as caught:
            _publish(client, creds, "control", "x", Qos=1)
        elapsed_s = time.monotonic() - started
        assert caught.value.get_code() == "FailedOperation"
        assert "broker cannot be reached" in caught.value.get_message()
        assert "Retry" in caught.value.get_message()
        assert side.publisher.attempts == 1
        # the wait is bounded (FLEETOPS_DELTA_PUBLISH_TIMEOUT_S) even when the broker never answers
        assert elapsed_s < down_server.settings.delta_publish_timeout_s + 3

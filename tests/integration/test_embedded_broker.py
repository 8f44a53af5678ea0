"""The embedded broker with real paho-mqtt devices: authentication, ACL, shadow requests, fleetops publishing,
take-over, persistent sessions, online state (docs/device-protocol.md)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import orjson
import paho.mqtt.client as paho
import pytest

from fleetops.errors import BrokerUnavailable, ConfigurationError
from fleetops.messaging.device_auth import SignMethod, make_username, sign_password
from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker
from fleetops.ports.messaging import DeviceCredentials
from tests.mqtt_support import (
    EchoShadowHandler,
    MemoryDirectory,
    PahoDevice,
    paho_devices,
    random_product_id,
    raw_connect,
)


@pytest.fixture
def pid() -> str:
    return random_product_id()


@pytest.fixture
def directory() -> MemoryDirectory:
    return MemoryDirectory()


@pytest.fixture
def handler() -> EchoShadowHandler:
    return EchoShadowHandler()


@pytest.fixture
async def broker(directory: MemoryDirectory, handler: EchoShadowHandler) -> AsyncIterator[EmbeddedBroker]:
    service = EmbeddedBroker(directory, handler, port=0, options=BrokerOptions(offline_replay_interval_s=0))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
def devices() -> Iterator[list[PahoDevice]]:
    with paho_devices() as started:
        yield started


async def connect(
    broker: EmbeddedBroker, devices: list[PahoDevice], credentials: DeviceCredentials, **options: object
) -> PahoDevice:
    device = PahoDevice(credentials, **options)  # type: ignore[arg-type]
    devices.append(device)
    assert await device.connect(broker.port) == 0
    return device


async def connack(
    broker: EmbeddedBroker, devices: list[PahoDevice], credentials: DeviceCredentials, **options: object
) -> int:
    device = PahoDevice(credentials, **options)  # type: ignore[arg-type]
    devices.append(device)
    return await device.connect(broker.port)


async def shadow_round_trip(device: PahoDevice, credentials: DeviceCredentials, token: str) -> None:
    """A shadow GET and its reply: everything this device published before has been routed by then."""
    device.publish(
        f"$shadow/operation/{credentials.product_id}/{credentials.device_name}",
        orjson.dumps({"type": "get", "clientToken": token}),
    )
    reply = await device.receive()
    assert orjson.loads(reply.payload)["echo"]["clientToken"] == token


# --- CONNECT ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", [SignMethod.HMAC_SHA256, SignMethod.HMAC_SHA1])
async def test_good_credentials_connect_and_mark_the_device_online(
    broker: EmbeddedBroker,
    directory: MemoryDirectory,
    devices: list[PahoDevice],
    pid: str,
    method: SignMethod,
) -> None:
    credentials = directory.add(pid, "lamp01")
    device = await connect(broker, devices, credentials, method=method)
    assert broker.publisher.online(pid, "lamp01") is True
    assert directory.online_calls == [(pid, "lamp01", True, "127.0.0.1")]
    device.close()
    for _ in range(200):
        if directory.online_states(pid, "lamp01") == [True, False]:
            break
        await asyncio.sleep(0.01)
    assert directory.online_states(pid, "lamp01") == [True, False]
    assert broker.publisher.online(pid, "lamp01") is False


async def test_sdk_style_user_names_connect(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    """C SDK: expiry LONG_MAX; Python SDK: expiry in milliseconds; MQTT 3.1 (MQIsdp) as well."""
    credentials = directory.add(pid, "c_sdk")
    assert await connack(broker, devices, credentials, expiry=9223372036854775807) == 0
    credentials = directory.add(pid, "py_sdk")
    assert await connack(broker, devices, credentials, expiry=int(time.time() * 1000)) == 0
    credentials = directory.add(pid, "mqtt31")
    assert await connack(broker, devices, credentials, protocol=paho.MQTTv31) == 0


async def test_refused_connects_get_the_spec_codes(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    """docs/device-protocol.md#connack: bad/expired/unknown -> 4, disabled -> 5, bad client id or keep-alive -> 2."""
    good = directory.add(pid, "good")
    disabled = directory.add(pid, "off", enabled=False)
    unknown = DeviceCredentials(pid, "ghost", good.psk, True)
    assert await connack(broker, devices, good, password="0" * 64 + ";hmacsha256") == 4
    assert await connack(broker, devices, good, expiry=int(time.time()) - 10) == 4
    assert await connack(broker, devices, unknown) == 4
    assert await connack(broker, devices, disabled) == 5
    assert await connack(broker, devices, DeviceCredentials(pid.lower(), "x", good.psk, True)) == 2
    assert await connack(broker, devices, good, keepalive_s=901) == 2
    assert await connack(broker, devices, good, keepalive_s=900) == 0
    assert [call[:3] for call in directory.online_calls] == [(pid, "good", True)]


class FailingDirectory(MemoryDirectory):
    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        raise OSError("database down")

    async def credentials_many(self, devices: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceCredentials]:
        raise OSError("database down")


async def test_a_directory_failure_answers_server_unavailable(devices: list[PahoDevice], pid: str) -> None:
    directory = FailingDirectory()
    service = EmbeddedBroker(directory, EchoShadowHandler(), port=0)
    await service.start()
    try:
        assert await connack(service, devices, directory.add(pid, "lamp01")) == 3
    finally:
        await service.stop()


async def test_a_refused_connect_does_not_disturb_the_connected_device(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    """amqtt (the earlier embedded broker) dropped the session of a client id before checking the password; fleetops
    checks first."""
    credentials = directory.add(pid, "lamp01")
    device = await connect(broker, devices, credentials)
    assert await device.subscribe(f"{pid}/lamp01/control", 1) == 1
    assert await connack(broker, devices, credentials, password="f" * 64 + ";hmacsha256") == 4
    await broker.publisher.publish(f"{pid}/lamp01/control", b"still here", 1)
    assert (await device.receive()).payload == b"still here"
    assert broker.publisher.online(pid, "lamp01") is True


async def test_silence_beyond_one_and_a_half_keepalives_closes_the_connection(
    broker: EmbeddedBroker, directory: MemoryDirectory, pid: str
) -> None:
    credentials = directory.add(pid, "quiet")
    username = make_username(pid + "quiet", int(time.time()) + 60)
    started = time.monotonic()
    reader, writer, connack_bytes = await raw_connect(
        broker.port, pid + "quiet", username, sign_password(username, credentials.psk), keepalive_s=1
    )
    assert connack_bytes == b"\x20\x02\x00\x00"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the broker
    assert 1.4 <= time.monotonic() - started < 4
    writer.close()
    for _ in range(100):
        if directory.online_states(pid, "quiet") == [True, False]:
            break
        await asyncio.sleep(0.01)
    assert directory.online_states(pid, "quiet") == [True, False]


# --- ACL -------------------------------------------------------------------------------------------------


async def test_subscriptions_are_limited_to_the_device_own_topics(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    device = await connect(broker, devices, directory.add(pid, "lamp01"))
    assert await device.subscribe(f"{pid}/lamp01/control", 1) == 1
    assert await device.subscribe(f"{pid}/lamp01/data", 2) == 1  # QoS 2 granted as 1
    assert await device.subscribe(f"$shadow/operation/result/{pid}/lamp01", 0) == 0
    assert await device.subscribe(f"$rrpc/rxd/{pid}/lamp01/+", 0) == 0
    assert await device.subscribe(f"{pid}/lamp02/control", 1) == 0x80
    assert await device.subscribe(f"$shadow/operation/result/{pid}/lamp02", 0) == 0x80
    assert await device.subscribe(f"{pid}/lamp01/event", 0) == 0x80  # publish-only
    assert await device.subscribe(f"{pid}/lamp01/#", 0) == 0x80
    assert await device.subscribe(f"{pid}/+/control", 0) == 0x80
    assert await device.subscribe("#", 0) == 0x80
    assert broker.publisher.subscribed(f"{pid}/lamp01/control") is True
    assert broker.publisher.subscribed(f"$rrpc/rxd/{pid}/lamp01/42") is True
    assert broker.publisher.subscribed(f"{pid}/lamp02/control") is False


async def test_a_publish_to_another_device_topic_is_not_delivered(
    broker: EmbeddedBroker,
    directory: MemoryDirectory,
    handler: EchoShadowHandler,
    devices: list[PahoDevice],
    pid: str,
) -> None:
    intruder_credentials = directory.add(pid, "intruder")
    handler.known.add((pid, "intruder"))
    victim = await connect(broker, devices, directory.add(pid, "victim"))
    intruder = await connect(broker, devices, intruder_credentials)
    assert await victim.subscribe(f"{pid}/victim/data", 1) == 1
    assert await intruder.subscribe(f"$shadow/operation/result/{pid}/intruder", 0) == 0
    intruder.publish(f"{pid}/victim/data", b"forged", 1)
    intruder.publish(f"$shadow/operation/{pid}/victim", b'{"type":"update"}', 1)
    await shadow_round_trip(intruder, intruder_credentials, "after-the-forgery")  # both were handled by now
    await broker.publisher.publish(f"{pid}/victim/data", b"genuine", 0)
    assert (await victim.receive()).payload == b"genuine"  # the forged message would have come first
    assert handler.requests == [(pid, "intruder", b'{"type":"get","clientToken":"after-the-forgery"}')]
    # the intruder is still connected: refused publishes are dropped, not punished
    assert broker.publisher.online(pid, "intruder") is True


async def test_devices_can_publish_to_their_own_topics(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    """Standard MQTT echo of a device's own publish on a topic it subscribes to (docs/device-protocol.md#messaging)."""
    device = await connect(broker, devices, directory.add(pid, "lamp01"))
    assert await device.subscribe(f"{pid}/lamp01/data", 1) == 1
    device.publish(f"{pid}/lamp01/data", b"loop", 1)
    received = await device.receive()
    assert (received.topic, received.payload, received.qos) == (f"{pid}/lamp01/data", b"loop", 1)


async def test_oversized_payloads_are_dropped_and_qos2_closes_the_connection(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    """docs/device-protocol.md#messaging: payloads over 16 KB are dropped; QoS 2 is not supported."""
    device = await connect(broker, devices, directory.add(pid, "lamp01"))
    assert await device.subscribe(f"{pid}/lamp01/data", 1) == 1
    device.publish(f"{pid}/lamp01/data", b"x" * (16 * 1024 + 1), 1)
    device.publish(f"{pid}/lamp01/data", b"x" * (16 * 1024), 1)
    assert len((await device.receive()).payload) == 16 * 1024  # the larger one would have come first
    device.publish(f"{pid}/lamp01/data", b"exactly once?", 2)
    assert await device.wait_disconnected()
    assert await device.nothing_received(0.2)


# --- shadow requests and fleetops publishing -------------------------------------------------------------


async def test_shadow_request_round_trip(
    broker: EmbeddedBroker,
    directory: MemoryDirectory,
    handler: EchoShadowHandler,
    devices: list[PahoDevice],
    pid: str,
) -> None:
    credentials = directory.add(pid, "lamp01")
    handler.known.add((pid, "lamp01"))
    device = await connect(broker, devices, credentials)
    assert await device.subscribe(f"$shadow/operation/result/{pid}/lamp01", 0) == 0
    request = {"type": "update", "state": {"reported": {"power": "on"}}, "clientToken": f"{pid}-1"}
    device.publish(f"$shadow/operation/{pid}/lamp01", orjson.dumps(request), 1)
    reply = await device.receive()
    assert reply.topic == f"$shadow/operation/result/{pid}/lamp01"
    assert reply.qos == 0
    assert orjson.loads(reply.payload) == {"echo": request}
    assert handler.requests == [(pid, "lamp01", orjson.dumps(request))]


@pytest.mark.parametrize("qos", [0, 1])
async def test_fleetops_publishes_reach_the_subscribed_device(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str, qos: int
) -> None:
    device = await connect(broker, devices, directory.add(pid, "lamp01"))
    other = await connect(broker, devices, directory.add(pid, "lamp02"))
    assert await device.subscribe(f"{pid}/lamp01/control", 1) == 1
    assert await other.subscribe(f"{pid}/lamp02/control", 0) == 0
    messages = [(f"{pid}/lamp01/control", f"m{n}".encode()) for n in range(50)]
    messages.append((f"{pid}/lamp02/control", b"for lamp02"))
    messages.append((f"{pid}/nobody/control", b"skipped"))
    await broker.publisher.publish_many(messages, qos)
    received = [await device.receive() for _ in range(50)]
    assert [(m.topic, m.payload, m.qos) for m in received] == [(t, p, qos) for t, p in messages[:50]]
    from_other = await other.receive()
    assert (from_other.payload, from_other.qos) == (b"for lamp02", 0)  # min(published, granted)


async def test_publish_validates_its_arguments(broker: EmbeddedBroker) -> None:
    with pytest.raises(ValueError, match="QoS"):
        await broker.publisher.publish("a/b", b"", 2)
    with pytest.raises(ValueError, match="topic"):
        await broker.publisher.publish("a/+", b"", 0)


async def test_publishing_without_a_running_broker_raises(directory: MemoryDirectory) -> None:
    service = EmbeddedBroker(directory, EchoShadowHandler(), port=0)
    with pytest.raises(BrokerUnavailable):
        await service.publisher.publish("a/b", b"", 0)


# --- sessions ----------------------------------------------------------------------------------------------


async def test_a_second_connection_with_the_same_client_id_takes_over(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    credentials = directory.add(pid, "lamp01")
    first = await connect(broker, devices, credentials)
    assert await first.subscribe(f"{pid}/lamp01/control", 0) == 0
    second = await connect(broker, devices, credentials)
    assert await first.wait_disconnected()
    assert await second.subscribe(f"{pid}/lamp01/data", 0) == 0
    await broker.publisher.publish_many([(f"{pid}/lamp01/control", b"old"), (f"{pid}/lamp01/data", b"new")], 0)
    assert (await second.receive()).payload == b"new"  # the clean session dropped the first subscription
    assert await first.nothing_received(0.2)
    await asyncio.sleep(0.1)
    assert broker.publisher.online(pid, "lamp01") is True
    assert directory.online_states(pid, "lamp01") == [True, True]  # the superseded connection went quietly
    second.close()
    for _ in range(200):
        if directory.online_states(pid, "lamp01") == [True, True, False]:
            break
        await asyncio.sleep(0.01)
    assert directory.online_states(pid, "lamp01") == [True, True, False]


async def test_simultaneous_connects_of_one_client_id_leave_one_connection(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    credentials = directory.add(pid, "lamp01")
    contenders = [PahoDevice(credentials) for _ in range(5)]
    devices.extend(contenders)
    assert await asyncio.gather(*(device.connect(broker.port) for device in contenders)) == [0] * 5
    for _ in range(300):
        if sum(device.disconnected.is_set() for device in contenders) == 4:
            break
        await asyncio.sleep(0.01)
    assert sum(device.disconnected.is_set() for device in contenders) == 4
    assert broker.broker is not None
    for _ in range(100):
        if len(broker.broker.connections) == 1:
            break
        await asyncio.sleep(0.01)
    assert len(broker.broker.connections) == 1  # no connection left running unregistered
    assert directory.online_states(pid, "lamp01") == [True] * 5
    assert broker.publisher.online(pid, "lamp01") is True


async def test_persistent_sessions_keep_subscriptions_and_qos1_messages(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    credentials = directory.add(pid, "sleepy")
    device = await connect(broker, devices, credentials, clean_session=False)
    assert await device.subscribe(f"{pid}/sleepy/control", 1) == 1
    device.close()
    for _ in range(200):
        if broker.publisher.online(pid, "sleepy") is False:
            break
        await asyncio.sleep(0.01)
    # offline, but the persistent session still subscribes: publish_many must not skip it
    assert broker.publisher.subscribed(f"{pid}/sleepy/control") is True
    await broker.publisher.publish_many([(f"{pid}/sleepy/control", b"q1"), (f"{pid}/sleepy/control", b"q0")], 1)
    await broker.publisher.publish(f"{pid}/sleepy/control", b"not kept", 0)  # QoS 0 is never stored
    again = await connect(broker, devices, credentials, clean_session=False)
    assert [(await again.receive()).payload for _ in range(2)] == [b"q1", b"q0"]
    assert await again.nothing_received(0.2)


async def test_disconnect_device_closes_the_connection_and_drops_the_session(
    broker: EmbeddedBroker, directory: MemoryDirectory, devices: list[PahoDevice], pid: str
) -> None:
    credentials = directory.add(pid, "lamp01")
    device = await connect(broker, devices, credentials, clean_session=False)
    assert await device.subscribe(f"{pid}/lamp01/control", 1) == 1
    assert await broker.disconnect_device(pid, "lamp01") is True
    assert await device.wait_disconnected()
    assert broker.publisher.subscribed(f"{pid}/lamp01/control") is False
    for _ in range(200):
        if directory.online_states(pid, "lamp01") == [True, False]:
            break
        await asyncio.sleep(0.01)
    assert directory.online_states(pid, "lamp01") == [True, False]
    assert await broker.disconnect_device(pid, "lamp01") is False


async def test_stop_marks_connected_devices_offline(
    directory: MemoryDirectory, handler: EchoShadowHandler, devices: list[PahoDevice], pid: str
) -> None:
    service = EmbeddedBroker(directory, handler, port=0)
    await service.start()
    await connect(service, devices, directory.add(pid, "lamp01"))
    await service.stop()
    assert directory.online_states(pid, "lamp01") == [True, False]
    with pytest.raises(BrokerUnavailable):
        await service.publisher.publish(f"{pid}/lamp01/control", b"", 0)


async def test_a_taken_port_is_a_configuration_error(directory: MemoryDirectory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = EmbeddedBroker(directory, EchoShadowHandler(), port=port)
        with pytest.raises(ConfigurationError, match=rf"127\.0\.0\.1:{port}: the address is already in use"):
            await service.start()
        assert service.broker is None

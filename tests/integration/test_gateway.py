"""The gateway beyond the device protocol: delivery statuses, PUBACK callbacks, device events, the listener's
limits against hostile clients, and malformed byte streams thrown at it while a real paho device works."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import orjson
import pytest

from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker
from fleetops.ports.messaging import Delivery, DeviceAcks
from tests.mqtt_support import (
    EchoShadowHandler,
    MemoryDirectory,
    PahoDevice,
    closed_by_peer,
    junk_streams,
    paho_devices,
    random_product_id,
    raw_subscribe,
    signed_connect,
)


class Events:
    """A :class:`~fleetops.ports.messaging.DeviceEvents` that records what it is told."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, ...]] = []

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        self.seen.append(("connected", device_name, session_present))

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        self.seen.append(("subscribed", device_name, topic_filter.rsplit("/", 1)[-1], granted_qos))

    def device_disconnected(self, product_id: str, device_name: str) -> None:
        self.seen.append(("disconnected", device_name))


@asynccontextmanager
async def gateway(
    directory: MemoryDirectory, handler: EchoShadowHandler | None = None, events: Events | None = None, **options: float
) -> AsyncIterator[EmbeddedBroker]:
    service = EmbeddedBroker(
        directory,
        handler or EchoShadowHandler(),
        port=0,
        options=BrokerOptions(offline_replay_interval_s=0, **options),  # type: ignore[arg-type]
        events=events,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def eventually(check: object, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not come true in time")
        await asyncio.sleep(0.01)


@pytest.fixture
def devices() -> Iterator[list[PahoDevice]]:
    with paho_devices() as started:
        yield started


async def test_publish_many_reports_what_became_of_each_message(devices: list[PahoDevice]) -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    async with gateway(directory) as service:
        for name, granted, persistent in (("live", 1, False), ("away1", 1, True), ("away0", 0, True)):
            device = PahoDevice(directory.add(pid, name), clean_session=not persistent)
            devices.append(device)
            assert await device.connect(service.port) == 0
            assert await device.subscribe(f"{pid}/{name}/control", granted) == granted
            if persistent:
                device.close()
        await eventually(
            lambda: not service.publisher.online(pid, "away1") and not service.publisher.online(pid, "away0")
        )
        topics = [f"{pid}/{name}/control" for name in ("live", "away1", "away0", "nobody")]
        qos1 = await service.publisher.publish_many([(topic, b"m") for topic in topics], 1)
        assert qos1 == [Delivery.SENT, Delivery.QUEUED, Delivery.DROPPED, Delivery.DROPPED]
        qos0 = await service.publisher.publish_many([(topic, b"m") for topic in topics], 0)
        assert qos0 == [Delivery.SENT, Delivery.DROPPED, Delivery.DROPPED, Delivery.DROPPED]
        assert [(await devices[0].receive()).qos for _ in range(2)] == [1, 0]


async def test_puback_callbacks_and_device_events(devices: list[PahoDevice]) -> None:
    pid, directory, events = random_product_id(), MemoryDirectory(), Events()
    credentials = directory.add(pid, "lamp")
    topic = f"{pid}/lamp/control"
    async with gateway(directory, events=events) as service:
        publisher = service.publisher
        assert isinstance(publisher, DeviceAcks)
        device = PahoDevice(credentials, clean_session=False)
        devices.append(device)
        assert await device.connect(service.port) == 0
        assert await device.subscribe(topic, 1) == 1
        acked: list[int] = []
        statuses = await publisher.publish_many_acked(
            [(topic, b"a"), (f"{pid}/x/control", b"-"), (topic, b"b")], acked.append
        )
        assert statuses == [Delivery.SENT, Delivery.DROPPED, Delivery.SENT]
        await eventually(lambda: sorted(acked) == [0, 2])  # paho acknowledges each QoS 1 message

        device.close()
        await eventually(lambda: publisher.online(pid, "lamp") is False)
        later: list[int] = []
        assert await publisher.publish_many_acked([(topic, b"kept")], later.append) == [Delivery.QUEUED]
        assert later == []  # not before the device has it
        again = PahoDevice(credentials, clean_session=False)
        devices.append(again)
        assert await again.connect(service.port) == 0
        assert (await again.receive()).payload == b"kept"
        await eventually(lambda: later == [0])

        takeover = PahoDevice(credentials, clean_session=False)
        devices.append(takeover)
        assert await takeover.connect(service.port) == 0
        assert await again.wait_disconnected()
        takeover.close()
        await eventually(lambda: events.seen[-1:] == [("disconnected", "lamp")])
    assert events.seen == [
        ("connected", "lamp", False),
        ("subscribed", "lamp", "control", 1),
        ("disconnected", "lamp"),
        ("connected", "lamp", True),
        ("connected", "lamp", True),  # the taken-over connection reports no disconnect
        ("disconnected", "lamp"),
    ]


async def test_half_open_connections_are_evicted_to_let_devices_in(devices: list[PahoDevice]) -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    async with gateway(directory, max_connections=3, connect_timeout_s=60) as service:
        half_open = [await asyncio.open_connection("127.0.0.1", service.port) for _ in range(3)]
        await eventually(lambda: service.broker is not None and service.broker.listeners[0].open_connections == 3)
        for index in range(3):  # each device gets in by closing the oldest connection without CONNECT
            device = PahoDevice(directory.add(pid, f"d{index}"))
            devices.append(device)
            assert await device.connect(service.port) == 0
            assert await closed_by_peer(half_open[index][0], 2)
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)  # full of devices: refused
        assert await closed_by_peer(reader, 2)
        writer.close()
        assert service.broker is not None
        assert service.broker.listeners[0].refused == 1
        assert all(service.publisher.online(pid, f"d{index}") for index in range(3))
        for _, half_open_writer in half_open:
            half_open_writer.close()


async def test_a_connection_that_sends_no_connect_is_closed_after_the_deadline() -> None:
    async with gateway(MemoryDirectory(), connect_timeout_s=0.5, tick_s=0.05) as service:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(b"\x10")  # the start of a CONNECT that never ends
        assert await closed_by_peer(reader, 3)
        assert 0.45 <= time.monotonic() - started < 2.5
        writer.close()


async def test_a_refused_connect_from_a_client_that_left_logs_one_line(caplog: pytest.LogCaptureFixture) -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    credentials = directory.add(pid, "lamp")
    caplog.set_level(logging.INFO, logger="fleetops")
    async with gateway(directory) as service:
        _, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(signed_connect(credentials, password="0" * 64 + ";hmacsha256"))
        writer.close()  # gone before its CONNACK
        await eventually(lambda: any("refused" in record.getMessage() for record in caplog.records))
        await asyncio.sleep(0.1)
    refusals = [record for record in caplog.records if "refused" in record.getMessage()]
    assert len(refusals) == 1 and "bad signature" in refusals[0].getMessage()
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


async def test_a_device_that_does_not_read_its_messages_is_disconnected() -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    credentials = directory.add(pid, "sloth")
    topic = f"{pid}/sloth/control"
    async with gateway(directory, max_write_buffer_bytes=256 * 1024) as service:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(signed_connect(credentials) + raw_subscribe(1, topic, 0))
        assert await reader.readexactly(4) == b"\x20\x02\x00\x00"
        assert await reader.readexactly(5) == b"\x90\x03\x00\x01\x00"
        # it stops reading: 32 MB is more than the socket buffers and the 256 KB the gateway keeps for it
        statuses = await service.publisher.publish_many([(topic, b"x" * 16_000)] * 2000, 0)
        assert statuses[0] is Delivery.SENT
        await eventually(lambda: service.publisher.online(pid, "sloth") is False)
        writer.close()


async def test_malformed_streams_do_not_disturb_a_working_device(
    devices: list[PahoDevice], caplog: pytest.LogCaptureFixture
) -> None:
    pid, directory, handler = random_product_id(), MemoryDirectory(), EchoShadowHandler()
    good = directory.add(pid, "good")
    attacker = directory.add(pid, "attacker")  # valid credentials, then garbage
    handler.known.add((pid, "good"))
    async with gateway(directory, handler) as service:
        device = PahoDevice(good)
        devices.append(device)
        assert await device.connect(service.port) == 0
        assert await device.subscribe(f"$shadow/operation/result/{pid}/good", 0) == 0
        for round_number, junk in enumerate(junk_streams(signed_connect(attacker), seed=1459, count=120)):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(junk)
            writer.write_eof()
            assert await closed_by_peer(reader, 5)
            writer.close()
            if round_number % 20 == 0:
                token = f"t{round_number}"
                device.publish(f"$shadow/operation/{pid}/good", orjson.dumps({"type": "get", "clientToken": token}))
                reply = orjson.loads((await device.receive()).payload)
                assert reply["echo"]["clientToken"] == token
        assert service.broker is not None
        await eventually(lambda: service.broker is not None and len(service.broker.connections) == 1)
        assert service.publisher.online(pid, "good") is True
    assert not [record for record in caplog.records if record.exc_info or record.levelno >= logging.ERROR]


async def test_a_session_holds_a_bounded_number_of_subscriptions(devices: list[PahoDevice]) -> None:
    pid, directory = random_product_id(), MemoryDirectory()
    async with gateway(directory, max_subscriptions=3) as service:
        device = PahoDevice(directory.add(pid, "lamp"))
        devices.append(device)
        assert await device.connect(service.port) == 0
        codes = [await device.subscribe(f"{pid}/lamp/custom{n}", 1) for n in range(4)]
        assert codes == [1, 1, 1, 0x80]
        assert await device.subscribe(f"{pid}/lamp/custom0", 0) == 0  # a repeated filter replaces, within the limit

"""The node side of dispatched device messages, without a broker: what is acknowledged and when, presence in
batches with the broker's time and retried while the database fails, listener calls in arrival order, and a
registration whose connection is gone acknowledging nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import orjson

from fleetops.messaging.node_protocol import Dispatched, DispatchKind, NodeTopics
from fleetops.messaging.plugin_node import PluginNode, Registration
from fleetops.messaging.topics import DeviceId
from fleetops.ports.messaging import PresenceChange
from tests.mqtt_support import MemoryDirectory, RecordingEvents
from tests.support import wait_until

PID = "ABCDE12345"


class Wire:
    """The registration's connection: records the acknowledgements written to it."""

    def __init__(self) -> None:
        self.acks: list[int] = []
        self.open = True

    def write(self, data: bytes) -> bool:
        if not self.open:
            return False
        topic = b"$fleetops/ack/node-a"
        assert data[4 : 4 + len(topic)] == topic  # PUBLISH, remaining length, topic length, topic
        self.acks.append(int(data[4 + len(topic) :]))
        return True


class FlakyDirectory(MemoryDirectory):
    """Records presence batches; the first ``failures`` calls raise (a database that is down)."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.batches: list[list[PresenceChange]] = []
        self.gate: asyncio.Event | None = None

    async def record_presence(self, changes: Sequence[PresenceChange]) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the database is down")
        self.batches.append(list(changes))


class Shadows:
    """Shadow requests waiting for the test to finish them."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, bytes, Callable[[], None]]] = []

    def submit(
        self, device: DeviceId, payload: bytes, write: Callable[[bytes], bool], done: Callable[[], None]
    ) -> None:
        self.waiting.append((device.device_name, payload, done))


def presence(seq: int, name: str, online: bool, time_ms: int) -> Dispatched:
    payload: dict[str, object] = {"online": online, "time_ms": time_ms, "clean_session": True}
    if online:
        payload["address"] = "10.0.0.7"
    return Dispatched(DispatchKind.PRESENCE, seq, DeviceId(PID, name), orjson.dumps(payload))


def shadow(seq: int, name: str) -> Dispatched:
    return Dispatched(DispatchKind.SHADOW, seq, DeviceId(PID, name), b"request %d" % seq)


def subscribed(seq: int, name: str, qos: int = 1) -> Dispatched:
    payload = orjson.dumps({"filter": f"{PID}/{name}/control", "qos": qos, "time_ms": 1})
    return Dispatched(DispatchKind.SUBSCRIBED, seq, DeviceId(PID, name), payload)


def registration(wire: Wire, **options: float) -> Registration:
    return Registration(NodeTopics("node-a"), wire.write, **options)  # type: ignore[arg-type]


async def test_acknowledgements_are_cumulative_and_wait_for_the_oldest_message() -> None:
    wire, shadows = Wire(), Shadows()
    node = PluginNode(shadows.submit, None, None)
    current = registration(wire, ack_interval_s=0.001)
    for seq, name in ((100, "a"), (101, "b"), (102, "a")):
        node.handle(shadow(seq, name), current)
    assert [(name, payload) for name, payload, _ in shadows.waiting] == [
        ("a", b"request 100"),
        ("b", b"request 101"),
        ("a", b"request 102"),
    ]
    shadows.waiting[1][2]()  # 101 done first: 100 is not, nothing may be acknowledged
    await asyncio.sleep(0.02)
    assert wire.acks == []
    shadows.waiting[0][2]()
    await eventually(lambda: wire.acks == [101])
    shadows.waiting[2][2]()
    await eventually(lambda: wire.acks == [101, 102])
    assert current.acknowledged == 102
    await node.stop()


async def test_acknowledgements_are_batched_and_sent_at_once_when_many_are_done() -> None:
    wire, shadows = Wire(), Shadows()
    node = PluginNode(shadows.submit, None, None)
    current = registration(wire, ack_interval_s=60.0, ack_batch=10)
    for seq in range(1, 26):
        node.handle(shadow(seq, f"d{seq}"), current)
    for _, _, done in shadows.waiting:
        done()
    assert wire.acks == [10, 20]  # every 10 moves at once; the rest waits for the timer (60 s here)
    current.flush()
    assert wire.acks == [10, 20, 25]
    current.flush()
    assert wire.acks == [10, 20, 25]  # nothing new
    await node.stop()


async def test_presence_is_written_in_batches_with_the_broker_time_and_told_in_arrival_order() -> None:
    wire, directory, events = Wire(), FlakyDirectory(), RecordingEvents()
    node = PluginNode(Shadows().submit, directory, events)
    current = registration(wire, ack_interval_s=0.001)
    directory.gate = asyncio.Event()  # the first write waits: what arrives meanwhile is one batch
    node.handle(presence(1, "a", True, 1_700_000_000_999), current)
    await asyncio.sleep(0.01)  # its write has started
    node.handle(subscribed(2, "a", qos=2), current)
    node.handle(presence(3, "b", True, 1_700_000_001_000), current)
    node.handle(presence(4, "a", False, 1_700_000_002_500), current)
    assert events.calls == [
        ("connected", "a", False),
        ("subscribed", "a", f"{PID}/a/control", 1),  # a QoS 2 grant is QoS 1 for fleetops
        ("connected", "b", False),
        ("disconnected", "a"),
    ]
    await asyncio.sleep(0.02)
    assert wire.acks == []  # seq 1 is being written
    directory.gate.set()
    await eventually(lambda: wire.acks[-1:] == [4])
    assert directory.batches == [
        [PresenceChange(PID, "a", True, "10.0.0.7", 1_700_000_000)],
        [
            PresenceChange(PID, "b", True, "10.0.0.7", 1_700_000_001),
            PresenceChange(PID, "a", False, None, 1_700_000_002),
        ],
    ]
    await node.stop()


async def test_a_failed_presence_write_is_retried_before_it_is_acknowledged() -> None:
    wire, directory = Wire(), FlakyDirectory(failures=2)
    node = PluginNode(Shadows().submit, directory, None)
    current = registration(wire, ack_interval_s=0.001)
    node.handle(presence(7, "a", True, 1_000), current)
    await asyncio.sleep(0.1)
    assert directory.batches == [] and wire.acks == []  # failing: not acknowledged
    await eventually(lambda: directory.batches == [[PresenceChange(PID, "a", True, "10.0.0.7", 1)]])
    await eventually(lambda: wire.acks == [7])
    await node.stop()


async def test_a_closed_registration_acknowledges_nothing_and_stops_retrying() -> None:
    wire, directory = Wire(), FlakyDirectory(failures=10**6)
    node = PluginNode(Shadows().submit, directory, None)
    old = registration(wire, ack_interval_s=0.001)
    node.handle(presence(1, "a", True, 1_000), old)
    node.handle(subscribed(2, "a"), old)
    await asyncio.sleep(0.05)
    old.close()  # the connection is gone: the plugin hands seq 1 and 2 to another node
    assert not old.received(3)
    directory.failures = 0
    newer = registration(wire, ack_interval_s=0.001)
    node.handle(presence(50, "a", False, 2_000), newer)
    await eventually(lambda: wire.acks == [50])
    # the old registration's change was given up (another node writes it), the new one written
    assert directory.batches == [[PresenceChange(PID, "a", False, None, 2)]]
    await node.stop()


async def test_malformed_events_are_acknowledged_and_skipped() -> None:
    wire, directory, events = Wire(), FlakyDirectory(), RecordingEvents()
    node = PluginNode(Shadows().submit, directory, events)
    current = registration(wire, ack_interval_s=0.001)
    node.handle(Dispatched(DispatchKind.PRESENCE, 1, DeviceId(PID, "a"), b"not json"), current)
    node.handle(Dispatched(DispatchKind.SUBSCRIBED, 2, DeviceId(PID, "a"), b'{"qos":1}'), current)
    await eventually(lambda: wire.acks == [2])
    assert events.calls == [] and directory.batches == []
    await node.stop()


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def holds() -> bool:
        return condition()

    await wait_until(holds, timeout_s=timeout_s, interval_s=0.005)

"""Cloud-to-device messages in the device protocol's terms (messaging/device_messages.py) over a recording
publisher: topics, payloads and QoS, and the delta skipped when the broker knows nobody listens."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from fleetops.messaging.device_messages import DeviceMessenger
from fleetops.ports.messaging import Delivery


class Recorder:
    def __init__(self, *, subscribed: bool | None = None) -> None:
        self.sent: list[tuple[str, bytes, int]] = []
        self._subscribed = subscribed

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many([(topic, payload)], qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        self.sent.extend((topic, payload, qos) for topic, payload in messages)
        return [Delivery.UNKNOWN] * len(messages)

    def subscribed(self, topic: str) -> bool | None:
        return self._subscribed

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None


async def test_a_delta_goes_to_the_result_topic_of_its_prefix() -> None:
    recorder = Recorder()
    await DeviceMessenger(recorder).push_delta("$template", "ABCDE12345", "lamp", 7, {"on": True}, 99)
    [(topic, payload, qos)] = recorder.sent
    assert (topic, qos) == ("$template/operation/result/ABCDE12345/lamp", 0)
    assert orjson.loads(payload)["payload"]["version"] == 7


async def test_a_delta_nobody_listens_to_is_not_sent() -> None:
    recorder = Recorder(subscribed=False)
    await DeviceMessenger(recorder).push_delta("$shadow", "ABCDE12345", "lamp", 1, {"on": True}, 99)
    assert recorder.sent == []


async def test_a_batch_of_deltas_carries_each_devices_version() -> None:
    recorder = Recorder(subscribed=False)  # a batch is sent whatever the broker knows: one publish_many
    await DeviceMessenger(recorder).push_deltas("ABCDE12345", [("a", 3), ("b", 9)], {"c": "red"}, 5)
    assert [(t, orjson.loads(p)["payload"]["version"], q) for t, p, q in recorder.sent] == [
        ("$shadow/operation/result/ABCDE12345/a", 3, 0),
        ("$shadow/operation/result/ABCDE12345/b", 9, 0),
    ]


async def test_task_messages_go_to_each_devices_topic() -> None:
    recorder = Recorder()
    messenger = DeviceMessenger(recorder)
    await messenger.publish_to_devices("ABCDE12345", ["a", "b"], "control", b"on", 1)
    await messenger.publish_to_devices("ABCDE12345", [], "control", b"on", 1)  # nothing, not an empty publish
    assert recorder.sent == [("ABCDE12345/a/control", b"on", 1), ("ABCDE12345/b/control", b"on", 1)]


def test_the_delivery_view_is_what_the_broker_knows() -> None:
    view = DeviceMessenger(Recorder(subscribed=True)).delivery_view("ABCDE12345", "a", "ABCDE12345/a/control")
    assert (view.online, view.subscribed, view.offline_room) == (None, True, None)

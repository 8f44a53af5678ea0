"""Cloud-to-device messages in the device protocol's terms, over any broker's :class:`Publisher`.

The backend and the task engine say *what* to send (a delta after a desired write, a task's message to a set of
devices); this module knows *where* and *how* (docs/device-protocol.md#topics): ``{pid}/{dn}/{suffix}`` for messages,
``{prefix}/operation/result/{pid}/{dn}`` for deltas, and the delta payload (``shadow_protocol.DeltaPush``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import orjson

from fleetops.domain.shadow import JSONObject
from fleetops.messaging.shadow_protocol import DeltaPush, render_delta_push
from fleetops.messaging.topics import SHADOW_PREFIX, device_topic, shadow_result_topic, topic_matches
from fleetops.ports.messaging import (
    Delivery,
    DeliveryView,
    DeviceAcks,
    DeviceMessages,
    OfflineQueues,
    Publisher,
    RecordsPresence,
)

DELTA_QOS: Final = 0  # deltas are hints: the device reads desired with its next get (docs/device-protocol.md#delta)


class DeviceMessenger(DeviceMessages):
    """:class:`~fleetops.ports.messaging.DeviceMessages` on a broker's publisher."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def push_delta(
        self, prefix: str, product_id: str, device_name: str, version: int, state: JSONObject, now_ms: int
    ) -> None:
        topic = shadow_result_topic(product_id, device_name, prefix)
        # The embedded broker knows whether anyone listens; skipping saves encoding and a broker round trip.
        if self._publisher.subscribed(topic) is False:
            return
        await self._publisher.publish(topic, orjson.dumps(render_delta_push(version, state, now_ms)), DELTA_QOS)

    async def push_deltas(
        self, product_id: str, written: Sequence[tuple[str, int]], state: JSONObject, now_ms: int
    ) -> None:
        if not written:
            return
        push = DeltaPush(state, now_ms)
        prefix = shadow_result_topic(product_id, "", SHADOW_PREFIX)
        await self._publisher.publish_many(
            [(prefix + name, push.payload(version)) for name, version in written], DELTA_QOS
        )

    async def publish_to_devices(
        self, product_id: str, device_names: Sequence[str], suffix: str, payload: bytes, qos: int
    ) -> list[Delivery]:
        if not device_names:
            return []
        return await self._publisher.publish_many(
            [(device_topic(product_id, name, suffix), payload) for name in device_names], qos
        )

    async def publish_to_devices_acked(
        self,
        product_id: str,
        device_names: Sequence[str],
        suffix: str,
        payload: bytes,
        on_ack: Callable[[int], None],
    ) -> list[Delivery] | None:
        publisher = self._publisher
        if not isinstance(publisher, DeviceAcks):
            return None
        if not device_names:
            return []
        return await publisher.publish_many_acked(
            [(device_topic(product_id, name, suffix), payload) for name in device_names], on_ack
        )

    def is_online(self, product_id: str, device_name: str) -> bool | None:
        return self._publisher.online(product_id, device_name)

    def presence_recorded(self) -> bool:
        publisher = self._publisher
        return isinstance(publisher, RecordsPresence) and publisher.presence_recorded()

    def reaches(self, product_id: str, device_name: str, suffix: str, topic_filter: str) -> bool:
        return topic_matches(topic_filter, device_topic(product_id, device_name, suffix))

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self._publisher.publish(topic, payload, qos)

    def delivery_view(self, product_id: str, device_name: str, topic: str) -> DeliveryView:
        publisher = self._publisher
        room = publisher.offline_room(product_id, device_name, topic) if isinstance(publisher, OfflineQueues) else None
        return DeliveryView(publisher.online(product_id, device_name), publisher.subscribed(topic), room)

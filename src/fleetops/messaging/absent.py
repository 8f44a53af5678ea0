"""The MQTT side of a process that has none: an API worker (``fleetops serve --workers N``,
docs/deployment.md#api-worker-processes).

A worker answers only actions that read the database; every other request goes to the primary, which has the
broker. Its use cases are still built with something in the broker's place, and that is :class:`NoBroker`:
every method of every broker-facing port raises :class:`BrokerAbsent`, so an action answered by a worker that
reached the broker would fail loudly (an ``InternalError`` and a traceback in the log, in the tests) instead of
silently skipping a publish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NoReturn

from fleetops.domain.shadow import JSONObject
from fleetops.ports.messaging import Delivery, DeliveryView, Publisher


class BrokerAbsent(RuntimeError):
    """A broker-facing call in a process without a broker."""


class NoBroker:
    """:class:`~fleetops.ports.messaging.MessagingService`, ``DeviceMessages`` and ``DeviceSessions`` of a process
    without a broker: every call raises."""

    def __init__(self, process: str) -> None:
        self._process = process

    def _refuse(self, what: str) -> NoReturn:
        raise BrokerAbsent(f"{what}: {self._process} has no broker (this request should have gone to the primary)")

    # --- MessagingService and DeviceSessions ---

    @property
    def publisher(self) -> Publisher:
        self._refuse("publisher")

    async def start(self) -> None:
        self._refuse("start")

    async def stop(self) -> None:
        self._refuse("stop")

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        self._refuse("disconnect_device")

    # --- DeviceMessages ---

    async def push_delta(
        self, prefix: str, product_id: str, device_name: str, version: int, state: JSONObject, now_ms: int
    ) -> None:
        self._refuse("push_delta")

    async def push_deltas(
        self, product_id: str, written: Sequence[tuple[str, int]], state: JSONObject, now_ms: int
    ) -> None:
        self._refuse("push_deltas")

    async def publish_to_devices(
        self, product_id: str, device_names: Sequence[str], suffix: str, payload: bytes, qos: int
    ) -> list[Delivery]:
        self._refuse("publish_to_devices")

    async def publish_to_devices_acked(
        self,
        product_id: str,
        device_names: Sequence[str],
        suffix: str,
        payload: bytes,
        on_ack: Callable[[int], None],
    ) -> list[Delivery] | None:
        self._refuse("publish_to_devices_acked")

    def is_online(self, product_id: str, device_name: str) -> bool | None:
        self._refuse("is_online")

    def presence_recorded(self) -> bool:
        self._refuse("presence_recorded")

    def reaches(self, product_id: str, device_name: str, suffix: str, topic_filter: str) -> bool:
        self._refuse("reaches")

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        self._refuse("publish")

    def delivery_view(self, product_id: str, device_name: str, topic: str) -> DeliveryView:
        self._refuse("delivery_view")

"""The messaging side's interfaces: what it needs from the rest of fleetops, and what it offers.

Inbound (implemented elsewhere, called by messaging): the store implements :class:`DeviceDirectory`, the backend
implements :class:`DeviceShadows`. Outbound (implemented by messaging): the backend and the task engine reach
devices through :class:`DeviceMessages` (which knows the device protocol's topics and payloads) and close
sessions through :class:`DeviceSessions`; :class:`Publisher` is the broker's raw publishing under it; the node
starts and stops a :class:`MessagingService` (the embedded broker or the client of an external one). The
composition root (``fleetops.node``) wires them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Protocol, runtime_checkable

from fleetops.domain.shadow import DeviceUpdate, JSONObject, Shadow, UpdateResult


@dataclass(frozen=True)
class DeviceCredentials:
    """What the broker needs to authenticate a device."""

    product_id: str
    device_name: str
    # The Base64 text returned by CreateDevice (DevicePsk); the HMAC key is its decoded bytes.
    psk: str = field(repr=False)
    enabled: bool


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A device connected (``online``, from ``client_ip``) or its connection ended, at ``at_s`` (Unix s)."""

    product_id: str
    device_name: str
    online: bool
    client_ip: str | None
    at_s: int


class DeviceDirectory(Protocol):
    """Device credentials and online state, implemented by the store.

    The gateway asks in batches: the CONNECTs that arrive while a lookup runs are looked up together in the
    next one, and presence changes are written the same way (docs/mqtt.md#connects-in-batches).
    """

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        """The device's credentials, or None if the product or the device does not exist."""
        ...

    async def credentials_many(self, devices: Sequence[tuple[str, str]]) -> Mapping[tuple[str, str], DeviceCredentials]:
        """The credentials of every ``(product_id, device_name)`` that exists, in one query (per 1000)."""
        ...

    async def record_presence(self, changes: Sequence[PresenceChange]) -> None:
        """Apply connects and disconnects, given in the order they happened, in one transaction.

        The latest change of a device decides its ``Online``; an earlier connect still sets ``LoginTime`` and
        ``ClientIP``, an earlier disconnect ``LastOfflineTime``. Devices deleted meanwhile are ignored.
        """
        ...

    async def set_all_offline(self, now_s: int) -> int:
        """Mark every online device offline (a gateway that starts knows no connection yet); how many."""
        ...


class BrokerBoots(Protocol):
    """Which run of the external broker the devices' online state belongs to, implemented by the store.

    A broker with the Mosquitto plugin says in its welcome which run (``boot``) it is; a new boot lost every
    connection of the last one. The first node to see a boot marks every device offline before it takes device
    messages, in one transaction with recording the boot, so that the others (seeing it recorded) never undo the
    online changes already written for the new run (docs/mosquitto.md#presence-and-broker-restarts).
    """

    async def begin_boot(self, broker: str, boot: str, now_s: int) -> int | None:
        """Record ``boot`` as the current run of ``broker``; if it was not already, mark every online device
        offline at ``now_s`` in the same transaction and return how many; None if it was recorded before."""
        ...


class DeviceShadows(Protocol):
    """A device's own shadow requests, implemented by the backend (``backend/device_shadows.py``)."""

    async def device_get(self, product_id: str, device_name: str) -> Shadow:
        """The device's shadow; raises ``errors.DeviceNotExist`` for a product or device that is gone."""
        ...

    async def device_update(self, product_id: str, device_name: str, update: DeviceUpdate, now_ms: int) -> UpdateResult:
        """Apply the device's update with the store's compare-and-set; a refused update is a result, not an
        exception. Raises ``errors.DeviceNotExist``."""
        ...


@dataclass(frozen=True)
class DeliveryView:
    """What the broker knows of a device before a PublishMessage (None: it cannot tell)."""

    online: bool | None
    subscribed: bool | None
    offline_room: int | None  # room for a QoS 1 message in its persistent session; None: none keeps it


class DeviceMessages(Protocol):
    """Cloud-to-device messages in the device protocol's terms (topics and payloads are messaging's business)."""

    async def push_delta(
        self, prefix: str, product_id: str, device_name: str, version: int, state: JSONObject, now_ms: int
    ) -> None:
        """The ``delta`` push after UpdateDeviceShadow (QoS 0) on ``{prefix}/operation/result/{pid}/{dn}``."""
        ...

    async def push_deltas(
        self, product_id: str, written: Sequence[tuple[str, int]], state: JSONObject, now_ms: int
    ) -> None:
        """The delta pushes of one batch of an UpdateShadow task: ``written`` is (device name, new version)."""
        ...

    async def publish_to_devices(
        self, product_id: str, device_names: Sequence[str], suffix: str, payload: bytes, qos: int
    ) -> list[Delivery]:
        """``payload`` on ``{pid}/{dn}/{suffix}`` for every device named (a batch of a PublishMessage task); the
        :class:`Delivery` of each, in order."""
        ...

    async def publish_to_devices_acked(
        self,
        product_id: str,
        device_names: Sequence[str],
        suffix: str,
        payload: bytes,
        on_ack: Callable[[int], None],
    ) -> list[Delivery] | None:
        """``publish_to_devices`` with QoS 1 and ``on_ack(index)`` for each device's own PUBACK (``DeviceAcks``);
        None, having sent nothing, when the broker cannot tell the devices' acknowledgements."""
        ...

    def is_online(self, product_id: str, device_name: str) -> bool | None:
        """Whether the device is connected to this node's broker (None: it cannot tell)."""
        ...

    def presence_recorded(self) -> bool:
        """Whether the broker side keeps the devices' presence in the database (Mosquitto with the fleetops
        plugin, :class:`RecordsPresence`): an ``UNKNOWN`` delivery can then be told by the device's recorded
        ``Online``. False on the embedded broker (it tells each delivery itself) and on a broker without the
        plugin (nothing records presence there)."""
        ...

    def reaches(self, product_id: str, device_name: str, suffix: str, topic_filter: str) -> bool:
        """Whether a subscription to ``topic_filter`` takes the messages on ``{pid}/{dn}/{suffix}``."""
        ...

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """One message on a full topic (PublishMessage)."""
        ...

    def delivery_view(self, product_id: str, device_name: str, topic: str) -> DeliveryView: ...


class DeviceSessions(Protocol):
    """Closing a device's connection (disabled or deleted device)."""

    async def disconnect_device(self, product_id: str, device_name: str) -> bool: ...


class ShadowRequestHandler(Protocol):
    """Device shadow requests (``get`` / ``update``), implemented by the backend."""

    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        """The reply to publish (QoS 0) on ``$shadow/operation/result/{pid}/{dn}``, or None for no reply.

        Called for each PUBLISH of a device on its own ``$shadow/operation/{pid}/{dn}``; ``payload`` is the
        raw message. The requests of one device are handed over one at a time, in the order they arrived.
        """
        ...


class Delivery(IntEnum):
    """What became of one message of ``publish_many`` (the best outcome over its subscribers)."""

    DROPPED = 0  # nobody subscribes, or only offline sessions that keep nothing (QoS 0, full queue)
    SENT = 1  # written to a connected session subscribed to the topic
    QUEUED = 2  # kept in a persistent session's queue, sent when the device is back (or its replay goes on)
    UNKNOWN = 3  # handed to an external broker, which does not say


class Publisher(Protocol):
    """Cloud-to-device publishing (PublishMessage, delta pushes, batch tasks)."""

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """``publish_many([(topic, payload)], qos)``."""
        ...

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        """Publish every message with QoS 0 or 1; the :class:`Delivery` of each, in order.

        Returns only when the broker has taken every message: on an external broker, QoS 1 = every PUBACK
        received and QoS 0 = written to the socket; on the embedded broker, every message has been written to
        each connected subscriber's socket or queued in its persistent session (messages for topics nobody
        subscribes to are skipped, as MQTT routing would drop them). Raises
        :class:`fleetops.errors.BrokerUnavailable` when the broker cannot take them within the configured
        wait; nothing is dropped silently, so the caller can retry (QoS 1 is at least once: a retry may repeat
        some). An external broker's statuses are all ``UNKNOWN``.
        """
        ...

    def subscribed(self, topic: str) -> bool | None:
        """Whether a live or persistent session subscribes to ``topic`` (embedded); None if unknown."""
        ...

    def online(self, product_id: str, device_name: str) -> bool | None:
        """Whether the device is connected (embedded); None = unknown (external broker)."""
        ...


@runtime_checkable
class OfflineQueues(Protocol):
    """A publisher that keeps QoS 1 messages for offline persistent sessions and can say whether it will."""

    def offline_room(self, product_id: str, device_name: str, topic: str) -> int | None:
        """Room left in the device's offline queue for a QoS 1 message on ``topic``; None if none keeps it."""
        ...


@runtime_checkable
class RecordsPresence(Protocol):
    """A publisher whose broker records the devices' presence in the database (Mosquitto with the plugin)."""

    def presence_recorded(self) -> bool:
        """True while the broker is known to have the fleetops plugin (its welcome on the current connection)."""
        ...


@runtime_checkable
class DeviceAcks(Protocol):
    """A publisher that learns when the device itself acknowledged a QoS 1 message (the embedded gateway)."""

    async def publish_many_acked(
        self, messages: Sequence[tuple[str, bytes]], on_puback: Callable[[int], None]
    ) -> list[Delivery]:
        """``publish_many(messages, 1)``; ``on_puback(index)`` is called once for each message whose device
        sent its PUBACK - later for a ``QUEUED`` one, when the device is back; never for a message that was
        dropped or whose session expired. The callback runs in the event loop and must not block."""
        ...


class DeviceEvents(Protocol):
    """Told by the embedded gateway about devices' sessions (optional; the callbacks must not block)."""

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        """CONNACK 0 was sent (``session_present``: a persistent session was resumed)."""
        ...

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        """A subscription was granted (QoS 0 or 1)."""
        ...

    def device_disconnected(self, product_id: str, device_name: str) -> None:
        """The device's connection ended (not told for a connection taken over by a newer one)."""
        ...


class MessagingService(Protocol):
    """What ``fleetops serve`` starts and stops: the embedded broker or the client of an external broker."""

    @property
    def publisher(self) -> Publisher:
        """How the backend and the task engine publish (read-only, so each broker may return its own type)."""
        ...

    async def start(self) -> None:
        """Start serving; raises :class:`fleetops.errors.ConfigurationError` with a readable message on a bad
        configuration (port taken, broker refusing the credentials)."""
        ...

    async def stop(self) -> None:
        """Stop serving; idempotent."""
        ...

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        """Close the device's connection and drop its session (device disabled or deleted).

        True if a connection or session was closed; False if there was none or the broker cannot do it (an
        external broker: use its own management API).
        """
        ...

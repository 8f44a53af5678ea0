"""A fleetops node registered with the Mosquitto plugin: doing the device messages it is handed, acknowledging.

:class:`~fleetops.messaging.external.ExternalBroker` finds the plugin (hello / welcome), registers, and passes
every dispatched message here with the :class:`Registration` of the connection it came on
(docs/mosquitto.md#the-node-protocol):

* **shadow** requests go to the broker's per-device shadow workers (``submit_shadow``), which answer them on the
  device's result topic;
* **presence** changes are told to the :class:`~fleetops.ports.messaging.DeviceEvents` listener at once and
  written to the :class:`~fleetops.ports.messaging.DeviceDirectory` (``Online``, ``LoginTime``,
  ``LastOfflineTime``, ``ClientIP``) in batches, in arrival order, with the broker's time; a write that fails
  (the database is down) is retried until it succeeds, so an accepted change is never acknowledged unwritten;
* **subscribed** events are told to the listener (the task engine's late delivery).

Each kind is handed on in the order its messages arrived, so a device's messages of one kind are done in order
(the plugin sends a device's messages to one node at a time, in order). A message is acknowledged once it is
done: :class:`Registration` keeps the cumulative watermark and publishes it to ``$fleetops/ack/<id>``
``ack_interval_s`` after it first moves (by default at the end of the event loop's current round, which
coalesces what was done in it), or at once after ``ack_batch`` moves: the sooner a done message is
acknowledged, the fewer are done twice when a node is killed. A registration ends with its connection; what it
had not acknowledged is handed to another node by the plugin, and whatever this node was still doing for it is
finished but no longer acknowledged (delivery to nodes is at least once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fleetops.messaging.batching import Coalescer
from fleetops.messaging.events import tell
from fleetops.messaging.mqtt.codec import encode_publish
from fleetops.messaging.node_protocol import (
    AckWatermark,
    Dispatched,
    DispatchKind,
    NodeTopics,
    PresenceEvent,
    SubscriptionEvent,
)
from fleetops.messaging.topics import DeviceId
from fleetops.ports.messaging import DeviceDirectory, DeviceEvents, PresenceChange

log = logging.getLogger("fleetops.messaging.plugin")

ShadowSubmit = Callable[[DeviceId, bytes, Callable[[bytes], bool], Callable[[], None]], None]
"""Queue a device's shadow request for its worker: ``(device, request, write, done)``; the reply is written with
``write`` (the registration's connection), ``done`` runs once it is answered (or has failed)."""

_RETRY_FIRST_S: Final = 0.2
_RETRY_MAX_S: Final = 5.0


class Registration:
    """One registration of this node with the plugin (one MQTT connection): its acknowledgement watermark."""

    def __init__(
        self,
        topics: NodeTopics,
        write: Callable[[bytes], bool],
        *,
        ack_interval_s: float = 0.0,
        ack_batch: int = 100,
    ) -> None:
        """``write`` hands bytes to this registration's connection (False once it is gone)."""
        self._ack_topic = topics.ack.encode("utf-8")
        self.write = write
        self._ack_interval_s = ack_interval_s
        self._ack_batch = ack_batch
        self._watermark = AckWatermark()
        self._acked: int | None = None
        self._moves_since_ack = 0
        self._flush: asyncio.TimerHandle | None = None
        self.active = True

    @property
    def acknowledged(self) -> int | None:
        """The highest seq acknowledged to the plugin so far."""
        return self._acked

    def received(self, seq: int) -> bool:
        return self.active and self._watermark.received(seq)

    def done(self, seq: int) -> None:
        if not self.active:
            return  # the plugin has handed it to another node: acknowledging here would not count
        moved_to = self._watermark.done(seq)
        if moved_to is None:
            return
        self._moves_since_ack += 1
        if self._moves_since_ack >= self._ack_batch:
            self.flush()
        elif self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self._ack_interval_s, self.flush)

    def flush(self) -> None:
        """Publish the watermark now if it moved since the last acknowledgement (QoS 0: if the connection drops,
        the registration is over anyway)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        value = self._watermark.value
        if not self.active or value is None or value == self._acked:
            return
        if self.write(encode_publish(self._ack_topic, str(value).encode("ascii"))):
            self._acked = value
            self._moves_since_ack = 0

    def close(self) -> None:
        self.active = False
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None


@dataclass(frozen=True, slots=True)
class _PresenceWrite:
    change: PresenceChange
    registration: Registration


class PluginNode:
    """Does the dispatched device messages of every registration of this node (module docstring)."""

    def __init__(
        self,
        submit_shadow: ShadowSubmit,
        directory: DeviceDirectory | None,
        events: DeviceEvents | None,
        *,
        max_batch: int = 5000,
    ) -> None:
        """Without a ``directory`` presence is not recorded (only told to ``events``)."""
        self._submit_shadow = submit_shadow
        self._directory = directory
        self._events = events
        self._presence: Coalescer[_PresenceWrite, None] = Coalescer(
            self._write_presence, max_batch=max_batch, name="fleetops-plugin-presence"
        )
        self._stopping = asyncio.Event()
        self._failures_logged_at = -60.0

    def handle(self, message: Dispatched, registration: Registration) -> None:
        """Take one dispatched message (called in arrival order; must not block)."""
        if not registration.received(message.seq):
            log.warning("ignored a dispatched message whose seq %d does not increase", message.seq)
            return
        device = message.device
        if message.kind is DispatchKind.SHADOW:
            self._submit_shadow(device, message.payload, registration.write, lambda: registration.done(message.seq))
        elif message.kind is DispatchKind.PRESENCE:
            self._presence_changed(message, registration)
        else:
            subscription = SubscriptionEvent.parse(message.payload)
            if subscription is None:
                log.warning("ignored a malformed subscription event of %s", device.client_id)
            else:
                self._notify(
                    "device_subscribed",
                    device.product_id,
                    device.device_name,
                    subscription.topic_filter,
                    min(subscription.qos, 1),
                )
            registration.done(message.seq)

    def _presence_changed(self, message: Dispatched, registration: Registration) -> None:
        device = message.device
        presence = PresenceEvent.parse(message.payload)
        if presence is None:
            log.warning("ignored a malformed presence event of %s", device.client_id)
            registration.done(message.seq)
            return
        if presence.online:
            # The plugin does not say whether Mosquitto resumed a persistent session: "not resumed" makes a
            # listener deliver again rather than wait for a queue that may not exist (at least once).
            self._notify("device_connected", device.product_id, device.device_name, False)
        else:
            self._notify("device_disconnected", device.product_id, device.device_name)
        if self._directory is None:
            registration.done(message.seq)
            return
        change = PresenceChange(
            device.product_id,
            device.device_name,
            presence.online,
            presence.address if presence.online else None,
            presence.time_ms // 1000,  # the broker's clock: when the device connected or went away
        )
        written = self._presence.submit(_PresenceWrite(change, registration))
        written.add_done_callback(lambda _future: registration.done(message.seq))

    def _notify(self, event: str, *args: object) -> None:
        tell(self._events, event, *args)

    async def _write_presence(self, writes: list[_PresenceWrite]) -> list[None]:
        """One batch, retried until it is written: presence that was accepted is not dropped because the database
        is away for a while. Changes whose registration has ended are left to the node that has them now."""
        assert self._directory is not None
        delay_s = _RETRY_FIRST_S
        while not self._stopping.is_set():
            live = [write.change for write in writes if write.registration.active]
            if not live:
                break
            try:
                await self._directory.record_presence(live)
                break
            except Exception as exc:
                now = asyncio.get_running_loop().time()
                if now - self._failures_logged_at >= 10:
                    self._failures_logged_at = now
                    log.error("recording %d presence changes failed (retrying): %s", len(live), exc)
            try:
                await asyncio.wait_for(self._stopping.wait(), delay_s)
            except TimeoutError:
                delay_s = min(delay_s * 2, _RETRY_MAX_S)
        return [None] * len(writes)

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop retrying and wait (at most ``timeout_s``) for the write in progress."""
        self._stopping.set()
        try:
            await asyncio.wait_for(self._presence.wait_idle(), timeout_s)
        except TimeoutError:
            log.warning("stopping with presence changes not written")

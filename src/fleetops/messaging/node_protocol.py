"""The Mosquitto plugin's node protocol, version 1, as a fleetops node speaks it (pure: no I/O, no asyncio).

The plugin (``fleetops/mosquitto/``) hands every device message fleetops must handle to exactly one registered
node; the topics, the payloads and the acknowledgement rule are described in docs/mosquitto.md#the-node-protocol:

==============================================================  =========  ====================================
topic                                                           direction  payload
==============================================================  =========  ====================================
``$fleetops/hello/<id>``                                        to plugin  anything
``$fleetops/node/<id>/welcome``                                 to node    ``{"protocol":1,"boot":..,"window":..}``
SUBSCRIBE ``$fleetops/node/<id>/#``                             to plugin  registers the node as a handler
``$fleetops/node/<id>/<kind>/<seq>/<ProductId>/<DeviceName>``   to node    the device message
``$fleetops/ack/<id>``                                          to plugin  the decimal seq everything up to is done
==============================================================  =========  ====================================

``<kind>`` is ``shadow`` (the device's request, byte for byte), ``presence`` or ``subscribed`` (JSON).
:class:`AckWatermark` turns "this message is done" (in any order) into the cumulative acknowledgement.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import orjson

from fleetops.messaging.topics import DeviceId, is_valid_device_name, is_valid_product_id

PROTOCOL_VERSION: Final = 1
NODE_ID_MAX_BYTES: Final = 128  # the plugin's FO_HANDLER_ID_MAX: one topic level
SEQ_MAX: Final = 2**64 - 1


class DispatchKind(StrEnum):
    """The kinds of device messages the plugin dispatches (the topic level after the node id)."""

    SHADOW = "shadow"
    PRESENCE = "presence"
    SUBSCRIBED = "subscribed"


def node_id_problem(client_id: str) -> str | None:
    """Why ``client_id`` cannot register with the plugin, or None if it can."""
    if not client_id:
        return "it is empty"
    if len(client_id.encode("utf-8")) > NODE_ID_MAX_BYTES:
        return f"it is longer than {NODE_ID_MAX_BYTES} bytes"
    if any(char in client_id for char in "/+#"):
        return "it must be one topic level, without '/', '+' or '#'"
    return None


@dataclass(frozen=True)
class NodeTopics:
    """The topics of one node (its MQTT client id)."""

    client_id: str

    @property
    def hello(self) -> str:
        return f"$fleetops/hello/{self.client_id}"

    @property
    def prefix(self) -> str:
        return f"$fleetops/node/{self.client_id}/"

    @property
    def welcome(self) -> str:
        return self.prefix + "welcome"

    @property
    def registration(self) -> str:
        """The filter whose SUBSCRIBE registers the node as a handler."""
        return self.prefix + "#"

    @property
    def ack(self) -> str:
        return f"$fleetops/ack/{self.client_id}"


@dataclass(frozen=True, slots=True)
class Welcome:
    protocol: int
    boot: str  # changes when the broker restarts: everything the plugin held is gone then
    window: int  # messages the plugin sends to a node before it waits for an acknowledgement

    @classmethod
    def parse(cls, payload: bytes) -> Welcome | None:
        try:
            data = orjson.loads(payload)
            protocol, boot, window = data["protocol"], data["boot"], data["window"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if type(protocol) is not int or not isinstance(boot, str) or not boot or type(window) is not int:
            return None
        return cls(protocol, boot, window)


@dataclass(frozen=True, slots=True)
class Dispatched:
    """One device message handed to this node."""

    kind: DispatchKind
    seq: int
    device: DeviceId
    payload: bytes


def parse_dispatched(prefix: str, topic: str, payload: bytes) -> Dispatched | None:
    """``<prefix><kind>/<seq>/<ProductId>/<DeviceName>``; None for anything else (the welcome included)."""
    if not topic.startswith(prefix):
        return None
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 4:
        return None
    kind, seq_text, product_id, device_name = parts
    try:
        dispatch_kind = DispatchKind(kind)
    except ValueError:
        return None
    if not (seq_text.isascii() and seq_text.isdigit() and len(seq_text) <= 20):
        return None
    seq = int(seq_text)
    if seq > SEQ_MAX or not is_valid_product_id(product_id) or not is_valid_device_name(device_name):
        return None
    return Dispatched(dispatch_kind, seq, DeviceId(product_id, device_name), payload)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """``{"online":true,"address":"10.1.2.3","clean_session":true,"time_ms":...}`` (``online: false``: the
    device's current connection ended). ``time_ms`` is the broker's clock."""

    online: bool
    address: str | None
    clean_session: bool
    time_ms: int

    @classmethod
    def parse(cls, payload: bytes) -> PresenceEvent | None:
        try:
            data = orjson.loads(payload)
            online, time_ms = data["online"], data["time_ms"]
            address, clean_session = data.get("address"), data.get("clean_session", True)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return None
        if not isinstance(online, bool) or type(time_ms) is not int or time_ms < 0:
            return None
        if address is not None and not isinstance(address, str):
            return None
        return cls(online, address or None, bool(clean_session), time_ms)


@dataclass(frozen=True, slots=True)
class SubscriptionEvent:
    """``{"filter":"ABCDE12345/lamp01/control","qos":1,"time_ms":...}``: a SUBSCRIBE the ACL granted."""

    topic_filter: str
    qos: int
    time_ms: int

    @classmethod
    def parse(cls, payload: bytes) -> SubscriptionEvent | None:
        try:
            data = orjson.loads(payload)
            topic_filter, qos, time_ms = data["filter"], data["qos"], data["time_ms"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(topic_filter, str) or not topic_filter or qos not in (0, 1, 2) or type(time_ms) is not int:
            return None
        return cls(topic_filter, qos, time_ms)


class AckWatermark:
    """The cumulative acknowledgement of one registration: the highest seq up to which every message received is
    done. Messages arrive in increasing seq order and may be done in any order (the devices are handled in
    parallel); acknowledging seq ``S`` releases everything up to ``S`` at the plugin, so ``S`` may only move past
    a message once it is done."""

    def __init__(self) -> None:
        self._open: deque[int] = deque()  # received and not yet covered by the watermark, in arrival order
        self._pending: set[int] = set()  # the subset of _open that is not done yet
        self.value: int | None = None  # the highest seq that may be acknowledged

    def __len__(self) -> int:
        """Messages received and not yet covered by :attr:`value`."""
        return len(self._open)

    def received(self, seq: int) -> bool:
        """Track a message; False (ignored) if its seq does not increase, which the plugin never sends."""
        last = self._open[-1] if self._open else self.value
        if last is not None and seq <= last:
            return False
        self._open.append(seq)
        self._pending.add(seq)
        return True

    def done(self, seq: int) -> int | None:
        """Mark a tracked message done; the new :attr:`value` if it moved, else None."""
        if seq not in self._pending:
            return None  # not tracked, or done already
        self._pending.remove(seq)
        moved = False
        while self._open and self._open[0] not in self._pending:
            self.value = self._open.popleft()
            moved = True
        return self.value if moved else None

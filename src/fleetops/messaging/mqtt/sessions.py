"""Sessions of the gateway and the subscription index that routes messages to them (no I/O).

A session outlives its connections when the device connected with CleanSession 0: it keeps its subscriptions
and a queue of QoS 1 messages (docs/mqtt.md#cloud-to-device). Routing looks a topic up in a dict of exact
filters and in the wildcard filters that share its literal prefix, so a message costs a few dict lookups
however many devices are subscribed.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleetops.messaging.mqtt.codec import PacketIds
from fleetops.messaging.topics import DeviceId, topic_matches, wildcard_prefix

if TYPE_CHECKING:
    from fleetops.messaging.mqtt.gateway import DeviceConnection


@dataclass(slots=True)
class Outgoing:
    """A QoS 1 message for a device: queued, or in flight awaiting its PUBACK."""

    topic: str
    payload: bytes
    on_puback: Callable[[], None] | None = None
    queued_at: float = field(default_factory=time.monotonic)
    sent_at: float = 0.0


@dataclass(eq=False, slots=True)
class Session:
    """One client id's state; identity-compared (a resumed session is the same object)."""

    client_id: str
    device: DeviceId
    clean: bool
    connection: DeviceConnection | None = None
    subscriptions: dict[str, int] = field(default_factory=dict)  # filter -> granted QoS
    queue: deque[Outgoing] = field(default_factory=deque)  # QoS 1 waiting to be sent, oldest first
    in_flight: dict[int, Outgoing] = field(default_factory=dict)  # packet id -> message, in send order
    packet_ids: PacketIds = field(default_factory=PacketIds)
    disconnected_at: float = 0.0  # monotonic; for the expiry of an offline persistent session
    replaying: bool = False

    @property
    def connected(self) -> bool:
        return self.connection is not None and self.connection.ready


class SubscriptionIndex:
    """Who subscribes to what: exact filters by name, wildcard filters by their literal prefix."""

    def __init__(self) -> None:
        self._by_filter: dict[str, dict[Session, int]] = {}
        self._wildcards_by_prefix: dict[str, set[str]] = {}

    def add(self, session: Session, topic_filter: str, granted_qos: int) -> None:
        """Subscribe (a repeated filter replaces the earlier subscription, MQTT-3.8.4-3)."""
        subscribers = self._by_filter.get(topic_filter)
        if subscribers is None:
            subscribers = self._by_filter[topic_filter] = {}
            prefix = wildcard_prefix(topic_filter)
            if prefix is not None:
                self._wildcards_by_prefix.setdefault(prefix, set()).add(topic_filter)
        subscribers[session] = granted_qos
        session.subscriptions[topic_filter] = granted_qos

    def remove(self, session: Session, topic_filter: str) -> None:
        session.subscriptions.pop(topic_filter, None)
        subscribers = self._by_filter.get(topic_filter)
        if subscribers is None:
            return
        subscribers.pop(session, None)
        if subscribers:
            return
        del self._by_filter[topic_filter]
        prefix = wildcard_prefix(topic_filter)
        if prefix is not None:
            filters = self._wildcards_by_prefix.get(prefix)
            if filters is not None:
                filters.discard(topic_filter)
                if not filters:
                    del self._wildcards_by_prefix[prefix]

    def remove_all(self, session: Session) -> None:
        for topic_filter in list(session.subscriptions):
            self.remove(session, topic_filter)

    def _wildcard_candidates(self, topic: str) -> Iterator[str]:
        levels = topic.split("/")
        for count in range(len(levels) + 1):
            filters = self._wildcards_by_prefix.get("/".join(levels[:count]))
            if filters:
                yield from filters

    def matching(self, topic: str) -> list[tuple[Session, int]]:
        """``(session, granted QoS)`` of every subscription matching ``topic``: one per session, its highest."""
        exact = self._by_filter.get(topic)
        if not self._wildcards_by_prefix:
            return list(exact.items()) if exact else []
        found: dict[Session, int] = dict(exact) if exact else {}
        for topic_filter in self._wildcard_candidates(topic):
            if topic_matches(topic_filter, topic):
                for session, qos in self._by_filter[topic_filter].items():
                    if qos > found.get(session, -1):
                        found[session] = qos
        return list(found.items())

    def clear(self) -> None:
        self._by_filter.clear()
        self._wildcards_by_prefix.clear()

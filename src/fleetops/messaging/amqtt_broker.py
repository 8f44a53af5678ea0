"""The embedded broker: amqtt 0.12.1 with the device protocol's connection lifecycle and routing.

amqtt supplies the listener, the packet codecs, the per-connection protocol handler (QoS flows, reader loop),
sessions and the session-expiry monitor. Authentication and the ACL are amqtt plugins
(:class:`DeviceAuthPlugin`, :class:`DeviceAclPlugin`) built on the pure functions of ``device_auth`` and
``topics``. The following amqtt 0.12.1 behaviours are replaced by overriding private methods of
``amqtt.broker.Broker`` (the version is pinned; each override names what it fixes):

* CONNECT: amqtt answers every refused authentication with CONNACK 5; the device protocol needs 2/4/5
  (``device_auth``). amqtt also drops the existing session of a client id *before* authenticating, so a
  CONNECT with a wrong password could wipe a connected device's subscriptions; here nothing is touched
  until the credentials are checked. MQTT 3.1 (``MQIsdp``, level 3) is accepted as the vendor accepts it.
* Take-over: with a clean session amqtt left the older connection open but detached from its session; here
  the older connection is closed (MQTT-3.1.4-2) and does not mark the device offline when it goes.
* Keep-alive: amqtt never closes a silent connection; here 1.5 x keep-alive of silence closes it.
* PUBLISH: amqtt closes the connection of a device publishing to a ``$`` topic, which every shadow request
  is; here the ACL decides, ``$shadow/operation/{pid}/{dn}`` goes to the shadow handler, QoS 2 closes the
  connection, payloads over 16 KB and retained flags are handled per device-protocol §4.2, wills are never
  published.
* Routing: amqtt matches every message against every subscription (O(subscriptions) per message, the
  1-2k msg/s of perf-notes); here exact filters are a dict lookup and wildcard filters are indexed by their
  literal prefix. Delivered QoS is min(published, granted), granted QoS is at most 1.
* Cloud-to-device QoS 1: amqtt registers the PUBACK waiter after writing the PUBLISH, so a quick PUBACK is
  discarded and the delivery times out; here the waiter comes first, and PUBACKs are awaited by callbacks
  (no task per message), at most ``max_qos1_in_flight`` at a time.
* Persistent sessions: QoS 1 messages for an offline persistent session are queued (at most 150, kept 24 h,
  replayed one per ``offline_replay_interval_s`` after reconnect); amqtt's own queue was unbounded and lost
  the in-flight message when a connection dropped before its PUBACK.
* Two races of amqtt's protocol handler that left a connection task hanging forever: stop() right after
  start() (a take-over just after CONNACK), and a connection that ends while start() runs.
* Simultaneous CONNECTs of one client id are serialized, so that exactly one of them stays registered.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, CodecError, MQTTError, NoDataError
from amqtt.mqtt.connack import ConnackPacket
from amqtt.mqtt.connect import ConnectPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import OutgoingApplicationMessage, Session

from fleetops.messaging.device_auth import ConnackCode, ConnectDecision
from fleetops.messaging.gate import DeviceGate
from fleetops.messaging.topics import (
    DeviceId,
    is_valid_topic_filter,
    may_publish,
    may_subscribe,
    parse_shadow_request_topic,
    shadow_result_topic,
    split_client_id,
    topic_matches,
    wildcard_prefix,
)
from fleetops.messaging.wire import encode_publish
from fleetops.ports.messaging import DeviceDirectory, ShadowRequestHandler

log = logging.getLogger("fleetops.messaging.broker")

# Keys of amqtt's Session.attributes (namespaced, as amqtt asks).
_DECISION: Final = "fleetops.decision"
_DEVICE: Final = "fleetops.device"
_FILTERS: Final = "fleetops.filters"
_OFFLINE: Final = "fleetops.offline"

_PROTOCOLS: Final = {("MQTT", 4), ("MQIsdp", 3)}  # MQTT 3.1.1 and 3.1 (device-protocol §1)
_SUBACK_FAILURE: Final = 0x80
_CONNECTED: Final = "connected"


@dataclass
class BrokerOptions:
    """Limits of the embedded broker (device-protocol §4); the defaults are the vendor's."""

    max_payload_bytes: int = 16 * 1024
    max_offline_messages: int = 150
    offline_message_ttl_s: float = 24 * 3600
    offline_replay_interval_s: float = 0.5
    session_expiry_s: int = 24 * 3600
    connect_timeout_s: float = 10.0
    max_qos1_in_flight: int = 10_000  # cloud-to-device QoS 1 deliveries awaiting a PUBACK, all devices
    qos1_ack_timeout_s: float = 30.0  # then the delivery counts as failed (queued again if persistent)
    shutdown_grace_s: float = 2.0  # for unacknowledged QoS 1 deliveries when the broker stops


@dataclass
class _ClientLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass(frozen=True)
class _Queued:
    topic: str
    data: bytes
    queued_at: float = field(default_factory=time.monotonic)


class DeviceAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt authentication plugin: key authentication of IoT Hub devices (``device_auth``).

    The decision (with its CONNACK code) is left in the session for the broker, which sends the code.
    """

    @dataclass
    class Config:
        gate: Any = None  # a DeviceGate; amqtt builds Config from the broker configuration dict

    async def authenticate(self, *, session: Session) -> bool:
        gate: DeviceGate = self.config.gate
        decision = await gate.decide(session.client_id or "", session.username, session.password, session.keep_alive)
        session.attributes[_DECISION] = decision
        return decision.accepted


class DeviceAclPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt is untyped
    """amqtt topic plugin: the device ACL of ``topics`` (own ids only)."""

    @dataclass
    class Config:
        pass

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if action == Action.RECEIVE:
            return True  # the subscription was checked when it was made
        device: DeviceId | None = session.attributes.get(_DEVICE) if session is not None else None
        if device is None or not topic:
            return False
        if action == Action.PUBLISH:
            return may_publish(device, topic)
        return may_subscribe(device, topic)


class _DeviceConnection(BrokerProtocolHandler):  # type: ignore[misc]  # amqtt is untyped
    async def stop(self) -> None:
        # amqtt's stop() cancels the reader task and waits for the reader to report that it stopped, and
        # start() waits for it to report that it is ready; a task cancelled before its first step reports
        # neither, and both hang (a take-over right after the older connection's CONNACK). The task's own
        # completion reports both here.
        task = self._reader_task
        if task is not None and not task.done():
            stopped, ready = self._reader_stopped, self._reader_ready
            task.add_done_callback(lambda _task: (stopped.set(), ready.set() if ready is not None else None))
        await super().stop()

    @property
    def ended(self) -> bool:
        """The connection's reader has finished (the connection is over)."""
        return self._reader_task is None or bool(self._reader_task.done())

    def handle_read_timeout(self) -> None:
        # The reader waits session.keep_alive (1.5 x the client's keep-alive) for the next packet; amqtt's
        # broker ignores the timeout. Cancelling the reader closes the connection like an EOF would.
        if self._reader_task is not None:
            self._reader_task.cancel()


class _WildcardIndex:
    """Wildcard filters by the literal levels before their first wildcard."""

    def __init__(self) -> None:
        self._by_prefix: dict[str, set[str]] = {}

    def add(self, topic_filter: str) -> None:
        prefix = wildcard_prefix(topic_filter)
        if prefix is not None:
            self._by_prefix.setdefault(prefix, set()).add(topic_filter)

    def discard(self, topic_filter: str) -> None:
        prefix = wildcard_prefix(topic_filter)
        if prefix is None:
            return
        filters = self._by_prefix.get(prefix)
        if filters is not None:
            filters.discard(topic_filter)
            if not filters:
                del self._by_prefix[prefix]

    def candidates(self, topic: str) -> Iterator[str]:
        if not self._by_prefix:
            return
        levels = topic.split("/")
        for count in range(len(levels) + 1):
            filters = self._by_prefix.get("/".join(levels[:count]))
            if filters:
                yield from filters

    def clear(self) -> None:
        self._by_prefix.clear()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no PUBACK"))


def _is_connected(session: Session) -> bool:
    return bool(session.transitions.state == _CONNECTED)


class FleetopsBroker(Broker):  # type: ignore[misc]  # amqtt is untyped
    """amqtt's broker with the device protocol (module docstring). Build it inside the running loop."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        directory: DeviceDirectory,
        shadow_handler: ShadowRequestHandler,
        clock: Callable[[], float] = time.time,
        options: BrokerOptions | None = None,
    ) -> None:
        self.options = options or BrokerOptions()
        self._gate = DeviceGate(directory, clock)
        self._directory = directory
        self._shadow_handler = shadow_handler
        self._clock = clock
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "session_expiry_interval": self.options.session_expiry_s,
            # Listing the plugins replaces amqtt's defaults (anonymous auth, $SYS, packet logging).
            "plugins": {
                f"{__name__}.DeviceAuthPlugin": {"gate": self._gate},
                f"{__name__}.DeviceAclPlugin": {},
            },
        }
        super().__init__(config)
        self._wildcards = _WildcardIndex()
        self._superseded: weakref.WeakSet[BrokerProtocolHandler] = weakref.WeakSet()
        self._client_locks: dict[str, _ClientLock] = {}
        self._connections: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._qos1_slots = asyncio.Semaphore(self.options.max_qos1_in_flight)
        self._qos1_in_flight = 0
        self._qos1_idle = asyncio.Event()
        self._qos1_idle.set()

    # --- what the embedded service uses --------------------------------------------------------------

    @property
    def bound_port(self) -> int:
        server = self._servers["default"].instance
        return int(server.sockets[0].getsockname()[1])

    @property
    def connection_tasks(self) -> frozenset[asyncio.Task[Any]]:
        """One task per open network connection (authenticated or not yet)."""
        return frozenset(self._connections)

    def matching(self, topic: str) -> list[tuple[Session, int]]:
        """The (session, granted QoS) of every subscription matching ``topic``, one per session."""
        found: list[tuple[Session, int]] = list(self._subscriptions.get(topic, ()))
        for topic_filter in self._wildcards.candidates(topic):
            if topic_matches(topic_filter, topic):
                found.extend(self._subscriptions.get(topic_filter, ()))
        if len(found) > 1:  # overlapping subscriptions of one session: one copy, at the highest QoS
            best: dict[str, tuple[Session, int]] = {}
            for session, qos in found:
                known = best.get(session.client_id)
                if known is None or qos > known[1]:
                    best[session.client_id] = (session, qos)
            found = list(best.values())
        return found

    def subscribed(self, topic: str) -> bool:
        """Whether a connected session or a persistent one subscribes to ``topic``."""
        return any(_is_connected(session) or not session.clean_session for session, _ in self.matching(topic))

    def offline_room(self, client_id: str, topic: str) -> int | None:
        """Room left in the offline queue of ``client_id``'s persistent session for a QoS 1 message on ``topic``.

        None when no persistent session of that client subscribes to the topic with QoS 1 (a message would not
        be kept for it); 0 when its queue is full.
        """
        for session, granted in self.matching(topic):
            if session.client_id == client_id and not session.clean_session and granted >= 1:
                queued = session.attributes.get(_OFFLINE) or ()
                return max(0, self.options.max_offline_messages - len(queued))
        return None

    def online(self, client_id: str) -> bool:
        entry = self._sessions.get(client_id)
        return entry is not None and _is_connected(entry[0])

    async def route(self, topic: str, data: bytes, qos: int) -> None:
        """Deliver one message to every matching session (MQTT semantics, persistent sessions included)."""
        targets = self.matching(topic)
        if not targets:
            return
        packet: bytes | None = None
        for session, granted in targets:
            delivered_qos = min(qos, granted)
            entry = self._sessions.get(session.client_id)
            if entry is not None and entry[0] is session and _is_connected(session):
                handler = entry[1]
                if delivered_qos == 0:
                    if packet is None:
                        packet = encode_publish(topic.encode("utf-8"), data)
                    await self._write(handler, packet)
                else:
                    await self._start_qos1(session, handler, topic, data)
            elif delivered_qos and not session.clean_session:
                self._queue_offline(session, topic, data)

    async def disconnect_client(self, client_id: str) -> bool:
        """Close the client's connection and delete its session (device disabled or deleted)."""
        entry = self._sessions.get(client_id)
        if entry is None:
            return False
        session, handler = entry
        await self._delete_session(client_id)
        if _is_connected(session):
            await self._close(handler)
        return True

    async def close_all_connections(self, timeout_s: float = 5.0) -> None:
        """Close every connection and wait for each to be recorded offline (before ``shutdown``).

        QoS 1 deliveries get up to ``shutdown_grace_s`` for their PUBACK first.
        """
        try:
            await asyncio.wait_for(self._qos1_idle.wait(), self.options.shutdown_grace_s)
        except TimeoutError:
            log.info("closing with %d QoS 1 deliveries unacknowledged", self._qos1_in_flight)
        for _session, handler in list(self._sessions.values()):
            await self._close(handler)
        pending = [task for task in self._connections if task is not asyncio.current_task()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)

    # --- connection lifecycle (overrides) ------------------------------------------------------------

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            await super()._client_connected(listener_name, reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        """Read CONNECT, authenticate, then (only if accepted) take over or resume the client's session."""
        try:
            connect = await asyncio.wait_for(ConnectPacket.from_stream(reader), self.options.connect_timeout_s)
        except (AMQTTError, MQTTError, NoDataError, CodecError, ValueError, TimeoutError) as exc:
            await writer.close()
            raise AMQTTError(f"{remote_address}:{remote_port}: no valid CONNECT ({exc!r})") from exc
        if connect.variable_header is None or connect.payload is None or connect.reserved_flag:
            await writer.close()
            raise MQTTError(f"{remote_address}:{remote_port}: malformed CONNECT")
        if (connect.proto_name, connect.proto_level) not in _PROTOCOLS:
            await self._refuse(writer, ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION)
            raise MQTTError(f"{remote_address}:{remote_port}: protocol {connect.proto_name} {connect.proto_level}")
        if connect.password_flag and not connect.username_flag:  # MQTT-3.1.2-22
            await self._refuse(writer, ConnackCode.BAD_USERNAME_OR_PASSWORD)
            raise MQTTError(f"{remote_address}:{remote_port}: password without user name")

        session = Session()
        session.client_id = connect.client_id
        session.clean_session = connect.clean_session_flag
        session.username = connect.username
        session.password = connect.password
        session.remote_address = remote_address
        session.remote_port = remote_port
        session.keep_alive = connect.keep_alive
        try:
            accepted = await self._authenticate(session, None)
            decision = session.attributes.get(_DECISION)
        except Exception:  # the directory failed: tell the device to retry later
            log.exception("authentication of %s failed", connect.client_id)
            accepted, decision = False, ConnectDecision(ConnackCode.SERVER_UNAVAILABLE, "directory error")
        if not accepted:
            code = decision.code if decision is not None else ConnackCode.NOT_AUTHORIZED
            reason = decision.reason if decision is not None else "refused"
            await self._refuse(writer, code)
            log.info("refused %s from %s: %s (CONNACK %d)", connect.client_id, remote_address, reason, code)
            raise MQTTError(f"{connect.client_id}: {reason}")

        client_id: str = session.client_id
        session.attributes[_DEVICE] = split_client_id(client_id)
        # Wills are not part of the device protocol (§4.2): accepted, never published.
        session.will_flag = False
        keepalive = connect.keep_alive
        session.keep_alive = keepalive + (keepalive + 1) // 2 if keepalive > 0 else 0
        handler = _DeviceConnection(self.plugins_manager, loop=self._loop)
        # Two CONNECTs of one client id at once must not both end up registered: one section at a time.
        lock = self._client_locks.setdefault(client_id, _ClientLock())
        lock.users += 1
        try:
            async with lock.lock:
                session = await self._take_over(session, handler)
                if _is_connected(session):  # resumed while the superseded connection is still winding down
                    session.transitions.disconnect()
                session.transitions.connect()
                handler.attach(session, reader, writer)
                self._sessions[client_id] = (session, handler)
        finally:
            lock.users -= 1
            if not lock.users:
                del self._client_locks[client_id]
        return handler, session

    async def _take_over(self, session: Session, handler: Any) -> Session:
        """Close the client id's older connection; the session to use (a resumed one, or ``session``)."""
        client_id: str = session.client_id
        existing = self._sessions.get(client_id)
        if existing is not None and _is_connected(existing[0]):
            self._superseded.add(existing[1])  # its end must not mark the device offline
            log.info("%s connected again from %s: closing the older connection", client_id, session.remote_address)
            await self._close(existing[1])
        if session.clean_session or existing is None:
            await self._delete_session(client_id)
            session.parent = 0
            return session
        resumed: Session = existing[0]
        resumed.keep_alive = session.keep_alive
        resumed.username = session.username
        resumed.password = session.password
        resumed.will_flag = False
        resumed.remote_address = session.remote_address
        resumed.remote_port = session.remote_port
        resumed.attributes[_DEVICE] = session.attributes[_DEVICE]
        resumed.parent = 1  # CONNACK session-present
        return resumed

    async def _handle_client_session(
        self, reader: Any, writer: Any, session: Session, handler: Any, server: Any, listener_name: str
    ) -> None:
        """The connection is registered (``_initialize_client_session``): CONNACK, then its message loop."""
        try:
            # Online first: once a device holds its CONNACK, DescribeDevice shows it online.
            await self._set_online(session, online=True)
            await handler.mqtt_connack_authorize(True)
            await handler.start()
            if handler.ended:
                # Closed while starting: amqtt's start() then replaces the disconnect signal the reader gave,
                # and its message loop would wait for it forever.
                await self._handle_disconnect(session, handler, None)
                return
            if session.attributes.get(_OFFLINE):
                self._spawn(self._replay_offline(session, handler))
            await self._client_message_loop(session, handler)
        except Exception:  # amqtt would leave the session registered as connected
            log.exception("connection of %s failed", session.client_id)
            await self._close(handler)
            await self._handle_disconnect(session, handler, None)

    async def _handle_disconnect(self, client_session: Session, handler: Any, disconnect_waiter: Any) -> None:
        await self._stop_handler(handler)
        if handler in self._superseded:
            return  # a newer connection of this client id owns the session now
        client_id: str = client_session.client_id
        current = self._sessions.get(client_id)
        if current is not None and current[1] is handler:
            client_session.transitions.disconnect()
            if client_session.clean_session:
                await self._cleanup_session(client_id)
        await self._set_online(client_session, online=False)

    async def _handle_message_delivery(self, client_session: Session, handler: Any, wait_deliver: Any) -> bool:
        """A PUBLISH from a device. (amqtt's loop stops on False without closing anything: never returned.)"""
        message = wait_deliver.result()
        if message is None:
            return True
        topic: str = message.topic
        client_id = client_session.client_id
        if not topic or "+" in topic or "#" in topic:  # MQTT-3.3.2-2
            log.info("%s published to an invalid topic %r: closing", client_id, topic)
            await self._close(handler)  # returning False would leave amqtt's connection open
            return True
        if message.qos == 2:  # device-protocol §4.2: QoS 2 is not supported
            log.info("%s published with QoS 2: closing", client_id)
            await self._close(handler)
            return True
        data = bytes(message.data)
        if len(data) > self.options.max_payload_bytes:
            log.info(
                "%s: dropped a %d-byte message on %s (limit %d)",
                client_id,
                len(data),
                topic,
                self.options.max_payload_bytes,
            )
            return True
        if not await self._topic_filtering(client_session, topic, Action.PUBLISH):
            log.info("%s may not publish to %s: dropped", client_id, topic)
            return True
        device = parse_shadow_request_topic(topic)
        if device is not None:
            await self._shadow_request(device, data)
        else:
            await self.route(topic, data, message.qos)  # the retain flag is ignored: nothing is retained
        return True

    # --- subscriptions (overrides keeping the wildcard index and each session's filters) -------------

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        topic_filter, qos = subscription
        if not is_valid_topic_filter(topic_filter):
            return _SUBACK_FAILURE
        if not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
            log.info("%s may not subscribe to %s", session.client_id, topic_filter)
            return _SUBACK_FAILURE
        granted = min(qos, 1)  # QoS 2 is granted as 1 (device-protocol §4.2)
        subscribers = self._subscriptions.setdefault(topic_filter, [])
        for index, (subscriber, _) in enumerate(subscribers):
            if subscriber.client_id == session.client_id:
                subscribers[index] = (session, granted)  # MQTT-3.8.4-3: a repeated filter replaces
                break
        else:
            subscribers.append((session, granted))
        self._wildcards.add(topic_filter)
        session.attributes.setdefault(_FILTERS, set()).add(topic_filter)
        return granted

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        deleted: int = super()._del_subscription(a_filter, session)
        if a_filter in self._subscriptions and not self._subscriptions[a_filter]:
            del self._subscriptions[a_filter]
            self._wildcards.discard(a_filter)
        filters: set[str] | None = session.attributes.get(_FILTERS)
        if filters is not None:
            filters.discard(a_filter)
        return deleted

    async def _del_all_subscriptions(self, session: Session) -> None:
        filters: set[str] | None = session.attributes.get(_FILTERS)
        for topic_filter in list(filters) if filters is not None else list(self._subscriptions):
            self._del_subscription(topic_filter, session)

    async def start(self) -> None:
        self._wildcards.clear()
        await super().start()

    # --- helpers ---------------------------------------------------------------------------------------

    @staticmethod
    async def _refuse(writer: Any, code: ConnackCode) -> None:
        try:
            await ConnackPacket.build(0, int(code)).to_stream(writer)
        except OSError:
            pass
        await writer.close()

    @staticmethod
    async def _close(handler: Any) -> None:
        await handler.handle_connection_closed()
        await handler.stop()

    @staticmethod
    async def _write(handler: Any, packet: bytes) -> None:
        writer = handler.writer
        if writer is None:
            return
        try:
            writer.write(packet)
            await writer.drain()  # back-pressure from a slow device
        except (ConnectionError, OSError):
            pass  # the connection's reader notices and ends the session

    async def _start_qos1(self, session: Session, handler: Any, topic: str, data: bytes) -> None:
        """Write a QoS 1 PUBLISH; its PUBACK is awaited by callbacks, without a task per message.

        amqtt's own ``mqtt_publish`` registers the PUBACK waiter only after writing the PUBLISH, so a device
        that answers quickly has its PUBACK discarded ("unknown pending message") and the delivery times out;
        here the waiter exists before the write.
        """
        await self._qos1_slots.acquire()
        try:
            packet_id: int = session.next_packet_id
        except AMQTTError:  # 65535 messages in flight to this session
            self._qos1_slots.release()
            self._qos1_failed(session, topic, data)
            return
        waiter: asyncio.Future[Any] = self._loop.create_future()
        handler._puback_waiters[packet_id] = waiter  # resolved by amqtt's handle_puback
        self._qos1_in_flight += 1
        self._qos1_idle.clear()
        session.inflight_out[packet_id] = OutgoingApplicationMessage(packet_id, topic, 1, data, False)
        timer = self._loop.call_later(self.options.qos1_ack_timeout_s, _expire, waiter)
        waiter.add_done_callback(functools.partial(self._qos1_settled, session, handler, packet_id, topic, data, timer))
        await self._write(handler, encode_publish(topic.encode("utf-8"), data, 1, packet_id))

    def _qos1_settled(
        self,
        session: Session,
        handler: Any,
        packet_id: int,
        topic: str,
        data: bytes,
        timer: asyncio.TimerHandle,
        waiter: asyncio.Future[Any],
    ) -> None:
        timer.cancel()
        if handler._puback_waiters.get(packet_id) is waiter:
            del handler._puback_waiters[packet_id]
        session.inflight_out.pop(packet_id, None)
        self._qos1_slots.release()
        self._qos1_in_flight -= 1
        if not self._qos1_in_flight:
            self._qos1_idle.set()
        # cancelled: the connection closed (amqtt cancels the waiters); an exception: no PUBACK in time
        if waiter.cancelled() or waiter.exception() is not None:
            self._qos1_failed(session, topic, data)

    def _qos1_failed(self, session: Session, topic: str, data: bytes) -> None:
        log.debug("QoS 1 delivery to %s on %s failed", session.client_id, topic)
        if not session.clean_session:
            self._queue_offline(session, topic, data)  # for the next connection

    def _queue_offline(self, session: Session, topic: str, data: bytes) -> None:
        queue: deque[_Queued] = session.attributes.setdefault(_OFFLINE, deque())
        if len(queue) >= self.options.max_offline_messages:
            log.debug("offline queue of %s is full: dropped a message on %s", session.client_id, topic)
            return
        queue.append(_Queued(topic, data))

    async def _replay_offline(self, session: Session, handler: Any) -> None:
        queue: deque[_Queued] = session.attributes.get(_OFFLINE) or deque()
        client_id = session.client_id
        while queue:
            current = self._sessions.get(client_id)
            if current is None or current[1] is not handler or not _is_connected(session):
                return  # the next connection replays the rest
            item = queue.popleft()
            if time.monotonic() - item.queued_at > self.options.offline_message_ttl_s:
                continue
            await self._start_qos1(session, handler, item.topic, item.data)
            if queue and self.options.offline_replay_interval_s > 0:
                await asyncio.sleep(self.options.offline_replay_interval_s)

    async def _shadow_request(self, device: DeviceId, data: bytes) -> None:
        try:
            reply = await self._shadow_handler.handle_shadow_request(device.product_id, device.device_name, data)
        except Exception:
            log.exception("shadow request of %s failed", device.client_id)
            return
        if reply is not None:
            await self.route(shadow_result_topic(device.product_id, device.device_name), reply, 0)

    async def _set_online(self, session: Session, *, online: bool) -> None:
        device: DeviceId | None = session.attributes.get(_DEVICE)
        if device is None:
            return
        try:
            await self._directory.set_online(
                device.product_id, device.device_name, online, session.remote_address, int(self._clock())
            )
        except Exception:
            log.exception("recording %s %s failed", device.client_id, "online" if online else "offline")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

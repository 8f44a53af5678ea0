"""fleetops' MQTT 3.1.1 device gateway: the embedded broker of ``fleetops serve`` (docs/mqtt.md).

One :class:`DeviceConnection` (an ``asyncio.Protocol``) per device; everything else is :class:`Gateway`:

* **CONNECT**: the first packet must be CONNECT (MQTT 3.1.1 level 4 or 3.1 ``MQIsdp`` level 3, else CONNACK 1).
  Reading pauses while the credentials are checked (``DeviceGate``: CONNACK 2/3/4/5 per docs/mqtt.md); nothing
  of the client id's existing session is touched before they are. Lookups of concurrent CONNECTs are coalesced
  into one query (``batching``). The device is recorded online before its CONNACK goes out.
* **Take-over**: a second CONNECT of a client id closes the older connection (MQTT-3.1.4-2), whose end does not
  mark the device offline. Simultaneous CONNECTs of one client id are serialized: exactly one stays.
* **Keep-alive**: a connection silent for 1.5 x its keep-alive (rounded up to whole seconds) is closed; one
  that has not completed CONNECT within ``connect_timeout_s`` too.
* **PUBLISH from a device**: the ACL (``topics.may_publish``) decides; ``$shadow/operation/{pid}/{dn}`` goes to
  the :class:`ShadowRequestHandler` (one device's requests one at a time, in order); QoS 2 and wildcard topics
  close the connection; payloads over ``max_payload_bytes`` are dropped (still acknowledged); the retain flag
  is ignored; wills are accepted and never published.
* **Routing**: exact filters by dict, wildcard filters by literal prefix (``sessions.SubscriptionIndex``);
  delivered QoS = min(published, granted), granted QoS at most 1.
* **Cloud-to-device QoS 1**: PUBACKs tracked per session, at most ``max_qos1_in_flight`` unacknowledged over
  all devices (``publish_many`` waits for room), unacknowledged after ``qos1_ack_timeout_s`` = queued again.
* **Persistent sessions**: subscriptions kept; QoS 1 messages queued while offline (at most 150, each 24 h) and
  replayed one per ``offline_replay_interval_s`` after the device is back; dropped after 24 h offline.
* **Hostile clients**: malformed packets close the connection (``codec.MalformedPacket``, never an exception
  past the connection); a device that does not read its messages is closed once ``max_write_buffer_bytes``
  wait for it; one that floods shadow requests stops being read until they are answered. The listener limits
  connections and evicts half-open ones (``listener``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetops.event_loop import StreamTransport
from fleetops.listeners import LimitedLog
from fleetops.messaging.batching import CredentialLookup, PresenceWriter
from fleetops.messaging.device_auth import ConnackCode, ConnectDecision
from fleetops.messaging.events import tell
from fleetops.messaging.gate import DeviceGate
from fleetops.messaging.mqtt.codec import (
    PINGRESP_BYTES,
    PROTOCOL_MQTT_31,
    PROTOCOL_MQTT_311,
    SUBACK_FAILURE,
    Connect,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    PingReq,
    Puback,
    Publish,
    Subscribe,
    Unsubscribe,
    encode_connack,
    encode_puback,
    encode_publish,
    encode_suback,
    encode_unsuback,
)
from fleetops.messaging.mqtt.listener import Listener
from fleetops.messaging.mqtt.sessions import Outgoing, Session, SubscriptionIndex
from fleetops.messaging.topics import (
    DeviceId,
    is_valid_topic_name,
    may_publish,
    may_subscribe,
    parse_shadow_request_topic,
    shadow_result_topic,
    split_client_id,
)
from fleetops.ports.messaging import Delivery, DeviceDirectory, DeviceEvents, ShadowRequestHandler

log = logging.getLogger("fleetops.messaging.gateway")

_PROTOCOLS: Final = {PROTOCOL_MQTT_311, PROTOCOL_MQTT_31}  # docs/mqtt.md#connecting
_WRITE_HIGH_WATER_BYTES: Final = 64 * 1024
_YIELD_EVERY: Final = 1000  # messages between event-loop yields in publish_many
# The better outcome wins when a message has several subscribers.
_RANK: Final = {Delivery.DROPPED: 0, Delivery.QUEUED: 1, Delivery.SENT: 2}

# connection states
_NEW, _AUTHENTICATING, _CONNECTED, _CLOSED = range(4)


@dataclass
class BrokerOptions:
    """Limits of the embedded gateway (docs/limits.md); the defaults are the vendor's where it has one."""

    max_payload_bytes: int = 16 * 1024  # larger device PUBLISHes are dropped
    max_packet_bytes: int = 256 * 1024  # larger packets close the connection (the vendor's older limit)
    max_offline_messages: int = 150
    offline_message_ttl_s: float = 24 * 3600
    offline_replay_interval_s: float = 0.5
    session_expiry_s: float = 24 * 3600
    connect_timeout_s: float = 10.0  # TCP accept (and TLS handshake) to CONNACK
    max_connections: int = 10_000  # per listener; also bounded by the process's file limit
    max_qos1_in_flight: int = 10_000  # cloud-to-device QoS 1 deliveries awaiting a PUBACK, all devices
    qos1_ack_timeout_s: float = 30.0  # then the delivery counts as failed (queued again if persistent)
    max_write_buffer_bytes: int = 1024 * 1024  # unread by a device; then it is disconnected
    max_pending_shadow_requests: int = 32  # per connection; then the connection is not read until answered
    max_subscriptions: int = 1000  # per session (custom topics make the device's own namespace unbounded)
    shutdown_grace_s: float = 2.0  # for unacknowledged QoS 1 deliveries when the gateway stops
    tick_s: float = 0.5  # how often keep-alives, CONNECT deadlines and PUBACK timeouts are checked
    listen_backlog: int = 4096


def keepalive_limit_s(keepalive_s: int) -> int:
    """1.5 x keep-alive rounded up to whole seconds (MQTT-3.1.2-24); 0 = none."""
    return keepalive_s + (keepalive_s + 1) // 2 if keepalive_s > 0 else 0


@dataclass
class GatewayCounters:
    """Running totals since the gateway started, read by the metrics at scrape time (docs/deployment.md)."""

    delivered: int = 0  # messages written to a device's connection or queued for its persistent session
    refused_publishes: int = 0  # device PUBLISHes dropped: a topic not the device's own, or over the size limit
    refused_connects: int = 0  # CONNECTs answered with a refusal


@dataclass
class _ClientLock:
    lock: asyncio.Lock
    users: int = 0


class DeviceConnection(asyncio.Protocol):
    """One network connection of a device: reads packets, hands them to the gateway, writes what it sends."""

    def __init__(self, gateway: Gateway, listener: Listener) -> None:
        self.gateway = gateway
        self.listener = listener
        self.transport: StreamTransport | None = None
        self.reader = PacketReader(gateway.options.max_packet_bytes)
        self.state = _NEW
        self.session: Session | None = None
        self.client_id = ""
        self.peer_ip: str | None = None
        self.opened_at = time.monotonic()
        self.last_received = self.opened_at
        self.keepalive_limit_s = 0
        self._write_paused = False
        self._reading_paused = False
        self.shadow_requests: deque[tuple[DeviceId, bytes]] = deque()
        self._shadow_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DeviceConnection {self.client_id or '?'} from {self.peer_ip}>"

    @property
    def ready(self) -> bool:
        """CONNACK 0 sent and the connection still open: messages may be written."""
        return self.state == _CONNECTED

    @property
    def closed(self) -> bool:
        return self.state == _CLOSED or self.transport is None or self.transport.is_closing()

    # --- asyncio.Protocol -------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, StreamTransport)  # asyncio's or uvloop's (not an asyncio.Transport subclass)
        self.transport = transport
        peer = transport.get_extra_info("peername")  # cached by the loop: no ENOTCONN for a peer already gone
        self.peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else None
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER_BYTES)
        self.listener.pending(self)
        self.gateway.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        self.reader.feed(data)
        self.process()

    def eof_received(self) -> bool | None:
        return None  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        self.listener.closed(self)
        self.gateway.connection_ended(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False

    # --- what the gateway and listener call -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if self._write_paused and transport.get_write_buffer_size() > self.gateway.options.max_write_buffer_bytes:
            self.gateway.limited_log(
                "slow",
                logging.WARNING,
                "%s does not read its messages (over %d bytes waiting): disconnected",
                self.client_id,
                self.gateway.options.max_write_buffer_bytes,
            )
            transport.abort()

    def close(self) -> None:
        """Close after what is written so far has been sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def evict(self) -> None:
        self.abort()

    def refuse(self, code: ConnackCode, reason: str) -> None:
        """CONNACK ``code`` and close (a refused CONNECT)."""
        if self.closed:
            log.info("refused %s from %s: %s (the client had already closed)", self.client_id, self.peer_ip, reason)
            return
        log.info("refused %s from %s: %s (CONNACK %d)", self.client_id, self.peer_ip, reason, int(code))
        self.gateway.counters.refused_connects += 1
        self.write(encode_connack(False, int(code)))
        self.close()

    def accepted(self, session_present: bool) -> None:
        """CONNACK 0: from now on the connection is read again and gets messages."""
        self.write(encode_connack(session_present, 0))
        self.state = _CONNECTED
        self.listener.established(self)
        self.update_reading()
        self.process()

    def update_reading(self) -> None:
        """Read while connected and not overloaded with shadow requests (back-pressure), else pause."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = self.state == _AUTHENTICATING or self.overloaded
        if paused and not self._reading_paused:
            transport.pause_reading()
        elif not paused and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = paused

    @property
    def overloaded(self) -> bool:
        return len(self.shadow_requests) >= self.gateway.options.max_pending_shadow_requests

    # --- packets ------------------------------------------------------------------------------------------------

    def process(self) -> None:
        """Hand out the whole packets received, while the state allows."""
        while (self.state == _NEW or (self.state == _CONNECTED and not self.overloaded)) and not self.closed:
            try:
                packet = self.reader.next_packet()
            except MalformedPacket as exc:
                self.gateway.limited_log(
                    "malformed",
                    logging.INFO,
                    "%s from %s: malformed packet (%s): closing",
                    self.client_id or "connection",
                    self.peer_ip,
                    exc,
                )
                self.abort()
                return
            if packet is None:
                return
            if self.state == _NEW:
                self._first_packet(packet)
            else:
                self.gateway.packet_received(self, packet)

    def _first_packet(self, packet: Packet) -> None:
        if not isinstance(packet, Connect):  # MQTT-3.1.0-1
            self.gateway.limited_log(
                "no-connect",
                logging.INFO,
                "connection from %s sent %s before CONNECT: closing",
                self.peer_ip,
                type(packet).__name__,
            )
            self.abort()
            return
        self.client_id = packet.client_id
        if (packet.protocol_name, packet.protocol_level) not in _PROTOCOLS:
            self.refuse(
                ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION,
                f"protocol {packet.protocol_name!r} level {packet.protocol_level}",
            )
            return
        self.state = _AUTHENTICATING
        self.keepalive_limit_s = keepalive_limit_s(packet.keepalive_s)
        self.update_reading()
        self.gateway.spawn(self.gateway.authenticate(self, packet))

    def queue_shadow_request(self, device: DeviceId, payload: bytes) -> None:
        self.shadow_requests.append((device, payload))
        if self._shadow_task is None:
            self._shadow_task = self.gateway.spawn(self._serve_shadow_requests())
        self.update_reading()

    async def _serve_shadow_requests(self) -> None:
        try:
            while self.shadow_requests:
                device, payload = self.shadow_requests[0]
                await self.gateway.shadow_request(device, payload)
                self.shadow_requests.popleft()
                if self._reading_paused and not self.overloaded:
                    self.update_reading()
                    self.process()  # what was buffered while the queue was full
        finally:
            self._shadow_task = None


class Gateway:
    """Sessions, routing and the connection lifecycle (module docstring). Build it inside the running loop."""

    def __init__(
        self,
        directory: DeviceDirectory,
        shadow_handler: ShadowRequestHandler,
        *,
        clock: Callable[[], float] = time.time,
        options: BrokerOptions | None = None,
        events: DeviceEvents | None = None,
    ) -> None:
        self.options = options or BrokerOptions()
        self.directory = directory
        self._clock = clock
        self._gate = DeviceGate(CredentialLookup(directory), clock)
        self.presence = PresenceWriter(directory, clock)
        self._shadow_handler = shadow_handler
        self._events = events
        self.counters = GatewayCounters()
        self.sessions: dict[str, Session] = {}
        self.index = SubscriptionIndex()
        self.connections: set[DeviceConnection] = set()
        self.listeners: list[Listener] = []
        self.limited_log = LimitedLog(log, 10.0)
        self._offline_sessions: OrderedDict[Session, None] = OrderedDict()  # persistent, by disconnection time
        self._client_locks: dict[str, _ClientLock] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._qos1_in_flight = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._qos1_idle = asyncio.Event()
        self._qos1_idle.set()
        self._connections_gone = asyncio.Event()

    # --- lifecycle ------------------------------------------------------------------------------------------

    def add_listener(self, name: str, sockets: list[socket.socket], ssl_context: ssl.SSLContext | None = None) -> None:
        """Serve devices on these listening sockets (TLS with ``ssl_context``), with the options' limits."""
        self.listeners.append(
            Listener(
                name,
                sockets,
                lambda listener: DeviceConnection(self, listener),
                max_connections=self.options.max_connections,
                handshake_timeout_s=self.options.connect_timeout_s,
                ssl_context=ssl_context,
            )
        )

    async def start(self) -> None:
        # A gateway that starts knows no connection: devices left online by a crash are not (docs/mqtt.md).
        try:
            await self.directory.set_all_offline(int(self._clock()))
        except Exception as exc:
            log.warning("could not mark the devices offline at start: %s", exc)
        for listener in self.listeners:
            listener.start()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="fleetops-gateway-ticker")

    async def stop(self) -> None:
        """Stop accepting, give QoS 1 deliveries ``shutdown_grace_s`` for their PUBACK, close every
        connection (each recorded offline) and write the last presence changes."""
        for listener in self.listeners:
            await listener.stop()
        if self._qos1_in_flight:
            try:
                await asyncio.wait_for(self._qos1_idle.wait(), self.options.shutdown_grace_s)
            except TimeoutError:
                log.info("stopping with %d QoS 1 deliveries unacknowledged", self._qos1_in_flight)
        if self._ticker is not None:
            self._ticker.cancel()
        for connection in list(self.connections):
            connection.close()
        if self.connections:
            self._connections_gone.clear()
            try:
                await asyncio.wait_for(self._connections_gone.wait(), 5.0)
            except TimeoutError:
                for connection in list(self.connections):
                    connection.abort()
                await asyncio.sleep(0)
        for waiter in self._slot_waiters:
            if not waiter.done():
                waiter.set_result(None)
        tasks = [task for task in (*self._background, self._ticker) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.presence.flush()
        self.sessions.clear()
        self.index.clear()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- CONNECT ------------------------------------------------------------------------------------------

    async def authenticate(self, connection: DeviceConnection, connect: Connect) -> None:
        client_id = connect.client_id
        decision: ConnectDecision
        if connect.password is not None and connect.username is None:  # MQTT-3.1.2-22
            decision = ConnectDecision(ConnackCode.BAD_USERNAME_OR_PASSWORD, "password without user name")
        else:
            try:
                decision = await self._gate.decide(client_id, connect.username, connect.password, connect.keepalive_s)
            except Exception:  # the directory failed: the device should retry later
                log.exception("authentication of %s failed", client_id)
                decision = ConnectDecision(ConnackCode.SERVER_UNAVAILABLE, "directory error")
        if not decision.accepted:
            connection.refuse(decision.code, decision.reason)
            return
        if connection.closed:
            log.info("%s from %s closed before its CONNACK", client_id, connection.peer_ip)
            return
        device = split_client_id(client_id)
        assert device is not None  # accepted
        entry = self._client_locks.get(client_id)
        if entry is None:
            entry = self._client_locks[client_id] = _ClientLock(asyncio.Lock())
        entry.users += 1
        try:
            async with entry.lock:  # one CONNECT of a client id at a time: exactly one stays
                if connection.closed:
                    return
                session, present = self._take_over(connection, connect, device)
                try:
                    await self.presence.record(device.product_id, device.device_name, True, connection.peer_ip)
                except Exception:  # logged by the writer; the device is connected all the same
                    pass
                if connection.closed or session.connection is not connection:
                    return  # its end (connection_ended) has been handled
                connection.accepted(present)
        finally:
            entry.users -= 1
            if not entry.users:
                del self._client_locks[client_id]
        log.debug("%s connected from %s", client_id, connection.peer_ip)
        self._notify("device_connected", device.product_id, device.device_name, present)
        if session.queue:
            self._start_replay(session)

    def _take_over(self, connection: DeviceConnection, connect: Connect, device: DeviceId) -> tuple[Session, bool]:
        """Attach ``connection`` to its client id's session (closing an older connection); (session, present)."""
        client_id = connect.client_id
        existing = self.sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            older = existing.connection
            existing.connection = None  # so that the older connection's end does not mark the device offline
            log.info("%s connected again from %s: closing the older connection", client_id, connection.peer_ip)
            self._release_in_flight(existing)
            older.close()
        if connect.clean_session or existing is None:
            if existing is not None:
                self._drop_session(existing)
            session = Session(client_id, device, clean=connect.clean_session)
            self.sessions[client_id] = session
            present = False
        else:
            session, present = existing, True
            session.clean = False
            self._offline_sessions.pop(session, None)
        session.connection = connection
        connection.session = session
        return session, present

    def connection_ended(self, connection: DeviceConnection) -> None:
        self.connections.discard(connection)
        if not self.connections:
            self._connections_gone.set()
        session = connection.session
        if session is None or session.connection is not connection:
            return  # never attached, or taken over by a newer connection
        session.connection = None
        self._release_in_flight(session)
        if session.clean:
            self._drop_session(session)
        else:
            session.disconnected_at = time.monotonic()
            self._offline_sessions[session] = None
        device = session.device
        self.presence.record(device.product_id, device.device_name, False, None)
        self._notify("device_disconnected", device.product_id, device.device_name)

    def _drop_session(self, session: Session) -> None:
        self.index.remove_all(session)
        session.queue.clear()
        session.clean = True
        self._offline_sessions.pop(session, None)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    async def disconnect_client(self, client_id: str) -> bool:
        """Close the client's connection and delete its session (device disabled or deleted)."""
        session = self.sessions.get(client_id)
        if session is None:
            return False
        connection = session.connection
        self._drop_session(session)
        if connection is not None:
            connection.close()
        return True

    # --- packets of a connected device --------------------------------------------------------------------

    def packet_received(self, connection: DeviceConnection, packet: Packet) -> None:
        session = connection.session
        assert session is not None
        if isinstance(packet, Publish):
            self._device_published(connection, session, packet)
        elif isinstance(packet, Puback):
            self._puback(session, packet.packet_id)
        elif isinstance(packet, PingReq):
            connection.write(PINGRESP_BYTES)
        elif isinstance(packet, Subscribe):
            self._subscribe(connection, session, packet)
        elif isinstance(packet, Unsubscribe):
            for topic_filter in packet.filters:
                self.index.remove(session, topic_filter)
            connection.write(encode_unsuback(packet.packet_id))
        elif isinstance(packet, Disconnect):
            connection.close()
        else:  # a second CONNECT (MQTT-3.1.0-2) or a packet only a server sends
            self.limited_log(
                "protocol",
                logging.INFO,
                "%s sent %s: protocol violation, closing",
                session.client_id,
                type(packet).__name__,
            )
            connection.abort()

    def _device_published(self, connection: DeviceConnection, session: Session, packet: Publish) -> None:
        topic, client_id = packet.topic, session.client_id
        if not is_valid_topic_name(topic):  # MQTT-3.3.2-2: no wildcards, not empty
            self.limited_log("bad-topic", logging.INFO, "%s published to %r: closing", client_id, topic)
            connection.abort()
            return
        if packet.qos == 2:  # docs/mqtt.md: QoS 2 is not supported
            self.limited_log("qos2", logging.INFO, "%s published with QoS 2: closing", client_id)
            connection.abort()
            return
        if len(packet.payload) > self.options.max_payload_bytes:
            self.counters.refused_publishes += 1
            self.limited_log(
                "oversize",
                logging.INFO,
                "%s: dropped a %d-byte message on %s (limit %d)",
                client_id,
                len(packet.payload),
                topic,
                self.options.max_payload_bytes,
            )
        elif not may_publish(session.device, topic):
            self.counters.refused_publishes += 1
            self.limited_log("acl", logging.INFO, "%s may not publish to %s: dropped", client_id, topic)
        else:
            shadow_device = parse_shadow_request_topic(topic)
            if shadow_device is not None:
                connection.queue_shadow_request(shadow_device, packet.payload)
            else:
                self.deliver(topic, packet.payload, packet.qos)  # the retain flag is ignored: nothing is retained
        if packet.qos == 1:  # also for a dropped message (docs/mqtt.md)
            connection.write(encode_puback(packet.packet_id))

    def _subscribe(self, connection: DeviceConnection, session: Session, packet: Subscribe) -> None:
        codes: list[int] = []
        granted_filters: list[tuple[str, int]] = []
        for topic_filter, requested in packet.filters:
            if not may_subscribe(session.device, topic_filter):
                self.limited_log("acl-sub", logging.INFO, "%s may not subscribe to %s", session.client_id, topic_filter)
                codes.append(SUBACK_FAILURE)
                continue
            if (
                topic_filter not in session.subscriptions
                and len(session.subscriptions) >= self.options.max_subscriptions
            ):
                self.limited_log(
                    "subscriptions", logging.INFO, "%s already has %d subscriptions: refused %s",
                    session.client_id, self.options.max_subscriptions, topic_filter,
                )  # fmt: skip
                codes.append(SUBACK_FAILURE)
                continue
            granted = min(requested, 1)  # QoS 2 is granted as 1 (docs/mqtt.md)
            self.index.add(session, topic_filter, granted)
            codes.append(granted)
            granted_filters.append((topic_filter, granted))
        connection.write(encode_suback(packet.packet_id, codes))
        for topic_filter, granted in granted_filters:
            self._notify(
                "device_subscribed", session.device.product_id, session.device.device_name, topic_filter, granted
            )

    async def shadow_request(self, device: DeviceId, payload: bytes) -> None:
        try:
            reply = await self._shadow_handler.handle_shadow_request(device.product_id, device.device_name, payload)
        except Exception:
            log.exception("shadow request of %s failed", device.client_id)
            return
        if reply is not None:
            self.deliver(shadow_result_topic(device.product_id, device.device_name), reply, 0)

    # --- routing --------------------------------------------------------------------------------------------

    def subscribed(self, topic: str) -> bool:
        """Whether a connected session or a persistent one subscribes to ``topic``."""
        return any(session.connection is not None or not session.clean for session, _ in self.index.matching(topic))

    def online(self, client_id: str) -> bool:
        session = self.sessions.get(client_id)
        return session is not None and session.connected

    def devices_online(self) -> int:
        """Connections past their CONNACK: one pass over the open connections (bounded by the listeners'
        limits, unlike the sessions, which include the offline persistent ones); for a scrape, not a hot path."""
        return sum(1 for connection in self.connections if connection.ready)

    def offline_room(self, client_id: str, topic: str) -> int | None:
        """Room in ``client_id``'s persistent session for a QoS 1 message on ``topic``; None if it keeps none."""
        for session, granted in self.index.matching(topic):
            if session.client_id == client_id and not session.clean and granted >= 1:
                return self._room(session)
        return None

    async def publish_many(
        self,
        messages: Sequence[tuple[str, bytes]],
        qos: int,
        on_puback: Callable[[int], None] | None = None,
        check_topic: Callable[[str], None] | None = None,
    ) -> list[Delivery]:
        statuses = [Delivery.DROPPED] * len(messages)
        limit = self.options.max_qos1_in_flight
        for index, (topic, payload) in enumerate(messages):
            if check_topic is not None:
                check_topic(topic)
            if qos and self._qos1_in_flight >= limit:
                await self._slot_free()
            acked = functools.partial(on_puback, index) if on_puback is not None else None
            statuses[index] = self.deliver(topic, payload, qos, acked)
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return statuses

    def deliver(self, topic: str, payload: bytes, qos: int, on_puback: Callable[[], None] | None = None) -> Delivery:
        """Route one message to every matching session (connected: written; persistent and offline: queued)."""
        targets = self.index.matching(topic)
        if not targets:
            return Delivery.DROPPED
        best = Delivery.DROPPED
        packet: bytes | None = None
        for session, granted in targets:
            connection = session.connection
            if connection is not None and connection.ready:
                if qos == 0 or granted == 0:
                    if packet is None:
                        packet = encode_publish(topic.encode("utf-8"), payload)
                    connection.write(packet)
                    outcome = Delivery.SENT
                else:
                    outcome = self._deliver_qos1(session, connection, Outgoing(topic, payload, on_puback))
            elif qos and granted and not session.clean:
                outcome = self._enqueue(session, Outgoing(topic, payload, on_puback))
            else:
                continue
            if outcome is not Delivery.DROPPED:
                self.counters.delivered += 1
            if _RANK[outcome] > _RANK[best]:
                best = outcome
        return best

    def _deliver_qos1(self, session: Session, connection: DeviceConnection, message: Outgoing) -> Delivery:
        if session.queue or session.replaying:  # after what is already waiting, in order
            outcome = self._enqueue(session, message)
            if not session.replaying:
                self._start_replay(session)
            return outcome
        if self._send_qos1(session, connection, message):
            return Delivery.SENT
        return self._enqueue(session, message) if not session.clean else Delivery.DROPPED

    def _send_qos1(self, session: Session, connection: DeviceConnection, message: Outgoing) -> bool:
        packet_id = session.packet_ids.next(session.in_flight)
        if packet_id is None:  # 65,535 unacknowledged messages to this device
            return False
        dup = message.sent_at > 0
        message.sent_at = time.monotonic()
        session.in_flight[packet_id] = message
        self._qos1_in_flight += 1
        self._qos1_idle.clear()
        connection.write(encode_publish(message.topic.encode("utf-8"), message.payload, 1, packet_id, dup=dup))
        return True

    def _room(self, session: Session) -> int:
        self._prune_expired(session)
        return max(0, self.options.max_offline_messages - len(session.queue))

    def _prune_expired(self, session: Session) -> None:
        queue, ttl_s = session.queue, self.options.offline_message_ttl_s
        now = time.monotonic()
        while queue and now - queue[0].queued_at > ttl_s:
            queue.popleft()

    def _enqueue(self, session: Session, message: Outgoing) -> Delivery:
        if self._room(session) <= 0:
            log.debug("offline queue of %s is full: dropped a message on %s", session.client_id, message.topic)
            return Delivery.DROPPED
        session.queue.append(message)
        return Delivery.QUEUED

    def _puback(self, session: Session, packet_id: int) -> None:
        message = session.in_flight.pop(packet_id, None)
        if message is None:
            return  # unknown or already timed out: nothing to do
        self._free_slot()
        if message.on_puback is not None:
            try:
                message.on_puback()
            except Exception:
                log.exception("a PUBACK callback failed")

    def _release_in_flight(self, session: Session) -> None:
        """The connection is gone: unacknowledged messages go back to the front of the queue (persistent)."""
        if not session.in_flight:
            return
        unacknowledged = list(session.in_flight.values())
        session.in_flight.clear()
        for _ in unacknowledged:
            self._free_slot()
        if not session.clean:
            # beyond the 150 cap if need be: these were accepted already, and nothing accepted is dropped
            session.queue.extendleft(reversed(unacknowledged))

    def _free_slot(self) -> None:
        self._qos1_in_flight -= 1
        if not self._qos1_in_flight:
            self._qos1_idle.set()
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def _slot_free(self) -> None:
        while self._qos1_in_flight >= self.options.max_qos1_in_flight:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            await waiter
            if not self.listeners or not self._ticker or self._ticker.done():
                return  # stopping

    def _start_replay(self, session: Session) -> None:
        connection = session.connection
        if connection is not None and not session.replaying:
            session.replaying = True
            self.spawn(self._replay(session, connection))

    async def _replay(self, session: Session, connection: DeviceConnection) -> None:
        """Queued QoS 1 messages, one per ``offline_replay_interval_s`` (docs/mqtt.md#cloud-to-device)."""
        try:
            while session.queue and session.connection is connection and connection.ready:
                self._prune_expired(session)
                if not session.queue:
                    break
                if self._qos1_in_flight >= self.options.max_qos1_in_flight:
                    await self._slot_free()
                    continue
                if not self._send_qos1(session, connection, session.queue[0]):
                    await asyncio.sleep(self.options.tick_s)  # no packet id free: wait for PUBACKs
                    continue
                session.queue.popleft()
                if session.queue and self.options.offline_replay_interval_s > 0:
                    await asyncio.sleep(self.options.offline_replay_interval_s)
        finally:
            session.replaying = False

    # --- timers ---------------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.options.tick_s)
            try:
                self._check_timers(time.monotonic())
            except Exception:  # never let one bad check end the ticker
                log.exception("gateway timer check failed")

    def _check_timers(self, now: float) -> None:
        connect_deadline = now - self.options.connect_timeout_s
        for listener in self.listeners:
            while True:
                oldest = listener.oldest_pending()
                if oldest is None or oldest.opened_at > connect_deadline:
                    break
                listener.established(oldest)  # out of the pending list: evicted now
                if isinstance(oldest, DeviceConnection):
                    self.limited_log(
                        "connect-timeout",
                        logging.INFO,
                        "connection from %s: no CONNECT within %g s, closing",
                        oldest.peer_ip,
                        self.options.connect_timeout_s,
                    )
                oldest.evict()
        ack_deadline = now - self.options.qos1_ack_timeout_s
        for connection in list(self.connections):
            limit_s = connection.keepalive_limit_s
            if limit_s and connection.ready and now - connection.last_received > limit_s:
                log.info("%s silent for over %d s (1.5 x keep-alive): closing", connection.client_id, limit_s)
                connection.abort()
                continue
            session = connection.session
            if session is not None and session.in_flight:
                self._expire_in_flight(session, ack_deadline)
        expiry_deadline = now - self.options.session_expiry_s
        while self._offline_sessions:
            session = next(iter(self._offline_sessions))
            if session.disconnected_at > expiry_deadline:
                break
            log.info("persistent session of %s expired", session.client_id)
            self._drop_session(session)

    def _expire_in_flight(self, session: Session, deadline: float) -> None:
        expired = [packet_id for packet_id, message in session.in_flight.items() if message.sent_at < deadline]
        if not expired:
            return
        messages = [session.in_flight.pop(packet_id) for packet_id in expired]
        for _ in messages:
            self._free_slot()
        if not session.clean:
            session.queue.extendleft(reversed(messages))
        log.debug(
            "%s: %d QoS 1 messages unacknowledged for %g s",
            session.client_id,
            len(expired),
            self.options.qos1_ack_timeout_s,
        )
        if session.queue:
            self._start_replay(session)

    def _notify(self, event: str, *args: Any) -> None:
        tell(self._events, event, *args)

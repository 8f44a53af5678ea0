"""A small asyncio MQTT 3.1.1 client over the gateway's codec: fleetops' connection to an external broker.

What ``messaging.external`` needs and little more: CONNECT with user name and password (plain or TLS), a clean
session, keep-alive pings, SUBSCRIBE / UNSUBSCRIBE at run time, incoming PUBLISH (QoS 0 and 1, acknowledged
once the ``on_message`` callback returns), outgoing PUBLISH written as pre-encoded bytes (:meth:`write`) with
the client's packet ids (:meth:`next_packet_id`) and PUBACK callbacks (:meth:`track_puback`), and flow control
through the transport's public API (:meth:`drain` waits while asyncio has paused writing). Reconnecting is
the caller's job: a lost connection sets :attr:`lost` and calls ``on_lost``; make a new client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, Collection
from typing import Final

from fleetops.event_loop import StreamTransport
from fleetops.messaging.mqtt.codec import (
    DISCONNECT_BYTES,
    PINGREQ_BYTES,
    Connack,
    MalformedPacket,
    PacketIds,
    PacketReader,
    PingResp,
    Puback,
    Publish,
    Suback,
    Unsuback,
    encode_connect,
    encode_puback,
    encode_subscribe,
    encode_unsubscribe,
)

log = logging.getLogger("fleetops.messaging.client")

_HIGH_WATER_BYTES: Final = 1024 * 1024
_MAX_PACKET_BYTES: Final = 1024 * 1024

CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}


class ConnectRefused(Exception):
    """The broker answered CONNECT with a non-zero return code."""

    def __init__(self, code: int) -> None:
        self.code = code
        super().__init__(f"CONNACK {code} ({CONNACK_REASONS.get(code, 'unknown code')})")


class MqttClient(asyncio.Protocol):
    """One connection to a broker; build it with :meth:`connect`."""

    def __init__(
        self,
        on_message: Callable[[str, bytes, int], None],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """``on_message(topic, payload, qos)`` for each incoming PUBLISH (it must not block)."""
        self._on_message = on_message
        self._on_lost = on_lost
        self._transport: StreamTransport | None = None
        self._reader = PacketReader(_MAX_PACKET_BYTES)
        self._connack: asyncio.Future[Connack] = asyncio.get_running_loop().create_future()
        self._pubacks: dict[int, Callable[[int], None]] = {}
        self._replies: dict[int, asyncio.Future[tuple[int, ...]]] = {}  # SUBACK / UNSUBACK by packet id
        self._packet_ids = PacketIds()
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._pinger: asyncio.Task[None] | None = None
        self._last_sent = self._last_received = time.monotonic()
        self.lost = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        client_id: str,
        on_message: Callable[[str, bytes, int], None],
        on_lost: Callable[[], None] | None = None,
        username: str | None = None,
        password: bytes | None = None,
        keepalive_s: int = 30,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> MqttClient:
        """Connect, CONNECT with a clean session, wait for CONNACK; raises :class:`ConnectRefused`, ``OSError``
        or ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        client = cls(on_message, on_lost)
        async with asyncio.timeout(timeout_s):
            await loop.create_connection(
                lambda: client, host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
            )
            try:
                client.write(encode_connect(client_id, keepalive_s=keepalive_s, username=username, password=password))
                connack = await client._connack
            except BaseException:
                client.abort()
                raise
        if connack.return_code:
            client.abort()
            raise ConnectRefused(connack.return_code)
        if keepalive_s > 0:
            client._pinger = loop.create_task(client._keep_alive(keepalive_s))
        return client

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and self._transport is not None and not self._transport.is_closing()

    # --- writing ----------------------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Hand bytes to the socket; False if the connection is gone."""
        if not self.alive:
            return False
        assert self._transport is not None
        self._transport.write(data)
        self._last_sent = time.monotonic()
        return True

    async def drain(self) -> None:
        """Wait while the send buffer is over its high-water mark (back-pressure); returns if the connection
        is lost."""
        if self._can_write.is_set() or not self.alive:
            return
        can_write = asyncio.ensure_future(self._can_write.wait())
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            await asyncio.wait({can_write, lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            can_write.cancel()
            lost.cancel()

    def next_packet_id(self) -> int:
        """A packet id not in use by an unacknowledged PUBLISH, SUBSCRIBE or UNSUBSCRIBE of this connection."""
        # the union is built only while a SUBSCRIBE/UNSUBSCRIBE is pending: per PUBLISH it would cost O(in flight)
        in_use: Collection[int] = self._pubacks if not self._replies else self._pubacks.keys() | self._replies.keys()
        packet_id = self._packet_ids.next(in_use)
        if packet_id is None:
            raise RuntimeError("all 65,535 packet ids are in use")
        return packet_id

    def track_puback(self, packet_id: int, on_puback: Callable[[int], None]) -> None:
        """Call ``on_puback(packet_id)`` when the broker acknowledges the QoS 1 PUBLISH ``packet_id``."""
        self._pubacks[packet_id] = on_puback

    async def subscribe(self, topic_filter: str, qos: int, timeout_s: float = 10.0) -> int:
        """Subscribe and return the SUBACK return code (0x80 = refused)."""
        codes = await self._request(lambda packet_id: encode_subscribe(packet_id, [(topic_filter, qos)]), timeout_s)
        return codes[0]

    async def unsubscribe(self, topic_filter: str, timeout_s: float = 10.0) -> None:
        await self._request(lambda packet_id: encode_unsubscribe(packet_id, [topic_filter]), timeout_s)

    async def _request(self, encode: Callable[[int], bytes], timeout_s: float) -> tuple[int, ...]:
        packet_id = self.next_packet_id()
        reply: asyncio.Future[tuple[int, ...]] = asyncio.get_running_loop().create_future()
        self._replies[packet_id] = reply
        try:
            if not self.write(encode(packet_id)):
                raise ConnectionError("the MQTT connection is closed")
            async with asyncio.timeout(timeout_s):
                return await reply
        finally:
            self._replies.pop(packet_id, None)

    async def close(self) -> None:
        """DISCONNECT and close (idempotent)."""
        if self.alive:
            self.write(DISCONNECT_BYTES)
        if self._transport is not None:
            self._transport.close()
        if self._pinger is not None:
            self._pinger.cancel()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, StreamTransport)  # asyncio's or uvloop's (not an asyncio.Transport subclass)
        self._transport = transport
        transport.set_write_buffer_limits(high=_HIGH_WATER_BYTES)

    def data_received(self, data: bytes) -> None:
        self._last_received = time.monotonic()
        self._reader.feed(data)
        while True:
            try:
                packet = self._reader.next_packet()
            except MalformedPacket as exc:
                log.warning("the MQTT broker sent a malformed packet (%s): closing the connection", exc)
                self.abort()
                return
            if packet is None:
                return
            if isinstance(packet, Publish):
                self._received(packet)
            elif isinstance(packet, Puback):
                callback = self._pubacks.pop(packet.packet_id, None)
                if callback is not None:
                    callback(packet.packet_id)
            elif isinstance(packet, Suback):
                self._reply(packet.packet_id, packet.return_codes)
            elif isinstance(packet, Unsuback):
                self._reply(packet.packet_id, ())
            elif isinstance(packet, Connack):
                if not self._connack.done():
                    self._connack.set_result(packet)
            elif not isinstance(packet, PingResp):
                log.warning("the MQTT broker sent %s: closing the connection", type(packet).__name__)
                self.abort()
                return

    def _received(self, packet: Publish) -> None:
        try:
            self._on_message(packet.topic, packet.payload, packet.qos)
        except Exception:
            log.exception("handling a message on %s failed", packet.topic)
        if packet.qos == 1:
            self.write(encode_puback(packet.packet_id))

    def _reply(self, packet_id: int, codes: tuple[int, ...]) -> None:
        reply = self._replies.get(packet_id)
        if reply is not None and not reply.done():
            reply.set_result(codes)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()
        self._can_write.set()
        if not self._connack.done():
            self._connack.set_exception(ConnectionError(f"the broker closed the connection before CONNACK ({exc})"))
        for reply in self._replies.values():
            if not reply.done():
                reply.set_exception(ConnectionError("the MQTT connection was lost"))
        if self._pinger is not None:
            self._pinger.cancel()
        if self._on_lost is not None:
            self._on_lost()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    async def _keep_alive(self, keepalive_s: int) -> None:
        """PINGREQ when nothing was sent, or nothing received, for half the keep-alive; give up on 1.5 x keep-alive
        of silence. (A client that only publishes QoS 0 - a batch task - hears nothing back but the PINGRESPs: it
        must ping while it sends, or it would take the broker's silence for a dead connection.)"""
        while self.alive:
            await asyncio.sleep(keepalive_s / 4)
            now = time.monotonic()
            if now - self._last_received > 1.5 * keepalive_s:
                log.warning("the MQTT broker has been silent for %g s: closing the connection", 1.5 * keepalive_s)
                self.abort()
                return
            if now - self._last_sent >= keepalive_s / 2 or now - self._last_received >= keepalive_s / 2:
                self.write(PINGREQ_BYTES)

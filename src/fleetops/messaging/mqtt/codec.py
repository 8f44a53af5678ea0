"""MQTT 3.1.1 packets: decoding (strict) and encoding, shared by the device gateway and the broker client.

Only what the device protocol uses (docs/mqtt.md#the-device-protocol-as-implemented): CONNECT (protocol level
4, and 3.1 ``MQIsdp`` level 3), CONNACK, PUBLISH (QoS 0 and 1; QoS 2 is decoded so that the gateway can
refuse it), PUBACK, SUBSCRIBE / SUBACK, UNSUBSCRIBE / UNSUBACK, PINGREQ / PINGRESP, DISCONNECT. The QoS 2
handshake packets (PUBREC, PUBREL, PUBCOMP) and the reserved types 0 and 15 are malformed here.

:class:`PacketReader` takes bytes as they arrive and hands out whole packets. Anything that breaks the
specification - a remaining length longer than 4 bytes or over the configured maximum, reserved flag bits, a
field running past the packet's end, bytes left over, a string that is not UTF-8 or holds U+0000
(MQTT-1.5.3-1/-2), a packet id 0 - raises :class:`MalformedPacket` and nothing else: the caller closes the
connection (MQTT 3.1.1 §4.8 "the receiver MUST close the Network Connection").

Encoding is a few byte operations per packet: PUBLISH is on the hot path of batch tasks (one per device), and
building it by hand is 2-3x faster than the object graphs of client libraries.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

MAX_REMAINING_LENGTH: Final = 268_435_455  # four 7-bit digits (§2.2.3)
MAX_PACKET_ID: Final = 65_535
PROTOCOL_MQTT_311: Final = ("MQTT", 4)
PROTOCOL_MQTT_31: Final = ("MQIsdp", 3)

SUBACK_FAILURE: Final = 0x80


class PacketType(IntEnum):
    """The control packet type: the high nibble of the first byte (§2.2.1)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class MalformedPacket(Exception):
    """The bytes received are not a valid MQTT 3.1.1 packet (the message says what is wrong)."""


@dataclass(frozen=True, slots=True)
class Connect:
    protocol_name: str
    protocol_level: int
    clean_session: bool
    keepalive_s: int
    client_id: str
    will_topic: str | None = None
    will_message: bytes | None = None
    will_qos: int = 0
    will_retain: bool = False
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int = 0  # 0 for QoS 0 (no packet id on the wire)
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    filters: tuple[tuple[str, int], ...]  # (topic filter, requested QoS)


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


Packet = (
    Connect | Connack | Publish | Puback | Subscribe | Suback | Unsubscribe | Unsuback | PingReq | PingResp | Disconnect
)

_PINGREQ: Final = PingReq()
_PINGRESP: Final = PingResp()
_DISCONNECT: Final = Disconnect()


# --- decoding -----------------------------------------------------------------------------------------------


class _Fields:
    """Reads the variable header and payload of one packet, bounds-checked."""

    __slots__ = ("body", "kind", "offset")

    def __init__(self, body: bytes, kind: str) -> None:
        self.body = body
        self.offset = 0
        self.kind = kind

    def remaining(self) -> int:
        return len(self.body) - self.offset

    def byte(self, what: str) -> int:
        if self.offset >= len(self.body):
            raise MalformedPacket(f"{self.kind}: truncated before the {what}")
        value = self.body[self.offset]
        self.offset += 1
        return value

    def uint16(self, what: str) -> int:
        end = self.offset + 2
        if end > len(self.body):
            raise MalformedPacket(f"{self.kind}: truncated before the {what}")
        value = int.from_bytes(self.body[self.offset : end], "big")
        self.offset = end
        return value

    def packet_id(self) -> int:
        packet_id = self.uint16("packet id")
        if packet_id == 0:
            raise MalformedPacket(f"{self.kind}: packet id 0 (MQTT-2.3.1-1)")
        return packet_id

    def binary(self, what: str) -> bytes:
        length = self.uint16(f"length of the {what}")
        end = self.offset + length
        if end > len(self.body):
            raise MalformedPacket(f"{self.kind}: the {what} runs past the end of the packet")
        value = self.body[self.offset : end]
        self.offset = end
        return value

    def string(self, what: str) -> str:
        return decode_string(self.binary(what), f"{self.kind} {what}")

    def rest(self) -> bytes:
        value = self.body[self.offset :]
        self.offset = len(self.body)
        return value

    def end(self) -> None:
        if self.offset != len(self.body):
            raise MalformedPacket(f"{self.kind}: {len(self.body) - self.offset} bytes after the last field")


def decode_string(data: bytes, what: str = "string") -> str:
    """A UTF-8 encoded string (§1.5.3): valid UTF-8 (no surrogates) and no U+0000."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"{what} is not valid UTF-8 (MQTT-1.5.3-1)") from exc
    if "\x00" in text:
        raise MalformedPacket(f"{what} contains U+0000 (MQTT-1.5.3-2)")
    return text


def _flags_zero(flags: int, kind: str) -> None:
    if flags:
        raise MalformedPacket(f"{kind}: reserved flag bits {flags:#x} set (MQTT-2.2.2-1)")


def _decode_connect(flags: int, body: bytes) -> Connect:
    _flags_zero(flags, "CONNECT")
    fields = _Fields(body, "CONNECT")
    protocol_name = fields.string("protocol name")
    protocol_level = fields.byte("protocol level")
    connect_flags = fields.byte("connect flags")
    if connect_flags & 0x01:
        raise MalformedPacket("CONNECT: the reserved connect flag is set (MQTT-3.1.2-3)")
    keepalive_s = fields.uint16("keep alive")
    client_id = fields.string("client id")
    will_flag = bool(connect_flags & 0x04)
    will_qos = (connect_flags >> 3) & 0x03
    will_retain = bool(connect_flags & 0x20)
    if will_qos == 3:
        raise MalformedPacket("CONNECT: will QoS 3 (MQTT-3.1.2-14)")
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("CONNECT: will QoS or retain without the will flag (MQTT-3.1.2-13/-15)")
    will_topic = fields.string("will topic") if will_flag else None
    will_message = fields.binary("will message") if will_flag else None
    username = fields.string("user name") if connect_flags & 0x80 else None
    password = fields.binary("password") if connect_flags & 0x40 else None
    fields.end()
    return Connect(
        protocol_name=protocol_name,
        protocol_level=protocol_level,
        clean_session=bool(connect_flags & 0x02),
        keepalive_s=keepalive_s,
        client_id=client_id,
        will_topic=will_topic,
        will_message=will_message,
        will_qos=will_qos,
        will_retain=will_retain,
        username=username,
        password=password,
    )


def _decode_connack(flags: int, body: bytes) -> Connack:
    _flags_zero(flags, "CONNACK")
    if len(body) != 2:
        raise MalformedPacket(f"CONNACK: {len(body)} bytes instead of 2")
    if body[0] & 0xFE:
        raise MalformedPacket("CONNACK: reserved acknowledge flags set (MQTT-3.2.2-1)")
    return Connack(session_present=bool(body[0] & 0x01), return_code=body[1])


def _decode_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    dup = bool(flags & 0x08)
    if qos == 3:
        raise MalformedPacket("PUBLISH: QoS 3 (MQTT-3.3.1-4)")
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH: DUP set on a QoS 0 message (MQTT-3.3.1-2)")
    fields = _Fields(body, "PUBLISH")
    topic = fields.string("topic name")
    packet_id = fields.packet_id() if qos else 0
    return Publish(topic, fields.rest(), qos, packet_id, bool(flags & 0x01), dup)


def _decode_packet_id_only(kind: str, flags: int, body: bytes, required_flags: int = 0) -> int:
    if flags != required_flags:
        raise MalformedPacket(f"{kind}: flags {flags:#x} instead of {required_flags:#x} (MQTT-2.2.2-1)")
    fields = _Fields(body, kind)
    packet_id = fields.packet_id()
    fields.end()
    return packet_id


def _decode_subscribe(flags: int, body: bytes) -> Subscribe:
    if flags != 0x02:
        raise MalformedPacket(f"SUBSCRIBE: flags {flags:#x} instead of 0x2 (MQTT-3.8.1-1)")
    fields = _Fields(body, "SUBSCRIBE")
    packet_id = fields.packet_id()
    filters: list[tuple[str, int]] = []
    while fields.remaining():
        topic_filter = fields.string("topic filter")
        requested = fields.byte("requested QoS")
        if requested > 2:
            raise MalformedPacket(f"SUBSCRIBE: requested QoS byte {requested:#x} (MQTT-3.8.3-4)")
        filters.append((topic_filter, requested))
    if not filters:
        raise MalformedPacket("SUBSCRIBE: no topic filter (MQTT-3.8.3-3)")
    return Subscribe(packet_id, tuple(filters))


def _decode_suback(flags: int, body: bytes) -> Suback:
    _flags_zero(flags, "SUBACK")
    fields = _Fields(body, "SUBACK")
    packet_id = fields.packet_id()
    codes = tuple(fields.rest())
    if not codes or any(code not in (0, 1, 2, SUBACK_FAILURE) for code in codes):
        raise MalformedPacket(f"SUBACK: return codes {list(codes)} (MQTT-3.9.3-2)")
    return Suback(packet_id, codes)


def _decode_unsubscribe(flags: int, body: bytes) -> Unsubscribe:
    if flags != 0x02:
        raise MalformedPacket(f"UNSUBSCRIBE: flags {flags:#x} instead of 0x2 (MQTT-3.10.1-1)")
    fields = _Fields(body, "UNSUBSCRIBE")
    packet_id = fields.packet_id()
    filters: list[str] = []
    while fields.remaining():
        filters.append(fields.string("topic filter"))
    if not filters:
        raise MalformedPacket("UNSUBSCRIBE: no topic filter (MQTT-3.10.3-2)")
    return Unsubscribe(packet_id, tuple(filters))


def _decode_empty(kind: str, flags: int, body: bytes) -> None:
    _flags_zero(flags, kind)
    if body:
        raise MalformedPacket(f"{kind}: {len(body)} bytes where there should be none")


def decode_packet(first_byte: int, body: bytes) -> Packet:
    """One packet from its first byte and its ``body`` (everything after the remaining length)."""
    kind, flags = first_byte >> 4, first_byte & 0x0F
    if kind == PacketType.PUBLISH:
        return _decode_publish(flags, body)
    if kind == PacketType.PUBACK:
        return Puback(_decode_packet_id_only("PUBACK", flags, body))
    if kind == PacketType.PINGREQ:
        _decode_empty("PINGREQ", flags, body)
        return _PINGREQ
    if kind == PacketType.PINGRESP:
        _decode_empty("PINGRESP", flags, body)
        return _PINGRESP
    if kind == PacketType.CONNECT:
        return _decode_connect(flags, body)
    if kind == PacketType.CONNACK:
        return _decode_connack(flags, body)
    if kind == PacketType.SUBSCRIBE:
        return _decode_subscribe(flags, body)
    if kind == PacketType.SUBACK:
        return _decode_suback(flags, body)
    if kind == PacketType.UNSUBSCRIBE:
        return _decode_unsubscribe(flags, body)
    if kind == PacketType.UNSUBACK:
        return Unsuback(_decode_packet_id_only("UNSUBACK", flags, body))
    if kind == PacketType.DISCONNECT:
        _decode_empty("DISCONNECT", flags, body)
        return _DISCONNECT
    if kind in (PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        raise MalformedPacket(f"{PacketType(kind).name}: QoS 2 is not supported (docs/mqtt.md)")
    raise MalformedPacket(f"reserved packet type {kind} (§2.2.1)")


class PacketReader:
    """Whole packets out of a byte stream: :meth:`feed` bytes, then :meth:`next_packet` until None."""

    __slots__ = ("_buffer", "_offset", "max_packet_bytes")

    def __init__(self, max_packet_bytes: int) -> None:
        """``max_packet_bytes``: the largest remaining length accepted; a larger one is malformed."""
        self.max_packet_bytes = max_packet_bytes
        self._buffer = bytearray()
        self._offset = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet handed out as packets."""
        return len(self._buffer) - self._offset

    def feed(self, data: bytes) -> None:
        if self._offset:
            del self._buffer[: self._offset]
            self._offset = 0
        self._buffer += data

    def next_packet(self) -> Packet | None:
        """The next whole packet, or None until more bytes arrive; raises :class:`MalformedPacket`."""
        buffer, start = self._buffer, self._offset
        available = len(buffer)
        if available - start < 2:
            return None
        length, multiplier, index = 0, 1, start + 1
        while True:
            if index >= available:
                return None
            digit = buffer[index]
            index += 1
            length += (digit & 0x7F) * multiplier
            if not digit & 0x80:
                break
            if index - start > 4:  # a fifth length byte would follow (§2.2.3)
                raise MalformedPacket("remaining length longer than 4 bytes")
            multiplier *= 128
        if length > self.max_packet_bytes:
            raise MalformedPacket(f"packet of {length} bytes, more than the limit of {self.max_packet_bytes}")
        end = index + length
        if end > available:
            return None
        first = buffer[start]
        body = bytes(buffer[index:end])
        self._offset = end
        return decode_packet(first, body)


# --- encoding -----------------------------------------------------------------------------------------------

PINGREQ_BYTES: Final = b"\xc0\x00"
PINGRESP_BYTES: Final = b"\xd0\x00"
DISCONNECT_BYTES: Final = b"\xe0\x00"
_PUBLISH: Final = 0x30


def encode_remaining_length(length: int) -> bytes:
    """The variable-length "remaining length" of the fixed header (§2.2.3)."""
    if length < 128:
        if length < 0:
            raise ValueError(f"negative length {length}")
        return bytes((length,))
    if length > MAX_REMAINING_LENGTH:
        raise ValueError(f"packet too large: {length} bytes")
    out = bytearray()
    while True:
        length, digit = divmod(length, 128)
        if length:
            out.append(digit | 0x80)
        else:
            out.append(digit)
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    if len(data) > 0xFFFF:
        raise ValueError(f"string of {len(data)} bytes does not fit an MQTT string")
    return len(data).to_bytes(2, "big") + data


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{len(data)} bytes do not fit an MQTT binary field")
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def encode_publish(topic: bytes, payload: bytes, qos: int = 0, packet_id: int = 0, *, dup: bool = False) -> bytes:
    """One PUBLISH; ``topic`` already UTF-8. The retain flag is never set: nothing is retained (docs/mqtt.md)."""
    if qos not in (0, 1):
        raise ValueError(f"QoS must be 0 or 1, got {qos}")
    header = _PUBLISH | (qos << 1) | (0x08 if dup else 0)
    topic_length = len(topic)
    if qos:
        variable = topic_length.to_bytes(2, "big") + topic + packet_id.to_bytes(2, "big")
    else:
        variable = topic_length.to_bytes(2, "big") + topic
    length = len(variable) + len(payload)
    if length < 128:  # one length byte: the common case of device messages
        return bytes((header, length)) + variable + payload
    return bytes((header,)) + encode_remaining_length(length) + variable + payload


def encode_connack(session_present: bool, return_code: int) -> bytes:
    return bytes((0x20, 2, 1 if session_present else 0, return_code))


def encode_puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def encode_suback(packet_id: int, return_codes: tuple[int, ...] | list[int]) -> bytes:
    return _packet(0x90, packet_id.to_bytes(2, "big") + bytes(return_codes))


def encode_unsuback(packet_id: int) -> bytes:
    return b"\xb0\x02" + packet_id.to_bytes(2, "big")


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    username: str | None = None,
    password: bytes | None = None,
    clean_session: bool = True,
) -> bytes:
    """An MQTT 3.1.1 CONNECT (no will)."""
    flags = (
        (0x02 if clean_session else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    )
    body = _string("MQTT") + bytes((4, flags)) + keepalive_s.to_bytes(2, "big") + _string(client_id)
    if username is not None:
        body += _string(username)
    if password is not None:
        body += _binary(password)
    return _packet(0x10, body)


def encode_subscribe(packet_id: int, filters: list[tuple[str, int]] | tuple[tuple[str, int], ...]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(
        _string(topic_filter) + bytes((qos,)) for topic_filter, qos in filters
    )
    return _packet(0x82, body)


def encode_unsubscribe(packet_id: int, filters: list[str] | tuple[str, ...]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_string(topic_filter) for topic_filter in filters)
    return _packet(0xA2, body)


class PacketIds:
    """Packet ids 1..65535 for one connection, skipping those still in use (MQTT-2.3.1-2)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last = 0

    def next(self, in_use: Collection[int]) -> int | None:
        """A free id, or None when all 65,535 are in use."""
        if len(in_use) >= MAX_PACKET_ID:
            return None
        candidate = self._last
        while True:
            candidate = candidate + 1 if candidate < MAX_PACKET_ID else 1
            if candidate not in in_use:
                self._last = candidate
                return candidate

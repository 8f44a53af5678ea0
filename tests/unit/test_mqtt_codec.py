"""The MQTT 3.1.1 codec: round trips, the strict checks (MQTT-x.y.z numbers in the messages) and a property
test: whatever bytes arrive, the reader hands out packets or raises MalformedPacket, nothing else."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fleetops.messaging.mqtt.codec import (
    Connack,
    Connect,
    MalformedPacket,
    PacketIds,
    PacketReader,
    PingReq,
    Puback,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode_connack,
    encode_connect,
    encode_puback,
    encode_publish,
    encode_remaining_length,
    encode_suback,
    encode_subscribe,
    encode_unsuback,
    encode_unsubscribe,
)


def decode_all(data: bytes, max_packet_bytes: int = 1024 * 1024) -> list[object]:
    reader = PacketReader(max_packet_bytes)
    reader.feed(data)
    packets: list[object] = []
    while (packet := reader.next_packet()) is not None:
        packets.append(packet)
    return packets


def mqtt_string(text: bytes) -> bytes:
    return len(text).to_bytes(2, "big") + text


def connect_body(flags: int = 0x02, *, name: bytes = b"MQTT", level: int = 4, client_id: bytes = b"c") -> bytes:
    return mqtt_string(name) + bytes((level, flags)) + b"\x00\x3c" + mqtt_string(client_id)


def packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


# --- round trips ------------------------------------------------------------------------------------------------


def test_client_packets_round_trip() -> None:
    data = (
        encode_connect("ABCDE12345lamp", keepalive_s=60, username="u;1;2;3", password=b"secret", clean_session=False)
        + encode_subscribe(7, [("a/b", 1), ("$rrpc/rxd/+", 0)])
        + encode_unsubscribe(8, ["a/b"])
        + encode_publish(b"a/b", b"payload", 1, 9, dup=True)
        + encode_puback(9)
        + b"\xc0\x00"
    )
    assert decode_all(data) == [
        Connect("MQTT", 4, False, 60, "ABCDE12345lamp", username="u;1;2;3", password=b"secret"),
        Subscribe(7, (("a/b", 1), ("$rrpc/rxd/+", 0))),
        Unsubscribe(8, ("a/b",)),
        Publish("a/b", b"payload", 1, 9, retain=False, dup=True),
        Puback(9),
        PingReq(),
    ]


def test_server_packets_round_trip() -> None:
    data = encode_connack(True, 0) + encode_suback(3, [1, 0x80]) + encode_unsuback(4) + b"\xd0\x00"
    packets = decode_all(data)
    assert packets[:3] == [Connack(True, 0), Suback(3, (1, 0x80)), Unsuback(4)]
    assert type(packets[3]).__name__ == "PingResp"


def test_mqtt_31_connect_and_will_are_decoded() -> None:
    flags = 0x02 | 0x04 | (1 << 3) | 0x20  # clean, will, will QoS 1, will retain
    body = connect_body(flags, name=b"MQIsdp", level=3) + mqtt_string(b"will/topic") + mqtt_string(b"bye")
    [connect] = decode_all(packet(0x10, body))
    assert isinstance(connect, Connect)
    assert (connect.protocol_name, connect.protocol_level) == ("MQIsdp", 3)
    assert (connect.will_topic, connect.will_message, connect.will_qos, connect.will_retain) == (
        "will/topic",
        b"bye",
        1,
        True,
    )


def test_a_packet_split_anywhere_arrives_whole() -> None:
    data = encode_publish("é/topic".encode(), b"x" * 300, 1, 5)
    for cut in range(1, len(data)):
        reader = PacketReader(1024)
        reader.feed(data[:cut])
        assert reader.next_packet() is None
        reader.feed(data[cut:])
        assert reader.next_packet() == Publish("é/topic", b"x" * 300, 1, 5)
        assert reader.buffered_bytes == 0


@pytest.mark.parametrize(
    ("length", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16_383, b"\xff\x7f"), (268_435_455, b"\xff\xff\xff\x7f")],
)
def test_remaining_length_boundaries(length: int, encoded: bytes) -> None:
    assert encode_remaining_length(length) == encoded


def test_packet_ids_skip_those_in_use_and_wrap() -> None:
    ids = PacketIds()
    assert [ids.next(set()) for _ in range(3)] == [1, 2, 3]
    assert ids.next({4, 5}) == 6
    ids = PacketIds()
    in_use = set(range(1, 65_535))
    assert ids.next(in_use) == 65_535
    assert ids.next(in_use | {65_535}) is None


# --- strictness --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
        (b"\x30\xff\xff\xff\x7f", "more than the limit"),
        (b"\x00\x00", "reserved packet type 0"),
        (b"\xf0\x00", "reserved packet type 15"),
        (b"\x62\x02\x00\x01", "QoS 2 is not supported"),  # PUBREL
        (b"\xc1\x00", "reserved flag bits"),  # PINGREQ with a flag
        (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
        (b"\x38\x03\x00\x01a", "DUP set on a QoS 0"),
        (b"\x32\x03\x00\x01a", "truncated before the packet id"),
        (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
        (b"\x30\x03\x00\x05a", "runs past the end"),
        (b"\x30\x04\x00\x02\xc3\x28", "not valid UTF-8"),
        (b"\x30\x05\x00\x03a\x00b", "U+0000"),
        (b"\x30\x05\x00\x03\xed\xa0\x80", "not valid UTF-8"),  # an encoded surrogate
        (b"\x80\x05\x00\x01\x00\x01a", "flags 0x0 instead of 0x2"),  # SUBSCRIBE flags
        (b"\x82\x02\x00\x01", "no topic filter"),
        (b"\x82\x06\x00\x01\x00\x01a\x03", "requested QoS byte"),
        (b"\x82\x05\x00\x01\x00\x01a", "truncated before the requested QoS"),
        (b"\xa2\x02\x00\x01", "no topic filter"),
        (b"\x40\x03\x00\x01\x00", "bytes after the last field"),
        (b"\xe0\x01\x00", "where there should be none"),
        (b"\x20\x02\x02\x00", "reserved acknowledge flags"),
        (b"\x90\x03\x00\x01\x03", "return codes"),
    ],
)
def test_malformed_packets_are_refused_with_the_reason(data: bytes, message: str) -> None:
    reader = PacketReader(1000)
    reader.feed(data)
    with pytest.raises(MalformedPacket, match=message.replace("+", r"\+")):
        reader.next_packet()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (connect_body(0x03), "reserved connect flag"),
        (connect_body(0x02 | (3 << 3) | 0x04), "will QoS 3"),
        (connect_body(0x02 | (1 << 3)), "without the will flag"),
        (connect_body(0x02 | 0x20), "without the will flag"),
        (connect_body(0x82), "truncated before the length of the user name"),
        (connect_body(0x02, client_id=b"a\x00b"), "U+0000"),
        (connect_body(0x02) + b"\x00", "bytes after the last field"),
    ],
)
def test_malformed_connects_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message.replace("+", r"\+")):
        decode_all(packet(0x10, body))
    with pytest.raises(MalformedPacket, match="reserved flag bits"):
        decode_all(packet(0x11, connect_body()))


def test_the_valid_packets_before_a_malformed_one_are_handed_out_first() -> None:
    reader = PacketReader(1000)
    reader.feed(encode_puback(1) + b"\x00\x00")
    assert reader.next_packet() == Puback(1)
    with pytest.raises(MalformedPacket):
        reader.next_packet()


# --- property: random and mutated input never raises anything else -----------------------------------------------

VALID_STREAM = (
    encode_connect("ABCDE12345lamp", keepalive_s=60, username="u", password=b"p")
    + encode_subscribe(1, [("a/b", 1)])
    + encode_publish(b"a/b", b"hello", 1, 2)
    + encode_publish(b"a/b", b"x" * 200)
    + encode_unsubscribe(3, ["a/b"])
    + b"\xc0\x00\xe0\x00"
)


def _read_everything(data: bytes, chunk: int) -> None:
    reader = PacketReader(4096)
    try:
        for start in range(0, len(data), chunk):
            reader.feed(data[start : start + chunk])
            while reader.next_packet() is not None:
                pass
    except MalformedPacket:
        pass  # the one exception a connection turns into "close"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
@example(b"\x30\xff\xff\xff\xff\xff", 1)  # a varint that never ends
@example(b"\x10\x80\x80\x80\x80", 2)
def test_random_bytes_never_raise_anything_but_malformed_packet(data: bytes, chunk: int) -> None:
    _read_everything(data, chunk)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(VALID_STREAM) - 1), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, len(VALID_STREAM)),
    st.integers(1, 64),
)
def test_mutated_valid_streams_never_raise_anything_but_malformed_packet(
    mutations: list[tuple[int, int]], cut: int, chunk: int
) -> None:
    data = bytearray(VALID_STREAM)
    for position, value in mutations:
        data[position] = value
    _read_everything(bytes(data[:cut]) + bytes(data[cut:]), chunk)
    _read_everything(bytes(data[:cut]), chunk)  # truncated

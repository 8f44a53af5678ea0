"""Client id split, topic syntax and matching, the device ACL (docs/device-protocol.md#topics), PUBLISH encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops.messaging.mqtt.codec import encode_publish, encode_remaining_length
from fleetops.messaging.topics import (
    Access,
    DeviceId,
    is_valid_topic_filter,
    is_valid_topic_name,
    may_publish,
    may_subscribe,
    parse_shadow_request_topic,
    shadow_request_topic,
    shadow_result_topic,
    split_client_id,
    topic_access,
    topic_matches,
    wildcard_prefix,
)

LAMP = DeviceId("ABCDE12345", "lamp01")
OTHER = DeviceId("ABCDE12345", "lamp02")


# --- client id -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_id", "expected"),
    [
        ("ABCDE12345lamp01", DeviceId("ABCDE12345", "lamp01")),
        ("ABCDE12345dev1", DeviceId("ABCDE12345", "dev1")),
        ("ABCDE12345a:b_c-D9", DeviceId("ABCDE12345", "a:b_c-D9")),
        ("ABCDE12345" + "x" * 48, DeviceId("ABCDE12345", "x" * 48)),
        ("ABCDE12345" + "x" * 49, None),  # device name longer than 48
        ("ABCDE12345", None),  # no device name
        ("ABCDE1234", None),  # too short
        ("abcde12345lamp01", None),  # product ids are upper case
        ("ABCDE12345lamp 01", None),
        ("ABCDE12345lamp/01", None),
        ("", None),
    ],
)
def test_split_client_id(client_id: str, expected: DeviceId | None) -> None:
    assert split_client_id(client_id) == expected


def test_client_id_is_the_plain_concatenation() -> None:
    assert LAMP.client_id == "ABCDE12345lamp01"


# --- topic names -----------------------------------------------------------------------------------------


def test_shadow_topics() -> None:
    assert shadow_request_topic("ABCDE12345", "lamp01") == "$shadow/operation/ABCDE12345/lamp01"
    assert shadow_result_topic("ABCDE12345", "lamp01") == "$shadow/operation/result/ABCDE12345/lamp01"
    assert shadow_result_topic("ABCDE12345", "lamp01", "$template") == ("$template/operation/result/ABCDE12345/lamp01")
    assert parse_shadow_request_topic("$shadow/operation/ABCDE12345/lamp01") == LAMP
    assert parse_shadow_request_topic("$shadow/operation/result/ABCDE12345/lamp01") is None
    assert parse_shadow_request_topic("$shadow/operation/_probe_/0011") is None  # external broker's probe
    assert parse_shadow_request_topic("$template/operation/ABCDE12345/lamp01") is None


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("a/b/c", True),
        ("a/+/c", True),
        ("a/#", True),
        ("#", True),
        ("+", True),
        ("a/b#", False),
        ("a/#/c", False),
        ("a/b+/c", False),
        ("", False),
        ("a/\x00", False),
        ("a/\ud800", False),
    ],
)
def test_topic_filter_syntax(topic_filter: str, valid: bool) -> None:
    assert is_valid_topic_filter(topic_filter) is valid


@pytest.mark.parametrize(
    ("topic_filter", "topic", "matches"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("a/+/c", "a/b/c", True),
        ("a/#", "a", True),  # '#' also matches the parent level
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("#", "$shadow/operation/x/y", False),  # MQTT-4.7.2-1
        ("+/operation/x/y", "$shadow/operation/x/y", False),
        ("$shadow/operation/+/+", "$shadow/operation/x/y", True),
        ("$shadow/operation/+/+", "$shadow/operation/result/x/y", False),
    ],
)
def test_topic_matches(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(topic_filter, topic) is matches


@pytest.mark.parametrize(
    ("topic_filter", "prefix"),
    [("a/b", None), ("a/b/+", "a/b"), ("a/+/c", "a"), ("#", ""), ("$rrpc/rxd/P/D/+", "$rrpc/rxd/P/D")],
)
def test_wildcard_prefix(topic_filter: str, prefix: str | None) -> None:
    assert wildcard_prefix(topic_filter) == prefix


# --- ACL -------------------------------------------------------------------------------------------------

ACL_TABLE = [
    # (topic, what lamp01 may do with it)
    ("ABCDE12345/lamp01/control", Access.SUBSCRIBE),
    ("ABCDE12345/lamp01/event", Access.PUBLISH),
    ("ABCDE12345/lamp01/data", Access.BOTH),
    ("ABCDE12345/lamp01/custom_topic-1:x", Access.BOTH),
    ("ABCDE12345/lamp01/" + "c" * 128, Access.BOTH),
    ("ABCDE12345/lamp01/" + "c" * 129, Access.NONE),
    ("ABCDE12345/lamp01/a/b", Access.NONE),
    ("ABCDE12345/lamp01/bad topic", Access.NONE),
    ("$shadow/operation/ABCDE12345/lamp01", Access.PUBLISH),
    ("$shadow/operation/result/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$ota/report/ABCDE12345/lamp01", Access.PUBLISH),
    ("$ota/update/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$template/operation/ABCDE12345/lamp01", Access.PUBLISH),
    ("$template/operation/result/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$sys/operation/ABCDE12345/lamp01", Access.PUBLISH),
    ("$sys/operation/result/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$log/operation/result/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$config/operation/ABCDE12345/lamp01", Access.PUBLISH),
    ("$gateway/operation/result/ABCDE12345/lamp01", Access.SUBSCRIBE),
    ("$rrpc/rxd/ABCDE12345/lamp01/12345", Access.SUBSCRIBE),
    ("$rrpc/txd/ABCDE12345/lamp01/12345", Access.PUBLISH),
    ("$broadcast/rxd/ABCDE12345/lamp01", Access.SUBSCRIBE),
    # other devices, other products, unknown families, malformed
    ("ABCDE12345/lamp02/control", Access.NONE),
    ("ABCDE12345/lamp02/data", Access.NONE),
    ("ZZZZZ99999/lamp01/data", Access.NONE),
    ("$shadow/operation/ABCDE12345/lamp02", Access.NONE),
    ("$shadow/operation/result/ABCDE12345/lamp02", Access.NONE),
    ("$rrpc/rxd/ABCDE12345/lamp02/1", Access.NONE),
    ("$shadow/operation/ABCDE12345", Access.NONE),
    ("$shadow", Access.NONE),
    ("$unknown/operation/ABCDE12345/lamp01", Access.NONE),
    ("$ota/other/ABCDE12345/lamp01", Access.NONE),
    ("$rrpc/rxd/ABCDE12345/lamp01/", Access.NONE),
    ("ABCDE12345/lamp01/data/", Access.NONE),
    ("", Access.NONE),
]


@pytest.mark.parametrize(("topic", "access"), ACL_TABLE)
def test_acl_table(topic: str, access: Access) -> None:
    assert topic_access(LAMP, topic) is access
    assert may_publish(LAMP, topic) is (Access.PUBLISH in access)
    assert may_subscribe(LAMP, topic) is (Access.SUBSCRIBE in access)


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("$rrpc/rxd/ABCDE12345/lamp01/+", True),  # the C and Python SDKs subscribe with this filter
        ("$rrpc/rxd/ABCDE12345/lamp02/+", False),
        ("$rrpc/rxd/ABCDE12345/lamp01/#", False),  # would also match deeper levels
        ("ABCDE12345/lamp01/+", False),  # would match the publish-only "event"
        ("ABCDE12345/lamp01/#", False),
        ("ABCDE12345/+/control", False),
        ("ABCDE12345/#", False),
        ("#", False),
        ("+/lamp01/control", False),
        ("$shadow/operation/result/+/lamp01", False),
        ("$share/g/ABCDE12345/lamp01/control", False),
        ("ABCDE12345/lamp01/con+trol", False),
    ],
)
def test_wildcard_filters(topic_filter: str, allowed: bool) -> None:
    assert may_subscribe(LAMP, topic_filter) is allowed


def test_topic_limits() -> None:
    """255 UTF-8 bytes at most (docs/device-protocol.md#topics); the RRPC message id is the only free-length level."""
    base = "$rrpc/txd/ABCDE12345/lamp01/"
    assert may_publish(LAMP, base + "x" * (255 - len(base)))
    assert not may_publish(LAMP, base + "x" * (256 - len(base)))
    assert not may_publish(LAMP, base + "é" * ((256 - len(base)) // 2 + 1))  # bytes, not characters


_NAMES = st.from_regex(r"[a-zA-Z0-9:_-]{1,48}", fullmatch=True)
_PIDS = st.from_regex(r"[A-Z0-9]{10}", fullmatch=True)
_TEMPLATES = [row[0].replace("ABCDE12345", "{pid}").replace("lamp01", "{dn}") for row in ACL_TABLE]


@given(_PIDS, _NAMES, _PIDS, _NAMES)
def test_no_topic_of_another_device_is_ever_allowed(pid: str, dn: str, other_pid: str, other_dn: str) -> None:
    me = DeviceId(pid, dn)
    if (pid, dn) == (other_pid, other_dn):
        return
    for template in _TEMPLATES:
        topic = template.format(pid=other_pid, dn=other_dn)
        assert topic_access(me, topic) is Access.NONE, topic
        assert not may_subscribe(me, topic)


@given(st.text(alphabet=st.characters(blacklist_characters="/+#\x00"), min_size=1, max_size=20))
def test_every_topic_matched_by_the_rrpc_filter_is_subscribable(message_id: str) -> None:
    topic = f"$rrpc/rxd/ABCDE12345/lamp01/{message_id}"
    assert topic_matches("$rrpc/rxd/ABCDE12345/lamp01/+", topic)
    if not is_valid_topic_name(topic):  # a lone surrogate: never on the wire (MQTT-1.5.3-1)
        assert topic_access(LAMP, topic) is Access.NONE
    elif len(topic.encode()) <= 255:
        assert Access.SUBSCRIBE in topic_access(LAMP, topic)


# --- PUBLISH encoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length(length: int, encoded: bytes) -> None:
    """The examples of MQTT 3.1.1 §2.2.3."""
    assert encode_remaining_length(length) == encoded


def test_remaining_length_limit() -> None:
    with pytest.raises(ValueError, match="too large"):
        encode_remaining_length(268_435_456)


def test_publish_packets() -> None:
    assert encode_publish(b"a/b", b"hi") == b"\x30\x07\x00\x03a/bhi"
    assert encode_publish(b"a/b", b"hi", 1, 10) == b"\x32\x09\x00\x03a/b\x00\x0ahi"
    assert encode_publish(b"a/b", b"", 1, 258, dup=True) == b"\x3a\x07\x00\x03a/b\x01\x02"
    with pytest.raises(ValueError, match="QoS"):
        encode_publish(b"a", b"", 2, 1)

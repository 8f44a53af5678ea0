"""The node protocol's pure parts: topics and payloads as the plugin sends them, and the acknowledgement
watermark (any completion order, never past a message that is not done)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fleetops.messaging.node_protocol import (
    SEQ_MAX,
    AckWatermark,
    Dispatched,
    DispatchKind,
    NodeTopics,
    PresenceEvent,
    SubscriptionEvent,
    Welcome,
    node_id_problem,
    parse_dispatched,
)
from fleetops.messaging.topics import DeviceId

PREFIX = NodeTopics("node-a").prefix


def test_topics_of_a_node() -> None:
    topics = NodeTopics("node-a")
    assert topics.hello == "$fleetops/hello/node-a"
    assert topics.welcome == "$fleetops/node/node-a/welcome"
    assert topics.registration == "$fleetops/node/node-a/#"
    assert topics.ack == "$fleetops/ack/node-a"


def test_node_ids_the_plugin_accepts() -> None:
    assert node_id_problem("fleetops-host-12-abcdef") is None
    assert node_id_problem("n" * 128) is None
    assert node_id_problem("é" * 64) is None  # 128 bytes
    assert node_id_problem("é" * 65) == "it is longer than 128 bytes"
    assert node_id_problem("") == "it is empty"
    for bad in ("a/b", "a+", "#"):
        assert node_id_problem(bad) == "it must be one topic level, without '/', '+' or '#'"


def test_dispatched_messages_are_parsed() -> None:
    payload = b'{"type":"get"}'
    assert parse_dispatched(PREFIX, PREFIX + "shadow/1700000000000001/ABCDE12345/lamp:01", payload) == Dispatched(
        DispatchKind.SHADOW, 1700000000000001, DeviceId("ABCDE12345", "lamp:01"), payload
    )
    seq_max = parse_dispatched(PREFIX, f"{PREFIX}presence/{SEQ_MAX}/ABCDE12345/d", b"{}")
    assert seq_max is not None and seq_max.kind is DispatchKind.PRESENCE and seq_max.seq == SEQ_MAX
    for topic in (
        PREFIX + "welcome",
        PREFIX + "shadow/1/ABCDE12345",  # too few levels
        PREFIX + "shadow/1/ABCDE12345/d/x",  # too many
        PREFIX + "other/1/ABCDE12345/d",  # unknown kind
        PREFIX + "shadow/-1/ABCDE12345/d",
        PREFIX + "shadow/1e3/ABCDE12345/d",
        PREFIX + "shadow/١/ABCDE12345/d",  # a digit, but not ASCII
        f"{PREFIX}shadow/{SEQ_MAX + 1}/ABCDE12345/d",  # beyond 64 bits
        PREFIX + "shadow/1/abcde12345/d",  # not a ProductId
        PREFIX + "shadow/1/ABCDE12345/bad name",
        "$fleetops/node/node-b/shadow/1/ABCDE12345/d",  # another node's
    ):
        assert parse_dispatched(PREFIX, topic, b"") is None, topic


def test_welcome_presence_and_subscription_payloads() -> None:
    assert Welcome.parse(b'{"protocol":1,"boot":"0123456789abcdef","window":500}') == Welcome(
        1, "0123456789abcdef", 500
    )
    for bad in (b"", b"[]", b'{"protocol":"1","boot":"b","window":1}', b'{"protocol":1,"boot":"","window":1}'):
        assert Welcome.parse(bad) is None
    online = b'{"online":true,"address":"10.1.2.3","clean_session":false,"time_ms":1700000000123}'
    assert PresenceEvent.parse(online) == PresenceEvent(True, "10.1.2.3", False, 1700000000123)
    assert PresenceEvent.parse(b'{"online":false,"time_ms":5}') == PresenceEvent(False, None, True, 5)
    for bad in (b'{"online":1,"time_ms":5}', b'{"online":true,"time_ms":-1}', b'{"online":true}', b"null"):
        assert PresenceEvent.parse(bad) is None
    assert SubscriptionEvent.parse(b'{"filter":"ABCDE12345/d/control","qos":1,"time_ms":9}') == SubscriptionEvent(
        "ABCDE12345/d/control", 1, 9
    )
    for bad in (b'{"filter":"","qos":1,"time_ms":9}', b'{"filter":"a","qos":3,"time_ms":9}', b"{}"):
        assert SubscriptionEvent.parse(bad) is None


def test_the_watermark_waits_for_the_oldest_message() -> None:
    watermark = AckWatermark()
    for seq in (10, 11, 15):
        assert watermark.received(seq)
    assert watermark.done(11) is None  # 10 is not done: nothing may be acknowledged
    assert watermark.done(10) == 11
    assert watermark.done(10) is None  # twice: no effect
    assert not watermark.received(15) and not watermark.received(3)  # seqs only increase
    assert watermark.done(15) == 15
    assert watermark.value == 15 and len(watermark) == 0
    assert watermark.done(99) is None  # never received


@given(st.lists(st.integers(1, 10), min_size=1, max_size=40), st.randoms(use_true_random=False))
def test_the_watermark_is_the_longest_done_prefix(gaps: list[int], rng: object) -> None:
    seqs, seq = [], 0
    for gap in gaps:
        seq += gap
        seqs.append(seq)
    watermark = AckWatermark()
    for seq in seqs:
        assert watermark.received(seq)
    order = list(seqs)
    rng.shuffle(order)  # type: ignore[attr-defined]
    done: set[int] = set()
    for seq in order:
        watermark.done(seq)
        done.add(seq)
        prefix = 0
        while prefix < len(seqs) and seqs[prefix] in done:
            prefix += 1
        assert watermark.value == (seqs[prefix - 1] if prefix else None)
    assert watermark.value == seqs[-1] and len(watermark) == 0

"""One device ACL on every broker: the plugin's C rules against the Python rules (generated inputs, through the
probe tool), and the probe table on Mosquitto with the plugin and on the embedded broker (paho devices)."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetops.messaging.device_auth import SignMethod, UserName, make_username, sign_password, verify_password
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.messaging.topic_rules import LevelKind, load_rules
from fleetops.messaging.topics import DeviceId, may_subscribe, split_client_id, topic_access
from tests.acl_probes import PUBLISH_PROBES, SUBSCRIBE_PROBES, Probe
from tests.integration.mosquitto_plugin_support import (
    PluginBroker,
    PluginBuilds,
    ProbeTool,
    ServiceNode,
    plugin_database,
    probe_tool,
    running,
    session_builds,
    wait_for,
)
from tests.mqtt_support import EchoShadowHandler, MemoryDirectory, PahoDevice, paho_devices

pytestmark = pytest.mark.postgres

PID, DN, OTHER = "ABCDE12345", "lamp01", "lamp02"
ME = DeviceId(PID, DN)
_RULES = load_rules()
_LITERALS = sorted({level.text for rule in _RULES.rules for level in rule.levels if level.kind is LevelKind.LITERAL})
_WORDS = [*_LITERALS, PID, DN, OTHER, "ZZZZZ99999", "", "+", "#", "42", "c" * 128, "c" * 129, "é", "a b", "x" * 200]
# No NUL and no lone surrogate: Mosquitto refuses both in MQTT strings before the plugin sees a topic.
_TEXT = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=["Cs"]), max_size=6)
# Per level kind: values that match (listed several times: most levels of a shaped topic are right, so whole
# topics often match) and near misses.
_GOOD: dict[LevelKind, list[str]] = {
    LevelKind.OWN_PRODUCT: [PID],
    LevelKind.OWN_DEVICE: [DN],
    LevelKind.SYNTAX: ["a", "a:b_c-9", "c" * 128],
    LevelKind.ANY: ["7", "42", "é"],
    LevelKind.PLUS: ["+"],
    LevelKind.HASH: ["#"],
}
_BAD: dict[LevelKind, list[str]] = {
    LevelKind.LITERAL: ["", "x"],
    LevelKind.OWN_PRODUCT: ["ZZZZZ99999", PID.lower()],
    LevelKind.OWN_DEVICE: [OTHER, DN + "x"],
    LevelKind.SYNTAX: ["c" * 129, "a b", "é", "", "+"],
    LevelKind.ANY: ["", "+", "#", "x" * 250],
    LevelKind.PLUS: ["#", "x"],
    LevelKind.HASH: ["+", "x"],
}


def _level(kind: LevelKind, text: str) -> st.SearchStrategy[str]:
    good = [text] if kind is LevelKind.LITERAL else _GOOD[kind]
    return st.sampled_from(good * (12 // len(good)) + _BAD[kind])


# Topics shaped like a rule with each level right or nearly right, some with a level more or less, and
# random ones: every branch of the rules gets exercised.
_SHAPED = st.sampled_from(_RULES.rules).flatmap(
    lambda rule: st.tuples(*(_level(level.kind, level.text) for level in rule.levels)).map("/".join)
)
TOPICS = st.one_of(
    _SHAPED,
    _SHAPED.map(lambda topic: topic + "/x"),
    _SHAPED.map(lambda topic: topic.rpartition("/")[0] or topic),
    st.lists(st.one_of(st.sampled_from(_WORDS), _TEXT), min_size=1, max_size=12).map("/".join),
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> PluginBuilds:
    return session_builds(tmp_path_factory)


@pytest.fixture(scope="module")
def probe(builds: PluginBuilds) -> Iterator[ProbeTool]:
    yield from probe_tool(builds)


# --- the C rules are the Python rules -------------------------------------------------------------------

SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(TOPICS)
def test_topic_access_in_c_is_the_python_topic_access(probe: ProbeTool, topic: str) -> None:
    assert int(probe.ask("topic", ME.client_id, topic)) == int(topic_access(ME, topic)), topic


@SETTINGS
@given(TOPICS)
def test_subscribe_in_c_is_the_python_may_subscribe(probe: ProbeTool, topic_filter: str) -> None:
    assert probe.ask("subscribe", ME.client_id, topic_filter) == str(int(may_subscribe(ME, topic_filter))), topic_filter


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.sampled_from([PID + DN, PID, PID + "x" * 48, PID + "x" * 49, "abcde12345x"]), st.text(max_size=70)))
def test_client_id_split_in_c_is_the_python_split(probe: ProbeTool, client_id: str) -> None:
    if "\x00" in client_id or any(0xD800 <= ord(c) <= 0xDFFF for c in client_id):
        return
    assert probe.ask("split", client_id) == str(int(split_client_id(client_id) is not None)), client_id


_USERNAME_PARTS = st.sampled_from(
    [
        PID + DN,
        PID + OTHER,
        ";",
        ";;",
        "12010126",
        "a1B2c",
        "",
        "1700003600",
        "0",
        "9223372036854775807",
        "9" * 20,
        "9" * 21,
        "18446744073709551616",
        "17e9",
        "x",
    ]
)


@settings(max_examples=800, deadline=None)
@given(st.lists(_USERNAME_PARTS, max_size=8).map("".join))
def test_user_name_checks_in_c_are_the_python_ones(probe: ProbeTool, username: str) -> None:
    now = int(time.time())
    parsed = UserName.parse(username)
    if parsed is None or parsed.client_id != PID + DN:
        expected = 1
    else:
        expected = 2 if parsed.expiry < now else 0
    answer = probe.ask_raw(f"username x{username.encode().hex()} x{(PID + DN).encode().hex()} {now}")
    assert answer == str(expected), username


@settings(max_examples=800, deadline=None)
@given(st.text(alphabet="ABCDQRUIab01+/=", max_size=24) | st.text(max_size=8))
def test_base64_in_c_is_python_b64decode_validate(probe: ProbeTool, text: str) -> None:
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return
    try:
        expected = "x" + base64.b64decode(text, validate=True).hex()
    except ValueError:
        expected = "-"
    assert probe.ask("base64", text) == expected, text


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(list(SignMethod)),
    st.integers(min_value=0, max_value=10**19),
    st.sampled_from(["exact", "upper token", "upper method", "wrong token", "short", "extra ;", "no method", "other"]),
    st.binary(min_size=1, max_size=96),
)
def test_password_checks_in_c_are_the_python_ones(
    probe: ProbeTool, method: SignMethod, expiry: int, variant: str, key: bytes
) -> None:
    psk = base64.b64encode(key).decode()
    username = make_username(PID + DN, expiry)
    token, _, name = sign_password(username, psk, method).rpartition(";")
    password = {
        "exact": f"{token};{name}",
        "upper token": f"{token.upper()};{name}",
        "upper method": f"{token};{name.upper()}",
        "wrong token": f"{'0' * len(token)};{name}",
        "short": f"{token[:-1]};{name}",
        "extra ;": f"x;{token};{name}",
        "no method": token,
        "other": f"{token};hmacmd5",
    }[variant]
    assert probe.ask("password", username, password, psk) == str(int(verify_password(username, password, psk)))


# --- the probe table on Mosquitto with the plugin -------------------------------------------------------


def token_payload(token: str) -> bytes:
    """A shadow-request-shaped payload (the embedded broker's echo handler parses JSON) carrying ``token``."""
    return orjson.dumps({"type": "get", "clientToken": token})


def tokens(payloads: list[bytes]) -> set[str]:
    """The top-level clientTokens (an echoed reply nests its request: it does not count)."""
    found = set()
    for payload in payloads:
        decoded = orjson.loads(payload)
        if isinstance(decoded, dict) and isinstance(decoded.get("clientToken"), str):
            found.add(decoded["clientToken"])
    return found


def drain(device: PahoDevice) -> list[bytes]:
    out = []
    while not device.messages.empty():
        out.append(device.messages.get_nowait().payload)
    return out


async def test_the_probe_table_holds_on_mosquitto(builds: PluginBuilds, tmp_path: Path) -> None:
    async with plugin_database() as data:
        me = await data.add_device(DN)
        other = await data.add_device(OTHER)
        pid = data.product_id
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            with paho_devices() as clients:
                spy = ServiceNode("node-1", data.service_secret)  # the service identity may use every topic
                device = PahoDevice(me)
                clients += [spy, device]
                assert await spy.connect(broker.port) == 0
                assert await spy.register() == 1
                assert await device.connect(broker.port) == 0
                subscribed = {
                    probe.id: await device.subscribe(probe.render(pid, DN, OTHER), 1) != 0x80
                    for probe in SUBSCRIBE_PROBES
                }
                for probe in [*PUBLISH_PROBES, Probe("publish", "{pid}/{dn}/barrier", True)]:
                    assert await spy.subscribe(probe.render(pid, DN, OTHER), 1) == 1
                for probe in PUBLISH_PROBES:
                    device.publish(probe.render(pid, DN, OTHER), token_payload(probe.id), 1)
                device.publish(f"{pid}/{DN}/barrier", token_payload("barrier"), 1)  # routed in order
                seen: set[str] = set()
                while "barrier" not in seen:
                    seen |= tokens([(await spy.receive()).payload])
                # the allowed shadow request is handed to the node as a dispatched message, not routed
                await wait_for(lambda: bool(spy.of_kind("shadow")))
                seen |= tokens([message.payload for message in spy.of_kind("shadow")])
                published = {probe.id: probe.id in seen for probe in PUBLISH_PROBES}
    assert subscribed == {probe.id: probe.allowed for probe in SUBSCRIBE_PROBES}
    assert published == {probe.id: probe.allowed for probe in PUBLISH_PROBES}
    assert other.device_name == OTHER


async def test_deliveries_are_checked_too(builds: PluginBuilds, tmp_path: Path) -> None:
    """READ: a message the "+" filter matches but the rules refuse (an empty RRPC id) is not delivered."""
    async with plugin_database() as data:
        me = await data.add_device(DN)
        pid = data.product_id
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            with paho_devices() as clients:
                node = ServiceNode("node-1", data.service_secret)
                device = PahoDevice(me)
                clients += [node, device]
                assert await node.connect(broker.port) == 0
                assert await device.connect(broker.port) == 0
                assert await device.subscribe(f"$rrpc/rxd/{pid}/{DN}/+", 1) == 1
                node.publish(f"$rrpc/rxd/{pid}/{DN}/", b"empty id", 1)
                node.publish(f"$rrpc/rxd/{pid}/{DN}/7", b"id 7", 1)
                assert (await device.receive()).payload == b"id 7"
                assert await device.nothing_received(0.3)


# --- the probe table on the embedded broker -------------------------------------------------------------

# A device's PUBLISH is seen by whoever subscribes to the topic. On the embedded broker only devices subscribe,
# so a publish to a topic no device may subscribe to (its own "event", "$ota/report", "$fleetops/...") cannot
# be observed there; the Python rules the broker calls are checked for those (tests/unit/test_topic_rules.py).
_OBSERVERS = {  # probe topic -> (who subscribes, the filter)
    "{pid}/{dn}/data": ("me", "{pid}/{dn}/data"),
    "{pid}/{dn}/custom_1": ("me", "{pid}/{dn}/custom_1"),
    "{pid}/{dn}/control": ("me", "{pid}/{dn}/control"),
    "$shadow/operation/result/{pid}/{dn}": ("me", "$shadow/operation/result/{pid}/{dn}"),
    "{pid}/{other}/data": ("other", "{pid}/{other}/data"),
    "{pid}/{other}/control": ("other", "{pid}/{other}/control"),
    "$shadow/operation/result/{pid}/{other}": ("other", "$shadow/operation/result/{pid}/{other}"),
    "$rrpc/rxd/{pid}/{other}/42": ("other", "$rrpc/rxd/{pid}/{other}/+"),
}


@pytest.fixture
async def embedded() -> AsyncIterator[tuple[EmbeddedBroker, MemoryDirectory, EchoShadowHandler]]:
    directory, handler = MemoryDirectory(), EchoShadowHandler()
    broker = EmbeddedBroker(directory, handler, port=0)
    await broker.start()
    try:
        yield broker, directory, handler
    finally:
        await broker.stop()


async def test_the_probe_table_holds_on_the_embedded_broker(
    embedded: tuple[EmbeddedBroker, MemoryDirectory, EchoShadowHandler],
) -> None:
    broker, directory, handler = embedded
    with paho_devices() as clients:
        me, other = PahoDevice(directory.add(PID, DN)), PahoDevice(directory.add(PID, OTHER))
        handler.known |= {(PID, DN), (PID, OTHER)}
        clients += [me, other]
        assert await me.connect(broker.port) == 0
        assert await other.connect(broker.port) == 0
        subscribed = {
            probe.id: await me.subscribe(probe.render(PID, DN, OTHER), 1) != 0x80 for probe in SUBSCRIBE_PROBES
        }
        for who, topic_filter in _OBSERVERS.values():
            observer = me if who == "me" else other
            assert await observer.subscribe(topic_filter.format(pid=PID, dn=DN, other=OTHER), 1) != 0x80
        observable = [p for p in PUBLISH_PROBES if p.topic in _OBSERVERS or p.topic.startswith("$shadow/operation/{")]
        for probe in observable:
            me.publish(probe.render(PID, DN, OTHER), token_payload(probe.id), 1)
        me.publish(f"{PID}/{DN}/data", token_payload("barrier"), 1)  # routed after everything before it
        seen: set[str] = set()
        while "barrier" not in seen:
            seen |= tokens([(await me.receive()).payload])
        await wait_for(lambda: bool(handler.requests))  # the allowed shadow request
        await other.nothing_received(0.2)  # anything forged for the other device would have arrived by now
        seen |= tokens(drain(me) + drain(other) + [payload for _, _, payload in handler.requests])
        published = {probe.id: probe.id in seen for probe in observable}
    assert subscribed == {probe.id: probe.allowed for probe in SUBSCRIBE_PROBES}
    assert published == {probe.id: probe.allowed for probe in observable}

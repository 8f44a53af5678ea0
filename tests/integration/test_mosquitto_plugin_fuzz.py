"""Fuzzing the plugin: 10,000 random and malformed CONNECTs (NUL bytes, overlong fields, bad UTF-8, huge expiry
digits, garbage), and random topics, payloads and acknowledgements from the devices and nodes that get in,
against Mosquitto running under valgrind memcheck with the UBSan build of the plugin (AddressSanitizer cannot be
preloaded into Debian's Mosquitto: docs/mosquitto.md#testing). Mosquitto must never crash, keep working, exit
cleanly, and valgrind and UBSan must report nothing (leaks included, checked at exit)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.mqtt.codec import encode_publish, encode_remaining_length
from fleetops.messaging.topic_rules import LevelKind, load_rules
from fleetops.ports.messaging import DeviceCredentials
from tests.integration.mosquitto_plugin_support import (
    SERVICE_USER,
    PluginBroker,
    PluginBuilds,
    ServiceNode,
    plugin_database,
    require_program,
    session_builds,
    wait_for,
)
from tests.mqtt_support import PahoDevice, paho_devices

pytestmark = pytest.mark.postgres

CONNECTS = 10_000
CONCURRENCY = 48
SEED = 20_240_601
READ_TIMEOUT_S = 0.25

_WORDS = sorted(
    {level.text for rule in load_rules().rules for level in rule.levels if level.kind is LevelKind.LITERAL}
    | {"+", "#", "", "$fleetops", "node", "ack", "hello", "welcome", "$share", "$SYS"}
)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> PluginBuilds:
    return session_builds(tmp_path_factory)


# --- packets -----------------------------------------------------------------------------------------------


def field(data: bytes) -> bytes:
    return len(data[:65535]).to_bytes(2, "big") + data[:65535]


def packet(header: int, body: bytes) -> bytes:
    return bytes((header,)) + encode_remaining_length(len(body)) + body


def connect_packet(
    client_id: bytes,
    username: bytes | None,
    password: bytes | None,
    *,
    keepalive_s: int = 60,
    version: int = 4,
    will: tuple[bytes, bytes] | None = None,
    flags_xor: int = 0,
) -> bytes:
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= 0x04 if will else 0
    name = b"MQIsdp" if version == 3 else b"MQTT"
    body = field(name) + bytes((version, (flags ^ flags_xor) & 0xFF)) + keepalive_s.to_bytes(2, "big")
    if version == 5:
        body += b"\x00"  # no properties
    body += field(client_id)
    if will:
        body += (b"\x00" if version == 5 else b"") + field(will[0]) + field(will[1])
    if username is not None:
        body += field(username)
    if password is not None:
        body += field(password)
    return packet(0x10, body)


def subscribe_packet(packet_id: int, filters: list[tuple[bytes, int]]) -> bytes:
    return packet(0x82, packet_id.to_bytes(2, "big") + b"".join(field(f) + bytes((q,)) for f, q in filters))


def unsubscribe_packet(packet_id: int, filters: list[bytes]) -> bytes:
    return packet(0xA2, packet_id.to_bytes(2, "big") + b"".join(field(f) for f in filters))


# --- random inputs -----------------------------------------------------------------------------------------


class Inputs:
    def __init__(self, rng: random.Random, devices: list[DeviceCredentials], secret: str) -> None:
        self.rng = rng
        self.devices = devices
        self.secret = secret

    def text(self, max_length: int = 12) -> bytes:
        alphabet = "aZ09:_-;/+#$é中\u2028 \t"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(0, max_length))).encode()

    def junk(self, max_length: int = 64) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, max_length))

    def oversized(self) -> bytes:
        return self.rng.choice([b"a" * 65535, b"9" * 5000, b";" * 4000, "é".encode() * 20000])

    def bad_utf8(self) -> bytes:
        return self.rng.choice([b"\xff\xfe", b"\xc0\x80", b"\xed\xa0\x80", b"a\x00b", b"\xf4\x90\x80\x80", b"\x80"])

    def client_id(self) -> bytes:
        device = self.rng.choice(self.devices)
        own = (device.product_id + device.device_name).encode()
        return self.rng.choice(
            [
                own,
                own,
                own + b"x",
                own[:9],
                own[:10],
                own.lower(),
                b"",
                self.text(),
                self.oversized(),
                self.bad_utf8(),
                own[:12] + b"\x00" + own[12:],
                device.product_id.encode() + b"x" * 49,
                b"node-" + self.text(4),
            ]
        )

    def expiry(self) -> bytes:
        return self.rng.choice(
            [
                b"4102444800",
                b"9223372036854775807",
                b"9" * 20,
                b"9" * 21,
                b"9" * 500,
                b"0",
                b"-1",
                b"",
                b"1e9",
                b"18446744073709551616",
                str(int(time.time() * 1000)).encode(),
                b"\x00",
            ]
        )

    def username(self, client_id: bytes) -> bytes | None:
        fields = [client_id, self.rng.choice([b"12010126", b"", self.text(3)]), self.text(5), self.expiry()]
        if self.rng.random() < 0.3:
            fields.insert(self.rng.randrange(5), self.text(4))  # a field too many
        if self.rng.random() < 0.2:
            fields.pop(self.rng.randrange(len(fields)))
        joined = b";".join(fields)
        return self.rng.choice(
            [
                joined,
                joined,
                joined,
                None,
                b"",
                self.oversized(),
                self.bad_utf8() + joined,
                joined + b"\x00;x",
                SERVICE_USER.encode(),
            ]
        )

    def password(self, username: bytes | None, device: DeviceCredentials) -> bytes | None:
        signed = b""
        if username is not None:
            try:
                signed = sign_password(username.decode(), device.psk).encode()
            except UnicodeDecodeError:
                signed = b""
        token = signed.rpartition(b";")[0]
        return self.rng.choice(
            [
                signed,
                signed.upper(),
                token + b";HMACSHA1",
                token + b";hmacmd5",
                token,
                token + b"\x00;hmacsha256",
                self.junk(),
                self.oversized(),
                None,
                b"",
                b";" * 100,
                self.secret.encode(),
            ]
        )

    def topic(self) -> bytes:
        device = self.rng.choice(self.devices)
        words = [w.encode() for w in _WORDS] + [device.product_id.encode(), device.device_name.encode()]
        levels = [self.rng.choice([*words, self.text(6), self.bad_utf8()]) for _ in range(self.rng.randint(1, 12))]
        topic = b"/".join(levels)
        return self.rng.choice([topic, topic, topic, self.oversized(), b"", topic + b"/" * 300])

    def payload(self) -> bytes:
        size = self.rng.choice([0, 1, 10, 200, 16384, 16385, 20000])
        return self.rng.randbytes(size)


# --- one fuzzed connection ---------------------------------------------------------------------------------


async def exchange(port: int, packets: list[bytes]) -> None:
    """Send the packets one by one, reading whatever comes back; the broker may close at any point."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    except (OSError, TimeoutError):
        return
    try:
        for data in packets:
            if writer.is_closing():
                break  # closed by the broker (uvloop's transport refuses a write then; asyncio's drops it)
            writer.write(data)
            await writer.drain()
            try:
                if not await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S):
                    break  # closed by the broker
            except TimeoutError:
                pass
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


def session(inputs: Inputs) -> list[bytes]:
    """A CONNECT, and for some a few SUBSCRIBE / PUBLISH / UNSUBSCRIBE packets after it."""
    rng = inputs.rng
    kind = rng.random()
    device = rng.choice(inputs.devices)
    if kind < 0.05:
        return [inputs.junk(300)]
    if kind < 0.10:  # a CONNECT whose lengths lie
        good = connect_packet(inputs.client_id(), b"u", b"p")
        cut = rng.randrange(1, len(good))
        return [good[:cut] + inputs.junk(8)]
    if kind < 0.30:  # a device that signs correctly, then random traffic
        client_id = (device.product_id + device.device_name).encode()
        username = make_username(client_id.decode(), rng.choice([4102444800, 9223372036854775807])).encode()
        first = connect_packet(
            client_id, username, sign_password(username.decode(), device.psk).encode(), version=rng.choice([3, 4, 4, 5])
        )
        return [first, *traffic(inputs, own_shadow=f"$shadow/operation/{device.product_id}/{device.device_name}")]
    if kind < 0.40:  # the service identity, then random $fleetops traffic
        node_id = rng.choice([b"node-1", b"node-2", b"n/slash", b"n+", b"x" * 200, b"node-" + inputs.text(3)])
        first = connect_packet(node_id, SERVICE_USER.encode(), inputs.secret.encode())
        own = node_id
        extra = [
            subscribe_packet(1, [(b"$fleetops/node/" + own + b"/#", 1)]),
            encode_publish(
                b"$fleetops/ack/" + own,
                rng.choice(
                    [b"1", b"0", b"99999999999999999999", b"9" * 25, b"", b"12ab", str(rng.getrandbits(64)).encode()]
                ),
                1,
                2,
            ),
            encode_publish(b"$fleetops/hello/" + own, b"", 1, 3),
            encode_publish(b"$fleetops/node/" + own + b"/shadow/1/X/Y", inputs.junk(), 0),
            unsubscribe_packet(4, [b"$fleetops/node/" + own + b"/#"]),
        ]
        rng.shuffle(extra)
        return [first, *extra]
    client_id = inputs.client_id()
    user_name = inputs.username(client_id)
    will = (inputs.topic(), inputs.junk(20)) if rng.random() < 0.1 else None
    first = connect_packet(
        client_id,
        user_name,
        inputs.password(user_name, device),
        keepalive_s=rng.choice([0, 1, 60, 900, 901, 65535]),
        version=rng.choice([3, 4, 4, 5, 6]),
        will=will,
        flags_xor=rng.choice([0, 0, 0, 0x01, 0x18, 0x20]),
    )
    return [first, *(traffic(inputs) if rng.random() < 0.2 else [])]


def traffic(inputs: Inputs, own_shadow: str | None = None) -> list[bytes]:
    rng = inputs.rng
    out = []
    for packet_id in range(1, rng.randint(2, 12)):
        choice = rng.random()
        if choice < 0.4:
            out.append(subscribe_packet(packet_id, [(inputs.topic(), rng.choice([0, 1, 2]))]))
        elif choice < 0.8:
            topic = own_shadow.encode() if own_shadow and rng.random() < 0.3 else inputs.topic()
            qos = rng.choice([0, 1])
            try:
                out.append(encode_publish(topic[:65535], inputs.payload(), qos, packet_id))
            except ValueError:
                pass
        else:
            out.append(unsubscribe_packet(packet_id, [inputs.topic()]))
    return out


async def test_fuzzed_connects_and_topics_under_valgrind(builds: PluginBuilds, tmp_path: Path) -> None:
    require_program("valgrind")
    rng = random.Random(SEED)
    async with plugin_database() as data:
        devices = [await data.add_device(f"dev{index}") for index in range(4)]
        await data.set_enabled("dev3", False)
        inputs = Inputs(rng, devices, data.service_secret)
        broker = PluginBroker(
            tmp_path,
            builds.checked_plugin,
            data.url,
            valgrind=True,
            options={"queue_max_messages": "50", "window": "5"},
        )
        await broker.start()
        try:
            sessions = [session(inputs) for _ in range(CONNECTS)]
            semaphore = asyncio.Semaphore(CONCURRENCY)

            async def run(packets: list[bytes]) -> None:
                async with semaphore:
                    await exchange(broker.port, packets)

            started = time.monotonic()
            await asyncio.gather(*(run(packets) for packets in sessions))
            elapsed = time.monotonic() - started
            assert broker.process is not None and broker.process.returncode is None, broker.output()
            await still_works(broker, devices[0], data.service_secret)
        finally:
            code = await broker.stop()
        reports = broker.checker_reports()
    assert reports == "", reports
    assert code == 0, broker.output()
    assert "fleetops: refused client" in broker.log()
    assert elapsed < 120, f"{CONNECTS} fuzzed CONNECTs took {elapsed:.0f} s"


async def still_works(broker: PluginBroker, credentials: DeviceCredentials, secret: str) -> None:
    """After the fuzzing a device still gets in and its shadow request still reaches a node."""
    with paho_devices() as clients:
        node = ServiceNode("node-check", secret, auto_ack=True)
        device = PahoDevice(credentials)
        clients += [node, device]
        assert await node.connect(broker.port) == 0
        assert await node.register() == 1
        assert await device.connect(broker.port) == 0
        device.publish(f"$shadow/operation/{credentials.product_id}/{credentials.device_name}", b"after", 1)
        check: Callable[[], bool] = lambda: any(m.payload == b"after" for m in node.of_kind("shadow"))  # noqa: E731
        await wait_for(check, timeout_s=10)

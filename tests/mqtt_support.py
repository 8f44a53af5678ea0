"""Helpers for the MQTT integration tests: an in-memory device directory, an echoing shadow handler, paho
devices driven from asyncio, and a private Mosquitto process.

Not a conftest (nothing here is collected): the test modules import what they use.
"""

from __future__ import annotations

import asyncio
import base64
import os
import queue
import random
import secrets
import shutil
import signal
import socket
import string
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from fleetops.messaging.device_auth import SignMethod, make_username, sign_password
from fleetops.messaging.mqtt.codec import encode_publish, encode_remaining_length, encode_subscribe
from fleetops.ports.messaging import DeviceCredentials, PresenceChange

WAIT_S = 5.0
T = TypeVar("T")

# paho 2 reports an MQTT 3.1.1 CONNACK return code as a v5 reason code; these are the names it uses.
_CONNACK_BY_NAME = {
    "Success": 0,
    "Unsupported protocol version": 1,
    "Client identifier not valid": 2,
    "Server unavailable": 3,
    "Bad user name or password": 4,
    "Not authorized": 5,
}


def random_product_id() -> str:
    """A fresh ``[A-Z0-9]{10}`` product id: tests sharing a broker never see each other's topics."""
    return "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(10))


def random_psk() -> str:
    return base64.b64encode(secrets.token_bytes(18)).decode("ascii")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class MemoryDirectory:
    """:class:`~fleetops.ports.messaging.DeviceDirectory` over a dict; records every presence change."""

    devices: dict[tuple[str, str], DeviceCredentials] = field(default_factory=dict)
    online_calls: list[tuple[str, str, bool, str | None]] = field(default_factory=list)

    def add(self, product_id: str, device_name: str, *, enabled: bool = True) -> DeviceCredentials:
        credentials = DeviceCredentials(product_id, device_name, random_psk(), enabled)
        self.devices[(product_id, device_name)] = credentials
        return credentials

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        return self.devices.get((product_id, device_name))

    async def credentials_many(self, devices: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceCredentials]:
        return {key: self.devices[key] for key in devices if key in self.devices}

    async def record_presence(self, changes: Sequence[PresenceChange]) -> None:
        self.online_calls.extend((c.product_id, c.device_name, c.online, c.client_ip) for c in changes)

    async def set_all_offline(self, now_s: int) -> int:
        return 0

    def online_states(self, product_id: str, device_name: str) -> list[bool]:
        return [online for pid, dn, online, _ in self.online_calls if (pid, dn) == (product_id, device_name)]


@dataclass
class EchoShadowHandler:
    """Answers the shadow requests of known devices with ``{"echo": <request>}``; ignores others (so that
    test runs sharing a broker do not answer each other's devices)."""

    known: set[tuple[str, str]] = field(default_factory=set)
    requests: list[tuple[str, str, bytes]] = field(default_factory=list)

    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        if (product_id, device_name) not in self.known:
            return None
        self.requests.append((product_id, device_name, payload))
        return orjson.dumps({"echo": orjson.loads(payload)})


class RecordingEvents:
    """A :class:`~fleetops.ports.messaging.DeviceEvents` listener that records every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        self.calls.append(("connected", device_name, session_present))

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        self.calls.append(("subscribed", device_name, topic_filter, granted_qos))

    def device_disconnected(self, product_id: str, device_name: str) -> None:
        self.calls.append(("disconnected", device_name))


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int


class PahoDevice:
    """A paho-mqtt 2 client (network loop in paho's thread) that asyncio tests can await."""

    def __init__(
        self,
        credentials: DeviceCredentials,
        *,
        method: SignMethod = SignMethod.HMAC_SHA256,
        expiry: int | None = None,
        password: str | None = None,
        clean_session: bool = True,
        keepalive_s: int = 60,
        protocol: MQTTProtocolVersion = paho.MQTTv311,
        reconnect: bool = False,
        resubscribe: tuple[tuple[str, int], ...] = (),
        tls_ca: Path | None = None,
    ) -> None:
        """``reconnect``: paho reconnects after a lost connection (every second); ``resubscribe``: subscribed
        on every successful connection; ``tls_ca``: connect with TLS, trusting this CA certificate (PEM)."""
        self.client_id = credentials.product_id + credentials.device_name
        username = make_username(self.client_id, expiry if expiry is not None else int(time.time()) + 3600)
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            clean_session=clean_session,
            reconnect_on_failure=reconnect,
        )
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        if tls_ca is not None:
            self.client.tls_set(ca_certs=str(tls_ca))
        self.client.username_pw_set(username, password or sign_password(username, credentials.psk, method))
        self.keepalive_s = keepalive_s
        self.resubscribe = resubscribe
        self.connacks: queue.Queue[int] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.messages: queue.Queue[Received] = queue.Queue()
        self.disconnected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.disconnected.clear()
        code = _CONNACK_BY_NAME.get(str(reason), -1)
        if code == 0:
            for topic, qos in self.resubscribe:
                client.subscribe(topic, qos)
        self.connacks.put(code)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], props: Any) -> None:
        self.subacks.put([code.value for code in codes])

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self.messages.put(Received(message.topic, bytes(message.payload), message.qos))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, props: Any) -> None:
        self.disconnected.set()

    async def connect(self, port: int, *, host: str = "127.0.0.1") -> int:
        """Connect and return the CONNACK return code."""
        await asyncio.to_thread(self.client.connect, host, port, self.keepalive_s)
        self.client.loop_start()
        code = await self.wait(self.connacks)
        if code != 0:
            self.client.disconnect()
        return code

    async def subscribe(self, topic: str, qos: int = 0) -> int:
        """Subscribe and return the SUBACK return code (0x80 = refused)."""
        self.client.subscribe(topic, qos)
        return (await self.wait(self.subacks))[0]

    def publish(self, topic: str, payload: bytes, qos: int = 0) -> None:
        self.client.publish(topic, payload, qos)

    async def receive(self, timeout_s: float = WAIT_S) -> Received:
        return await self.wait(self.messages, timeout_s)

    async def nothing_received(self, within_s: float = 0.5) -> bool:
        try:
            await self.wait(self.messages, within_s)
        except TimeoutError:
            return True
        return False

    @staticmethod
    async def wait(source: queue.Queue[T], timeout_s: float = WAIT_S) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return source.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("nothing arrived") from None
                await asyncio.sleep(0.01)

    async def wait_disconnected(self, timeout_s: float = WAIT_S) -> bool:
        return await asyncio.to_thread(self.disconnected.wait, timeout_s)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def paho_devices() -> Iterator[list[PahoDevice]]:
    """A list to put devices in; every device is closed at the end."""
    devices: list[PahoDevice] = []
    try:
        yield devices
    finally:
        for device in devices:
            device.close()


class MosquittoProcess:
    """A private Mosquitto on a free port (its own config, persistence in ``workdir``), stopped by its PID."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        """``users``: require these user names and passwords instead of allowing anonymous clients."""
        self.port = free_port()
        self.workdir = workdir
        self.config = workdir / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:
            password_file = workdir / "passwords"
            password_file.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
            password_file.chmod(0o600)
            subprocess.run(["mosquitto_passwd", "-U", str(password_file)], check=True)  # hashes in place
            access = f"allow_anonymous false\npassword_file {password_file}\n"
        # Started as root, Mosquitto becomes the "mosquitto" user, who cannot write to a private temp dir.
        run_as = "user root\n" if os.geteuid() == 0 else ""
        lines = [f"listener {self.port} 127.0.0.1\n", run_as, access, "persistence true\n"]
        lines += [f"persistence_location {workdir}/\n", "log_dest none\n"]
        self.config.write_text("".join(lines))
        self.process: asyncio.subprocess.Process | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("mosquitto") is not None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "mosquitto",
            "-c",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                await asyncio.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop by PID (SIGTERM saves the persistence file, SIGKILL does not)."""
        if self.process is None:
            return
        self.process.send_signal(sig)
        await asyncio.wait_for(self.process.wait(), WAIT_S)
        self.process = None


def _mqtt_string(value: str) -> bytes:
    data = value.encode("utf-8")
    return len(data).to_bytes(2, "big") + data


async def raw_connect(
    port: int, client_id: str, username: str, password: str, *, keepalive_s: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A bare MQTT 3.1.1 CONNECT on a socket (no client library pinging behind the test's back)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    variable = _mqtt_string("MQTT") + bytes((4, 0xC2)) + keepalive_s.to_bytes(2, "big")
    body = variable + _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(password)
    writer.write(b"\x10" + encode_remaining_length(len(body)) + body)
    await writer.drain()
    connack = await asyncio.wait_for(reader.readexactly(4), WAIT_S)
    return reader, writer, connack


def mqtt_packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_remaining_length(len(body)) + body


def raw_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    return mqtt_packet(0x82, packet_id.to_bytes(2, "big") + _mqtt_string(topic_filter) + bytes((qos,)))


def signed_connect(credentials: DeviceCredentials, *, keepalive_s: int = 60, password: str | None = None) -> bytes:
    """A CONNECT packet with the device's valid signature (or ``password``)."""
    client_id = credentials.product_id + credentials.device_name
    username = make_username(client_id, int(time.time()) + 3600)
    variable = _mqtt_string("MQTT") + bytes((4, 0xC2)) + keepalive_s.to_bytes(2, "big")
    signature = password if password is not None else sign_password(username, credentials.psk)
    return mqtt_packet(0x10, variable + _mqtt_string(client_id) + _mqtt_string(username) + _mqtt_string(signature))


async def closed_by_peer(reader: asyncio.StreamReader, timeout_s: float = WAIT_S) -> bool:
    """Whether the other side closes the connection within ``timeout_s`` (whatever it sent before)."""
    try:
        async with asyncio.timeout(timeout_s):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def junk_streams(valid_connect: bytes, seed: int, count: int) -> Iterator[bytes]:
    """Byte streams a gateway must survive: random bytes, mutated CONNECTs, and a valid CONNECT followed by
    mutated PUBLISH / SUBSCRIBE packets or an endless remaining length (also used by fuzz/mqtt_fuzz.py)."""
    rng = random.Random(seed)
    publish = encode_publish(b"$shadow/operation/ABCDE12345/x", b'{"type":"get"}', 1, 7)
    subscribe = encode_subscribe(3, [("a/b", 1)])

    def mutate(data: bytes) -> bytes:
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return bytes(mutated[: rng.randint(1, len(mutated))] if rng.random() < 0.3 else mutated)

    for index in range(count):
        kind = index % 4
        if kind == 0:
            yield rng.randbytes(rng.randint(1, 300))
        elif kind == 1:
            yield mutate(valid_connect)
        elif kind == 2:
            yield valid_connect + mutate(publish) + mutate(subscribe)
        else:
            yield valid_connect + mqtt_packet(0x30, b"\x00\x05a/b\xffx") + b"\xff\xff\xff\xff\xff"

"""Device authentication by the Mosquitto plugin (and, for the same cases, by the embedded broker), the service
identity, and what a change in the database does to connected devices: disable, delete, re-key, a rotated
service password, the database going away and coming back. Real Mosquitto, PostgreSQL, paho clients; the
official SDK against a live fleetops node for the actions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import text
from tencentcloud.iotcloud.v20180614 import models

from fleetops.cli import main
from fleetops.messaging.device_auth import SignMethod, make_username, sign_password
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.ports.messaging import DeviceCredentials
from fleetops.store.broker_credentials import BrokerCredentialStore
from tests.integration.mosquitto_plugin_support import (
    SERVICE_USER,
    PluginBroker,
    PluginBuilds,
    plugin_database,
    running,
    session_builds,
)
from tests.mqtt_support import (
    EchoShadowHandler,
    MemoryDirectory,
    PahoDevice,
    free_port,
    random_psk,
    raw_connect,
)
from tests.support import new_product, postgres_database, sdk_client, start_server

pytestmark = pytest.mark.postgres

C_SDK_EXPIRY = 9223372036854775807  # LONG_MAX
Attempt = tuple[str, str | None, str | None, int]  # client id, user name, password, keep-alive


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> PluginBuilds:
    return session_builds(tmp_path_factory)


async def connack(
    port: int,
    client_id: str,
    username: str | None,
    password: str | None,
    *,
    keepalive_s: int = 60,
    protocol: Any = paho.MQTTv311,
) -> int:
    """The CONNACK return code of one CONNECT (the connection is closed afterwards)."""
    if client_id == "":  # paho does not report a refusal of an empty client id: send the CONNECT by hand
        assert username is not None and password is not None
        _, writer, answer = await raw_connect(port, client_id, username, password, keepalive_s=keepalive_s)
        writer.close()
        return answer[3]
    identity = DeviceCredentials(client_id, "", "", True)
    client = PahoDevice(identity, password="-", keepalive_s=keepalive_s, protocol=protocol)
    client.client.username_pw_set(username, password)
    try:
        return await client.connect(port)
    finally:
        client.close()


# --- the cases -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One CONNECT and its CONNACK on each broker. Mosquitto 2.0 answers every plugin refusal with 5
    (handle_connect.c); the embedded broker picks 2, 4 or 5 by cause (device_auth.py)."""

    name: str
    connect: Callable[[Devices], Attempt]
    embedded: int
    mosquitto: int
    log: str = ""  # the cause the plugin logs


@dataclass
class Devices:
    pid: str
    good: DeviceCredentials
    off: DeviceCredentials  # disabled
    gone: DeviceCredentials  # created, then deleted

    def signed(
        self,
        device: DeviceCredentials,
        expiry: int | None = None,
        method: SignMethod = SignMethod.HMAC_SHA256,
        keepalive_s: int = 60,
    ) -> Attempt:
        client_id = device.product_id + device.device_name
        username = make_username(client_id, expiry if expiry is not None else int(time.time()) + 600)
        return client_id, username, sign_password(username, device.psk, method), keepalive_s

    def with_username(self, username: str) -> Attempt:
        return self.good.product_id + self.good.device_name, username, sign_password(username, self.good.psk), 60


def _recase(signed: Attempt, token: bool) -> Attempt:
    client_id, username, password, keepalive = signed
    assert password is not None
    head, _, method = password.rpartition(";")
    return client_id, username, f"{head.upper()};{method}" if token else f"{head};{method.upper()}", keepalive


def _password(signed: Attempt, password: str | None) -> Attempt:
    return signed[0], signed[1], password, signed[3]


def _client_id(signed: Attempt, client_id: str) -> Attempt:
    return client_id, signed[1], signed[2], signed[3]


CASES = [
    Case("hmacsha256", lambda d: d.signed(d.good), 0, 0),
    Case("hmacsha1", lambda d: d.signed(d.good, method=SignMethod.HMAC_SHA1), 0, 0),
    Case("method in upper case", lambda d: _recase(d.signed(d.good), token=False), 0, 0),
    Case("token in upper case", lambda d: _recase(d.signed(d.good), token=True), 0, 0),
    Case("C SDK expiry LONG_MAX", lambda d: d.signed(d.good, expiry=C_SDK_EXPIRY), 0, 0),
    Case("Python SDK expiry in ms", lambda d: d.signed(d.good, expiry=int(time.time() * 1000)), 0, 0),
    Case("expiry of 20 nines", lambda d: d.signed(d.good, expiry=10**20 - 1), 0, 0),
    Case("keep-alive 900 s", lambda d: d.signed(d.good, keepalive_s=900), 0, 0),
    Case("bad signature", lambda d: _password(d.signed(d.good), "0" * 64 + ";hmacsha256"), 4, 5, "bad signature"),
    Case("signed with another key", lambda d: _password(d.signed(d.good), sign_password("u", random_psk())), 4, 5),
    Case("expired", lambda d: d.signed(d.good, expiry=int(time.time()) - 10), 4, 5, "signature expired"),
    Case(
        "unknown device",
        lambda d: d.signed(DeviceCredentials(d.pid, "ghost", d.good.psk, True)),
        4,
        5,
        "unknown device",
    ),
    Case(
        "unknown product",
        lambda d: d.signed(DeviceCredentials("ZZZZZ99999", "lamp01", d.good.psk, True)),
        4,
        5,
        "unknown device",
    ),
    Case("disabled", lambda d: d.signed(d.off), 5, 5, "device disabled"),
    Case("deleted", lambda d: d.signed(d.gone), 4, 5, "unknown device"),
    Case(
        "client id with a lower-case product id",
        lambda d: _client_id(d.signed(d.good), d.pid.lower() + "good"),
        2,
        5,
        "malformed client id",
    ),
    Case("client id too short", lambda d: _client_id(d.signed(d.good), d.pid[:9]), 2, 5, "malformed client id"),
    Case("device name over 48", lambda d: _client_id(d.signed(d.good), d.pid + "x" * 49), 2, 5, "malformed client id"),
    Case("empty client id", lambda d: _client_id(d.signed(d.good), ""), 2, 5, "malformed client id"),
    Case("keep-alive 901 s", lambda d: d.signed(d.good, keepalive_s=901), 2, 5, "keep-alive over 900 s"),
    Case("anonymous", lambda d: (d.pid + "good", None, None, 60), 4, 5, "anonymous client"),
    Case(
        "three user name fields",
        lambda d: d.with_username(f"{d.pid}good;12010126;{C_SDK_EXPIRY}"),
        4,
        5,
        "malformed user name",
    ),
    Case(
        "five user name fields",
        lambda d: d.with_username(f"{d.pid}good;1;a;{C_SDK_EXPIRY};x"),
        4,
        5,
        "malformed user name",
    ),
    Case("empty sdkappid", lambda d: d.with_username(f"{d.pid}good;;a;{C_SDK_EXPIRY}"), 4, 5, "malformed user name"),
    Case("expiry not digits", lambda d: d.with_username(f"{d.pid}good;1;a;17e9"), 4, 5, "malformed user name"),
    Case("expiry of 21 digits", lambda d: d.with_username(f"{d.pid}good;1;a;{'9' * 21}"), 4, 5, "malformed user name"),
    Case(
        "user name of another device",
        lambda d: d.with_username(f"{d.pid}off;1;a;{C_SDK_EXPIRY}"),
        4,
        5,
        "malformed user name",
    ),
    Case("empty user name", lambda d: d.with_username(""), 4, 5, "malformed user name"),
    Case("unknown method", lambda d: _password(d.signed(d.good), "0" * 32 + ";hmacmd5"), 4, 5, "bad signature"),
    Case("no method", lambda d: _password(d.signed(d.good), "0" * 64), 4, 5, "bad signature"),
    Case("no password", lambda d: _password(d.signed(d.good), None), 4, 5, "bad signature"),
]


async def _codes(port: int, devices: Devices) -> dict[str, int]:
    codes = {}
    for case in CASES:
        client_id, username, password, keepalive = case.connect(devices)
        codes[case.name] = await connack(port, client_id, username, password, keepalive_s=keepalive)
    return codes


async def test_connects_on_mosquitto(builds: PluginBuilds, tmp_path: Path) -> None:
    async with plugin_database() as data:
        devices = Devices(
            data.product_id,
            await data.add_device("good"),
            await data.add_device("off"),
            await data.add_device("gone"),
        )
        await data.set_enabled("off", False)
        await data.delete("gone")
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            codes = await _codes(broker.port, devices)
            log = broker.log()
    assert codes == {case.name: case.mosquitto for case in CASES}
    for case in CASES:
        assert case.log in log, case.name
    assert "fleetops: refused client" in log and devices.good.psk not in log


async def test_the_same_connects_on_the_embedded_broker() -> None:
    directory = MemoryDirectory()
    pid = "ABCDE12345"
    devices = Devices(
        pid,
        directory.add(pid, "good"),
        directory.add(pid, "off", enabled=False),
        DeviceCredentials(pid, "gone", random_psk(), True),
    )
    broker = EmbeddedBroker(directory, EchoShadowHandler(), port=0)
    await broker.start()
    try:
        codes = await _codes(broker.port, devices)
    finally:
        await broker.stop()
    assert codes == {case.name: case.embedded for case in CASES}


async def test_mqtt_31_devices_connect(builds: PluginBuilds, tmp_path: Path) -> None:
    async with plugin_database() as data:
        device = await data.add_device("old")
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            client_id, username, password, _ = Devices(data.product_id, device, device, device).signed(device)
            assert await connack(broker.port, client_id, username, password, protocol=paho.MQTTv31) == 0


async def test_the_service_identity(builds: PluginBuilds, tmp_path: Path) -> None:
    """A node logs in with the password stored in the database; a rotated password applies at once."""
    async with plugin_database() as data:
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            assert await connack(broker.port, "node-1", SERVICE_USER, data.service_secret) == 0
            assert await connack(broker.port, "node-1", SERVICE_USER, data.service_secret + "x") == 5
            assert await connack(broker.port, "node-1", SERVICE_USER, None) == 5
            new_secret = await BrokerCredentialStore(data.db).rotate(SERVICE_USER, int(time.time()))
            await broker.wait_for_log("password read from the database", timeout_s=1)
            await wait_for_code(broker.port, "node-1", SERVICE_USER, new_secret, 0)
            assert await connack(broker.port, "node-1", SERVICE_USER, data.service_secret) == 5
            assert "wrong password" in broker.log() and new_secret not in broker.log()


async def wait_for_code(port: int, client_id: str, username: str, password: str, code: int) -> None:
    deadline = time.monotonic() + 5
    while await connack(port, client_id, username, password) != code:
        assert time.monotonic() < deadline, f"CONNACK {code} never came"
        await asyncio.sleep(0.05)


# --- database changes reach connected devices ------------------------------------------------------------

KICK_BOUND_S = 1.0  # docs/mosquitto.md#disable-delete-re-key: the connection closes within 1 s of the commit


@pytest.fixture
async def live_pg(tmp_path: Path) -> AsyncIterator[tuple[Any, str]]:
    """A live fleetops node on a fresh PostgreSQL database (it migrates it), and the database URL."""
    with postgres_database() as url:
        server = await asyncio.to_thread(start_server, tmp_path / "node", url)
        try:
            yield server, url
        finally:
            await asyncio.to_thread(server.stop)


def _create_device(client: Any, product_id: str, name: str) -> DeviceCredentials:
    req = models.CreateDeviceRequest()
    req.ProductId, req.DeviceName = product_id, name
    return DeviceCredentials(product_id, name, client.CreateDevice(req).DevicePsk, True)


def _set_enabled(client: Any, product_id: str, name: str, status: int) -> None:
    req = models.UpdateDevicesEnableStateRequest()
    req.ProductID, req.DeviceNames, req.Status = product_id, [name], status
    client.UpdateDevicesEnableState(req)


def _delete(client: Any, product_id: str, name: str) -> None:
    req = models.DeleteDeviceRequest()
    req.ProductId, req.DeviceName = product_id, name
    client.DeleteDevice(req)


async def _connected(port: int, credentials: DeviceCredentials) -> PahoDevice:
    device = PahoDevice(credentials)
    assert await device.connect(port) == 0
    return device


async def _closed_within(device: PahoDevice, action: Callable[[], Any]) -> float:
    started = time.monotonic()
    await asyncio.to_thread(action)
    assert await device.wait_disconnected(KICK_BOUND_S * 3), "the connection was not closed"
    return time.monotonic() - started


async def test_disabling_or_deleting_a_connected_device_closes_it(
    builds: PluginBuilds, tmp_path: Path, live_pg: tuple[Any, str]
) -> None:
    server, url = live_pg
    client = sdk_client(server)
    product_id = await asyncio.to_thread(new_product, client)
    lamp = await asyncio.to_thread(_create_device, client, product_id, "lamp")
    door = await asyncio.to_thread(_create_device, client, product_id, "door")
    async with running(PluginBroker(tmp_path / "broker", builds.plugin, url)) as broker:
        device = await _connected(broker.port, lamp)
        elapsed = await _closed_within(device, lambda: _set_enabled(client, product_id, "lamp", 0))
        device.close()
        assert elapsed < KICK_BOUND_S, elapsed
        assert await PahoDevice(lamp).connect(broker.port) == 5
        await broker.wait_for_log(f"refused client {product_id}lamp from 127.0.0.1: device disabled")
        await asyncio.to_thread(_set_enabled, client, product_id, "lamp", 1)
        await wait_for_device(broker.port, lamp)

        device = await _connected(broker.port, door)
        elapsed = await _closed_within(device, lambda: _delete(client, product_id, "door"))
        device.close()
        assert elapsed < KICK_BOUND_S, elapsed
        assert await PahoDevice(door).connect(broker.port) == 5
        await broker.wait_for_log(f"refused client {product_id}door from 127.0.0.1: unknown device")


async def wait_for_device(port: int, credentials: DeviceCredentials) -> None:
    deadline = time.monotonic() + 5
    while True:
        device = PahoDevice(credentials)
        code = await device.connect(port)
        device.close()
        if code == 0:
            return
        assert time.monotonic() < deadline, "the device never got in again"
        await asyncio.sleep(0.05)


async def test_a_new_psk_closes_the_connection_and_only_the_new_key_works(builds: PluginBuilds, tmp_path: Path) -> None:
    async with plugin_database() as data:
        old = await data.add_device("lamp")
        async with running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
            device = await _connected(broker.port, old)
            new = DeviceCredentials(old.product_id, old.device_name, random_psk(), True)
            started = time.monotonic()
            await data.set_psk("lamp", new.psk)
            assert await device.wait_disconnected(KICK_BOUND_S * 3)
            assert time.monotonic() - started < KICK_BOUND_S
            device.close()
            assert await PahoDevice(old).connect(broker.port) == 5
            assert await PahoDevice(new).connect(broker.port) == 0


async def test_shadow_writes_and_online_state_never_notify(tmp_path: Path) -> None:
    """Batch tasks write millions of shadows: only enabled, psk and deletes notify the broker."""
    async with plugin_database() as data:
        await data.add_device("lamp")
        await data.add_device("door")
        with psycopg.connect(data.url, autocommit=True) as listener:
            listener.execute("LISTEN fleetops_broker")
            async with data.db.begin() as conn:
                await conn.execute(text("UPDATE devices SET shadow_version = shadow_version + 1, online = true"))
                await conn.execute(text("UPDATE devices SET enabled = enabled, psk = psk"))  # unchanged values
            await data.set_enabled("lamp", False)
            await data.set_enabled("lamp", False)  # no change: no notification
            await data.delete("door")
            await BrokerCredentialStore(data.db).rotate(SERVICE_USER, 0)
            received = [notify.payload for notify in listener.notifies(timeout=1, stop_after=10)]
    assert received == [f"device {data.product_id}lamp", f"device {data.product_id}door", f"credential {SERVICE_USER}"]


# --- the database goes away --------------------------------------------------------------------------------


class TcpProxy:
    """A TCP forwarder to PostgreSQL that a test can cut (connections reset, new ones refused), freeze (nothing
    forwarded, connections stay open: a database that hangs) and restore."""

    def __init__(self, target_port: int = 5432) -> None:
        self.port = free_port()
        self.target_port = target_port
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.flowing = asyncio.Event()
        self.flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self.flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    await self.flowing.wait()
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_while_the_database_is_unreachable_connects_are_refused_quickly(
    builds: PluginBuilds, tmp_path: Path
) -> None:
    async with plugin_database() as data:
        cached = await data.add_device("cached")
        fresh = await data.add_device("fresh")
        proxy = TcpProxy()
        await proxy.start()
        url = data.url.replace(":5432/", f":{proxy.port}/")
        try:
            async with running(PluginBroker(tmp_path, builds.plugin, url)) as broker:
                device = await _connected(broker.port, cached)
                await proxy.cut()
                await broker.wait_for_log("database link lost")
                await broker.wait_for_log("cached device credentials dropped")
                # the connected device stays; new CONNECTs, even of a device seen before, are refused at once
                assert not device.disconnected.is_set()
                started = time.monotonic()
                for _ in range(20):
                    assert await PahoDevice(fresh).connect(broker.port) == 5
                    assert await PahoDevice(cached).connect(broker.port) == 5
                assert (time.monotonic() - started) / 40 < 0.25  # no CONNECT waits out a lookup timeout
                assert "the database cannot be reached" in broker.log()
                await proxy.start()
                await wait_for_device(broker.port, fresh)
                await broker.wait_for_log("database link ready")
                device.close()
        finally:
            await proxy.cut()


async def test_a_database_that_hangs_stalls_at_most_one_connect_per_attempt(
    builds: PluginBuilds, tmp_path: Path
) -> None:
    """A CONNECT is not a message: a lookup waits at most its timeout, and while the link cannot be made again
    the other CONNECTs are refused at once instead of each waiting."""
    async with plugin_database() as data:
        devices = [await data.add_device(f"d{index}") for index in range(21)]
        proxy = TcpProxy()
        await proxy.start()
        url = data.url.replace(":5432/", f":{proxy.port}/")
        try:
            broker = PluginBroker(tmp_path, builds.plugin, url, options={"lookup_timeout_ms": "300"})
            async with running(broker):
                proxy.flowing.clear()  # the database stops answering; sockets stay open
                started = time.monotonic()
                assert await PahoDevice(devices[0]).connect(broker.port) == 5
                assert 0.25 < time.monotonic() - started < 2
                await broker.wait_for_log("no answer to a credential lookup within 300 ms")
                # for 1.5 s: past the first reconnect backoff (0.1 s), within one attempt (5 s at most)
                waits: list[float] = []
                until = time.monotonic() + 1.5
                while time.monotonic() < until:
                    started = time.monotonic()
                    assert await PahoDevice(devices[1 + len(waits) % 20]).connect(broker.port) == 5
                    waits.append(time.monotonic() - started)
                assert len(waits) >= 10
                assert sum(wait > 0.25 for wait in waits) <= 1, waits
                proxy.flowing.set()
                await wait_for_device(broker.port, devices[1])
        finally:
            proxy.flowing.set()
            await proxy.cut()


async def test_a_broker_started_without_its_database_lets_devices_in_once_it_is_there(
    builds: PluginBuilds, tmp_path: Path
) -> None:
    async with plugin_database() as data:
        lamp = await data.add_device("lamp")
        proxy = TcpProxy()  # not started: connections refused
        url = data.url.replace(":5432/", f":{proxy.port}/")
        try:
            async with running(PluginBroker(tmp_path, builds.plugin, url)) as broker:
                await broker.wait_for_log("the database is not ready at start")
                assert await PahoDevice(lamp).connect(broker.port) == 5
                assert await connack(broker.port, "node-1", SERVICE_USER, data.service_secret) == 5
                await proxy.start()
                await wait_for_device(broker.port, lamp)
                await wait_for_code(broker.port, "node-1", SERVICE_USER, data.service_secret, 0)
        finally:
            await proxy.cut()


async def test_a_schema_without_the_migration_is_named_in_the_log(builds: PluginBuilds, tmp_path: Path) -> None:
    with postgres_database(migrated=False) as url:  # an empty database: no tables
        async with running(PluginBroker(tmp_path, builds.plugin, url)) as broker:
            await broker.wait_for_log("run fleetops db upgrade")


# --- building -----------------------------------------------------------------------------------------------


def test_build_prints_the_path_of_the_plugin(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["mosquitto", "build", "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str((tmp_path / "out" / "fleetops_plugin.so").resolve())
    assert (tmp_path / "out" / "fleetops_plugin.so").stat().st_size > 0


def test_a_missing_header_names_the_debian_package(tmp_path: Path) -> None:
    """A compiler that cannot see mosquitto_broker.h (a wrapper hides it) gets one line and exit 2."""
    fake = tmp_path / "cc"
    fake.write_text(
        "#!/bin/sh\n"
        'case "$*" in *-E*) if grep -q mosquitto_broker.h; then echo "fatal error: no such file" >&2; exit 1; fi;; '
        "esac\n"
        'exec cc "$@"\n'
    )
    fake.chmod(0o755)
    result = CliRunner(env={"CC": str(fake)}).invoke(main, ["mosquitto", "build", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: fleetops mosquitto build: mosquitto_broker.h not found: install the Debian package mosquitto-dev "
        "(apt-get install mosquitto-dev)"
    )
    assert not (tmp_path / "out" / "fleetops_plugin.so").exists()

"""MQTT figures: connect rate, delivery rate and reconnect after a restart, embedded gateway beside Mosquitto,
and what the fleetops Mosquitto plugin costs.

    .venv/bin/python bench/mqtt.py                                  # 2,000 and 10,000 devices, both brokers
    .venv/bin/python bench/mqtt.py --sizes 2000 --skip-reconnect     # quicker
    .venv/bin/python bench/mqtt.py --database postgresql             # the reconnect run on PostgreSQL
    .venv/bin/python bench/mqtt.py --broker mosquitto-plugin --sizes 5000 --skip-reconnect

For each size it prints, per broker:

* **connect**: the time from "go" until every device has its CONNACK and its SUBACK (and the rate);
* **delivery**: ``publish_many`` of ``--messages-per-device`` messages per device (round-robin over the devices'
  ``{pid}/{dn}/control`` topics, QoS 0 and QoS 1): "taken" is when ``publish_many`` returned, "delivered" when
  the devices had every message;
* **no subscribers**: the ``publish_many`` rate for topics nobody subscribes to (what a batch task costs when
  no device listens).

``--broker mosquitto-plugin`` (repeatable with ``embedded`` and ``mosquitto``; without ``--broker`` the first two
run) starts two private Mosquittos with the configuration ``fleetops mosquitto config`` writes, one with the
plugin (on a fresh PostgreSQL database with the devices) and one without it (anonymous), and for each prints the
figures above (connect+subscribe of devices that all connect at once: with the plugin every CONNECT is signed
and checked, the first run with a database lookup each), then:

* **sequential CONNECTs** on one socket after another (``--connects``): with the plugin, first each device once
  on a freshly started broker (a database lookup each), then again (cached credentials);
* **dispatch**: ``--requests`` shadow requests from ``--dispatch-devices`` raw device sockets (QoS 0, at most
  5,000 not yet handled: the plugin keeps 10,000 per node and drops the oldest beyond) to one fleetops node
  (``ExternalBroker`` with a handler that answers nothing, so this is the broker, the plugin and the node side
  of the protocol, acknowledgements included); without the plugin the node takes them through its plain
  subscription.

Then **reconnect**: the embedded gateway on a real store (SQLite by default, ``--database``) with 10,000
registered devices connected; the gateway is stopped (every device recorded offline), a new one starts on the
same port, every device reconnects at once, and the time until the store shows all of them online (what
DescribeDevices ``Online`` reads) is printed.

The devices are paho-mqtt clients without a thread each: ``--device-processes`` child processes each drive
their share through paho's ``socket()`` / ``loop_read`` / ``loop_write`` / ``loop_misc`` from one selector
loop. Devices and brokers share the machine's cores, so the figures are those of the whole setup.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchbroker
import psutil

from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker
from fleetops.messaging.external import BrokerLogin, ExternalBroker, ExternalOptions
from fleetops.messaging.mqtt.codec import encode_publish
from fleetops.ports.messaging import DeviceCredentials, DeviceDirectory, PresenceChange, Publisher

PSK = "MDEyMzQ1Njc4OWFiY2RlZg=="


class MemoryDirectory:
    """Every device of ``product_id`` exists with the bench PSK; presence is not recorded."""

    def __init__(self, product_id: str) -> None:
        self.product_id = product_id

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        return DeviceCredentials(product_id, device_name, PSK, True) if product_id == self.product_id else None

    async def set_online(
        self, product_id: str, device_name: str, online: bool, client_ip: str | None, now_s: int
    ) -> None:
        return None

    async def credentials_many(self, devices: Sequence[tuple[str, str]]) -> dict[tuple[str, str], DeviceCredentials]:
        return {(p, d): DeviceCredentials(p, d, PSK, True) for p, d in devices if p == self.product_id}

    async def record_presence(self, changes: Sequence[PresenceChange]) -> None:
        return None

    async def set_all_offline(self, now_s: int) -> int:
        return 0


class NoShadow:
    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        return None


# --- the devices, in child processes ----------------------------------------------------------------------


def run_devices(config: dict[str, Any]) -> None:
    """Child process: paho clients on one selector loop; commands on stdin, answers on stdout."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    selector = selectors.DefaultSelector()
    want_write: set[Any] = set()
    state = {"subscribed": 0, "received": 0, "connected": 0, "retry": 1}
    clients: list[Any] = []
    lost: list[Any] = []
    fds: dict[Any, int] = {}
    qos = config["qos"]

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            state["connected"] += 1
            client.subscribe(userdata, qos)

    def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        state["subscribed"] += 1

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        state["received"] += 1

    def on_disconnect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        state["connected"] -= 1
        if state["retry"]:  # as a device would: connect again (e.g. closed while the gateway was full)
            lost.append(client)

    def register(client: Any, userdata: Any, sock: Any) -> None:
        want_write.add(client)

    def unregister(client: Any, userdata: Any, sock: Any) -> None:
        want_write.discard(client)

    for device in config["devices"]:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=device["client_id"], protocol=paho.MQTTv311, userdata=device["topic"]
        )
        if device["username"]:
            client.username_pw_set(device["username"], device["password"])
        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        client.on_disconnect = on_disconnect
        client.on_socket_register_write = register
        client.on_socket_unregister_write = unregister
        clients.append(client)

    def connect_one(client: Any) -> None:
        while True:
            try:
                client.connect(config["host"], config["port"], 120)
                break
            except OSError:
                time.sleep(0.05)  # refused while the broker restarts: retry
        client.loop_write()  # CONNECT now, as a device does
        forget(client)
        fds[client] = client.socket().fileno()
        selector.register(fds[client], selectors.EVENT_READ, client)

    def forget(client: Any) -> None:
        fd = fds.pop(client, None)
        if fd is not None:
            selector.unregister(fd)

    def connect_all() -> None:
        for client in clients:
            connect_one(client)

    def serve_until(done: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        last_misc = time.monotonic()
        while not done():
            if time.monotonic() > deadline:
                return False
            for client in list(want_write):
                client.loop_write()
            for key, _ in selector.select(0.05):
                client = key.data
                if client is None:
                    continue
                if client.loop_read() != 0 and fds.get(client) == key.fd:
                    forget(client)
            while lost:
                connect_one(lost.pop())
            if time.monotonic() - last_misc > 1:
                for client in clients:
                    client.loop_misc()
                last_misc = time.monotonic()
        return True

    count = len(clients)
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.split()
        if command[0] == "connect":
            state["subscribed"] = 0
            started = time.perf_counter()
            connect_all()
            ok = serve_until(lambda: state["subscribed"] >= count, float(command[1]))
            print(f"subscribed {state['subscribed']} {time.perf_counter() - started:.3f} {ok}", flush=True)
        elif command[0] == "count":
            expected, timeout_s = int(command[1]), float(command[2])
            serve_until(lambda expected=expected: state["received"] >= expected, timeout_s)
            print(f"received {state['received']}", flush=True)
            state["received"] = 0
        elif command[0] == "idle":  # keep the connections serviced for a while
            serve_until(lambda: False, float(command[1]))
            print("idle", flush=True)
        elif command[0] == "wait-lost":
            state["retry"] = 0  # the gateway is stopping: the devices reconnect when told
            ok = serve_until(lambda: state["connected"] <= 0, float(command[1]))
            state["retry"] = 1
            lost.clear()
            for client in list(fds):
                forget(client)
            print(f"lost {ok}", flush=True)
        elif command[0] == "quit":
            break
    for client in clients:
        try:
            client.disconnect()
            client.loop_write()
        except Exception:  # the broker may be gone
            pass


class DeviceProcesses:
    """``count`` devices split over child processes, commanded together."""

    def __init__(self, host: str, port: int, qos: int, logins: list[dict[str, Any]], processes: int) -> None:
        self.processes: list[subprocess.Popen[str]] = []
        share = (len(logins) + processes - 1) // processes
        for start in range(0, len(logins), share):
            config = {"host": host, "port": port, "qos": qos, "devices": logins[start : start + share]}
            process = subprocess.Popen(
                [sys.executable, __file__, "--child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(config) + "\n")
            process.stdin.flush()
            self.processes.append(process)

    async def ready(self) -> None:
        for line in await self._answers():
            if line != "ready":
                raise RuntimeError(f"devices: {line!r}")

    async def command(self, text: str) -> list[str]:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(text + "\n")
            process.stdin.flush()
        return await self._answers()

    async def _answers(self) -> list[str]:
        async def one(process: subprocess.Popen[str]) -> str:
            assert process.stdout is not None
            return (await asyncio.to_thread(process.stdout.readline)).strip()

        return list(await asyncio.gather(*(one(process) for process in self.processes)))

    async def connect(self, timeout_s: float) -> tuple[int, float]:
        """Connect and subscribe every device; (devices subscribed, seconds)."""
        started = time.perf_counter()
        answers = await self.command(f"connect {timeout_s}")
        elapsed = time.perf_counter() - started
        return sum(int(answer.split()[1]) for answer in answers), elapsed

    def start_count(self, expected: int, timeout_s: float = 120) -> None:
        """Tell the devices to count messages (they read their sockets, and acknowledge, only meanwhile)."""
        share = (expected + len(self.processes) - 1) // len(self.processes)
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(f"count {share} {timeout_s}\n")
            process.stdin.flush()

    async def received(self) -> int:
        """The messages counted since :meth:`start_count`."""
        return sum(int(answer.split()[1]) for answer in await self._answers())

    def stop(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            try:
                process.stdin.write("quit\n")
                process.stdin.close()
            except BrokenPipeError:
                pass
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def device_logins(product_id: str, count: int, *, signed: bool) -> list[dict[str, str]]:
    logins = []
    for index in range(count):
        name = f"dev{index:05d}"
        client_id = product_id + name
        username = make_username(client_id, 4_000_000_000) if signed else ""
        password = sign_password(username, PSK) if signed else ""
        topic = f"{product_id}/{name}/control"
        logins.append({"client_id": client_id, "username": username, "password": password, "topic": topic})
    return logins


def workload(product_id: str, messages: int, device_count: int, payload: bytes) -> list[tuple[str, bytes]]:
    return [(f"{product_id}/dev{n % device_count:05d}/control", payload) for n in range(messages)]


def new_product_id() -> str:
    return "BENCH" + secrets.token_hex(3).upper()[:5]


# --- runs ----------------------------------------------------------------------------------------------------


@dataclass
class Broker:
    label: str
    host: str
    port: int
    publisher: Publisher
    signed: bool
    process: Any = None  # a private broker's psutil.Process: its CPU seconds are printed too

    def cpu_s(self) -> float:
        if self.process is None:
            return 0.0
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def cpu_since(self, start_s: float) -> str:
        """``, broker CPU 1.23 s`` for a private broker (steadier than rates on a shared machine), else ``""``."""
        return f", broker CPU {self.cpu_s() - start_s:.2f} s" if self.process is not None else ""


async def measure_broker(args: argparse.Namespace, broker: Broker, size: int, product_id: str) -> None:
    payload = b"x" * args.payload_bytes
    label = f"{broker.label}, {size:,} devices"
    for qos in (0, 1):
        logins = device_logins(product_id, size, signed=broker.signed)
        devices = DeviceProcesses(broker.host, broker.port, qos, logins, args.device_processes)
        try:
            await devices.ready()
            cpu_s = broker.cpu_s()
            subscribed, elapsed = await devices.connect(args.connect_timeout_s)
            # the second pass meets warm caches (the plugin's credentials of devices seen before)
            what = "connect+subscribe:" if qos == 0 else "again (QoS 1 run):"
            print(
                f"{label:<36} {what} {subscribed:,}/{size:,} in {elapsed:6.2f} s "
                f"= {subscribed / elapsed:>8,.0f} devices/s{broker.cpu_since(cpu_s)}",
                flush=True,
            )
            if subscribed < size:
                print(f"{label}: only {subscribed} devices subscribed; delivery skipped", flush=True)
                continue
            messages = workload(product_id, size * args.messages_per_device, size, payload)
            devices.start_count(len(messages))
            cpu_s = broker.cpu_s()
            started = time.perf_counter()
            await broker.publisher.publish_many(messages, qos)
            taken_s = time.perf_counter() - started
            received = await devices.received()
            delivered_s = time.perf_counter() - started
            print(
                f"{label:<36} delivery QoS {qos}: taken {len(messages) / taken_s:>9,.0f} msg/s, "
                f"delivered {received / delivered_s:>9,.0f} msg/s ({received:,}/{len(messages):,})"
                f"{broker.cpu_since(cpu_s)}",
                flush=True,
            )
        finally:
            devices.stop()
    # last: a broker such as Mosquitto is still busy with these for a while after publish_many returned
    nobody = workload("NOBODY" + product_id[5:9], args.no_subscriber_messages, size, payload)
    for qos in (0, 1):
        started = time.perf_counter()
        await broker.publisher.publish_many(nobody, qos)
        rate = len(nobody) / (time.perf_counter() - started)
        print(f"{label:<36} no subscribers QoS {qos}: taken {rate:>10,.0f} msg/s", flush=True)


async def bench_embedded(args: argparse.Namespace, size: int) -> None:
    product_id = new_product_id()
    service = EmbeddedBroker(MemoryDirectory(product_id), NoShadow(), port=0, options=gateway_options(args))
    await service.start()
    try:
        await measure_broker(
            args, Broker("embedded", "127.0.0.1", service.port, service.publisher, True), size, product_id
        )
    finally:
        await service.stop()


async def bench_mosquitto(args: argparse.Namespace, size: int) -> None:
    service = ExternalBroker(args.mosquitto_url, NoShadow(), options=ExternalOptions(share_group=""))
    await service.start()
    if not service.connected:
        print(f"no broker at {args.mosquitto_url}: Mosquitto runs skipped")
        await service.stop()
        return
    try:
        address = service.address
        broker = Broker("Mosquitto", address.host, address.port, service.publisher, False)
        await measure_broker(args, broker, size, new_product_id())
    finally:
        await service.stop()


class CountingShadows:
    """Counts the shadow requests it is handed and answers none (the dispatch measurement)."""

    def __init__(self) -> None:
        self.count = 0
        self.all_in = asyncio.Event()
        self.expected = 0

    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        self.count += 1
        if self.count >= self.expected:
            self.all_in.set()
        return None


async def plugin_devices(url: str, product_id: str, count: int) -> str:
    """The product and ``count`` devices (the bench PSK) in a migrated database; the service password."""
    from fleetops.backend.registration import register_devices
    from fleetops.store.accounts import AccountStore
    from fleetops.store.broker_credentials import BrokerCredentialStore
    from fleetops.store.database import open_database
    from fleetops.store.devices import DeviceStore
    from fleetops.store.migrate import upgrade
    from fleetops.store.products import ProductStore

    db = open_database(url)
    try:
        await upgrade(db)
        account_id = await AccountStore(db).create_account("bench-" + secrets.token_hex(3), 0)
        await ProductStore(db).insert(account_id, product_id, "bench" + secrets.token_hex(3), {}, 0, 10)
        names = [f"dev{i:05d}" for i in range(count)]
        now = int(time.time())
        await register_devices(DeviceStore(db), account_id, product_id, names, now_s=now, max_devices=count)
        async with db.begin() as conn:  # the devices sign with the bench PSK
            await conn.exec_driver_sql(f"UPDATE devices SET psk = '{PSK}'")
        return await BrokerCredentialStore(db).get_or_create(benchbroker.SERVICE_USER, int(time.time()))
    finally:
        await db.dispose()


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    from fleetops.messaging.mqtt.codec import encode_connect

    return encode_connect(client_id, keepalive_s=60, username=username, password=password.encode())


def sequential_connects(label: str, port: int, product_id: str, count: int, devices: int) -> None:
    """``count`` CONNECTs one after another, each on a new socket, of devices ``dev00000`` .. (cycling)."""
    started = time.perf_counter()
    accepted = 0
    for index in range(count):
        client_id = f"{product_id}dev{index % devices:05d}"
        username = make_username(client_id, 4_000_000_000)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(connect_packet(client_id, username, sign_password(username, PSK)))
            accepted += sock.recv(4) == b"\x20\x02\x00\x00"
    elapsed = time.perf_counter() - started
    print(f"{label:<58} {count / elapsed:>9,.0f} CONNECT/s ({accepted:,}/{count:,} accepted)", flush=True)


async def dispatch(args: argparse.Namespace, label: str, port: int, product_id: str, login: BrokerLogin | None) -> None:
    """Shadow requests (QoS 0) from raw device sockets to one fleetops node."""
    handler = CountingShadows()
    node = ExternalBroker(f"mqtt://127.0.0.1:{port}", handler, client_id="bench-node", login=login)
    await node.start()
    sockets = []
    try:
        for index in range(args.dispatch_devices):
            client_id = f"{product_id}dev{index:05d}"
            username = make_username(client_id, 4_000_000_000)
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(connect_packet(client_id, username, sign_password(username, PSK)))
            assert sock.recv(4) == b"\x20\x02\x00\x00"
            request = encode_publish(f"$shadow/operation/{product_id}/dev{index:05d}".encode(), b'{"type":"get"}')
            sockets.append((sock, request))
        await asyncio.sleep(0.5)  # the presence messages of the connects go first
        handler.count, handler.expected = 0, args.requests
        handler.all_in.clear()
        started = time.perf_counter()
        for start in range(0, args.requests, len(sockets)):
            for sock, request in sockets[: min(len(sockets), args.requests - start)]:
                sock.sendall(request)
            # at most 5,000 waiting: the plugin keeps 10,000 per node (queue_max_messages) and drops the oldest
            while start - handler.count > 5000:  # noqa: ASYNC110 (polling a counter the handler raises)
                await asyncio.sleep(0.001)
            if start % (len(sockets) * 20) == 0:
                await asyncio.sleep(0)  # let the node read
        try:
            await asyncio.wait_for(handler.all_in.wait(), 120)
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - started
        print(
            f"{label + ': shadow requests to one node':<58} {handler.count / elapsed:>9,.0f} req/s "
            f"({handler.count:,}/{args.requests:,})",
            flush=True,
        )
    finally:
        for sock, _ in sockets:
            sock.close()
        await node.stop()


async def bench_mosquitto_plugin(args: argparse.Namespace, size: int) -> None:
    """The plugin's costs beside the same Mosquitto configuration without it (module docstring)."""
    from benchdb import bench_database

    product_id = new_product_id()
    with bench_database("postgresql") as url:
        secret = await plugin_devices(url, product_id, max(size, args.dispatch_devices))
        login = BrokerLogin(benchbroker.SERVICE_USER, secret)
        for label, database in (("Mosquitto, no plugin", None), ("Mosquitto + plugin", url)):
            with benchbroker.private_mosquitto(database) as broker:
                publisher = ExternalBroker(
                    f"mqtt://127.0.0.1:{broker.port}",
                    NoShadow(),
                    login=login if database else None,
                    options=ExternalOptions(serve_shadow_requests=False),
                )
                await publisher.start()
                try:
                    process = psutil.Process(broker.process.pid)
                    measured = Broker(label, "127.0.0.1", broker.port, publisher.publisher, True, process)
                    await measure_broker(args, measured, size, product_id)
                finally:
                    await publisher.stop()
            with benchbroker.private_mosquitto(database) as broker:  # a fresh broker: nothing cached
                if database:
                    first = f"{label}, each device once (database lookups)"
                    sequential_connects(first, broker.port, product_id, min(args.connects, size), size)
                    again = f"{label}, again (cached credentials)"
                    sequential_connects(again, broker.port, product_id, args.connects, size)
                else:
                    sequential_connects(label, broker.port, product_id, args.connects, size)
                await dispatch(args, label, broker.port, product_id, login if database else None)


def gateway_options(args: argparse.Namespace) -> BrokerOptions:
    options = BrokerOptions()
    if hasattr(options, "max_connections"):
        options.max_connections = max(options.max_connections, args.reconnect_devices + 100, max(args.sizes) + 100)
    return options


async def bench_reconnect(args: argparse.Namespace) -> None:
    """10,000 registered devices on a real store: stop the gateway, start a new one, all reconnect at once."""
    from benchdb import bench_database

    from fleetops.backend.registration import register_devices
    from fleetops.store.accounts import AccountStore
    from fleetops.store.database import open_database
    from fleetops.store.devices import DeviceStore
    from fleetops.store.migrate import upgrade
    from fleetops.store.products import ProductStore

    size = args.reconnect_devices
    product_id = new_product_id()
    with bench_database(args.database) as url:
        db = open_database(url, pool_size=10)
        await upgrade(db)
        account_id = await AccountStore(db).create_account("bench-" + secrets.token_hex(3), 0)
        await ProductStore(db).insert(account_id, product_id, "bench" + secrets.token_hex(3), {}, 0, 10)
        names = [f"dev{i:05d}" for i in range(size)]
        await register_devices(DeviceStore(db), account_id, product_id, names, now_s=int(time.time()), max_devices=size)
        store = DeviceStore(db)
        # every device gets the bench PSK, so the children can sign without reading the store
        async with db.begin() as conn:
            await conn.exec_driver_sql(f"UPDATE devices SET psk = '{PSK}'")

        async def online_count() -> int:
            async with db.connect() as conn:
                result = await conn.exec_driver_sql("SELECT count(*) FROM devices WHERE online")
                return int(result.scalar_one())

        directory: DeviceDirectory = store
        service = EmbeddedBroker(directory, NoShadow(), port=0, options=gateway_options(args))
        await service.start()
        port = service.port
        devices = DeviceProcesses(
            "127.0.0.1", port, 0, device_logins(product_id, size, signed=True), args.device_processes
        )
        try:
            await devices.ready()
            subscribed, elapsed = await devices.connect(args.connect_timeout_s)
            await wait_for(lambda: online_count(), size, args.connect_timeout_s)
            print(
                f"reconnect ({db.engine.dialect.name}): {subscribed:,} devices connected in {elapsed:.2f} s, "
                f"{await online_count():,} online in the store",
                flush=True,
            )
            started = time.perf_counter()
            await service.stop()
            stopped_s = time.perf_counter() - started
            lost = await devices.command(f"wait-lost {args.connect_timeout_s}")
            print(f"  stop: {stopped_s:.2f} s, {await online_count():,} online after it, devices {lost}", flush=True)
            service = EmbeddedBroker(directory, NoShadow(), port=port, options=gateway_options(args))
            await service.start()
            started = time.perf_counter()
            command = asyncio.create_task(devices.command(f"connect {args.connect_timeout_s}"))
            online = await wait_for(lambda: online_count(), size, args.connect_timeout_s)
            all_online_s = time.perf_counter() - started
            answers = await command
            resubscribed = sum(int(answer.split()[1]) for answer in answers)
            print(
                f"  restart: {online:,}/{size:,} online in the store {all_online_s:.2f} s after the new gateway "
                f"started ({resubscribed:,} subscribed again)",
                flush=True,
            )
        finally:
            devices.stop()
            await service.stop()
            await db.dispose()


async def wait_for(read: Any, target: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    value = await read()
    while value < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = await read()
    return int(value)


async def main(args: argparse.Namespace) -> None:
    print(
        f"sizes {args.sizes}, {args.messages_per_device} messages of {args.payload_bytes} bytes per device, "
        f"{args.device_processes} device processes, {os.cpu_count()} cores",
        flush=True,
    )
    brokers = args.broker or ["embedded", "mosquitto"]
    for size in args.sizes:
        if "embedded" in brokers and not args.skip_embedded:
            await bench_embedded(args, size)
        if "mosquitto" in brokers and not args.skip_mosquitto:
            await bench_mosquitto(args, size)
        if "mosquitto-plugin" in brokers:
            await bench_mosquitto_plugin(args, size)
    if not args.skip_reconnect:
        await bench_reconnect(args)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=lambda text: [int(s) for s in text.split(",")], default=[2000, 10000])
    parser.add_argument("--messages-per-device", type=int, default=5)
    parser.add_argument("--no-subscriber-messages", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--device-processes", type=int, default=2)
    parser.add_argument("--connect-timeout-s", type=float, default=120)
    parser.add_argument("--reconnect-devices", type=int, default=10_000)
    parser.add_argument("--database", default="sqlite", help="reconnect run: sqlite | postgresql | a URL")
    parser.add_argument("--mosquitto-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument(
        "--broker",
        action="append",
        choices=("embedded", "mosquitto", "mosquitto-plugin"),
        help="run this broker (repeatable; default: embedded and mosquitto)",
    )
    parser.add_argument("--connects", type=int, default=2000, help="mosquitto-plugin: sequential CONNECTs")
    parser.add_argument("--requests", type=int, default=20_000, help="mosquitto-plugin: shadow requests dispatched")
    parser.add_argument("--dispatch-devices", type=int, default=50, help="mosquitto-plugin: devices sending them")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--skip-mosquitto", action="store_true")
    parser.add_argument("--skip-reconnect", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop (as uvicorn does)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        run_devices(json.loads(sys.stdin.readline()))
    elif arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))

"""What the Mosquitto plugin costs: deliveries (the READ check runs per message and recipient), CONNECTs (a
database lookup on a cache miss, HMAC always) and shadow requests dispatched to a node, each next to a plain
Mosquitto without the plugin where there is one to compare.

    .venv/bin/python bench/mosquitto_plugin.py [--messages 50000] [--devices 200] [--connects 2000] [--requests 20000]

Builds the plugin from this tree, makes a throwaway PostgreSQL database (127.0.0.1:5432) with the devices, and
starts two private Mosquittos on free ports (with and without the plugin); everything is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import mqtt  # bench/mqtt.py: the device child process and the publish measurement
import paho.mqtt.client as paho
from benchdb import bench_database
from paho.mqtt.enums import CallbackAPIVersion

from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.external import ExternalBroker, ExternalOptions
from fleetops.messaging.wire import encode_publish, encode_remaining_length
from fleetops.mosquitto.build import build_plugin
from fleetops.store.accounts import AccountStore
from fleetops.store.broker_credentials import BrokerCredentialStore
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore, NewDevice
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Broker:
    """A private Mosquitto, with or without the plugin, stopped by its PID."""

    def __init__(self, workdir: Path, plugin_lines: list[str]) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "mosquitto.conf"
        access = ["allow_anonymous false", *plugin_lines] if plugin_lines else ["allow_anonymous true"]
        run_as = ["user root"] if os.geteuid() == 0 else []
        conf.write_text(
            "\n".join([f"listener {self.port} 127.0.0.1", "persistence false", "log_dest none", *run_as, *access])
            + "\n"
        )
        self.process = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise SystemExit("mosquitto did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def prepare(url: str, devices: int) -> str:
    """Schema, product BENCH00001 with the devices of bench/mqtt.py; the service password."""
    db = open_database(url)
    try:
        await upgrade(db)
        account = await AccountStore(db).create_account("bench", 0)
        await ProductStore(db).insert(account, mqtt.PRODUCT_ID, "bench", {}, 0, 100)
        rows = [NewDevice(f"dev{index:04d}", mqtt.PSK) for index in range(devices)]
        await DeviceStore(db).insert_many(account, mqtt.PRODUCT_ID, rows, 0, 10**6)
        return await BrokerCredentialStore(db).get_or_create("fleetops", int(time.time()))
    finally:
        await db.dispose()


async def deliveries(label: str, url: str, port: int, args: argparse.Namespace, *, signed: bool) -> None:
    service = ExternalBroker(url, mqtt.NoShadow(), options=ExternalOptions(share_group=""))
    await service.start()
    try:
        for qos in (0, 1):
            devices = mqtt.Devices.start("127.0.0.1", port, qos, mqtt.device_logins(args.devices, signed=signed))
            try:
                await devices.ready()
                messages = mqtt.workload(args.messages, args.devices, b"x" * 64, subscribed=True)
                await mqtt.measure(
                    f"{label}, {args.devices} subscribed devices", service.publisher, messages, qos, devices
                )
            finally:
                devices.stop()
    finally:
        await service.stop()


def connect_packet(client_id: str, username: str, password: str) -> bytes:
    def text(value: str) -> bytes:
        data = value.encode()
        return len(data).to_bytes(2, "big") + data

    body = text("MQTT") + bytes((4, 0xC2)) + (60).to_bytes(2, "big") + text(client_id) + text(username)
    body += text(password)
    return b"\x10" + encode_remaining_length(len(body)) + body


def connects(label: str, port: int, count: int, devices: int, *, signed: bool) -> None:
    started = time.perf_counter()
    accepted = 0
    for index in range(count):
        client_id = f"{mqtt.PRODUCT_ID}dev{index % devices:04d}"
        username = make_username(client_id, 4_000_000_000) if signed else "u"
        password = sign_password(username, mqtt.PSK) if signed else "p"
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(connect_packet(client_id, username, password))
            accepted += sock.recv(4) == b"\x20\x02\x00\x00"
    elapsed = time.perf_counter() - started
    print(f"{label:<58} {count / elapsed:>9,.0f} CONNECT/s ({accepted}/{count} accepted)", flush=True)


def dispatch(port: int, secret: str, requests: int, devices: int) -> None:
    """Shadow requests from raw device sockets (QoS 0) to one node that acknowledges every 100th message."""
    got = 0
    done = threading.Event()
    node = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-node")
    node.username_pw_set("fleetops", secret)

    handled = 0

    def on_message(client: paho.Client, userdata: object, message: paho.MQTTMessage) -> None:
        # A node acknowledges everything it was given (here: presence and subscription events of the runs
        # before too), cumulatively, every 100 messages.
        nonlocal got, handled
        handled += 1
        got += "/shadow/" in message.topic
        if handled % 100 == 0 or got == requests:
            client.publish("$fleetops/ack/bench-node", message.topic.split("/")[4].encode(), 1)
        if got == requests:
            done.set()

    subscribed = threading.Event()
    node.on_message = on_message
    node.on_subscribe = lambda *a: subscribed.set()
    node.on_connect = lambda client, *a: client.subscribe("$fleetops/node/bench-node/#", 1)
    node.connect("127.0.0.1", port, 60)
    node.loop_start()
    subscribed.wait(10)
    sockets = []
    for index in range(devices):
        client_id = f"{mqtt.PRODUCT_ID}dev{index:04d}"
        username = make_username(client_id, 4_000_000_000)
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(connect_packet(client_id, username, sign_password(username, mqtt.PSK)))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        sockets.append(
            (sock, encode_publish(f"$shadow/operation/{mqtt.PRODUCT_ID}/dev{index:04d}".encode(), b'{"type":"get"}'))
        )
    time.sleep(0.5)  # the presence messages of the connects go first
    got = 0
    started = time.perf_counter()
    for n in range(requests):
        sock, data = sockets[n % devices]
        sock.sendall(data)
    done.wait(120)
    elapsed = time.perf_counter() - started
    print(
        f"{'shadow requests dispatched to one node (QoS 0 in, QoS 1 out)':<58} {got / elapsed:>9,.0f} req/s "
        f"({got}/{requests})",
        flush=True,
    )
    for sock, _ in sockets:
        sock.close()
    node.disconnect()
    node.loop_stop()


async def main(args: argparse.Namespace) -> None:
    print(
        f"{args.messages:,} messages, {args.devices} devices, {args.connects:,} CONNECTs, "
        f"{args.requests:,} shadow requests",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp, bench_database("postgresql") as url:
        secret = await prepare(url, args.devices)
        plugin = build_plugin(Path(tmp) / "build")
        plain = Broker(Path(tmp) / "plain", [])
        with_plugin = Broker(Path(tmp) / "plugin", [f"plugin {plugin}", f"plugin_opt_database_url {url}"])
        try:
            await deliveries("Mosquitto", f"mqtt://127.0.0.1:{plain.port}", plain.port, args, signed=False)
            await deliveries(
                "Mosquitto + plugin",
                f"mqtt://fleetops:{secret}@127.0.0.1:{with_plugin.port}",
                with_plugin.port,
                args,
                signed=True,
            )
            connects("Mosquitto, anonymous", plain.port, args.connects, args.devices, signed=False)
            restarted = Broker(Path(tmp) / "cold", [f"plugin {plugin}", f"plugin_opt_database_url {url}"])
            try:
                connects(
                    "Mosquitto + plugin, each device once (database lookups)",
                    restarted.port,
                    args.devices,
                    args.devices,
                    signed=True,
                )
                connects(
                    "Mosquitto + plugin, again (cached credentials)",
                    restarted.port,
                    args.connects,
                    args.devices,
                    signed=True,
                )
            finally:
                restarted.stop()
            dispatch(with_plugin.port, secret, args.requests, min(args.devices, 50))
        finally:
            plain.stop()
            with_plugin.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--connects", type=int, default=2_000)
    parser.add_argument("--requests", type=int, default=20_000)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))

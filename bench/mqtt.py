"""Publish rates of ``Publisher.publish_many``: the embedded broker and an external Mosquitto, QoS 0 and 1.

    .venv/bin/python bench/mqtt.py [--messages 50000] [--devices 200] [--payload-bytes 64] [--uvloop]

For each path it prints the rate at which ``publish_many`` returned ("taken": written to the device sockets or
queued by the embedded broker, handed to / acknowledged by Mosquitto) and, with subscribed devices, the rate
at which every message reached them ("delivered"). The devices are paho-mqtt clients in a child process, so
that they do not share the benchmark's core; they subscribe with the QoS of the run. Messages go round-robin
to the devices' ``{pid}/{dn}/control`` topics; "no subscribers" uses topics nobody subscribes to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fleetops.messaging.amqtt_broker import BrokerOptions
from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.messaging.external import ExternalBroker, ExternalOptions
from fleetops.ports.messaging import DeviceCredentials, Publisher

PRODUCT_ID = "BENCH00001"
PSK = "MDEyMzQ1Njc4OWFiY2RlZg=="


class Directory:
    def __init__(self, device_names: list[str]) -> None:
        self.devices = {name: DeviceCredentials(PRODUCT_ID, name, PSK, True) for name in device_names}

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        return self.devices.get(device_name) if product_id == PRODUCT_ID else None

    async def set_online(
        self, product_id: str, device_name: str, online: bool, client_ip: str | None, now_s: int
    ) -> None:
        return None


class NoShadow:
    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        return None


# --- the subscribing devices, in a child process ---------------------------------------------------------


def run_devices(config: dict[str, Any]) -> None:
    """Child process: connect the devices, subscribe, then count messages until each expected total."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    received = 0
    lock = threading.Lock()
    subscribed = threading.Semaphore(0)

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        nonlocal received
        with lock:
            received += 1

    def on_subscribe(client: paho.Client, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        subscribed.release()

    clients = []
    for device in config["devices"]:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device["client_id"], protocol=paho.MQTTv311)
        if device["username"]:
            client.username_pw_set(device["username"], device["password"])
        client.on_message = on_message
        client.on_subscribe = on_subscribe
        client.on_connect = lambda c, u, f, rc, p, topic=device["topic"]: c.subscribe(topic, config["qos"])
        client.connect(config["host"], config["port"], 60)
        client.loop_start()
        clients.append(client)
    for _ in clients:
        if not subscribed.acquire(timeout=30):
            raise SystemExit("devices did not subscribe")
    print("ready", flush=True)
    for line in sys.stdin:
        expected, timeout_s = int(line.split()[0]), float(line.split()[1])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with lock:
                if received >= expected:
                    break
            time.sleep(0.001)
        with lock:
            print(f"received {received}", flush=True)
            received = 0
    for client in clients:
        client.disconnect()
        client.loop_stop()


@dataclass
class Devices:
    process: subprocess.Popen[str]

    @classmethod
    def start(cls, host: str, port: int, qos: int, devices: list[dict[str, str]]) -> Devices:
        process = subprocess.Popen(
            [sys.executable, __file__, "--child"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"host": host, "port": port, "qos": qos, "devices": devices}) + "\n")
        process.stdin.flush()
        return cls(process)

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.to_thread(self.process.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"devices: {line!r}")

    async def received(self, expected: int, timeout_s: float = 30) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{expected} {timeout_s}\n")
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        return int(line.split()[1])

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def device_logins(count: int, *, signed: bool) -> list[dict[str, str]]:
    logins = []
    for index in range(count):
        name = f"dev{index:04d}"
        client_id = PRODUCT_ID + name
        username = make_username(client_id, 4_000_000_000) if signed else ""
        password = sign_password(username, PSK) if signed else ""
        topic = f"{PRODUCT_ID}/{name}/control"
        logins.append({"client_id": client_id, "username": username, "password": password, "topic": topic})
    return logins


# --- runs ------------------------------------------------------------------------------------------------


async def measure(
    label: str, publisher: Publisher, messages: list[tuple[str, bytes]], qos: int, devices: Devices | None
) -> None:
    started = time.perf_counter()
    await publisher.publish_many(messages, qos)
    taken_s = time.perf_counter() - started
    line = f"{label:<44} QoS {qos}: taken {len(messages) / taken_s:>9,.0f} msg/s"
    if devices is not None:
        received = await devices.received(len(messages))
        delivered_s = time.perf_counter() - started
        line += f"   delivered {received / delivered_s:>9,.0f} msg/s ({received}/{len(messages)})"
    print(line, flush=True)


def workload(count: int, device_count: int, payload: bytes, *, subscribed: bool) -> list[tuple[str, bytes]]:
    product = PRODUCT_ID if subscribed else "NOBODY0000"
    return [(f"{product}/dev{n % device_count:04d}/control", payload) for n in range(count)]


async def bench_embedded(args: argparse.Namespace, payload: bytes) -> None:
    names = [login["client_id"][10:] for login in device_logins(args.devices, signed=False)]
    service = EmbeddedBroker(Directory(names), NoShadow(), port=0, options=BrokerOptions())
    await service.start()
    try:
        empty = workload(args.messages, args.devices, payload, subscribed=False)
        full = workload(args.messages, args.devices, payload, subscribed=True)
        for qos in (0, 1):
            await measure("embedded broker, no subscribers", service.publisher, empty, qos, None)
        for qos in (0, 1):
            devices = Devices.start("127.0.0.1", service.port, qos, device_logins(args.devices, signed=True))
            try:
                await devices.ready()
                label = f"embedded broker, {args.devices} subscribed devices"
                await measure(label, service.publisher, full, qos, devices)
            finally:
                devices.stop()
    finally:
        await service.stop()


async def bench_external(args: argparse.Namespace, payload: bytes) -> None:
    options = ExternalOptions(share_group="")
    service = ExternalBroker(args.mosquitto_url, NoShadow(), options=options)
    await service.start()
    if not service.connected:
        print(f"no broker at {args.mosquitto_url}: external runs skipped")
        await service.stop()
        return
    try:
        address = service.address
        empty = workload(args.messages, args.devices, payload, subscribed=False)
        for qos in (0, 1):
            await measure("Mosquitto (external), no subscribers", service.publisher, empty, qos, None)
        for qos in (0, 1):
            logins = device_logins(args.devices, signed=False)
            devices = Devices.start(address.host, address.port, qos, logins)
            try:
                await devices.ready()
                full = workload(args.messages, args.devices, payload, subscribed=True)
                label = f"Mosquitto (external), {args.devices} subscribed devices"
                await measure(label, service.publisher, full, qos, devices)
            finally:
                devices.stop()
    finally:
        await service.stop()


async def main(args: argparse.Namespace) -> None:
    payload = b"x" * args.payload_bytes
    print(f"{args.messages:,} messages of {args.payload_bytes} bytes, {args.devices} devices", flush=True)
    if not args.skip_embedded:
        await bench_embedded(args, payload)
    if not args.skip_external:
        await bench_external(args, payload)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--mosquitto-url", default="mqtt://127.0.0.1:1883")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--skip-external", action="store_true")
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

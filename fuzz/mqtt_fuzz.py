"""Malformed MQTT thrown at a running ``fleetops serve`` while a real device and the cloud API keep working.

    .venv/bin/python fuzz/mqtt_fuzz.py --packets 5000 [--connections 8] [--seed 1]

Starts ``fleetops serve`` in a child process (a temp data directory, SQLite, free ports), creates a product and
two devices through the official SDK, connects a paho-mqtt device, then sends ``--packets`` junk streams from
``--connections`` concurrent connections: random bytes, mutated CONNECTs, and valid CONNECTs followed by
mutated PUBLISH / SUBSCRIBE packets (``tests/mqtt_support.py: junk_streams``). Meanwhile it
measures a device shadow round trip (``$shadow`` get) and an API call (DescribeDevice) every 50 ms.

Prints streams sent, connections the gateway closed, crashes (the server died, or wrote a traceback to its
log) and the p50/p99 of both probes. Exits 1 on a crash or a failed probe.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from tests.mqtt_support import junk_streams, signed_connect  # noqa: E402

from fleetops.messaging.device_auth import make_username, sign_password  # noqa: E402
from fleetops.ports.messaging import DeviceCredentials  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"fleetops serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"fleetops serve did not listen on {port}")


def sdk_client(api_port: int, secret_id: str, secret_key: str) -> Any:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    profile = ClientProfile(httpProfile=HttpProfile(endpoint=f"127.0.0.1:{api_port}", protocol="http"))
    return iotcloud_client.IotcloudClient(credential.Credential(secret_id, secret_key), "ap-guangzhou", profile)


def create_devices(client: Any) -> list[DeviceCredentials]:
    from tencentcloud.iotcloud.v20180614 import models

    product = models.CreateProductRequest()
    product.ProductName = "fuzz" + secrets.token_hex(4)
    product_id = str(client.CreateProduct(product).ProductId)
    created = []
    for name in ("good", "attacker"):
        device = models.CreateDeviceRequest()
        device.ProductId, device.DeviceName = product_id, name
        created.append(DeviceCredentials(product_id, name, str(client.CreateDevice(device).DevicePsk), True))
    return created


class Device:
    """The paho device whose shadow round trips are timed."""

    def __init__(self, credentials: DeviceCredentials, port: int) -> None:
        self.pid, self.name = credentials.product_id, credentials.device_name
        client_id = self.pid + self.name
        username = make_username(client_id, int(time.time()) + 86400)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        self.client.username_pw_set(username, sign_password(username, credentials.psk))
        self.replies: queue.Queue[bytes] = queue.Queue()
        self.client.on_message = lambda _c, _u, message: self.replies.put(bytes(message.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", port, 60)
        self.client.loop_start()
        self.client.subscribe(f"$shadow/operation/result/{self.pid}/{self.name}", 0)
        if not subscribed.wait(10):
            raise SystemExit("the device could not subscribe")

    def round_trip(self, token: str, timeout_s: float = 10) -> float:
        started = time.perf_counter()
        request = json.dumps({"type": "get", "clientToken": token})
        self.client.publish(f"$shadow/operation/{self.pid}/{self.name}", request, 0)
        deadline = time.monotonic() + timeout_s
        while True:
            reply = json.loads(self.replies.get(timeout=max(0.01, deadline - time.monotonic())))
            if reply.get("clientToken") == token:
                return time.perf_counter() - started

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def throw_junk(port: int, streams: list[bytes], counters: dict[str, int]) -> None:
    for junk in streams:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counters["connect_failed"] += 1
            continue
        try:
            writer.write(junk)
            writer.write_eof()
            async with asyncio.timeout(15):
                while await reader.read(65536):
                    pass
            counters["closed"] += 1
        except TimeoutError:
            counters["left_open"] += 1
        except ConnectionError:
            counters["closed"] += 1
        finally:
            writer.close()
        counters["sent"] += 1


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


async def probe(device: Device, client: Any, stop: asyncio.Event, device_s: list[float], api_s: list[float]) -> None:
    from tencentcloud.iotcloud.v20180614 import models

    request = models.DescribeDeviceRequest()
    request.ProductID, request.DeviceName = device.pid, device.name
    number = 0
    while not stop.is_set():
        number += 1
        device_s.append(await asyncio.to_thread(device.round_trip, f"probe-{number}"))
        started = time.perf_counter()
        await asyncio.to_thread(client.DescribeDevice, request)
        api_s.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)


class Server:
    """``fleetops serve`` in a child process with its own data directory and ports, stopped by its PID."""

    def __init__(self, tmp: Path) -> None:
        self.api_port, self.mqtt_port = free_port(), free_port()
        self.data_dir = tmp / "data"
        self.log_path = tmp / "serve.log"
        env = os.environ | {
            "FLEETOPS_DATA_DIR": str(self.data_dir),
            "FLEETOPS_PORT": str(self.api_port),
            "FLEETOPS_MQTT_PORT": str(self.mqtt_port),
            "FLEETOPS_LOG_LEVEL": "INFO",
        }
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from fleetops.cli import main; main()", "serve"],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.alive = True

    def stop(self) -> None:
        self.alive = self.process.poll() is None
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def run(args: argparse.Namespace, server: Server) -> tuple[dict[str, int], float, list[float], list[float], bool]:
    """Fuzz the running server; (counters, seconds, device round trips, API calls, a probe failed)."""
    await asyncio.to_thread(wait_for_port, server.api_port, server.process)
    await asyncio.to_thread(wait_for_port, server.mqtt_port, server.process)
    keys = json.loads((server.data_dir / "credentials.json").read_text())
    client = sdk_client(server.api_port, keys["SecretId"], keys["SecretKey"])
    good, attacker = await asyncio.to_thread(create_devices, client)
    device = await asyncio.to_thread(Device, good, server.mqtt_port)
    streams = list(junk_streams(signed_connect(attacker), seed=args.seed, count=args.packets))
    counters = {"sent": 0, "closed": 0, "left_open": 0, "connect_failed": 0}
    device_s: list[float] = []
    api_s: list[float] = []
    stop = asyncio.Event()
    prober = asyncio.create_task(probe(device, client, stop, device_s, api_s))
    started = time.perf_counter()
    shares = [streams[index :: args.connections] for index in range(args.connections)]
    await asyncio.gather(*(throw_junk(server.mqtt_port, share, counters) for share in shares))
    elapsed = time.perf_counter() - started
    stop.set()
    probe_failed = False
    try:
        await prober
        device_s.append(await asyncio.to_thread(device.round_trip, "after"))  # still working at the end
    except Exception as exc:  # a probe that failed is a finding, reported by the caller
        print(f"probe failed: {exc!r}")
        probe_failed = True
    await asyncio.to_thread(device.close)
    return counters, elapsed, device_s, api_s, probe_failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packets", type=int, default=5000, help="junk streams to send")
    parser.add_argument("--connections", type=int, default=8, help="concurrent junk connections")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(Path(tmp))
        try:
            counters, elapsed, device_s, api_s, probe_failed = asyncio.run(run(args, server))
        finally:
            server.stop()
        tracebacks = server.log_path.read_text(errors="replace").count("Traceback")
    crashes = (0 if server.alive else 1) + tracebacks
    print(f"junk streams sent:   {counters['sent']:,} in {elapsed:.1f} s ({counters['sent'] / elapsed:,.0f}/s)")
    print(f"closed by gateway:   {counters['closed']:,} (left open {counters['left_open']}, "
          f"connect failed {counters['connect_failed']})")  # fmt: skip
    print(f"crashes:             {crashes} (server alive: {server.alive}, tracebacks in its log: {tracebacks})")
    print(f"device shadow p50/p99: {percentile(device_s, 0.5):.1f} / {percentile(device_s, 0.99):.1f} ms "
          f"({len(device_s)} round trips)")  # fmt: skip
    print(f"API DescribeDevice p50/p99: {percentile(api_s, 0.5):.1f} / {percentile(api_s, 0.99):.1f} ms "
          f"({len(api_s)} calls)")  # fmt: skip
    sys.exit(1 if crashes or probe_failed or counters["left_open"] else 0)


if __name__ == "__main__":
    main()

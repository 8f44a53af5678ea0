"""The brokers the device-protocol tests run against: the node's embedded broker, and Mosquitto with the
fleetops plugin started on exactly what ``fleetops mosquitto config`` printed, with a node on the same
PostgreSQL database and no credentials in its ``--mqtt-url``.

Not a conftest (nothing here is collected): the test modules import what they use.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.ports.messaging import DeviceCredentials
from fleetops.ports.store import NewDevice
from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.products import ProductStore
from tests.integration.mosquitto_plugin_support import require_program
from tests.mqtt_support import random_product_id, random_psk
from tests.support import LiveServer, free_port, postgres_database, server_on, start_server

FLEETOPS = str(Path(sys.executable).parent / "fleetops")
EMBEDDED, MOSQUITTO_PLUGIN = "embedded", "mosquitto-plugin"
# Parametrize device-protocol tests with these: the second needs PostgreSQL (the plugin reads it) and mosquitto.
BROKERS = [EMBEDDED, pytest.param(MOSQUITTO_PLUGIN, marks=pytest.mark.postgres)]


def clean_environment(**extra: str) -> dict[str, str]:
    """This process's environment without FLEETOPS_* (a developer's own settings must not leak in)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLEETOPS_")}
    env.update(extra)
    return env


def mosquitto_config(data_dir: Path, database_url: str, port: int, *options: str) -> subprocess.CompletedProcess[str]:
    """``fleetops mosquitto config --port PORT`` with this data directory and database, as a user runs it."""
    command = [FLEETOPS, "mosquitto", "config", "--port", str(port), "--data-dir", str(data_dir)]
    command += ["--database", database_url, *options]
    return subprocess.run(command, capture_output=True, text=True, env=clean_environment(), timeout=120, check=False)


@dataclass
class ConfiguredMosquitto:
    """``mosquitto -c`` on the printed configuration, on free ports; stopped by its PID."""

    data_dir: Path
    database_url: str
    options: tuple[str, ...] = ()  # more `fleetops mosquitto config` options (--plugin, --tls-port ...)
    port: int = field(default_factory=free_port)
    config_text: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.data_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "mosquitto" / "mosquitto.log"

    def start(self) -> None:
        require_program("mosquitto")
        if not self.config_text:
            printed = mosquitto_config(self.data_dir, self.database_url, self.port, *self.options)
            assert printed.returncode == 0, printed.stderr
            self.config_text = printed.stdout
            self.data_dir.mkdir(parents=True, exist_ok=True)
            self.config_file.write_text(self.config_text)
        with (self.data_dir / "mosquitto.stderr").open("ab") as stderr:
            self.process = subprocess.Popen(["mosquitto", "-c", str(self.config_file)], stderr=stderr)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"mosquitto exited:\n{self.log()[-2000:]}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise AssertionError(f"mosquitto did not listen on {self.port}:\n{self.log()[-2000:]}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(20)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the broker log:\n{self.log()[-3000:]}")
            time.sleep(0.02)


@contextmanager
def configured_mosquitto(data_dir: Path, database_url: str, *options: str) -> Iterator[ConfiguredMosquitto]:
    broker = ConfiguredMosquitto(data_dir, database_url, options)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class DeviceSide:
    """A live node and the port its devices connect to."""

    kind: str
    server: LiveServer
    port: int
    broker: ConfiguredMosquitto | None = None


@contextmanager
def node_with_broker(kind: str, data: Path, plugin: Path | None = None, **overrides: Any) -> Iterator[DeviceSide]:
    """A live node on the embedded broker (SQLite), or on Mosquitto with the plugin (PostgreSQL): ``plugin`` is a
    built plugin to use (``--plugin``), else ``fleetops mosquitto config`` builds one into the data directory."""
    if kind == EMBEDDED:
        with server_on("sqlite", data, **overrides) as live:
            assert isinstance(live.node.messaging, EmbeddedBroker)
            yield DeviceSide(kind, live, live.node.messaging.port)
        return
    assert kind == MOSQUITTO_PLUGIN
    with postgres_database() as url:
        options = ("--plugin", str(plugin)) if plugin is not None else ()
        with configured_mosquitto(data / "broker", url, *options) as broker:
            # no user or password in the URL: the node logs in as the service identity from the database
            live = start_server(data / "data", url, mqtt_url=f"mqtt://127.0.0.1:{broker.port}", **overrides)
            try:
                broker.wait_for_log("handles device messages (1 nodes)")
                yield DeviceSide(kind, live, broker.port, broker)
            finally:
                live.stop()


async def register_devices(url: str, count: int) -> list[DeviceCredentials]:
    """``count`` devices of a new product of a new account, straight through the store."""
    db = open_database(url)
    try:
        now = int(time.time())
        account_id = await AccountStore(db).create_account("nodes-" + random_product_id(), now)
        product_id = random_product_id()
        await ProductStore(db).insert(account_id, product_id, "nodes", {}, now, 100)
        made = [DeviceCredentials(product_id, f"dev{i:03d}", random_psk(), True) for i in range(count)]
        rows = [NewDevice(device.device_name, device.psk) for device in made]
        await DeviceStore(db).insert_many(account_id, product_id, rows, now, 10**6)
        return made
    finally:
        await db.dispose()

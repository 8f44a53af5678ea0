"""Helpers for the Mosquitto plugin tests: the plugin built from this tree, a private Mosquitto that loads it,
a migrated PostgreSQL database with devices, and paho clients acting as fleetops nodes (the service identity).

Not a conftest (nothing here is collected): the test modules import what they use.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from fleetops.mosquitto.build import PURE_SOURCES, SANITIZED, BuildError, build_plugin, compile_c, source_dir
from fleetops.ports.messaging import DeviceCredentials
from fleetops.ports.store import NewDevice
from fleetops.store.accounts import AccountStore
from fleetops.store.broker_credentials import BrokerCredentialStore
from fleetops.store.database import Database, open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore
from fleetops.store.tables import devices, products
from tests.mqtt_support import PahoDevice, free_port, random_product_id, random_psk
from tests.support import IN_CI, postgres_database

SERVICE_USER = "fleetops"
WAIT_S = 5.0
PROBE_SOURCE = Path(__file__).with_name("mosquitto_probe.c")
VALGRIND_SUPPRESSIONS = Path(__file__).with_name("mosquitto_valgrind.supp")


# --- builds -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PluginBuilds:
    plugin: Path
    checked_plugin: Path  # UBSan + debug info, run under valgrind
    probe: Path  # mosquitto_probe.c with the plugin's pure sources, under ASan and UBSan


def require_program(name: str) -> None:
    """Skip without ``name`` on PATH on a developer machine; in CI it is a failure (.ci/run installs it)."""
    if shutil.which(name) is None:
        message = f"{name} is not installed (Debian: apt-get install {name})"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def build_all(directory: Path) -> PluginBuilds:
    """Build everything once per test session (``directory`` is the session's temp dir)."""
    require_program("mosquitto")
    marker = directory / "built"
    try:
        if not marker.exists():
            build_plugin(directory)
            build_plugin(directory, checked=True)
            compile_c(
                [PROBE_SOURCE, *(source_dir() / name for name in PURE_SOURCES)],
                directory / "mosquitto_probe",
                shared=False,
                flags=SANITIZED,
                libraries=("-lcrypto",),
            )
            marker.touch()
    except BuildError as exc:
        if IN_CI:
            pytest.fail(f"cannot build the Mosquitto plugin: {exc}")
        pytest.skip(f"cannot build the Mosquitto plugin: {exc}")
    return PluginBuilds(
        directory / "fleetops_plugin.so", directory / "fleetops_plugin-checked.so", directory / "mosquitto_probe"
    )


def session_builds(factory: pytest.TempPathFactory) -> PluginBuilds:
    directory = factory.getbasetemp() / "mosquitto-plugin"
    directory.mkdir(exist_ok=True)
    return build_all(directory)


# --- the database -------------------------------------------------------------------------------------


@dataclass
class PluginDatabase:
    """A fresh, migrated PostgreSQL database with one account and one product."""

    url: str
    db: Database
    account_id: int
    product_id: str
    service_secret: str

    @property
    def libpq_url(self) -> str:
        return self.url  # postgresql://... is a libpq URI as it is

    async def add_device(self, name: str, *, psk: str | None = None) -> DeviceCredentials:
        psk = psk or random_psk()
        await DeviceStore(self.db).insert(
            self.account_id, self.product_id, NewDevice(name, psk), int(time.time()), 10**6
        )
        return DeviceCredentials(self.product_id, name, psk, True)

    async def set_enabled(self, name: str, enabled: bool) -> None:
        await DeviceStore(self.db).set_enabled(self.account_id, self.product_id, [name], enabled)

    async def delete(self, name: str) -> None:
        await DeviceStore(self.db).delete(self.account_id, self.product_id, name)

    async def set_psk(self, name: str, psk: str) -> None:
        """No action changes a PSK; an operator's UPDATE must still reach the broker."""
        product_pk = sa.select(products.c.id).where(products.c.product_id == self.product_id).scalar_subquery()
        async with self.db.begin() as conn:
            await conn.execute(
                sa.update(devices).where(devices.c.name == name, devices.c.product_pk == product_pk).values(psk=psk)
            )


@asynccontextmanager
async def plugin_database() -> AsyncIterator[PluginDatabase]:
    with postgres_database() as url:
        db = open_database(url)
        try:
            await upgrade(db)
            now = int(time.time())
            account_id = await AccountStore(db).create_account("plugin-" + secrets.token_hex(4), now)
            product_id = random_product_id()
            await ProductStore(db).insert(account_id, product_id, "p" + secrets.token_hex(4), {}, now, 100)
            secret = await BrokerCredentialStore(db).get_or_create(SERVICE_USER, now)
            yield PluginDatabase(url, db, account_id, product_id, secret)
        finally:
            await db.dispose()


# --- a private Mosquitto with the plugin --------------------------------------------------------------


@dataclass
class PluginBroker:
    """``mosquitto -c <generated conf>`` on a free port, loading the plugin; stopped by its PID."""

    workdir: Path
    plugin: Path
    database_url: str
    options: dict[str, str] = field(default_factory=dict)
    valgrind: bool = False  # run Mosquitto under valgrind memcheck (with the checked build of the plugin)
    port: int = field(default_factory=free_port)
    process: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def valgrind_log(self) -> Path:
        return self.workdir / "valgrind.log"

    @property
    def ubsan_log_prefix(self) -> Path:
        return self.workdir / "ubsan"

    def config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            f"plugin {self.plugin}",
            f"plugin_opt_database_url {self.database_url}",
            *(f"plugin_opt_{key} {value}" for key, value in self.options.items()),
        ]
        if os.geteuid() == 0:  # Mosquitto started as root would switch to a user who cannot read tmp_path
            lines.append("user root")
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config())
        env = dict(os.environ)
        command = ["mosquitto", "-c", str(conf)]
        if self.valgrind:
            env["UBSAN_OPTIONS"] = f"log_path={self.ubsan_log_prefix}:print_stacktrace=1:halt_on_error=1"
            command = [
                "valgrind",
                f"--log-file={self.valgrind_log}",
                "--error-exitcode=99",  # any memory error, and definite or indirect leaks at exit
                "--leak-check=full",
                "--errors-for-leak-kinds=definite,indirect",
                "--show-leak-kinds=definite,indirect",
                "--num-callers=30",
                f"--suppressions={VALGRIND_SUPPRESSIONS}",
                *command,
            ]
        with (self.workdir / "stderr").open("ab") as stderr:
            self.process = await asyncio.create_subprocess_exec(
                *command, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + WAIT_S * (8 if self.valgrind else 2)
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                await asyncio.sleep(0.02)
        await self.stop(signal.SIGKILL)  # never leave a broker behind
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.output()}")

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Stop by PID; the exit status (0 after a clean SIGTERM)."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.returncode is None:
            process.send_signal(sig)
        return await asyncio.wait_for(process.wait(), WAIT_S * 4)

    def output(self) -> str:
        """The end of the log and of stderr (a failed start)."""
        stderr = (self.workdir / "stderr").read_text(errors="replace") if (self.workdir / "stderr").exists() else ""
        return (self.log()[-3000:] + "\n" + stderr[-2000:]).strip()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def checker_reports(self) -> str:
        """UBSan's reports, and valgrind's error lines (empty when they found nothing)."""
        reports = [path.read_text(errors="replace") for path in sorted(self.workdir.glob("ubsan.*"))]
        if self.valgrind_log.exists():
            text = self.valgrind_log.read_text(errors="replace")
            if "ERROR SUMMARY: 0 errors" not in text:
                reports.append(text)
        return "\n".join(reports)

    async def wait_for_log(self, text: str, timeout_s: float = WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not in the broker log:\n{self.output()}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def running(broker: PluginBroker) -> AsyncIterator[PluginBroker]:
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- fleetops nodes as the plugin sees them -----------------------------------------------------------


@dataclass(frozen=True)
class Dispatched:
    """``$fleetops/node/<node>/<kind>/<seq>/<pid>/<dn>``."""

    kind: str
    seq: int
    product_id: str
    device_name: str
    payload: bytes

    def json(self) -> Any:
        return orjson.loads(self.payload)


class ServiceNode(PahoDevice):
    """A paho client logged in as the service identity, as a fleetops node is."""

    def __init__(self, client_id: str, secret: str, *, auto_ack: bool = False, **options: Any) -> None:
        super().__init__(DeviceCredentials(client_id, "", "", True), password=secret, **options)
        self.client.username_pw_set(SERVICE_USER, secret)
        self.node_id = client_id
        self.auto_ack = auto_ack
        self.dispatched: list[Dispatched] = []
        self.welcomes: list[dict[str, Any]] = []

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        prefix = f"$fleetops/node/{self.node_id}/"
        if message.topic == prefix + "welcome":
            self.welcomes.append(orjson.loads(message.payload))
        elif message.topic.startswith(prefix):
            kind, seq, product_id, device_name = message.topic[len(prefix) :].split("/")
            self.dispatched.append(Dispatched(kind, int(seq), product_id, device_name, bytes(message.payload)))
            if self.auto_ack:
                self.ack(int(seq))
        super()._on_message(client, userdata, message)

    async def register(self) -> int:
        return await self.subscribe(f"$fleetops/node/{self.node_id}/#", 1)

    async def hello(self) -> dict[str, Any]:
        self.publish(f"$fleetops/hello/{self.node_id}", b"", 1)
        await wait_for(lambda: bool(self.welcomes))
        return self.welcomes[-1]

    def ack(self, seq: int) -> None:
        self.client.publish(f"$fleetops/ack/{self.node_id}", str(seq).encode(), 1)

    def of_kind(self, kind: str) -> list[Dispatched]:
        return [message for message in list(self.dispatched) if message.kind == kind]


async def wait_for(condition: Any, timeout_s: float = WAIT_S, interval_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval_s)


@dataclass
class ProbeTool:
    """The compiled mosquitto_probe (one process, a line in, a line out)."""

    path: Path
    process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProbeTool:
        self.process = subprocess.Popen(
            [str(self.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(10) == 0, "the probe tool failed (an ASan or UBSan report?)"

    def ask(self, command: str, *args: str | bytes) -> str:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        encoded = ["x" + (arg.encode() if isinstance(arg, str) else arg).hex() for arg in args]
        self.process.stdin.write(" ".join([command, *encoded]) + "\n")
        return self.process.stdout.readline().strip()

    def ask_raw(self, line: str) -> str:
        assert self.process is not None and self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        return self.process.stdout.readline().strip()


def probe_tool(builds: PluginBuilds) -> Iterator[ProbeTool]:
    with ProbeTool(builds.probe) as tool:
        yield tool

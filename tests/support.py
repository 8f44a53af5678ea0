"""Shared test helpers: real databases, a live fleetops node in a background thread, official SDK clients."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest

from fleetops.backend.tasks import TaskService
from fleetops.event_loop import LoopFactory, loop_factory
from fleetops.node import Node
from fleetops.ports.messaging import Delivery
from fleetops.settings import Settings

T = TypeVar("T")

PG_HOST, PG_PORT = "127.0.0.1", 5432
MOSQUITTO_HOST, MOSQUITTO_PORT = "127.0.0.1", 1883
IN_CI = bool(os.environ.get("CI"))


# Ports for servers that must be told their port before they start (child processes). Taken below the kernel's
# ephemeral range (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 here), so that no outgoing connection of
# another process can take one between this check and the server's bind, however many connections a benchmark
# on the same machine holds. In-process servers bind port 0 instead (start_server).
_FIXED_PORTS = range(20_000, 32_000)


def free_port() -> int:
    for _ in range(200):
        port = secrets.choice(_FIXED_PORTS)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip on a developer machine without the server; in CI a missing server is a failure, never a skip."""
    if port_open(host, port):
        return
    message = f"{name} is not running at {host}:{port}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


_ADMIN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
_templates: dict[str, str] = {}
template_dir: list[Path] = []  # set by tests/conftest.py for the session


def _migrated_template(kind: str) -> str:
    """A database migrated once per test session (PostgreSQL: a template database; SQLite: a file)."""
    if kind in _templates:
        return _templates[kind]
    from fleetops.store.database import open_migrated_database

    async def migrate(url: str) -> None:
        db = await open_migrated_database(url)
        await db.dispose()

    if kind == "postgresql":
        import psycopg

        name = "fleetops_template_" + secrets.token_hex(6)
        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        _run_outside_any_loop(migrate(f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"))
        _templates[kind] = name
    else:
        if not template_dir:
            import tempfile

            template_dir.append(Path(tempfile.mkdtemp(prefix="fleetops-templates-")))
        path = template_dir[0] / "template.db"
        _run_outside_any_loop(migrate(f"sqlite:///{path}"))
        _templates[kind] = str(path)
    return _templates[kind]


def _run_outside_any_loop(coro: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run`` in a thread of its own: the first test to need a template may be an async one."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(coro)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="fleetops-template")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def drop_templates() -> None:
    """At the end of the session (tests/conftest.py)."""
    name = _templates.pop("postgresql", None)
    if name is not None:
        import psycopg

        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _templates.clear()


@contextmanager
def postgres_database(*, migrated: bool = True) -> Iterator[str]:
    """A fresh PostgreSQL database of its own (a copy of the session's migrated template), dropped afterwards."""
    import psycopg

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = "fleetops_test_" + secrets.token_hex(6)
    template = f' TEMPLATE "{_migrated_template("postgresql")}"' if migrated else ""
    with psycopg.connect(_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{template}')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def close_server_connections(database_url: str) -> int:
    """Have the PostgreSQL server close every connection to the database of ``database_url`` (as a restart or
    an operator's ``pg_terminate_backend`` would); the number closed."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = make_url(database_url).database
    with psycopg.connect(_ADMIN, autocommit=True) as conn:
        closed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (name,)
        ).fetchone()
    return 0 if closed is None else int(closed[0])


def sqlite_database(path: Path) -> str:
    """A SQLite database at ``path``: a copy of the session's migrated template file."""
    import shutil

    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated_template("sqlite"), path)
    return f"sqlite:///{path}"


@dataclass
class LiveServer:
    """A fleetops node served by uvicorn on a free port, its event loop in a background thread."""

    settings: Settings
    node: Node
    loop: asyncio.AbstractEventLoop
    secret_id: str
    secret_key: str
    _server: Any  # fleetops.server.HttpServer
    _thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def scheme(self) -> str:
        return "https" if self.settings.tls_cert_file else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.endpoint}/"

    @property
    def connections(self) -> Any:
        """The API listener's ConnectionTable (fleetops.http_limits): open and waiting connections, evictions."""
        return self._server.table

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run a coroutine on the server's loop (for setup and inspection)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def new_account(self, name: str | None = None) -> tuple[str, str]:
        async def create() -> tuple[str, str]:
            account_id = await self.node.stores.accounts.create_account(
                name or "acct-" + secrets.token_hex(4), int(time.time())
            )
            key = await self.node.stores.accounts.create_key(account_id, int(time.time()))
            return key.secret_id, key.secret_key

        return self.run(create())

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def node_loop_factory() -> LoopFactory:
    """The event loop `fleetops serve` would run on here (FLEETOPS_EVENT_LOOP, default auto: uvloop when it is
    installed), for the in-process servers and the async tests."""
    return loop_factory(os.environ.get("FLEETOPS_EVENT_LOOP", "auto")) or asyncio.new_event_loop


def start_server(data_dir: Path, database_url: str, *, messaging_factory: Any = None, **overrides: Any) -> LiveServer:
    """A live node; ``messaging_factory`` replaces its MQTT side (``fleetops.node.Node.open``)."""
    from fleetops.server import HttpServer, bind_http, http_limits

    # Bound here, on port 0, and handed to uvicorn: no other process can take the port between choosing and
    # binding it (the MQTT side binds port 0 itself: read node.messaging.port).
    listener = bind_http("127.0.0.1", 0)
    settings = Settings(data_dir=data_dir, database_url=database_url).with_overrides(
        port=listener.getsockname()[1], mqtt_port=0, **overrides
    )
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = node_loop_factory()()
        asyncio.set_event_loop(loop)
        state["loop"] = loop

        async def main() -> None:
            from fleetops.credentials import bootstrap_default_account

            node = await Node.open(settings, messaging_factory=messaging_factory)
            created = await bootstrap_default_account(node.stores.accounts, data_dir, int(time.time()))
            assert created is not None
            key = created.key
            # the same uvicorn construction as `fleetops serve`: the listener limits and TLS of server.py
            server = HttpServer(node.app(), http_limits(settings), lifespan="on")
            state.update(node=node, key=key, server=server)
            task = asyncio.create_task(server.serve(sockets=[listener]))
            # uvicorn exposes `started` as a plain flag, with no event to wait on
            while not server.started and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            ready.set()
            try:
                await task
            finally:
                await node.close()

        try:
            loop.run_until_complete(main())
        except BaseException as exc:
            state["error"] = exc
            ready.set()
        finally:
            loop.close()
            listener.close()

    thread = threading.Thread(target=serve, name="fleetops-test-server", daemon=True)
    thread.start()
    if not ready.wait(60) or "error" in state:
        raise RuntimeError(f"test server did not start: {state.get('error')!r}")
    return LiveServer(
        settings=settings,
        node=state["node"],
        loop=state["loop"],
        secret_id=state["key"].secret_id,
        secret_key=state["key"].secret_key,
        _server=state["server"],
        _thread=thread,
    )


# --- the official SDK ---------------------------------------------------------------------------------------

SDK_MODES = ("TC3-POST", "TC3-GET", "HmacSHA256", "HmacSHA1")


def sdk_client(
    server: LiveServer,
    mode: str = "TC3-POST",
    secret_id: str | None = None,
    secret_key: str | None = None,
    *,
    ca_file: str | None = None,
) -> Any:
    """An official tencentcloud-sdk-python iotcloud client pointed at the live server (over HTTPS when it serves
    it, trusting ``ca_file``)."""
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    hp = HttpProfile(
        endpoint=server.endpoint,
        protocol=getattr(server, "scheme", "http"),  # a LiveServer, or any object with its endpoint and key
        reqMethod="GET" if mode == "TC3-GET" else "POST",
        certification=ca_file,
    )
    sign_method = "TC3-HMAC-SHA256" if mode.startswith("TC3") else mode
    cp = ClientProfile(httpProfile=hp, signMethod=sign_method, language="en-US")
    cred = credential.Credential(secret_id or server.secret_id, secret_key or server.secret_key)
    return iotcloud_client.IotcloudClient(cred, "ap-guangzhou", cp)


def common_client(server: LiveServer, secret_id: str | None = None, secret_key: str | None = None) -> Any:
    """The official SDK's generic client (``CommonClient.call_json``): how a user calls fleetops' extensions."""
    from tencentcloud.common import credential
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    profile = ClientProfile(httpProfile=HttpProfile(endpoint=server.endpoint, protocol="http"), language="en-US")
    cred = credential.Credential(secret_id or server.secret_id, secret_key or server.secret_key)
    return CommonClient("iotcloud", "2018-06-14", cred, "ap-guangzhou", profile=profile)


def sdk_error(call: Any) -> tuple[str, str]:
    """Run an SDK call that must fail; return the Tencent error code and message it raised."""
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    try:
        call()
    except TencentCloudSDKException as exc:
        return str(exc.get_code()), str(exc.get_message())
    raise AssertionError("the call succeeded but an error was expected")


def sdk_error_code(call: Any) -> str:
    """Run an SDK call that must fail; return the Tencent error code it raised."""
    return sdk_error(call)[0]


# --- batch tasks: a database with one product, a fake clock and a recording publisher ----------------------


class FakeClock:
    """An injectable clock (Unix seconds as float) that moves only when told."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# A sequence of RateWindows.reserve calls (SecretId, Action, window, asked, limit) and the grant of each, from a
# fresh counter: the store's (store/rate_windows.py) and the primary's in memory (api/primary_rate.py) alike.
RESERVATIONS: Final = (
    (("AKID1", "DescribeDevice", 1_700_000_000, 7, 10), (7, 7)),
    (("AKID1", "DescribeDevice", 1_700_000_000, 7, 10), (3, 10)),
    (("AKID1", "DescribeDevice", 1_700_000_000, 7, 10), (0, 10)),
    # other actions and keys have counters of their own
    (("AKID1", "DescribeProduct", 1_700_000_000, 4, 10), (4, 4)),
    (("AKID2", "DescribeDevice", 1_700_000_000, 20, 10), (10, 10)),
    # the next window reuses the counter
    (("AKID1", "DescribeDevice", 1_700_000_001, 7, 10), (7, 7)),
    # a node whose clock is behind is charged to the counter's newer window
    (("AKID1", "DescribeDevice", 1_700_000_000, 7, 10), (3, 10)),
    # a node configured with a lower limit than what is granted already gets nothing
    (("AKID1", "DescribeDevice", 1_700_000_001, 1, 5), (0, 10)),
)


def update_shadow_order(product_id: str, name_filter: str, desired: str, **extensions: Any) -> dict[str, Any]:
    """CreateTask's parameters for an UpdateShadow task due now (``extensions``: fleetops' own members)."""
    return {
        "TaskType": "UpdateShadow",
        "ProductId": product_id,
        "DeviceNameFilter": name_filter,
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": desired}},
        **extensions,
    }


class QuietMessaging:
    """A node's MQTT side that serves nothing (``Node.open(messaging_factory=...)``): what the node publishes goes
    to ``publisher``, a test double (by default a :class:`TaskPublisher`)."""

    def __init__(self, publisher: Any = None) -> None:
        self.publisher: Any = publisher if publisher is not None else TaskPublisher()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        return False


class TaskPublisher:
    """A :class:`~fleetops.ports.messaging.Publisher` that records every message (thread-safe).

    ``down`` makes it raise BrokerUnavailable like a broker that is gone; ``before_publish`` runs (awaited)
    before each call, so a test can act at a batch boundary (advance a clock, add devices, crash).
    """

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.batches: list[list[tuple[str, bytes]]] = []  # each call's messages, once taken
        self.calls = 0
        self.refused = 0
        self.down = False
        self.before_publish: Callable[[int], Awaitable[None]] | None = None
        self._lock = threading.Lock()

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many([(topic, payload)], qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        from fleetops.errors import BrokerUnavailable

        assert qos == 0, "batch tasks publish with QoS 0"
        self.calls += 1
        if self.before_publish is not None:
            await self.before_publish(self.calls)
        if self.down:
            self.refused += 1
            raise BrokerUnavailable("the test broker is down")
        with self._lock:
            self.messages.extend(messages)
            self.batches.append(list(messages))
        return [Delivery.UNKNOWN] * len(messages)

    def subscribed(self, topic: str) -> bool | None:
        return None

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None

    def by_topic(self) -> dict[str, list[bytes]]:
        with self._lock:
            grouped: dict[str, list[bytes]] = {}
            for topic, payload in self.messages:
                grouped.setdefault(topic, []).append(payload)
            return grouped


@dataclass
class TaskEnv:
    """One account and product in a fresh database, the task use cases, and workers on demand."""

    db: Any
    account_id: int
    product_id: str
    product_pk: int
    clock: FakeClock
    publisher: TaskPublisher
    service: TaskService

    def worker(
        self,
        node_id: str = "node-a",
        *,
        batch_size: int = 50,
        lease_s: int = 30,
        concurrency: int = 1,
        publisher: Any = None,
        deliveries: Any = None,
    ) -> Any:
        from fleetops.messaging.device_messages import DeviceMessenger
        from fleetops.node import build_engine
        from fleetops.store.batches import DeviceBatches
        from fleetops.store.outcomes import TaskOutcomeStore
        from fleetops.store.tasks import TaskStore

        settings = Settings(
            node_id=node_id,
            task_batch_size=batch_size,
            task_lease_s=lease_s,
            task_concurrency=concurrency,
            task_poll_interval_s=0.05,
        )
        messages = DeviceMessenger(publisher or self.publisher)
        return build_engine(
            settings,
            TaskStore(self.db),
            DeviceBatches(self.db),
            TaskOutcomeStore(self.db),
            messages,
            self.clock,
            deliveries(messages) if deliveries is not None else None,
        )

    async def add_devices(self, names: Sequence[str]) -> None:
        from fleetops.backend.registration import register_devices
        from fleetops.store.devices import DeviceStore

        await register_devices(
            DeviceStore(self.db), self.account_id, self.product_id, list(names), now_s=0, max_devices=10**7
        )

    async def create(self, draft: Any) -> str:
        """CreateTask's use case with a ``fleetops.backend.tasks.TaskDraft``."""
        task_id: str = await self.service.create(self.account_id, draft)
        return task_id

    def draft(self, task_type: str, name_filter: str, **fields: Any) -> Any:
        from fleetops.backend.tasks import TaskDraft
        from fleetops.domain.tasks import TaskType

        fields.setdefault("schedule_time", fields.pop("schedule_time_s", 0))
        return TaskDraft(TaskType(task_type), self.product_id, name_filter, **fields)

    async def update_shadow_task(self, name_filter: str, desired: dict[str, Any], **kwargs: Any) -> str:
        import orjson

        return await self.create(
            self.draft("UpdateShadow", name_filter, desired=orjson.dumps(desired).decode(), **kwargs)
        )

    async def publish_task(self, name_filter: str, topic: str, payload: str, **kwargs: Any) -> str:
        return await self.create(self.draft("PublishMessage", name_filter, topic=topic, payload=payload, **kwargs))

    async def task(self, task_id: str) -> Any:
        from fleetops.store.tasks import TaskStore

        return await TaskStore(self.db).read(task_id)

    async def shadows(self) -> dict[str, Any]:
        """Every device's shadow (fleetops.domain.shadow.Shadow) by name."""
        import sqlalchemy as sa

        from fleetops.domain.shadow import Shadow
        from fleetops.store.tables import devices

        async with self.db.connect() as conn:
            rows = await conn.execute(sa.select(devices).where(devices.c.product_pk == self.product_pk))
            return {
                row.name: Shadow(
                    reported=dict(row.shadow_reported or {}),
                    desired=None if row.shadow_desired is None else dict(row.shadow_desired),
                    metadata_reported=dict(row.shadow_meta_reported or {}),
                    metadata_desired=dict(row.shadow_meta_desired or {}),
                    version=int(row.shadow_version),
                    timestamp_ms=int(row.shadow_ts_ms),
                )
                for row in rows
            }

    async def set_shadow(self, name: str, shadow: Any) -> None:
        """Overwrite one device's shadow columns (test setup)."""
        import sqlalchemy as sa

        from fleetops.store.tables import devices

        async with self.db.begin() as conn:
            await conn.execute(
                sa.update(devices)
                .where(devices.c.product_pk == self.product_pk, devices.c.name == name)
                .values(
                    shadow_reported=shadow.reported,
                    shadow_desired=sa.null() if shadow.desired is None else shadow.desired,
                    shadow_meta_reported=shadow.metadata_reported,
                    shadow_meta_desired=shadow.metadata_desired,
                    shadow_version=shadow.version,
                    shadow_ts_ms=shadow.timestamp_ms,
                )
            )

    async def close(self) -> None:
        await self.db.dispose()


async def open_task_env(database_url: str, *, max_open_tasks: int = 10, clock: FakeClock | None = None) -> TaskEnv:
    from fleetops.backend.tasks import TaskService
    from fleetops.store.accounts import AccountStore
    from fleetops.store.batches import DeviceBatches
    from fleetops.store.database import open_database
    from fleetops.store.migrate import upgrade
    from fleetops.store.outcomes import TaskOutcomeStore
    from fleetops.store.products import ProductStore
    from fleetops.store.tasks import TaskStore

    clock = clock or FakeClock()
    db = open_database(database_url)
    await upgrade(db)
    account_id = await AccountStore(db).create_account("tasks-" + secrets.token_hex(4), int(clock()))
    product_id = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(10))
    product = await ProductStore(db).insert(account_id, product_id, "p" + secrets.token_hex(4), {}, 0, 100)
    assert product is not None
    service = TaskService(
        TaskStore(db),
        ProductStore(db),
        clock,
        max_open_tasks=max_open_tasks,
        retention_s=30 * 86400,
        batches=DeviceBatches(db),
        outcomes=TaskOutcomeStore(db),
    )
    return TaskEnv(db, account_id, product_id, product.pk, clock, TaskPublisher(), service)


@asynccontextmanager
async def task_env(database_url: str, devices: Sequence[str] = (), **options: Any) -> AsyncIterator[TaskEnv]:
    """:func:`open_task_env` with ``devices`` registered in its product, closed at the end."""
    env = await open_task_env(database_url, **options)
    try:
        if devices:
            await env.add_devices(list(devices))
        yield env
    finally:
        await env.close()


def embedded_broker(server: LiveServer) -> Any:
    """The node's own embedded broker (started with the node, its publisher the engine's and the shadows')."""
    from fleetops.messaging.embedded import EmbeddedBroker

    broker = server.node.messaging
    assert isinstance(broker, EmbeddedBroker)
    return broker


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout_s: float = 10.0, interval_s: float = 0.02
) -> None:
    """Poll ``condition`` until it holds; TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await condition():
                return
            await asyncio.sleep(interval_s)


@contextmanager
def server_on(kind: str, data: Path, **options: Any) -> Iterator[LiveServer]:
    """A live server on ``kind`` ("sqlite" or "postgresql", a fresh database), stopped afterwards."""
    if kind == "sqlite":
        live = start_server(data / "data", sqlite_database(data / "fleetops.db"), **options)
        try:
            yield live
        finally:
            live.stop()
        return
    with postgres_database() as url:
        live = start_server(data / "data", url, **options)
        try:
            yield live
        finally:
            live.stop()


def new_product(client: Any) -> str:
    """Create a product with a unique name through the SDK; its ProductId."""
    from tencentcloud.iotcloud.v20180614 import models

    req = models.CreateProductRequest()
    req.ProductName = "p" + secrets.token_hex(6)
    return str(client.CreateProduct(req).ProductId)


# --- TLS: a CA and certificates made for the test (the openssl CLI) -----------------------------------------


def _openssl(*args: str) -> None:
    import subprocess

    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_test_pki(root: Path) -> dict[str, Path]:
    """A CA (``ca.pem``), a server certificate it signed for 127.0.0.1 / localhost (``server.pem``,
    ``server.key``) and a second CA nobody uses (``other.pem``), made with the openssl command."""
    import shutil

    if shutil.which("openssl") is None:
        message = "the openssl command is needed to make the test certificates (apt-get install -y openssl)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / name for name in ("ca.key", "ca.pem", "other.key", "other.pem", "server.key", "server.pem")}
    for ca in ("ca", "other"):
        _openssl(
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=fleetops test {ca}",
            "-keyout", str(paths[f"{ca}.key"]), "-out", str(paths[f"{ca}.pem"]),
        )  # fmt: skip
    csr = root / "server.csr"
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(paths["server.key"]), "-out", str(csr),
    )  # fmt: skip
    extensions = root / "san.cnf"
    extensions.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(paths["ca.pem"]), "-CAkey", str(paths["ca.key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(paths["server.pem"]),
    )  # fmt: skip
    return paths

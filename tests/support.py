"""Shared test helpers: real databases, a live fleetops node in a background thread, official SDK clients."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from fleetops.node import Node
from fleetops.settings import Settings

T = TypeVar("T")

PG_HOST, PG_PORT = "127.0.0.1", 5432
MOSQUITTO_HOST, MOSQUITTO_PORT = "127.0.0.1", 1883
IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database of its own, dropped afterwards."""
    import psycopg

    require_service("PostgreSQL", PG_HOST, PG_PORT)
    name = "fleetops_test_" + secrets.token_hex(6)
    admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class LiveServer:
    """A fleetops node served by uvicorn on a free port, its event loop in a background thread."""

    settings: Settings
    node: Node
    loop: asyncio.AbstractEventLoop
    secret_id: str
    secret_key: str
    _server: uvicorn.Server
    _thread: threading.Thread
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.settings.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}/"

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run a coroutine on the server's loop (for setup and inspection)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def new_account(self, name: str | None = None) -> tuple[str, str]:
        async def create() -> tuple[str, str]:
            account_id = await self.node.accounts.create_account(name or "acct-" + secrets.token_hex(4), int(time.time()))
            key = await self.node.accounts.create_key(account_id, int(time.time()))
            return key.secret_id, key.secret_key

        return self.run(create())

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(30)


def start_server(data_dir: Path, database_url: str, **overrides: Any) -> LiveServer:
    settings = Settings(data_dir=data_dir, database_url=database_url).with_overrides(
        port=free_port(), mqtt_port=free_port(), **overrides
    )
    ready = threading.Event()
    state: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        state["loop"] = loop

        async def main() -> None:
            from fleetops.credentials import bootstrap_default_account

            node = await Node.open(settings)
            key = await bootstrap_default_account(node.accounts, data_dir, int(time.time()))
            assert key is not None
            server = uvicorn.Server(
                uvicorn.Config(node.app(), host="127.0.0.1", port=settings.port, log_config=None, lifespan="on")
            )
            state.update(node=node, key=key, server=server)
            task = asyncio.create_task(server.serve())
            while not server.started and not task.done():
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
    server: LiveServer, mode: str = "TC3-POST", secret_id: str | None = None, secret_key: str | None = None
) -> Any:
    """An official tencentcloud-sdk-python iotcloud client pointed at the live server."""
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    hp = HttpProfile(endpoint=server.endpoint, protocol="http", reqMethod="GET" if mode == "TC3-GET" else "POST")
    sign_method = "TC3-HMAC-SHA256" if mode.startswith("TC3") else mode
    cp = ClientProfile(httpProfile=hp, signMethod=sign_method, language="en-US")
    cred = credential.Credential(secret_id or server.secret_id, secret_key or server.secret_key)
    return iotcloud_client.IotcloudClient(cred, "ap-guangzhou", cp)


def sdk_error_code(call: Any) -> str:
    """Run an SDK call that must fail; return the Tencent error code it raised."""
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    try:
        call()
    except TencentCloudSDKException as exc:
        return str(exc.get_code())
    raise AssertionError("the call succeeded but an error was expected")

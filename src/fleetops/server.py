"""Running a node under uvicorn, with a clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

import uvicorn

from fleetops.credentials import CREDENTIALS_FILE, bootstrap_default_account
from fleetops.errors import ConfigurationError
from fleetops.node import Node
from fleetops.settings import Settings

log = logging.getLogger("fleetops")


class _Server(uvicorn.Server):
    """uvicorn, except that SIGINT/SIGTERM end the process with status 0 once fleetops has stopped.

    uvicorn re-raises the captured signal when it has shut down, which would kill the process before the node
    stops its MQTT side and releases its task leases; here the signal only asks for a graceful stop.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def run_server(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    node = await Node.open(settings)
    try:
        key = await bootstrap_default_account(node.accounts, settings.data_dir, int(time.time()))
        if key is not None:
            # printed once, on first start only; also kept (mode 0600) in credentials.json
            print(
                f"Created account '{key.account_name}' with a key pair (saved to "
                f"{settings.data_dir / CREDENTIALS_FILE}):\n  SecretId:  {key.secret_id}\n"
                f"  SecretKey: {key.secret_key}",
                flush=True,
            )
        # start the MQTT side and the engine before serving HTTP, so a bad configuration (MQTT port taken,
        # broker refusing our credentials) stops the command with one clear message instead of a traceback
        await node.start()
        config = uvicorn.Config(
            node.app(manage_services=False),
            host=settings.host,
            port=settings.port,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
        )
        server = _Server(config)
        log.info("fleetops API on http://%s:%d", settings.host, settings.port)
        try:
            await server.serve()
        finally:
            await node.stop()
    finally:
        await node.close()


async def run_worker(settings: Settings) -> None:
    """A node without the HTTP API: the task engine (and the shadow-request handler on the external broker).

    Several workers and ``serve`` nodes share one database; tasks are split through leases. A worker needs the
    external broker: with the embedded one the devices are connected to the ``serve`` process, not to it.
    """
    if not settings.mqtt_url:
        raise ConfigurationError(
            "fleetops worker needs an external MQTT broker (--mqtt-url / FLEETOPS_MQTT_URL): with the embedded "
            "broker the devices are connected to the `fleetops serve` process, which runs the tasks itself"
        )
    node = await Node.open(settings, serve_shadow_requests=False)
    try:
        await node.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("fleetops worker %s running tasks", settings.node_id or "(host:pid)")
        try:
            await stop.wait()
        finally:
            await node.stop()
    finally:
        await node.close()

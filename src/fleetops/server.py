"""Running a node under uvicorn, with a clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

import uvicorn

from fleetops.credentials import CREDENTIALS_FILE, bootstrap_default_account
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

"""Running a node under uvicorn, with a clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import time

import uvicorn

from fleetops.credentials import CREDENTIALS_FILE, bootstrap_default_account
from fleetops.node import Node
from fleetops.settings import Settings

log = logging.getLogger("fleetops")


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
        server = uvicorn.Server(config)
        log.info("fleetops API on http://%s:%d", settings.host, settings.port)
        try:
            await server.serve()
        finally:
            await node.stop()
    finally:
        await node.close()

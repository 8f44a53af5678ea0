"""Running a node: ``fleetops serve`` under uvicorn and ``fleetops worker``, with a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn

from fleetops.credentials import bootstrap_default_account
from fleetops.errors import ConfigurationError
from fleetops.node import Node, Role
from fleetops.settings import Settings
from fleetops.store.database import display_url

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


def bind_http(host: str, port: int) -> socket.socket:
    """The API's listening socket, bound before anything starts, so that a taken port is one clear message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and without it
    # every response (headers and body are two writes) waited ~40 ms for the client's delayed ACK
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"cannot listen on {host}:{port} for the HTTP API: the address is already in use (another "
                "fleetops?); choose another port (--port, FLEETOPS_PORT)"
            ) from exc
        raise ConfigurationError(f"cannot listen on {host}:{port} for the HTTP API: {exc.strerror}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _where(settings: Settings) -> str:
    return f"data directory {settings.data_dir.resolve()}, database {display_url(settings.effective_database_url)}"


async def run_server(settings: Settings) -> None:
    listener = bind_http(settings.host, settings.port)
    try:
        node = await Node.open(settings)
        try:
            created = await bootstrap_default_account(node.stores.accounts, settings.data_dir, int(time.time()))
            if created is not None:
                key = created.key
                kept = (
                    f"\n  (the credentials.json already there, of another database, was kept as {created.kept})"
                    if created.kept is not None
                    else ""
                )
                # printed once, on first start only; also kept (mode 0600) in credentials.json
                print(
                    f"Created account '{key.account_name}' with a key pair (saved to {created.path}):\n"
                    f"  SecretId:  {key.secret_id}\n  SecretKey: {key.secret_key}{kept}",
                    flush=True,
                )
            # start the MQTT side and the engine before serving HTTP, so a bad configuration (MQTT port taken,
            # broker refusing our credentials) stops the command with one clear message instead of a traceback
            await node.start()
            config = uvicorn.Config(
                node.app(manage_services=False),
                log_config=None,
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=10,
            )
            server = _Server(config)
            log.info("fleetops API on http://%s:%d (%s)", settings.host, settings.port, _where(settings))
            try:
                await server.serve(sockets=[listener])
            finally:
                await node.stop()
        finally:
            await node.close()
    finally:
        listener.close()


async def run_worker(settings: Settings) -> None:
    """A node without the HTTP API: the task engine, publishing on the external broker.

    Several workers and ``serve`` nodes share one database; tasks are split through leases. A worker needs the
    external broker: with the embedded one the devices are connected to the ``serve`` process, not to it.
    """
    if not settings.mqtt_url:
        raise ConfigurationError(
            "fleetops worker needs an external MQTT broker (--mqtt-url / FLEETOPS_MQTT_URL): with the embedded "
            "broker the devices are connected to the `fleetops serve` process, which runs the tasks itself"
        )
    node = await Node.open(settings, role=Role.WORKER)
    try:
        await node.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("fleetops worker %s running tasks (%s)", node.engine.scheduler.node_id, _where(settings))
        try:
            await stop.wait()
        finally:
            await node.stop()
    finally:
        await node.close()

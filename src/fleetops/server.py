"""Running a node: ``fleetops serve`` under uvicorn and ``fleetops worker``, with a clean stop on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

import uvicorn
from starlette.types import ASGIApp

from fleetops.credentials import bootstrap_default_account
from fleetops.errors import ConfigurationError
from fleetops.event_loop import loop_name
from fleetops.http_limits import HttpLimits, HttpListener, limited_protocol
from fleetops.listeners import (
    ConnectionTable,
    LimitedLog,
    LimitedLogFilter,
    raise_file_limit,
    server_tls_context,
    warn_if_over_file_limit,
)
from fleetops.node import Node, Role
from fleetops.settings import Settings
from fleetops.store.database import display_url

log = logging.getLogger("fleetops")

LOG_INTERVAL_S: Final = 10.0  # a repeated log line (refused connections, accept() errors) at most this often
# uvicorn's warnings per bad request, let through once per LOG_INTERVAL_S
_PER_REQUEST_WARNINGS: Final = frozenset({"Invalid HTTP request received.", "Unsupported upgrade request."})


class HttpServer(uvicorn.Server):
    """uvicorn serving the API with fleetops' listener limits (``http_limits``), and a clean stop.

    fleetops accepts the API's connections itself (``http_limits.HttpListener``), on asyncio's loop and uvloop's
    alike: :meth:`startup` gives uvicorn's no socket, so that it starts the lifespan without a listener of its
    own, and each connection's protocol is built as uvicorn builds it, from the ``Config(http=...)`` class with
    the config, the server state and the lifespan state (uvicorn's contract with its protocol classes); uvicorn's
    shutdown then sees those connections in its server state as usual.

    SIGINT/SIGTERM end the process with status 0 once fleetops has stopped: uvicorn re-raises the captured signal
    when it has shut down, which would kill the process before the node stops its MQTT side and releases its task
    leases; here the signal only asks for a graceful stop.
    """

    handled_signals: ClassVar[tuple[signal.Signals, ...]] = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, app: ASGIApp, limits: HttpLimits, *, lifespan: Literal["on", "off"] = "off") -> None:
        self.limits = limits
        self.table: ConnectionTable[Any] = ConnectionTable(
            "HTTPS" if limits.tls is not None else "HTTP",
            limits.max_connections,
            LimitedLog(log, LOG_INTERVAL_S),
            setting="FLEETOPS_HTTP_MAX_CONNECTIONS",
            owed="request",
        )
        self._protocol_class = limited_protocol(limits, self.table)
        self._listener: HttpListener | None = None
        config = uvicorn.Config(
            app,
            http=self._protocol_class,
            ws="none",  # an upgraded connection would leave the protocol, and with it the listener's limits
            log_config=None,
            access_log=False,
            lifespan=lifespan,
            timeout_graceful_shutdown=10,
            # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: only from the proxies named
            proxy_headers=bool(limits.trusted_proxies),
            forwarded_allow_ips=list(limits.trusted_proxies) or None,
        )
        super().__init__(config)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        assert sockets, "fleetops binds its listening socket itself (bind_http)"
        _limit_uvicorn_warnings()
        await super().serve(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[])  # the lifespan, and no listener of uvicorn's
        protocol = functools.partial(
            self._protocol_class, config=self.config, server_state=self.server_state, app_state=self.lifespan.state
        )
        self._listener = HttpListener(self.table, protocol)
        self._listener.start(sockets or [])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._listener is not None:
            await self._listener.stop()  # before uvicorn closes the sockets
        await super().shutdown(sockets=sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in self.handled_signals}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _limit_uvicorn_warnings() -> None:
    """uvicorn logs a warning per malformed request; a client sending millions would fill the log."""
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, LimitedLogFilter) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(LimitedLogFilter(LimitedLog(uvicorn_log, LOG_INTERVAL_S), _PER_REQUEST_WARNINGS))


def http_limits(settings: Settings) -> HttpLimits:
    """The API listener's limits from Settings, with its TLS context when a certificate is configured."""
    if settings.http_max_connections < 1:
        raise ConfigurationError(
            "http_max_connections (FLEETOPS_HTTP_MAX_CONNECTIONS) must be at least 1, "
            f"got {settings.http_max_connections}"
        )
    if settings.http_request_timeout_s <= 0:
        raise ConfigurationError(
            "http_request_timeout_s (FLEETOPS_HTTP_REQUEST_TIMEOUT_S) must be more than 0 seconds, "
            f"got {settings.http_request_timeout_s:g}"
        )
    tls = None
    if settings.tls_cert_file or settings.tls_key_file:
        if not (settings.tls_cert_file and settings.tls_key_file):
            raise ConfigurationError(
                "HTTPS needs both a certificate and its key: give --tls-cert and --tls-key "
                "(FLEETOPS_TLS_CERT_FILE, FLEETOPS_TLS_KEY_FILE)"
            )
        tls = server_tls_context(
            Path(settings.tls_cert_file),
            Path(settings.tls_key_file),
            what="HTTPS",
            settings_hint="--tls-cert / --tls-key (FLEETOPS_TLS_CERT_FILE, FLEETOPS_TLS_KEY_FILE)",
        )
    return HttpLimits(
        max_connections=settings.http_max_connections,
        request_timeout_s=settings.http_request_timeout_s,
        tls=tls,
        trusted_proxies=tuple(address.strip() for address in settings.trusted_proxies.split(",") if address.strip()),
    )


def listener_caps(settings: Settings) -> dict[str, int]:
    """The connection caps of this process's listeners, by the setting that sets them (the file-limit check)."""
    caps = {"FLEETOPS_HTTP_MAX_CONNECTIONS": settings.http_max_connections}
    if settings.workers > 1:  # a request in flight at an API worker holds a connection to the primary
        forwarded = settings.http_max_connections * (settings.workers - 1)
        caps["FLEETOPS_HTTP_MAX_CONNECTIONS x (FLEETOPS_WORKERS - 1), forwarded by API workers"] = forwarded
    if not settings.mqtt_url:  # the embedded gateway: a plain listener, and a TLS one when asked for
        listeners = 2 if settings.mqtt_tls_port else 1
        caps[f"FLEETOPS_MQTT_MAX_CONNECTIONS x {listeners}"] = settings.mqtt_max_connections * listeners
    return caps


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
    return (
        f"data directory {settings.data_dir.resolve()}, database {display_url(settings.effective_database_url)}, "
        f"event loop {loop_name(asyncio.get_running_loop())}"
    )


async def run_server(settings: Settings) -> None:
    from fleetops.workers import serve_with_workers, worker_count  # it builds on this module

    workers = worker_count(settings)
    warn_if_over_file_limit(raise_file_limit(), listener_caps(settings))
    limits = http_limits(settings)  # a certificate that cannot be read stops the start before anything binds
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
            app = node.app(manage_services=False)
            server = HttpServer(app, limits, lifespan="on")
            scheme = "https" if limits.tls is not None else "http"
            processes = (
                f", {workers} processes: this one and {workers - 1} API worker{'s' if workers > 2 else ''}"
                if workers > 1
                else ""
            )
            log.info(
                "fleetops API on %s://%s:%d (%s%s)", scheme, settings.host, settings.port, _where(settings), processes
            )
            try:
                if workers > 1:
                    await serve_with_workers(server, listener, node, app, workers)
                else:
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
        assert node.engine is not None
        log.info("fleetops worker %s running tasks (%s)", node.engine.scheduler.node_id, _where(settings))
        try:
            await stop.wait()
        finally:
            await node.stop()
    finally:
        await node.close()

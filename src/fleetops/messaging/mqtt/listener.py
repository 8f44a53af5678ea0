"""A TCP (or TLS) listener with a connection limit that half-open connections cannot exhaust.

fleetops accepts connections itself (``fleetops.listeners.Acceptor``: ``loop.add_reader`` on the listening
socket, then ``loop.connect_accepted_socket``) instead of ``loop.create_server``, because neither event loop's
own accept loop reports a failed ``accept()`` usefully (asyncio: a full traceback each time, once a second for as
long as the process is out of file descriptors; uvloop: nothing, closing the connections waiting in the
backlog), and neither offers a hook to refuse or evict before the protocol exists.

Rules (docs/limits.md):

* at most ``max_connections`` open connections on this listener, TLS handshakes included;
* a connection counts as *pending* until the application calls :meth:`Listener.established` (the gateway does
  at CONNACK 0). When the listener is full, the oldest pending connection is closed to make room; only if none
  is pending is the new one refused. A flood of connections that never send CONNECT cannot lock devices out;
* ``accept()`` errors are logged at most once per ``log_interval_s`` with a count, never with a traceback; on
  EMFILE/ENFILE the listener also closes its oldest pending connection and pauses accepting briefly.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Protocol

from fleetops.listeners import Acceptor, ConnectionTable, LimitedLog

log = logging.getLogger("fleetops.messaging.gateway")


class Evictable(Protocol):
    """A connection of this listener (``fleetops.listeners.Evictable``) that knows when it was accepted."""

    opened_at: float  # time.monotonic() when accepted

    def evict(self) -> None:
        """Close the connection (it has not completed CONNECT and the listener needs room)."""
        ...


class _Handshake:
    """An accepted socket whose transport (and TLS handshake) is being set up."""

    __slots__ = ("opened_at", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.opened_at = time.monotonic()

    def evict(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Listener:
    """Accepts on ``sockets`` and hands each connection to ``protocol_factory`` (a protocol per connection)."""

    def __init__(
        self,
        name: str,
        sockets: list[socket.socket],
        protocol_factory: Callable[[Listener], asyncio.Protocol],
        *,
        max_connections: int,
        handshake_timeout_s: float,
        ssl_context: ssl.SSLContext | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        self.name = name
        self.sockets = sockets
        self.max_connections = max_connections
        self._factory = protocol_factory
        self._ssl = ssl_context
        self._handshake_timeout_s = handshake_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.limited_log = LimitedLog(log, log_interval_s)
        # pending = waiting for its CONNECT: the table's one eviction rule, shared with the HTTP API
        self._table: ConnectionTable[Evictable] = ConnectionTable(
            f"MQTT {name}", max_connections, self.limited_log, setting="FLEETOPS_MQTT_MAX_CONNECTIONS", owed="CONNECT"
        )
        self._acceptor = Acceptor(self._table, self._admit)

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return self._table.open_connections

    @property
    def refused(self) -> int:
        return self._table.refused

    @property
    def evicted(self) -> int:
        return self._table.evicted

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._acceptor.start(self.sockets)

    async def stop(self) -> None:
        """Stop accepting and close the listening sockets (open connections are the application's)."""
        self._acceptor.stop()
        for sock in self.sockets:
            sock.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- what the connections tell the listener -------------------------------------------------------------

    def pending(self, connection: Evictable) -> None:
        """A new connection (its transport exists); pending until :meth:`established`."""
        self._table.add(connection)

    def established(self, connection: Evictable) -> None:
        self._table.busy(connection)

    def closed(self, connection: Evictable) -> None:
        self._table.closed(connection)

    def oldest_pending(self) -> Evictable | None:
        return self._table.oldest_waiting()

    # --- accepting ------------------------------------------------------------------------------------------

    def _admit(self, sock: socket.socket) -> None:
        if not self._table.make_room():
            sock.close()
            return
        handshake = _Handshake()
        self.pending(handshake)
        assert self._loop is not None
        task = self._loop.create_task(self._start(sock, handshake))
        handshake.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self, sock: socket.socket, handshake: _Handshake) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(
                lambda: self._factory(self),
                sock,
                ssl=self._ssl,
                ssl_handshake_timeout=self._handshake_timeout_s if self._ssl is not None else None,
            )
        except asyncio.CancelledError:
            sock.close()  # evicted or stopping; asyncio closed the transport if it had made one
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            sock.close()
            what = "TLS handshake" if self._ssl is not None else "connection setup"
            self.limited_log("handshake", logging.INFO, "MQTT %s listener: %s failed: %s", self.name, what, exc)
        finally:
            self.closed(handshake)

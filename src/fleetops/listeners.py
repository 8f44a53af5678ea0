"""What every listening socket of fleetops shares (the HTTP API, the MQTT gateway's listeners): the accept loop,
the connection table with its eviction rule, TLS contexts from PEM files, log lines limited to one per interval,
and the process's file limit."""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Generic, Protocol, TypeVar

from fleetops.errors import ConfigurationError

__all__ = [
    "ACCEPT_PAUSE_S",
    "OUT_OF_RESOURCES",
    "RESERVED_FILES",
    "Acceptor",
    "ConnectionTable",
    "Evictable",
    "LimitedLog",
    "LimitedLogFilter",
    "raise_file_limit",
    "server_tls_context",
    "warn_if_over_file_limit",
]

log = logging.getLogger("fleetops")

# File descriptors kept for everything but listener connections (the database, logs, outgoing connections).
RESERVED_FILES: Final = 1024
# accept() errors that mean the process (or the system) is out of descriptors or memory for now, not a bad client
OUT_OF_RESOURCES: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# after a failed accept(), the listener accepts again this much later (the failure would repeat at once)
ACCEPT_PAUSE_S: Final = 0.2
_ACCEPTS_PER_WAKEUP: Final = 256


class LimitedLog:
    """A log line at most once per interval per key, with the number of occurrences it stands for."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._logger = logger
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def due(self, key: str) -> int:
        """Count one occurrence of ``key``; the occurrences to report if a line is due now, else 0."""
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return 0
        count, self._counts[key] = self._counts[key], 0
        self._last[key] = now
        return count

    def suffix(self, count: int) -> str:
        return f" ({count} times in the last {self.interval_s:g} s)" if count > 1 else ""

    def __call__(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged less than an interval ago; True when it was logged."""
        count = self.due(key)
        if count:
            self._logger.log(level, message + self.suffix(count), *args)
        return bool(count)


class LimitedLogFilter(logging.Filter):
    """Lets a message through at most once per interval (keyed by its text), with the count appended.

    For uvicorn's per-request warnings ("Invalid HTTP request received.", "Unsupported upgrade request."): a
    client can send any number of bad requests, and the log must not grow with them.
    """

    def __init__(self, limited: LimitedLog, messages: frozenset[str]) -> None:
        super().__init__()
        self._limited = limited
        self._messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or record.msg not in self._messages:
            return True
        count = self._limited.due(record.msg)
        if count:
            record.msg = record.msg + self._limited.suffix(count)
        return bool(count)


class Evictable(Protocol):
    """What the table needs of a connection: a way to close it."""

    def evict(self) -> None: ...


C = TypeVar("C", bound=Evictable)


class ConnectionTable(Generic[C]):
    """The open connections of one listener, and which of them are *waiting* (they owe the server something: an
    HTTP request, an MQTT CONNECT), oldest first.

    The one rule of every fleetops listener: when it is full, the connection that has waited longest is closed
    to make room, and only when none is waiting is a new connection refused. A flood of half-open connections
    therefore cannot lock out clients that do what the protocol asks of them. A connection waiting again after
    it was served (:meth:`waiting`: an HTTP keep-alive connection between requests) goes only once no connection
    that has never been served is left: a flood opening connections faster than a legitimate client's pause
    between two requests would otherwise close the client's connection between them.
    """

    def __init__(self, name: str, max_connections: int, limited_log: LimitedLog, *, setting: str, owed: str) -> None:
        """``setting`` names what sets ``max_connections`` and ``owed`` what a waiting connection owes, for the
        log lines."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.name = name
        self.max_connections = max_connections
        self.limited_log = limited_log
        self.setting = setting
        self._owed = owed
        self._open: set[C] = set()
        self._waiting: OrderedDict[C, None] = OrderedDict()  # never served yet, oldest first
        self._served: OrderedDict[C, None] = OrderedDict()  # served, waiting for their next request
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def waiting_connections(self) -> int:
        return len(self._waiting) + len(self._served)

    def make_room(self) -> bool:
        """Room for one more connection, evicting the one waiting longest if the listener is full; False (and
        the refusal counted and logged) when it is full and none is waiting."""
        if len(self._open) < self.max_connections or self.evict_oldest_waiting():
            return True
        self.refused += 1
        self.limited_log(
            f"{self.name}-full",
            logging.WARNING,
            "%s listener full (%d connections, %s, none waiting for its %s): refused a connection",
            self.name,
            self.max_connections,
            self.setting,
            self._owed,
        )
        return False

    def add(self, connection: C) -> None:
        """Count a connection, waiting (room was made for it)."""
        self._open.add(connection)
        self._waiting[connection] = None

    def admit(self, connection: C) -> bool:
        """:meth:`make_room` and :meth:`add`; False when the connection is refused."""
        if not self.make_room():
            return False
        self.add(connection)
        return True

    def oldest_waiting(self) -> C | None:
        for queue in (self._waiting, self._served):
            for connection in queue:
                return connection
        return None

    def evict_oldest_waiting(self) -> bool:
        """Close the connection that has waited longest for its request, one never served first; False if none
        is waiting."""
        queue = self._waiting or self._served
        if not queue:
            return False
        victim, _ = queue.popitem(last=False)
        self._open.discard(victim)
        self.evicted += 1
        self.limited_log(
            f"{self.name}-evict",
            logging.INFO,
            "%s listener full: closed the connection that had waited longest for its %s",
            self.name,
            self._owed,
        )
        victim.evict()
        return True

    def waiting(self, connection: C) -> None:
        """The connection owes the server something again (an HTTP connection whose responses are done)."""
        if connection in self._open:
            self._waiting.pop(connection, None)
            self._served.pop(connection, None)
            self._served[connection] = None

    def busy(self, connection: C) -> None:
        """The connection did what it owed (a whole request, a CONNECT): it is not evicted."""
        self._waiting.pop(connection, None)
        self._served.pop(connection, None)

    def closed(self, connection: C) -> None:
        self._waiting.pop(connection, None)
        self._served.pop(connection, None)
        self._open.discard(connection)


class Acceptor:
    """Accepts the connections of a listener's sockets itself, the same way on every event loop, and hands each
    accepted socket (non-blocking, ``TCP_NODELAY`` set) to ``accepted``.

    ``loop.add_reader`` on the listening socket, then ``socket.accept()``, instead of the loop's own accept loop
    (``loop.create_server``), because neither loop's does what a fleetops listener must when accept() fails for
    lack of descriptors or memory: asyncio reports the failure to the loop's exception handler with a traceback,
    once a second; uvloop reports nothing at all (libuv's ``uv__server_io``: on EMFILE / ENFILE it closes a
    descriptor it keeps in reserve, accepts and at once closes every connection waiting in the backlog,
    legitimate clients' included, and opens the reserve again; any other failure, or EMFILE without the
    reserve, it ignores until the loop's next turn). Here a failure is one log line per interval
    (``table.limited_log``) with a count and no traceback; one that means the process is out of resources
    (:data:`OUT_OF_RESOURCES`) also closes the connection of ``table`` that has waited longest (it frees a
    descriptor, and a legitimate client may be waiting behind a half-open connection). Either way the listener
    accepts again :data:`ACCEPT_PAUSE_S` later, the new connections waiting in the backlog meanwhile.
    """

    def __init__(self, table: ConnectionTable[Any], accepted: Callable[[socket.socket], None]) -> None:
        self._table = table
        self._accepted = accepted
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: Sequence[socket.socket] = ()
        self._serving = False

    def start(self, sockets: Sequence[socket.socket]) -> None:
        self._loop = asyncio.get_running_loop()
        self._sockets = sockets
        self._serving = True
        for sock in sockets:
            sock.setblocking(False)
            self._loop.add_reader(sock.fileno(), self._ready, sock)

    def stop(self) -> None:
        """Stop accepting; the listening sockets stay open (their owner closes them)."""
        self._serving = False
        if self._loop is not None:
            for sock in self._sockets:
                if sock.fileno() >= 0:
                    self._loop.remove_reader(sock.fileno())

    def _ready(self, listening: socket.socket) -> None:
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, _address = listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._failed(listening, exc)
                return
            sock.setblocking(False)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the peer is already gone; its transport will notice
                pass
            self._accepted(sock)

    def _failed(self, listening: socket.socket, exc: OSError) -> None:
        table = self._table
        if exc.errno in OUT_OF_RESOURCES:
            table.limited_log(
                f"{table.name}-accept",
                logging.ERROR,
                "%s listener: accept() failed: %s; new connections wait. Raise the process's file limit "
                "(ulimit -n) or lower %s",
                table.name,
                exc.strerror,
                table.setting,
            )
            table.evict_oldest_waiting()
        else:
            table.limited_log(
                f"{table.name}-accept-other", logging.WARNING, "%s listener: accept() failed: %s", table.name, exc
            )
        assert self._loop is not None
        self._loop.remove_reader(listening.fileno())
        self._loop.call_later(ACCEPT_PAUSE_S, self._resume, listening)

    def _resume(self, listening: socket.socket) -> None:
        if self._serving and self._loop is not None:
            self._loop.add_reader(listening.fileno(), self._ready, listening)


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a process may); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def server_tls_context(cert_file: Path, key_file: Path, *, what: str, settings_hint: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later, the default ciphers; server authentication only) from PEM
    files, or a one-line ConfigurationError naming them and the settings that set them."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load the {what} certificate {cert_file} / key {key_file}: {exc}; check {settings_hint}"
        ) from exc
    return context


def warn_if_over_file_limit(file_limit: int, connections: dict[str, int]) -> None:
    """Warn when the listeners' connection caps (by the setting that sets each) do not fit the file limit with
    RESERVED_FILES to spare: accept() would fail before the caps are reached."""
    total = sum(connections.values())
    if file_limit != resource.RLIM_INFINITY and total > file_limit - RESERVED_FILES:
        caps = ", ".join(f"{setting} {count}" for setting, count in connections.items())
        log.warning(
            "the listeners allow %d connections (%s) but the process may open only %d files (ulimit -n), %d of "
            "them kept for everything else: raise the limit or lower those settings, or accept() will fail "
            "under load",
            total,
            caps,
            file_limit,
            RESERVED_FILES,
        )

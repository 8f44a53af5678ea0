"""The HTTP API's listener limits: slow clients, a connection cap that half-open connections cannot exhaust, TLS,
and accept() errors logged once per interval (docs/limits.md#connections).

uvicorn serves the API; these limits ride on its public configuration. ``uvicorn.Config(http=...)`` takes the
protocol class it builds for each accepted connection, and :func:`limited_protocol` returns a subclass of
uvicorn's httptools protocol that overrides only the interface methods of that class (asyncio's ``Protocol``,
httptools' parser callbacks ``on_message_begin`` / ``on_headers_complete`` / ``on_message_complete``, and
``on_response_complete``, which uvicorn's request cycle calls when a response is complete), each calling the
original first or last. No attribute of uvicorn's is read or written.

Rules:

* **Deadline.** From the moment a connection is accepted, or its last response was completed, the next request
  must arrive whole (TLS handshake, request line, headers and body) within ``request_timeout_s``; otherwise the
  connection is closed (a ``408`` when nothing is in flight on a plain connection). A slow-loris client that
  trickles a header a byte at a time holds its connection for at most that long. Idle keep-alive connections are
  closed sooner by uvicorn's own ``timeout_keep_alive``.
* **Header size.** A request line and headers over :data:`MAX_HEADER_BYTES` get ``431`` and are closed
  (httptools itself has no bound; uvicorn's ``h11_max_incomplete_event_size`` applies to h11 only).
* **Connection cap.** At most ``max_connections`` connections per listener, TLS handshakes included. A connection
  is *waiting* while it owes the server a request (it has not sent one whole, or its previous response is done);
  when the listener is full, the connection that has been waiting longest is closed to make room, and only when
  every connection has a request in progress is the new one refused (``503``, ``Retry-After: 1``). A flood of
  half-open connections therefore cannot lock legitimate clients out: each new connection evicts the oldest
  half-open one, and a client whose request arrives whole is never evicted. uvicorn's ``limit_concurrency`` is
  not used: it counts half-open connections too and would answer every request ``503`` once they fill it.
* **TLS.** The handshake is done here (``loop.start_tls``), not by ``create_server``, so that a connection
  counts against the cap and the deadline from its first byte: asyncio's own handshake timeout is 60 s and the
  connection would not count until the handshake had finished.
* **accept() errors.** asyncio reports a failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) to the loop's
  exception handler and pauses accepting for a second; :func:`install_accept_error_handler` turns that into one
  log line per interval with a count, no traceback, and frees a descriptor by closing the oldest waiting
  connection of that listener.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetops.listeners import OUT_OF_RESOURCES, ConnectionTable, LimitedLog

__all__ = [
    "MAX_HEADER_BYTES",
    "HttpLimits",
    "install_accept_error_handler",
    "limited_protocol",
]

# Request line and headers: the GET query limit (32 KB) plus room for the headers a client sends.
MAX_HEADER_BYTES: Final = 64 * 1024

_REFUSED: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
)
_TIMED_OUT: Final = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_TOO_LARGE: Final = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True)
class HttpLimits:
    """The limits of one listener (Settings: ``http_max_connections``, ``http_request_timeout_s``)."""

    max_connections: int
    request_timeout_s: float
    tls: ssl.SSLContext | None = None
    # reverse proxies whose X-Forwarded-For / X-Forwarded-Proto uvicorn believes (Settings ``trusted_proxies``)
    trusted_proxies: tuple[str, ...] = ()


class _LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a listener's :class:`HttpLimits` (module docstring).

    Own state is kept in attributes prefixed ``_fo_`` so that it cannot clash with uvicorn's.
    """

    limits: ClassVar[HttpLimits]
    table: ClassVar[ConnectionTable[_Handle]]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # type: ignore[override]
        assert isinstance(transport, asyncio.Transport)
        loop = asyncio.get_running_loop()
        self._fo_raw = transport
        self._fo_loop = loop
        self._fo_started = False  # uvicorn's connection_made has run (after the TLS handshake, with TLS)
        self._fo_early: list[bytes] = []  # data that arrived before it had
        self._fo_begun = self._fo_completed = self._fo_answered = 0  # requests begun / arrived whole / answered
        self._fo_header_bytes = 0  # of the request line and headers being received
        self._fo_tail = b""  # the last bytes of them, for a CRLF CRLF split across two chunks
        self._fo_in_headers = True
        self._fo_deadline: asyncio.TimerHandle | None = None
        self._fo_stalled: asyncio.TimerHandle | None = None
        self._fo_handle: _Handle | None = _Handle(self)
        if not self.table.admit(self._fo_handle):
            self._fo_handle = None
            if self.limits.tls is None:
                transport.write(_REFUSED)
            transport.close()
            return
        self._fo_arm()
        if self.limits.tls is None:
            self._fo_started = True
            super().connection_made(transport)
            return
        # Paused before any byte is read: start_tls must see the ClientHello (asyncio registers the reader
        # after connection_made, and not at all while reading is paused).
        transport.pause_reading()
        self._fo_tls_task = loop.create_task(self._fo_start_tls(transport, self.limits.tls))

    async def _fo_start_tls(self, transport: asyncio.Transport, context: ssl.SSLContext) -> None:
        try:
            tls = await self._fo_loop.start_tls(
                transport, self, context, server_side=True, ssl_handshake_timeout=self.limits.request_timeout_s
            )
        except Exception as exc:  # whatever a handshake raises, it is the client's failure, not ours
            self.table.limited_log(
                f"{self.table.name}-tls",
                logging.INFO,
                "%s listener: TLS handshake failed: %s",
                self.table.name,
                exc or type(exc).__name__,
            )
            self._fo_release()
            transport.abort()
            return
        if tls is None or self._fo_handle is None:  # closed (evicted, timed out) during the handshake
            if tls is not None:
                tls.abort()
            return
        self._fo_started = True
        super().connection_made(tls)
        early, self._fo_early = self._fo_early, []
        for data in early:
            self.data_received(data)

    def data_received(self, data: bytes) -> None:
        if not self._fo_started:
            # The client's first request can come in the same segment as its last handshake message: asyncio's
            # TLS layer hands it over before start_tls() has returned to us, so before uvicorn has a transport.
            self._fo_early.append(data)
            return
        if self._fo_in_headers and self._fo_handle is not None:
            # the bytes of this chunk up to the end of the headers (CRLF CRLF, which may straddle two chunks)
            window = self._fo_tail + data
            end = window.find(b"\r\n\r\n")
            header_part = len(data) if end < 0 else max(0, end + 4 - len(self._fo_tail))
            self._fo_header_bytes += header_part
            self._fo_tail = window[-3:]
            if self._fo_header_bytes > MAX_HEADER_BYTES:
                self._fo_close(_TOO_LARGE)
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._fo_begun += 1
        self._fo_in_headers = True

    def on_headers_complete(self) -> None:
        self._fo_in_headers, self._fo_header_bytes, self._fo_tail = False, 0, b""
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._fo_completed = self._fo_begun
        # a request whose body arrives after its response (an app that answered without reading it) is owed
        # nothing: the connection stays waiting, under the deadline
        if self._fo_completed > self._fo_answered and self._fo_handle is not None:
            self._fo_disarm()
            self.table.busy(self._fo_handle)

    def on_response_complete(self) -> None:
        self._fo_answered += 1
        if self._fo_answered >= self._fo_completed and self._fo_handle is not None:
            self._fo_in_headers = True
            self.table.waiting(self._fo_handle)
            self._fo_arm()
        super().on_response_complete()

    def eof_received(self) -> None:
        if self._fo_started:
            super().eof_received()

    def pause_writing(self) -> None:
        # the client does not read what it asked for: it has request_timeout_s to start reading again
        if not self._fo_started:
            return
        super().pause_writing()
        if self._fo_handle is not None and self._fo_stalled is None:
            self._fo_stalled = self._fo_loop.call_later(self.limits.request_timeout_s, self._fo_stalled_reader)

    def resume_writing(self) -> None:
        if self._fo_stalled is not None:
            self._fo_stalled.cancel()
            self._fo_stalled = None
        if self._fo_started:
            super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fo_release()
        if self._fo_started:
            self._fo_started = False
            super().connection_lost(exc)

    # --- own helpers --------------------------------------------------------------------------------------

    def _fo_arm(self) -> None:
        if self._fo_deadline is None:
            self._fo_deadline = self._fo_loop.call_later(self.limits.request_timeout_s, self._fo_expired)

    def _fo_disarm(self) -> None:
        if self._fo_deadline is not None:
            self._fo_deadline.cancel()
            self._fo_deadline = None

    def _fo_expired(self) -> None:
        self._fo_deadline = None
        self.table.timed_out += 1
        self.table.limited_log(
            f"{self.table.name}-timeout",
            logging.INFO,
            "%s listener: closed a connection whose request did not arrive whole within %g s",
            self.table.name,
            self.limits.request_timeout_s,
        )
        self._fo_close(_TIMED_OUT)

    def _fo_stalled_reader(self) -> None:
        self._fo_stalled = None
        self.table.limited_log(
            f"{self.table.name}-stalled",
            logging.INFO,
            "%s listener: closed a connection whose client stopped reading its response for %g s",
            self.table.name,
            self.limits.request_timeout_s,
        )
        self._fo_release()
        self._fo_raw.abort()

    def _fo_close(self, status: bytes) -> None:
        """Close with ``status`` (a plain connection with nothing in flight), else abort."""
        plain = self.limits.tls is None and self._fo_answered >= self._fo_completed
        self._fo_release()
        if plain and not self._fo_raw.is_closing():
            self._fo_raw.write(status)
            self._fo_raw.close()
        else:
            self._fo_raw.abort()

    def _fo_evicted(self) -> None:
        self._fo_handle = None  # the table has already forgotten it
        self._fo_disarm()
        self._fo_raw.abort()

    def _fo_release(self) -> None:
        self._fo_disarm()
        if self._fo_stalled is not None:
            self._fo_stalled.cancel()
            self._fo_stalled = None
        if self._fo_handle is not None:
            self.table.closed(self._fo_handle)
            self._fo_handle = None


class _Handle:
    """A connection's entry in its listener's table: only a way to evict it, nothing of uvicorn's protocol."""

    __slots__ = ("_protocol",)

    def __init__(self, protocol: _LimitedHttpToolsProtocol) -> None:
        self._protocol = protocol

    def evict(self) -> None:
        self._protocol._fo_evicted()


def limited_protocol(limits: HttpLimits, table: ConnectionTable[Any]) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)`` for one listener."""
    return type("LimitedHttpProtocol", (_LimitedHttpToolsProtocol,), {"limits": limits, "table": table})


def install_accept_error_handler(
    loop: asyncio.AbstractEventLoop, tables: dict[int, ConnectionTable[Any]], limited_log: LimitedLog
) -> None:
    """Log accept() failures of the listeners in ``tables`` (by listening socket fd) once per interval.

    asyncio reports them through the loop's exception handler with a traceback, once per second per listener
    for as long as the process is out of descriptors; everything else goes to the handler already installed.
    """
    previous = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        sock = context.get("socket")
        table = tables.get(sock.fileno()) if sock is not None else None
        if table is None or not isinstance(exc, OSError) or exc.errno not in OUT_OF_RESOURCES:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        limited_log(
            f"{table.name}-accept",
            logging.ERROR,
            "%s listener: accept() failed: %s; new connections wait. Raise the process's file limit (ulimit -n) "
            "or lower FLEETOPS_HTTP_MAX_CONNECTIONS",
            table.name,
            exc.strerror,
        )
        table.evict_oldest_waiting()  # a legitimate client may be waiting behind a half-open connection

    loop.set_exception_handler(handle)

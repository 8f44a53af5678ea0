"""The HTTP API's listener limits: slow clients, a connection cap that half-open connections cannot exhaust, TLS,
and accept() errors logged once per interval (docs/limits.md#connections).

uvicorn serves the API; these limits ride on its public interfaces. ``uvicorn.Config(http=...)`` takes the
protocol class a connection is served by, and :func:`limited_protocol` returns a subclass of uvicorn's httptools
protocol that overrides only the interface methods of that class (asyncio's ``Protocol``, httptools' parser
callbacks ``on_message_begin`` / ``on_headers_complete`` / ``on_message_complete``, and
``on_response_complete``, which uvicorn's request cycle calls when a response is complete), each calling the
original first or last. No attribute of uvicorn's is read or written. The connections are accepted by
:class:`HttpListener` (``fleetops.listeners.Acceptor``), not by the event loop's ``create_server``, which builds
each one's protocol and has the loop make its transport (``loop.connect_accepted_socket``), the same way on
asyncio's loop and uvloop's; the protocol uses only the transport's public methods (uvloop's transports are not
``asyncio.Transport`` subclasses).

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
* **TLS.** The handshake is done by ``loop.connect_accepted_socket`` once the connection has been admitted, so
  that it counts against the cap and the deadline from its first byte (with ``create_server`` the loop's own
  handshake timeout, 60 s, would apply and the connection would not count until the handshake had finished).
* **accept() errors.** A failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) is one log line per interval with
  a count and no traceback, frees a descriptor by closing the oldest waiting connection of the listener, and
  accepting resumes 0.2 s later (``fleetops.listeners.Acceptor``; neither loop's own accept loop does this:
  asyncio logs a traceback a second, uvloop nothing, closing the connections waiting in the backlog).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetops.listeners import Acceptor, ConnectionTable

__all__ = [
    "MAX_HEADER_BYTES",
    "HttpLimits",
    "HttpListener",
    "LimitedHttpProtocol",
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


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under a listener's :class:`HttpLimits` (module docstring).

    Built by :class:`HttpListener` for a connection it has just accepted, which then calls :meth:`_fo_accept`.
    Own state is kept in attributes prefixed ``_fo_`` so that it cannot clash with uvicorn's.
    """

    limits: ClassVar[HttpLimits]
    table: ClassVar[ConnectionTable[_Handle]]

    def _fo_accept(self, sock: socket.socket) -> asyncio.Task[Any] | None:
        """Admit the connection just accepted on ``sock`` and have the loop make its transport (and do its TLS
        handshake); the task doing that, or None when the listener is full and the connection was refused."""
        loop = asyncio.get_running_loop()
        self._fo_loop = loop
        self._fo_raw: asyncio.Transport | None = None  # the transport once the loop has made it (after TLS)
        self._fo_setup: asyncio.Task[Any] | None = None
        self._fo_started = False  # uvicorn's connection_made has run
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
                with contextlib.suppress(OSError):  # 90 bytes into an empty send buffer; a peer gone is no matter
                    sock.send(_REFUSED)
            sock.close()
            return None
        self._fo_arm()
        tls = self.limits.tls
        setup = loop.create_task(
            loop.connect_accepted_socket(
                lambda: self,
                sock,
                ssl=tls,
                ssl_handshake_timeout=self.limits.request_timeout_s if tls is not None else None,
            )
        )
        setup.add_done_callback(functools.partial(self._fo_set_up, sock))
        self._fo_setup = setup
        return setup

    def _fo_set_up(self, sock: socket.socket, setup: asyncio.Task[Any]) -> None:
        """The end of the setup task: when it failed (a TLS handshake) or was cancelled (the connection was evicted
        or timed out meanwhile, or the server stops), the connection is forgotten and its socket closed (the
        loop has closed the transport if it had made one)."""
        self._fo_setup = None
        failure = None if setup.cancelled() else setup.exception()
        if not setup.cancelled() and failure is None:
            return
        self._fo_release()
        if self._fo_raw is None:
            sock.close()
        if failure is not None:  # whatever a handshake raises, it is the client's failure, not ours
            self.table.limited_log(
                f"{self.table.name}-setup",
                logging.INFO,
                "%s listener: %s failed: %s",
                self.table.name,
                "TLS handshake" if self.limits.tls is not None else "connection setup",
                failure or type(failure).__name__,
            )

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        # typed as uvicorn's: asyncio.Transport stands for the interface, not the class (uvloop's transports have
        # its methods without subclassing it), and only its public methods are used
        self._fo_raw = transport
        if self._fo_handle is None:  # evicted, timed out or stopped while the loop was making the transport
            transport.abort()
            return
        self._fo_started = True
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
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
        self._fo_abort()

    def _fo_close(self, status: bytes) -> None:
        """Close with ``status`` (a plain connection with nothing in flight), else abort."""
        plain = self.limits.tls is None and self._fo_answered >= self._fo_completed
        raw = self._fo_raw
        self._fo_release()
        if plain and raw is not None and not raw.is_closing():
            raw.write(status)
            raw.close()
        else:
            self._fo_abort()

    def _fo_abort(self) -> None:
        """Close at once: the transport, or, before the loop has made it, the setup making it (a TLS handshake)."""
        if self._fo_raw is not None:
            self._fo_raw.abort()
        elif self._fo_setup is not None:
            self._fo_setup.cancel()

    def _fo_evicted(self) -> None:
        self._fo_handle = None  # the table has already forgotten it
        self._fo_disarm()
        self._fo_abort()

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

    def __init__(self, protocol: LimitedHttpProtocol) -> None:
        self._protocol = protocol

    def evict(self) -> None:
        self._protocol._fo_evicted()


def limited_protocol(limits: HttpLimits, table: ConnectionTable[Any]) -> type[LimitedHttpProtocol]:
    """The protocol class of one listener (also given as ``uvicorn.Config(http=...)``)."""
    return type("LimitedHttpProtocol", (LimitedHttpProtocol,), {"limits": limits, "table": table})


class HttpListener:
    """Accepts the connections of the API's listening sockets (``fleetops.listeners.Acceptor``: accept() errors
    as the module docstring says) and serves each with a protocol built by ``protocol_factory`` (an instance of
    a :func:`limited_protocol` class), admitted to its table at once."""

    def __init__(self, table: ConnectionTable[Any], protocol_factory: Callable[[], LimitedHttpProtocol]) -> None:
        self._factory = protocol_factory
        self._acceptor = Acceptor(table, self._accepted)
        self._setups: set[asyncio.Task[Any]] = set()

    def start(self, sockets: Sequence[socket.socket]) -> None:
        self._acceptor.start(sockets)

    async def stop(self) -> None:
        """Stop accepting; connections still being set up (TLS handshakes) are closed. The listening sockets are
        left open, and the connections already served to uvicorn's shutdown."""
        self._acceptor.stop()
        for setup in list(self._setups):
            setup.cancel()
        if self._setups:
            await asyncio.gather(*self._setups, return_exceptions=True)

    def _accepted(self, sock: socket.socket) -> None:
        setup = self._factory()._fo_accept(sock)
        if setup is not None:
            self._setups.add(setup)
            setup.add_done_callback(self._setups.discard)

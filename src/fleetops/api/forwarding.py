"""API worker processes (``fleetops serve --workers N``): what a worker answers itself, and how it hands the rest
to the primary (docs/deployment.md#api-worker-processes).

The processes share the API's listening socket and the kernel spreads the connections over them. The primary is
the whole node (task engine, MQTT side, API); a worker has a database handle and the use cases, no engine and no
broker. :class:`WorkerFront` is a worker's ASGI app:

* a TC3 request (it has an ``Authorization`` header) to ``/`` whose ``X-TC-Action`` is one of
  :data:`LOCAL_ACTIONS` is answered by the worker's own :class:`~fleetops.api.app.ApiEndpoint`, the same code as
  the primary's: those actions only read the database (no publish, no engine, no state of the primary's);
* everything else (other actions, unknown ones, v1-signed requests, every other path: health, metrics, console,
  EMQX hooks) is forwarded whole to the primary over a Unix socket (:class:`Forwarder`, a pool of keep-alive
  connections) and its answer relayed: status, headers and body, less the hop-by-hop headers (``connection``,
  ``transfer-encoding``...) and ``date`` / ``server``, which the worker's uvicorn sets as it does on its own
  answers. So an action not on the list is slower by one hop, never different.

The body is read before it is forwarded (so a slow client holds the worker's connection, never one to the
primary), up to the limit the endpoint applies; a ``/`` POST over it, or whose client goes away, is handed to the
worker's endpoint, which answers it exactly as the primary would (``RequestSizeLimitExceeded``,
``ClientDisconnected``) since both happen before anything is dispatched. A ``/`` request other than a POST is
forwarded without its body: the endpoint never reads one. When the primary does not answer within
:data:`FORWARD_TIMEOUT_S` or cannot be reached, the worker answers ``ServiceUnavailable`` (503 on other paths)
and never sends a request again once it was sent: only a GET or HEAD is retried, once, when a kept connection
turned out to be closed.

On the primary, :class:`ForwardedFront` serves the Unix socket: the client address of a forwarded request comes
from the :data:`FORWARDED_CLIENT` header the worker sets (the address its uvicorn resolved, trusted proxies
included), which is believed there only: on the TCP listener nobody reads it, and a worker replaces any a client
sent. The same socket takes the workers' metrics batches (:data:`RELAY_PATH`, ``fleetops.api.relayed_metrics``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetops import errors
from fleetops.api.app import ApiConfig, ApiEndpoint
from fleetops.api.envelope import CONTENT_TYPE, error_body, new_request_id
from fleetops.api.metrics import RequestObserver
from fleetops.api.registry import Registry
from fleetops.api.request import MAX_V1_BODY_BYTES, RawRequest, detect_language
from fleetops.listeners import LimitedLog

log = logging.getLogger("fleetops.api")
access_log = logging.getLogger("fleetops.access")

# Actions that read the database and nothing else (checked in their handlers and use cases: no publish, no
# engine, no state held by the primary): a worker answers them itself.
LOCAL_ACTIONS: Final = frozenset(
    {
        "DescribeProduct",
        "DescribeProducts",
        "DescribeDevice",
        "DescribeDevices",  # Online is the devices table's, written by the broker side
        "DescribeDeviceShadow",
        "DescribeTask",
        "DescribeTasks",
        "DescribeTaskDevices",
        "PreviewTask",
    }
)
_LOCAL: Final = frozenset(action.encode() for action in LOCAL_ACTIONS)

FORWARDED_CLIENT: Final = b"x-fleetops-forwarded-client"  # "<scheme> <port> <host>", set by a worker
# the workers' own messages, served on the forwarding socket only (and api.primary_rate's RATE_PATH)
RELAY_PATH: Final = "/_fleetops/relayed-metrics"  # a metrics batch (api.relayed_metrics)
UP_PATH: Final = "/_fleetops/worker-up"  # a worker serves: {"index": i, "pid": p}
FORWARD_TIMEOUT_S: Final = 30.0
MAX_IDLE_CONNECTIONS: Final = 32  # kept per worker; more are opened while more requests are in flight
MAX_RELAY_BYTES: Final = 64 * 1024 * 1024
LOG_INTERVAL_S: Final = 10.0

_REQUEST_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
    | {b"content-length", FORWARDED_CLIENT}
)
_RESPONSE_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"trailer", b"upgrade"}
    | {b"date", b"server"}
)


def answered_here(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request to ``/`` with these headers is a worker's to answer: TC3 (an ``Authorization`` header)
    and an ``X-TC-Action`` of :data:`LOCAL_ACTIONS` (the last one, as the endpoint reads it)."""
    action: bytes | None = None
    signed = False
    for name, value in headers:
        if name == b"x-tc-action":
            action = value
        elif name == b"authorization":
            signed = True
    return signed and action in _LOCAL


# --- the worker's side ----------------------------------------------------------------------------------


class ForwardingFailed(Exception):
    """The primary did not answer a forwarded request; ``reason`` in English and Chinese."""

    def __init__(self, reason: str, reason_zh: str) -> None:
        super().__init__(reason)
        self.reason, self.reason_zh = reason, reason_zh


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class Forwarder:
    """HTTP/1.1 to the primary over its Unix socket, on a pool of keep-alive connections."""

    def __init__(
        self, path: str, *, timeout_s: float = FORWARD_TIMEOUT_S, max_idle: int = MAX_IDLE_CONNECTIONS
    ) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._max_idle = max_idle
        self._idle: list[_Connection] = []

    async def exchange(self, head: bytes, body: bytes, *, head_only: bool, idempotent: bool) -> Answer:
        """Send one request (``head`` ends with the blank line) and read its answer. A request is sent once; only
        an ``idempotent`` one is sent again, on a new connection, when a kept connection turned out closed."""
        for attempt in range(2):
            try:
                async with asyncio.timeout(self._timeout_s):
                    conn, kept = await self._connection()
                    try:
                        conn.writer.write(head + body if len(body) < 65536 else head)
                        if len(body) >= 65536:
                            conn.writer.write(body)
                        await conn.writer.drain()
                        answer, keep_alive = await _read_answer(conn.reader, head_only)
                    except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                        conn.close()
                        if kept and idempotent and attempt == 0:
                            continue
                        raise ForwardingFailed(
                            "the connection to the primary process broke", "与主进程的连接中断"
                        ) from None
                    except BaseException:  # cancelled, timed out: the connection is mid-exchange
                        conn.close()
                        raise
            except TimeoutError:
                raise ForwardingFailed(
                    f"the primary process did not answer within {self._timeout_s:g} s",
                    f"主进程在 {self._timeout_s:g} 秒内没有应答",
                ) from None
            if keep_alive and len(self._idle) < self._max_idle:
                self._idle.append(conn)
            else:
                conn.close()
            return answer
        raise AssertionError("unreachable")

    async def post(self, path: str, body: bytes) -> Answer:
        """POST ``body`` (JSON) to ``path`` of the primary: a worker's own messages (RELAY_PATH, UP_PATH, RATE_PATH)."""
        head = (
            f"POST {path} HTTP/1.1\r\nhost: fleetops-primary\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        return await self.exchange(head, body, head_only=False, idempotent=False)

    async def _connection(self) -> tuple[_Connection, bool]:
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.open_unix_connection(self.path)
        except OSError as exc:
            raise ForwardingFailed(
                f"cannot reach the primary process ({exc.strerror or type(exc).__name__}: is it stopping?)",
                f"无法连接主进程（{exc.strerror or type(exc).__name__}：它是否正在停止？）",
            ) from None
        return _Connection(reader, writer), False

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _read_answer(reader: asyncio.StreamReader, head_only: bool) -> tuple[Answer, bool]:
    """One HTTP/1.1 response (interim 1xx answers skipped); whether the connection stays open after it."""
    while True:
        lines = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
        status_line = lines[0]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ValueError(f"not an HTTP/1.x status line: {status_line[:40]!r}")
        status = int(status_line[9:12])
        if status >= 200:
            break
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    keep_alive = status_line.startswith(b"HTTP/1.1")
    for line in lines[1:]:
        raw_name, _, raw_value = line.partition(b":")
        name, value = raw_name.strip().lower(), raw_value.strip()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            keep_alive = keep_alive and b"close" not in value.lower()
        if name not in _RESPONSE_HOP:
            headers.append((raw_name.strip(), value))
    no_body = head_only or status in (204, 304)
    if no_body:
        body = b""
    elif chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:  # framed by the end of the connection
        body, keep_alive = await reader.read(), False
    if length is None and not no_body:
        headers.append((b"content-length", str(len(body)).encode()))
    return Answer(status, headers, body), keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, dropped
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class _Read(Enum):
    WHOLE = "whole"
    TOO_LARGE = "too large"
    GONE = "gone"  # the client went away before the body was whole


async def _read_body(receive: Receive, limit: int) -> tuple[list[Message], _Read]:
    """The request's body messages, read until the end, the limit, or the client's disconnect."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, _Read.GONE
        size += len(message.get("body", b""))
        if size > limit:
            return messages, _Read.TOO_LARGE
        if not message.get("more_body", False):
            return messages, _Read.WHOLE


def _replayed(messages: list[Message], receive: Receive) -> Receive:
    """``receive`` with ``messages`` (already taken from it) given back first."""
    pending = deque(messages)

    async def replay() -> Message:
        return pending.popleft() if pending else await receive()

    return replay


def _request_head(scope: Scope, length: int) -> bytes:
    target = scope.get("raw_path") or str(scope["path"]).encode()
    query = scope.get("query_string") or b""
    parts = [str(scope["method"]).encode("latin-1"), b" ", target, b"?" + query if query else b"", b" HTTP/1.1\r\n"]
    for name, value in scope["headers"]:
        if name not in _REQUEST_HOP:
            parts += (name, b": ", value, b"\r\n")
    client = scope.get("client")
    host, port = (str(client[0]), int(client[1])) if client else ("", 0)
    forwarded = f"{scope.get('scheme', 'http')} {port} {host}".encode("latin-1", errors="replace")
    parts += (FORWARDED_CLIENT, b": ", forwarded, b"\r\ncontent-length: ", str(length).encode(), b"\r\n\r\n")
    return b"".join(parts)


async def _plain(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


class WorkerFront:
    """An API worker's ASGI app: the read actions answered here, everything else forwarded (module docstring)."""

    def __init__(
        self,
        endpoint: ApiEndpoint,
        forwarder: Forwarder,
        *,
        registry: Registry,
        config: ApiConfig,
        observer: RequestObserver,
    ) -> None:
        self._endpoint = endpoint
        self._forwarder = forwarder
        self._registry = registry
        self._config = config
        self._observer = observer  # counts what the worker answers itself when forwarding fails
        self._limited_log = LimitedLog(log, LOG_INTERVAL_S)
        # any other path: no route of the primary's takes more than a TC3 body (EMQX hooks: 16 KiB)
        self._other_limit = max(config.max_body_bytes, MAX_V1_BODY_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # a worker's uvicorn runs without lifespan and without WebSockets
            return
        api = scope["path"] == "/"
        if api and answered_here(scope["headers"]):
            await self._endpoint(scope, receive, send)
            return
        started = time.perf_counter()
        method = str(scope["method"])
        body = b""
        if method == "POST" or not api:  # the endpoint reads the body of a POST only
            # the endpoint's limit: TC3 up to max_body_bytes, v1 (no Authorization header) 1 MB
            signed = any(name == b"authorization" for name, _ in scope["headers"])
            limit = (self._config.max_body_bytes if signed else MAX_V1_BODY_BYTES) if api else self._other_limit
            messages, read = await _read_body(receive, limit)
            if read is not _Read.WHOLE:
                if api:  # answered before dispatch, as the primary would: RequestSizeLimitExceeded, ClientDisconnected
                    await self._endpoint(scope, _replayed(messages, receive), send)
                elif read is _Read.TOO_LARGE:
                    await _plain(send, 413, b"request body too large\n")
                return
            body = b"".join(message.get("body", b"") for message in messages)
        try:
            answer = await self._forwarder.exchange(
                _request_head(scope, len(body)),
                body,
                head_only=method == "HEAD",
                idempotent=method in ("GET", "HEAD"),
            )
        except ForwardingFailed as exc:
            await self._unanswered(scope, body, exc, started, send)
            return
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": answer.body})

    async def _unanswered(self, scope: Scope, body: bytes, exc: ForwardingFailed, started: float, send: Send) -> None:
        """The primary did not answer: ServiceUnavailable for the API, 503 elsewhere; logged once per interval."""
        request_id = new_request_id()
        self._limited_log(
            "forwarding",
            logging.WARNING,
            "API worker: %s; answered ServiceUnavailable (%s %s, RequestId %s)",
            exc.reason,
            scope["method"],
            scope["path"],
            request_id,
        )
        if scope["path"] != "/":
            await _plain(send, 503, b"the node's primary process did not answer; retry later\n")
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
        language = detect_language(RawRequest(str(scope["method"]), raw_query, headers, body))
        name = headers.get("x-tc-action", "")
        action = name if self._registry.get(name) is not None else "-"
        error = errors.ServiceUnavailable(
            f"The node could not serve this request now: {exc.reason}. Retry later; a change the request asked "
            "for may have been made already, so check before repeating one.",
            message_zh=f"节点暂时无法处理该请求：{exc.reason_zh}。请稍后重试；请求要求的更改可能已经生效，重复之前请先确认。",
        )
        answer = error_body(error, request_id, language)
        elapsed_s = time.perf_counter() - started
        self._observer.observe(action, error.code, elapsed_s)
        access_log.info(
            "action=%s account=- request_id=%s outcome=%s latency_ms=%.1f",
            action,
            request_id,
            error.code,
            elapsed_s * 1000,
        )
        headers_out = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers_out})
        await send({"type": "http.response.body", "body": answer})


# --- the primary's side ---------------------------------------------------------------------------------


def _forwarded_client(value: bytes | None) -> tuple[str | None, tuple[str, int] | None]:
    """The scheme and client of :data:`FORWARDED_CLIENT` (``"<scheme> <port> <host>"``)."""
    if value is None:
        return None, None
    scheme, _, rest = value.decode("latin-1").partition(" ")
    port, _, host = rest.partition(" ")
    return (scheme or None), ((host, int(port)) if host and port.isdigit() else None)


class ForwardedFront:
    """The primary's app on its forwarding socket: a forwarded request with its client as the worker saw it, and
    the workers' own messages (``internal``: a path, and what takes its body and gives the answer's)."""

    def __init__(
        self, app: ASGIApp, *, internal: Mapping[str, Callable[[bytes], bytes | None]], forwarded: Callable[[], None]
    ) -> None:
        """``internal``: the paths served on this socket only (a ValueError is a 400, None a 204); ``forwarded``
        counts an API request."""
        self._app = app
        self._internal = dict(internal)
        self._forwarded = forwarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        handle = self._internal.get(scope["path"])
        if handle is not None:
            await self._answer_internal(scope["path"], handle, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = []
        given: bytes | None = None
        for item in scope["headers"]:
            if item[0] == FORWARDED_CLIENT:
                given = item[1]
            else:
                headers.append(item)
        scheme, client = _forwarded_client(given)
        forwarded: dict[str, Any] = {**scope, "headers": headers, "client": client}
        if scheme in ("http", "https"):
            forwarded["scheme"] = scheme
        if scope["path"] == "/":
            self._forwarded()
        await self._app(forwarded, receive, send)

    async def _answer_internal(
        self, path: str, handle: Callable[[bytes], bytes | None], receive: Receive, send: Send
    ) -> None:
        messages, read = await _read_body(receive, MAX_RELAY_BYTES)
        if read is not _Read.WHOLE:
            await _plain(send, 413, b"too large\n")
            return
        try:
            answer = handle(b"".join(message.get("body", b"") for message in messages))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("a worker's message to %s was refused: %s", path, exc)
            await _plain(send, 400, b"not understood\n")
            return
        if answer is None:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})


def worker_up(up: Callable[[int, int], None]) -> Callable[[bytes], None]:
    """The :data:`UP_PATH` handler: ``up(index, pid)`` of the worker that says it serves."""

    def handle(body: bytes) -> None:
        told = orjson.loads(body)
        up(int(told["index"]), int(told["pid"]))

    return handle

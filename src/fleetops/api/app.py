"""The HTTP front door: one endpoint (``/``) that speaks Tencent Cloud API 3.0 (docs/protocol.md).

Order of checks (docs/protocol.md#verification): method and size, request shape and
Authorization format, action and version, clock skew, SecretId, signature, the signature's first use
(api/replay.py), rate limit, then the action's
parameters. Every response is HTTP 200 with the JSON envelope; a client's mistake is never an InternalError.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from fleetops import errors
from fleetops.api.decoding import decode_request
from fleetops.api.envelope import CONTENT_TYPE, error_body, new_request_id, success_body
from fleetops.api.metrics import RequestObserver
from fleetops.api.ratelimit import RateLimiter
from fleetops.api.registry import ActionContext, Registry
from fleetops.api.replay import refuse_replay
from fleetops.api.request import (
    MAX_V1_BODY_BYTES,
    RawRequest,
    check_timestamp,
    detect_language,
    parse_request,
    verify_signature,
)
from fleetops.backend.container import Backend
from fleetops.ports.telemetry import HealthCheck

# The access log's outcome for a request whose client went away before sending it whole: not a Tencent code.
CLIENT_DISCONNECTED = "ClientDisconnected"
_CONTENT_TYPE: Final = CONTENT_TYPE.encode()

log = logging.getLogger("fleetops.access")
error_log = logging.getLogger("fleetops.api")


@dataclass(frozen=True)
class ApiConfig:
    max_body_bytes: int = 10 * 1024 * 1024
    clock_skew_s: int = 300


class ApiEndpoint:
    """Turns one HTTP request into one action call and renders the envelope."""

    def __init__(
        self,
        registry: Registry,
        backend: Backend,
        limiter: RateLimiter,
        config: ApiConfig,
        metrics: RequestObserver,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._backend = backend
        self._limiter = limiter
        self._config = config
        self._clock = clock
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/`` as a raw ASGI app: every method reaches :func:`parse_request` (which answers the envelope's
        ``UnsupportedProtocol`` for PUT, TRACE, PROPFIND, ...), and no Request or Response object is built
        (issue 12: those and Starlette's routing cost as much as the action's own work)."""
        started = time.perf_counter()
        request_id = new_request_id()
        outcome, call = "OK", _CallInfo()
        language = "en-US"
        try:
            raw = await self._read(scope, receive)
            language = detect_language(raw)
            result = await self._dispatch(raw, request_id, language, call)
            body = success_body(result, request_id)
        except errors.ApiError as exc:
            outcome = exc.code
            body = error_body(exc, request_id, language)
        except ClientDisconnect:
            outcome, body = _client_gone()
        except Exception:
            outcome = "InternalError"
            error_log.exception("unhandled error in %s (RequestId %s)", call.action, request_id)
            body = error_body(errors.InternalError(), request_id, language)
        elapsed_s = time.perf_counter() - started
        # unknown action names are not used as labels: a client could otherwise grow the series without bound
        self.metrics.observe(call.action, outcome, elapsed_s)
        if log.isEnabledFor(logging.INFO):
            log.info(
                "action=%s account=%s request_id=%s outcome=%s latency_ms=%.1f",
                call.action,
                call.account,
                request_id,
                outcome,
                elapsed_s * 1000,
            )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", _CONTENT_TYPE), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _read(self, scope: Scope, receive: Receive) -> RawRequest:
        method = str(scope["method"]).upper()
        # ASGI gives header names lower-cased; a repeated header keeps its last value
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        raw_query = bytes(scope.get("query_string", b"")).decode("latin-1")
        # the method and the size limits are checked by parse_request; only a POST body is read, and its read
        # stops at the limit so an oversize body is never held in memory whole
        body = b""
        if method == "POST":
            body = await self._read_body(receive, headers)
        client = scope.get("client")
        return RawRequest(
            method=method, raw_query=raw_query, headers=headers, body=body, client=str(client[0]) if client else ""
        )

    async def _read_body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        # v1-signed requests carry no Authorization header; they are limited to 1 MB, TC3 to max_body_bytes.
        limit = self._config.max_body_bytes if "authorization" in headers else MAX_V1_BODY_BYTES
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away mid-request
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _dispatch(self, raw: RawRequest, request_id: str, language: str, call: _CallInfo) -> dict[str, Any]:
        parsed = parse_request(raw)
        action = self._registry.get(parsed.action)
        if action is None:
            supported = ", ".join(self._registry.names())
            raise errors.InvalidAction(
                f"The action `{parsed.action}` does not exist in iotcloud 2018-06-14. Supported actions: {supported}.",
                message_zh=f"接口 `{parsed.action}` 在 iotcloud 2018-06-14 中不存在。支持的接口：{supported}。",
            )
        call.action = action.name
        now = int(self._clock())
        check_timestamp(parsed, now=now, skew_s=self._config.clock_skew_s)
        key = await self._backend.keys.resolve(parsed.secret_id)
        if key is None:
            raise errors.SecretIdNotFound(
                f"The SecretId `{parsed.secret_id}` does not exist or is disabled. "
                "Check the key (fleetops keys list) and use an enabled one.",
                message_zh=f"SecretId `{parsed.secret_id}` 不存在或已被禁用。"
                "请检查密钥（fleetops keys list）并使用已启用的密钥。",
            )
        call.account = key.account_name
        verify_signature(parsed, raw, key.secret_key, now=now, skew_s=self._config.clock_skew_s)
        await refuse_replay(self._backend.signatures, parsed, raw.client, skew_s=self._config.clock_skew_s)
        if not await self._limiter.allow(key.secret_id, action.name):
            raise errors.RequestLimitExceeded(
                f"More than {self._limiter.per_second} {action.name} requests per second for this SecretId. "
                "Slow down and retry.",
                message_zh=f"该 SecretId 每秒的 {action.name} 请求超过 {self._limiter.per_second} 次，"
                "请降低频率后重试。",
            )
        params = decode_request(action.request, parsed.params, from_strings=parsed.from_strings)
        ctx = ActionContext(
            account_id=key.account_id,
            secret_id=key.secret_id,
            request_id=request_id,
            language=language,
            backend=self._backend,
        )
        return await action.handler(ctx, params)


@dataclass
class _CallInfo:
    """What is known of a call so far, for its log line and metrics (an unknown action is never a label)."""

    action: str = "-"
    account: str = "-"


def _client_gone() -> tuple[str, bytes]:
    """A client that closed its connection before its request arrived whole (or was closed for being too slow,
    docs/limits.md#connections) is no error of ours: it is logged as its outcome, with no traceback, and the
    response, which no one will read, is empty."""
    return CLIENT_DISCONNECTED, b""


def _too_large(size: int, limit: int) -> errors.RequestSizeLimitExceeded:
    return errors.RequestSizeLimitExceeded(
        f"The request body is at least {size} bytes; at most {limit} bytes are accepted for this signature method.",
        message_zh=f"请求体至少有 {size} 字节；此签名方式最多接受 {limit} 字节。",
    )


async def _healthz(_request: Request) -> Response:
    """Liveness: the process serves HTTP (nothing else is asked, so a database outage does not get it killed)."""
    return PlainTextResponse("ok")


READY_CHECK_TIMEOUT_S: Final = 2.0


class Readiness:
    """``GET /readyz``: 200 ``ready`` when every dependency answers, else 503 naming each one that does not.

    The checks run at once, each bounded by ``timeout_s``, so a hung database answers within that time too.
    A load balancer takes the node out of rotation on 503 while ``/healthz`` (liveness) stays 200.
    """

    def __init__(self, checks: Sequence[HealthCheck], timeout_s: float = READY_CHECK_TIMEOUT_S) -> None:
        self._checks = tuple(checks)
        self._timeout_s = timeout_s

    async def _problem(self, check: HealthCheck) -> str | None:
        try:
            return await asyncio.wait_for(check.problem(), self._timeout_s)
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s"
        except Exception as exc:  # a check that fails is a dependency that is not usable
            return f"{type(exc).__name__}: {exc}"

    async def __call__(self, _request: Request) -> Response:
        problems = await asyncio.gather(*(self._problem(check) for check in self._checks))
        down = [f"{check.name}: {problem}" for check, problem in zip(self._checks, problems, strict=True) if problem]
        if down:
            return PlainTextResponse("not ready\n" + "\n".join(down) + "\n", status_code=503)
        return PlainTextResponse("ready\n" + "".join(f"{check.name}: ok\n" for check in self._checks))


class ApiApp:
    """The node's ASGI app: ``/`` straight to the API endpoint, every other path to the Starlette app (health,
    metrics, console, MQTT hooks) and the lifespan to it too."""

    def __init__(self, endpoint: ApiEndpoint, rest: Starlette) -> None:
        self.endpoint = endpoint
        self.rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/":
            await self.endpoint(scope, receive, send)
        else:
            await self.rest(scope, receive, send)


def create_app(
    endpoint: ApiEndpoint,
    *,
    metrics: Callable[[Request], Awaitable[Response]],
    readiness: Readiness,
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Any = None,
) -> ApiApp:
    routes: list[BaseRoute] = [
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", readiness.__call__, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *extra_routes,
    ]
    return ApiApp(endpoint, Starlette(routes=routes, lifespan=lifespan))

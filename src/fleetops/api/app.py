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
from starlette.routing import BaseRoute, Route, request_response
from starlette.types import Receive, Scope, Send

from fleetops import errors
from fleetops.api.decoding import decode_request
from fleetops.api.envelope import CONTENT_TYPE, error_body, new_request_id, success_body
from fleetops.api.metrics import ApiMetrics
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
        metrics: ApiMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._backend = backend
        self._limiter = limiter
        self._config = config
        self._clock = clock
        self.metrics = metrics

    async def __call__(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        outcome, call = "OK", _CallInfo()
        language = "en-US"
        try:
            raw = await self._read(request)
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
        elapsed_ms = elapsed_s * 1000
        # unknown action names are not used as labels: a client could otherwise grow the series without bound
        self.metrics.observe(call.action, outcome, elapsed_s)
        log.info(
            "action=%s account=%s request_id=%s outcome=%s latency_ms=%.1f",
            call.action,
            call.account,
            request_id,
            outcome,
            elapsed_ms,
        )
        return Response(body, status_code=200, headers={"content-type": CONTENT_TYPE})

    async def _read(self, request: Request) -> RawRequest:
        method = request.method.upper()
        headers = {k.lower(): v for k, v in request.headers.items()}
        raw_query = request.scope.get("query_string", b"").decode("latin-1")
        # the method and the size limits are checked by parse_request; only a POST body is read, and its read
        # stops at the limit so an oversize body is never held in memory whole
        body = b""
        if method == "POST":
            body = await self._read_body(request, headers)
        client = request.client.host if request.client is not None else ""
        return RawRequest(method=method, raw_query=raw_query, headers=headers, body=body, client=client)

    async def _read_body(self, request: Request, headers: dict[str, str]) -> bytes:
        # v1-signed requests carry no Authorization header; they are limited to 1 MB, TC3 to max_body_bytes.
        limit = self._config.max_body_bytes if "authorization" in headers else MAX_V1_BODY_BYTES
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

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


class _EveryMethod:
    """The API endpoint as a raw ASGI app, so that its route takes every method.

    Starlette gives a route whose endpoint is a function or method a method list (GET only when none is given)
    and answers any other method with a plain-text 405. Here every method (TRACE, CONNECT, PROPFIND, ...)
    reaches ``parse_request``, which answers the JSON envelope ``UnsupportedProtocol`` as for PUT.
    """

    def __init__(self, handler: Callable[[Request], Awaitable[Response]]) -> None:
        self._app = request_response(handler)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


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


def create_app(
    endpoint: ApiEndpoint,
    *,
    metrics: Callable[[Request], Awaitable[Response]],
    readiness: Readiness,
    extra_routes: Sequence[BaseRoute] = (),
    lifespan: Any = None,
) -> Starlette:
    routes: list[BaseRoute] = [
        Route("/", _EveryMethod(endpoint.__call__)),
        Route("/healthz", _healthz, methods=["GET"]),
        Route("/readyz", readiness.__call__, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        *extra_routes,
    ]
    return Starlette(routes=routes, lifespan=lifespan)

"""Device authentication and authorization for an external broker, as EMQX 5 HTTP callbacks.

Mount the router under ``/mqtt`` of the API app::

    Mount("/mqtt", app=mqtt_auth_router(directory, internal_username="fleetops", internal_password="...",
                                        shared_secret="..."))

``POST /mqtt/auth`` (EMQX "HTTP Server" authenticator) takes ``clientid``, ``username``, ``password``
(and ``peerhost``, unused) as a JSON object (EMQX's default body) or a form; it answers 200 with
``{"result": "allow", "is_superuser": false}`` for a device whose signature is valid (``device_auth``),
``{"result": "deny"}`` otherwise. fleetops' own client - the user name and password of ``--mqtt-url`` - gets
``{"result": "allow", "is_superuser": true}``, so EMQX skips authorization for it.

``POST /mqtt/acl`` (EMQX "HTTP Server" authorizer) takes ``clientid``, ``username``, ``topic`` and
``action`` (``publish`` / ``subscribe``) and answers ``{"result": "allow"}`` or ``{"result": "deny"}`` with
the device ACL of ``topics``; fleetops' own user name is allowed everything.

EMQX cannot pass on a CONNACK code: a refused device gets EMQX's own (bad user name or password / not
authorized, depending on its version), and the keep-alive limit of 900 s is not checked here.

Every request must carry ``Authorization: Bearer <shared_secret>`` (configured as a header of the EMQX
authenticator and authorizer, docs/mqtt.md#emqx-5): without it the endpoints would answer anyone who reaches the
API port, turning them into an oracle for device credentials, and ``/mqtt/acl`` would grant fleetops' own user
name everything on the word of whoever sent it. A request without the secret, or with a wrong one, gets 401;
an address that fails :data:`MAX_FAILURES` times within :data:`FAILURE_WINDOW_S` gets 429 for the rest of the
window without its secret even being compared. Device denials of a request that carries the secret are not
counted: they come from the broker's own address on behalf of every device, and counting them would lock all
devices out during one device's guessing. Bodies are read up to :data:`MAX_BODY_BYTES`.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import parse_qsl

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from fleetops.messaging.gate import DeviceGate
from fleetops.messaging.topics import may_publish, may_subscribe, split_client_id
from fleetops.ports.messaging import DeviceDirectory

log = logging.getLogger("fleetops.messaging.http_auth")

ALLOW = "allow"
DENY = "deny"

MAX_FAILURES: Final = 10  # requests without the right secret, per source address and window
FAILURE_WINDOW_S: Final = 60.0
MAX_BODY_BYTES: Final = 16 * 1024  # EMQX sends a few hundred bytes
# Addresses counted per window: memory stays bounded against a spray from many (IPv6) addresses. Past it a new
# address is not counted (it still gets 401: the secret, not the counter, is what keeps it out).
MAX_TRACKED_ADDRESSES: Final = 10_000


class FailureLimiter:
    """Failed requests per source address in a fixed window; the counts are dropped when the window ends, so
    memory stays bounded by one window's addresses."""

    def __init__(self, max_failures: int, window_s: float, clock: Callable[[], float]) -> None:
        self._max_failures = max_failures
        self._window_s = window_s
        self._clock = clock
        self._window = -1
        self._failures: dict[str, int] = {}

    def _roll(self) -> None:
        window = int(self._clock() // self._window_s)
        if window != self._window:
            self._window = window
            self._failures.clear()

    def blocked(self, address: str) -> bool:
        self._roll()
        return self._failures.get(address, 0) >= self._max_failures

    def failed(self, address: str) -> None:
        self._roll()
        if address not in self._failures and len(self._failures) >= MAX_TRACKED_ADDRESSES:
            return
        self._failures[address] = self._failures.get(address, 0) + 1


def _secret_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class MqttAuthEndpoints:
    """The two handlers; :func:`mqtt_auth_router` wraps them in a Router."""

    def __init__(
        self,
        directory: DeviceDirectory,
        *,
        internal_username: str,
        internal_password: str,
        shared_secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not internal_username or not internal_password:
            # An empty password would hand superuser rights to anyone who knows the user name.
            raise ValueError("fleetops' own MQTT user name and password must not be empty")
        if not shared_secret:
            raise ValueError("the EMQX hooks' shared secret must not be empty (FLEETOPS_MQTT_HOOKS_SECRET)")
        self._gate = DeviceGate(directory, clock)
        self._internal_username = internal_username
        self._internal_password = internal_password
        self._shared_secret = shared_secret
        self._failures = FailureLimiter(MAX_FAILURES, FAILURE_WINDOW_S, clock)

    async def auth(self, request: Request) -> JSONResponse:
        fields = await self._fields(request)
        if isinstance(fields, JSONResponse):
            return fields
        client_id, username, password = (
            fields.get("clientid", ""),
            fields.get("username"),
            fields.get("password"),
        )
        if username == self._internal_username:
            allowed = password is not None and _secret_matches(password, self._internal_password)
            return _result(ALLOW, is_superuser=True) if allowed else _result(DENY)
        try:
            # EMQX does not pass the keep-alive; 0 skips that check.
            decision = await self._gate.decide(client_id, username, password, 0)
        except Exception:
            log.exception("authentication of %s failed", client_id)
            return _result(DENY)  # "ignore" could fall through to an anonymous authenticator
        if not decision.accepted:
            log.info("refused %s from %s: %s", client_id, fields.get("peerhost", "?"), decision.reason)
            return _result(DENY)
        return _result(ALLOW, is_superuser=False)

    async def acl(self, request: Request) -> JSONResponse:
        fields = await self._fields(request)
        if isinstance(fields, JSONResponse):
            return fields
        # trusted only because the request carries the secret: the user name is EMQX's word, not the caller's
        if fields.get("username") == self._internal_username:
            return _result(ALLOW)
        device = split_client_id(fields.get("clientid", ""))
        topic, action = fields.get("topic", ""), fields.get("action", "")
        if device is None:
            allowed = False
        elif action == "publish":
            allowed = may_publish(device, topic)
        elif action == "subscribe":
            allowed = may_subscribe(device, topic)
        else:
            allowed = False
        return _result(ALLOW if allowed else DENY)

    async def _fields(self, request: Request) -> dict[str, str] | JSONResponse:
        """The request's fields (JSON object or form), or the refusal: 429 for an address over its failures,
        401 without the right secret, 413 for a body over MAX_BODY_BYTES."""
        address = request.client.host if request.client is not None else "unknown"
        if self._failures.blocked(address):
            return _result(DENY, status_code=429)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not _secret_matches(token, self._shared_secret):
            self._failures.failed(address)
            log.warning("refused a request to the EMQX hooks from %s: no or wrong shared secret", address)
            return _result(DENY, status_code=401)
        body = await _read_limited(request)
        if body is None:
            return _result(DENY, status_code=413)
        content_type = request.headers.get("content-type", "")
        parsed: Any
        if content_type.startswith("application/x-www-form-urlencoded"):
            parsed = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        else:
            try:
                parsed = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                parsed = {}
        if not isinstance(parsed, Mapping):
            return {}
        return {str(key): str(value) for key, value in parsed.items() if value is not None}


async def _read_limited(request: Request) -> bytes | None:
    """The body, or None when it is over MAX_BODY_BYTES (read no further) or the client left mid-body."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
    except ClientDisconnect:
        return None
    return b"".join(chunks)


def _result(result: str, *, is_superuser: bool | None = None, status_code: int = 200) -> JSONResponse:
    content: dict[str, object] = {"result": result}
    if is_superuser is not None:
        content["is_superuser"] = is_superuser
    return JSONResponse(content, status_code=status_code)


def mqtt_auth_router(
    directory: DeviceDirectory,
    *,
    internal_username: str,
    internal_password: str,
    shared_secret: str,
    clock: Callable[[], float] = time.time,
) -> Router:
    """``POST /auth`` and ``POST /acl``; mount under ``/mqtt`` (module docstring)."""
    endpoints = MqttAuthEndpoints(
        directory,
        internal_username=internal_username,
        internal_password=internal_password,
        shared_secret=shared_secret,
        clock=clock,
    )
    return Router(
        routes=[
            Route("/auth", endpoints.auth, methods=["POST"]),
            Route("/acl", endpoints.acl, methods=["POST"]),
        ]
    )

"""Device authentication and authorization for an external broker, as EMQX 5 HTTP callbacks.

Mount the router under ``/mqtt`` of the API app::

    Mount("/mqtt", app=mqtt_auth_router(directory, internal_username="fleetops", internal_password="..."))

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

If ``shared_secret`` is set, a request must carry ``Authorization: Bearer <secret>`` (configure it as a
header of the EMQX authenticator and authorizer); the endpoints should in any case only be reachable by the
broker.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, Router

from fleetops.messaging.gate import DeviceGate
from fleetops.messaging.topics import may_publish, may_subscribe, split_client_id
from fleetops.ports.messaging import DeviceDirectory

log = logging.getLogger("fleetops.messaging.http_auth")

ALLOW = "allow"
DENY = "deny"


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
        shared_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not internal_username or not internal_password:
            # An empty password would hand superuser rights to anyone who knows the user name.
            raise ValueError("fleetops' own MQTT user name and password must not be empty")
        self._gate = DeviceGate(directory, clock)
        self._internal_username = internal_username
        self._internal_password = internal_password
        self._shared_secret = shared_secret

    async def auth(self, request: Request) -> JSONResponse:
        fields = await self._fields(request)
        if fields is None:
            return _result(DENY, status_code=401)
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
        if fields is None:
            return _result(DENY, status_code=401)
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

    async def _fields(self, request: Request) -> dict[str, str] | None:
        """The request's fields (JSON object or form); None if the shared secret is missing or wrong."""
        if self._shared_secret is not None:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not _secret_matches(token, self._shared_secret):
                return None
        body = await request.body()
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
    shared_secret: str | None = None,
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

"""The web console at ``/console/``: static files only, served beside the API (docs/console.md).

The console has no server side of its own: the browser signs ordinary Tencent Cloud API 3.0 requests to ``/``
with the operator's key, so it gets exactly what the SDK would and needs no second way to authenticate.

``GET /console/`` is ``index.html`` (``Cache-Control: no-cache``); every other asset lives under
``/console/assets/<digest>/``, where ``<digest>`` is a hash of all the assets computed at start, so the
assets can be cached for a year (``immutable``) and a new release is loaded on the next visit without a stale
mix of old and new modules. Every response carries a Content-Security-Policy that allows scripts, styles and
connections from this origin only and no inline script at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CONTENT_SECURITY_POLICY", "STATIC_DIR", "console_routes"]

STATIC_DIR: Final = Path(__file__).parent / "static"
_INDEX: Final = "index.html"
_ASSETS_PLACEHOLDER: Final = "__ASSETS__"
_DIGEST_CHARS: Final = 16

# No 'unsafe-inline' and no 'unsafe-eval' anywhere: the console's scripts are files of this origin, its styles
# one stylesheet (Preact sets style properties through the CSSOM, which style-src does not govern), and its
# only connection the API at / on the same origin. data: images: the empty favicon in index.html.
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_SECURITY_HEADERS: Final = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
_INDEX_CACHE: Final = "no-cache"  # revalidated on every visit: it names the digest of the current assets
_ASSET_CACHE: Final = "public, max-age=31536000, immutable"  # the digest in the URL changes with any asset


def console_routes(static_dir: Path = STATIC_DIR) -> list[BaseRoute]:
    """The console's routes, to be added to the API's Starlette app (``GET /console`` redirects to ``/console/``)."""
    digest = assets_digest(static_dir)
    index = (static_dir / _INDEX).read_text("utf-8").replace(_ASSETS_PLACEHOLDER, f"assets/{digest}")
    index_headers = {**_SECURITY_HEADERS, "cache-control": _INDEX_CACHE}

    async def index_page(_request: Request) -> Response:
        return HTMLResponse(index, headers=index_headers)

    async def to_index(_request: Request) -> Response:
        # relative, so that it also holds behind a reverse proxy that serves fleetops under a path prefix
        return RedirectResponse("console/", status_code=307)

    assets = _WithHeaders(StaticFiles(directory=static_dir), {**_SECURITY_HEADERS, "cache-control": _ASSET_CACHE})
    return [
        Route("/console", to_index, methods=["GET"]),
        Route("/console/", index_page, methods=["GET"]),
        Mount(f"/console/assets/{digest}", app=assets),
    ]


def assets_digest(static_dir: Path) -> str:
    """A hash of every file under ``static_dir`` (names and contents), the version part of the asset URLs."""
    sha = hashlib.sha256()
    for path in sorted(p for p in static_dir.rglob("*") if p.is_file()):
        sha.update(path.relative_to(static_dir).as_posix().encode("utf-8") + b"\0")
        sha.update(path.read_bytes() + b"\0")
    return sha.hexdigest()[:_DIGEST_CHARS]


class _WithHeaders:
    """An ASGI wrapper that sets fixed headers on every HTTP response of the app it wraps."""

    def __init__(self, app: ASGIApp, headers: Mapping[str, str]) -> None:
        self._app = app
        self._headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
        self._names = {name for name, _ in self._headers}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(n, v) for n, v in message.get("headers", []) if n.lower() not in self._names]
                message = {**message, "headers": kept + self._headers}
            await send(message)

        await self._app(scope, receive, send_with_headers)

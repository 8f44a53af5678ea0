"""One HTTP request to an ASGI app in this process, as uvicorn would hand it over (the API worker's tests)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

Headers = Sequence[tuple[str, str]]


@dataclass
class Answered:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        return next((value for key, value in self.headers if key.lower() == name), None)

    def envelope(self) -> dict[str, Any]:
        response = orjson.loads(self.body)["Response"]
        assert isinstance(response, dict)
        return response


async def call(
    app: Any,
    headers: Headers,
    body: bytes = b"",
    *,
    method: str = "POST",
    path: str = "/",
    query: bytes = b"",
    client: tuple[str, int] | None = ("203.0.113.5", 40000),
    chunks: Sequence[bytes] | None = None,
    disconnect_after: int | None = None,
) -> Answered:
    """Send one request to ``app``. ``chunks``: the body in these pieces (as a chunked upload arrives, no
    Content-Length); ``disconnect_after``: the client goes away after that many pieces."""
    pieces = list(chunks) if chunks is not None else [body]
    raw_headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if chunks is None:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": raw_headers,
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
    given = 0

    async def receive() -> dict[str, Any]:
        nonlocal given
        if disconnect_after is not None and given >= disconnect_after:
            return {"type": "http.disconnect"}
        if given >= len(pieces):
            return {"type": "http.disconnect"}
        given += 1
        return {"type": "http.request", "body": pieces[given - 1], "more_body": given < len(pieces)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answered(int(start["status"]), list(start.get("headers", [])), body_out)

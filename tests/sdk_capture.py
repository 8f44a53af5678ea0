"""What the official SDK puts on the wire, captured by a tiny local HTTP server (through the SDK's public API).

Tests of signing and flattening need the exact bytes the SDK sends; building them with the SDK's private helpers
would tie the suite to its internals. Instead the SDK sends the request (``CommonClient.call_json``) to a server
on 127.0.0.1 that records it and answers an empty success envelope.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleetops.api.request import RawRequest


@dataclass
class Capture:
    endpoint: str
    requests: list[RawRequest] = field(default_factory=list)

    def send(
        self,
        action: str,
        params: dict[str, Any],
        *,
        secret_id: str,
        secret_key: str,
        sign_method: str = "TC3-HMAC-SHA256",
        http_method: str = "POST",
        region: str = "ap-guangzhou",
    ) -> RawRequest:
        """Send ``action`` with ``params`` through the SDK and return the request as it arrived."""
        from tencentcloud.common import credential
        from tencentcloud.common.common_client import CommonClient
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile

        profile = ClientProfile(
            signMethod=sign_method,
            httpProfile=HttpProfile(endpoint=self.endpoint, protocol="http", reqMethod=http_method),
        )
        client = CommonClient("iotcloud", "2018-06-14", credential.Credential(secret_id, secret_key), region, profile)
        before = len(self.requests)
        client.call_json(action, params)
        assert len(self.requests) == before + 1
        return self.requests[-1]


class _Recorder(BaseHTTPRequestHandler):
    capture: Capture

    def _record(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        _, _, query = self.path.partition("?")
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.capture.requests.append(RawRequest(self.command, query, headers, body))
        reply = b'{"Response":{"RequestId":"captured"}}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    do_GET = do_POST = _record

    def log_message(self, format: str, *args: Any) -> None:
        return None


# what the HTTP client sets itself when re-sending a captured request
_TRANSPORT_HEADERS = frozenset({"content-length", "connection", "accept-encoding", "transfer-encoding"})


def resend(raw: RawRequest, endpoint: str, session: Any = None, **changes: str) -> dict[str, Any]:
    """Send a captured request to ``endpoint`` (``host:port``) byte for byte, its signed Host included, with the
    headers in ``changes`` replaced (``x_tc_action="DeleteDevice"``): what a client that captured it can do.
    On a new connection, or on ``session``'s keep-alive connection (a ``requests.Session``, as the official SDK
    keeps one). Returns the envelope's ``Response``."""
    import requests

    headers = {k: v for k, v in raw.headers.items() if k not in _TRANSPORT_HEADERS}
    headers.update({name.replace("_", "-"): value for name, value in changes.items()})
    url = f"http://{endpoint}/" + (f"?{raw.raw_query}" if raw.raw_query else "")
    if session is None:
        headers["Connection"] = "close"
    reply = (session or requests).request(raw.method, url, data=raw.body, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    response = reply.json()["Response"]
    assert isinstance(response, dict)
    return response


@contextmanager
def sdk_capture() -> Iterator[Capture]:
    """A capture server on a free loopback port, for the duration of the block."""
    capture = Capture(endpoint="")
    handler = type("Recorder", (_Recorder,), {"capture": capture})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    capture.endpoint = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="sdk-capture", daemon=True)
    thread.start()
    try:
        yield capture
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)

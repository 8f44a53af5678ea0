"""One signed API call over HTTP: what tccli does, in a few lines of our own.

POST, JSON body, TC3-HMAC-SHA256 over ``content-type;host;x-tc-action`` (the SDK signs no action; signing it
keeps two calls with one body in one second apart), ``X-TC-Language: en-US``, as the SDK sends them. The
transport is the standard library's ``urllib``: a command makes a handful of sequential calls, so a
connection pool or an async client would buy nothing.

Two kinds of failure, kept apart because they call for different exits (docs/operators.md#exit-status):

* :class:`ApiCallError`: the node answered with ``Response.Error`` (its Code and Message); exit 1.
* :class:`ClientSetupError`: no usable endpoint (unreachable, not a fleetops API, a malformed URL); one line,
  exit 2.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from fleetops.api.signing import tc3_authorization

API_VERSION: Final = "2018-06-14"
CONTENT_TYPE: Final = "application/json"
DEFAULT_TIMEOUT_S: Final = 10.0
# The SDK sends a region; fleetops ignores it, as the vendor's iotcloud 2018-06-14 has one region for the API.
REGION: Final = "ap-guangzhou"


class ClientSetupError(Exception):
    """The command cannot talk to a fleetops API at all (the message says why and what to do)."""


@dataclass(frozen=True)
class ApiCallError(Exception):
    """The API answered with an error envelope."""

    code: str
    message: str
    request_id: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message} (RequestId {self.request_id})"


@dataclass(frozen=True)
class Credentials:
    secret_id: str
    secret_key: str = field(repr=False)
    source: str  # where they were found, for messages ("--secret-id/--secret-key", "FLEETOPS_SECRET_ID", a path)


@dataclass(frozen=True)
class Endpoint:
    """Where the API is: ``http://host:port`` (a bare ``host:port`` means plain HTTP, what fleetops serves)."""

    url: str  # scheme://host[:port]/
    host: str  # the Host header, signed as sent

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        given = text.strip()
        parts = urlsplit(given if "://" in given else "http://" + given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientSetupError(
                f"the endpoint {text!r} is not an HTTP URL: give http://HOST:PORT (--endpoint, FLEETOPS_ENDPOINT)"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ClientSetupError(
                f"the endpoint {text!r} has a path; the API is served at / : give http://HOST:PORT (--endpoint)"
            )
        try:
            _ = parts.port  # raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ClientSetupError(f"the endpoint {text!r} has an invalid port (--endpoint)") from exc
        return cls(url=f"{parts.scheme}://{parts.netloc}/", host=parts.netloc)

    def __str__(self) -> str:
        return self.url.rstrip("/")


class ApiClient:
    """Calls iotcloud 2018-06-14 actions on one endpoint with one key pair."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self._timeout_s = timeout_s
        self._clock = clock

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """The action's ``Response`` (without RequestId); raises ApiCallError or ClientSetupError."""
        body = json.dumps(params, ensure_ascii=False).encode("utf-8")
        timestamp = int(self._clock())
        authorization = tc3_authorization(
            secret_id=self.credentials.secret_id,
            secret_key=self.credentials.secret_key,
            method="POST",
            host=self.endpoint.host,
            content_type=CONTENT_TYPE,
            timestamp=timestamp,
            body=body,
            action=action,  # signed: `tasks describe` then `tasks cancel` share one body (docs/protocol.md#replay)
        )
        request = urllib.request.Request(
            self.endpoint.url,
            data=body,
            method="POST",
            headers={
                "Authorization": authorization,
                "Content-Type": CONTENT_TYPE,
                "Host": self.endpoint.host,
                "X-TC-Action": action,
                "X-TC-Version": API_VERSION,
                "X-TC-Timestamp": str(timestamp),
                "X-TC-Region": REGION,
                "X-TC-Language": "en-US",
            },
        )
        response = self._envelope(self._send(request))
        error = response.get("Error")
        if isinstance(error, dict):
            raise ApiCallError(str(error.get("Code")), str(error.get("Message")), str(response.get("RequestId")))
        response.pop("RequestId", None)
        return response

    def collect(
        self,
        action: str,
        params: dict[str, Any],
        items: str,
        *,
        page_limit: int,
        offset: int = 0,
        count: int | None = None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """(TotalCount, the elements of ``Response[items]`` from ``offset``): Offset/Limit pages of ``page_limit``
        (DescribeProducts, DescribeDevices, DescribeTasks), until ``count`` elements (None: all) or the end."""
        found: list[dict[str, Any]] = []
        total = 0
        while count is None or len(found) < count:
            page = self.call(action, {**params, "Offset": offset + len(found), "Limit": page_limit})
            total = int(page.get("TotalCount", 0))
            elements = page.get(items) or []
            found.extend(elements if count is None else elements[: count - len(found)])
            if not elements or offset + len(found) >= total:
                break
        return total, found

    def _send(self, request: urllib.request.Request) -> bytes:
        try:
            with urllib.request.urlopen(request, timeout=self._timeout_s) as reply:
                data: bytes = reply.read()
                return data
        except urllib.error.HTTPError as exc:
            # fleetops answers every API request with HTTP 200; anything else is not a fleetops API
            raise ClientSetupError(
                f"{self.endpoint} answered HTTP {exc.code} {exc.reason}: is it a fleetops API endpoint? (--endpoint)"
            ) from exc
        except urllib.error.URLError as exc:
            reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
            raise ClientSetupError(
                f"cannot reach the fleetops API at {self.endpoint} ({reason}): is `fleetops serve` running there? "
                "(--endpoint, FLEETOPS_ENDPOINT)"
            ) from exc
        except TimeoutError as exc:
            raise ClientSetupError(
                f"the fleetops API at {self.endpoint} did not answer within {self._timeout_s:g} s (--timeout)"
            ) from exc
        except OSError as exc:  # a connection reset mid-answer, say
            raise ClientSetupError(f"the connection to {self.endpoint} failed: {exc}") from exc

    def _envelope(self, data: bytes) -> dict[str, Any]:
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = None
        response = decoded.get("Response") if isinstance(decoded, dict) else None
        if not isinstance(response, dict):
            raise ClientSetupError(
                f"{self.endpoint} did not answer with a Tencent Cloud API envelope: is it a fleetops API "
                "endpoint? (--endpoint)"
            )
        return response

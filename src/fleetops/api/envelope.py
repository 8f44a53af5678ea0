"""The Tencent Cloud API 3.0 response envelope, rendered in one place.

HTTP 200 for everything the service processed, ``Content-Type: application/json`` exactly: the Python SDK only
looks for ``Response.Error`` when the content type is exactly that string (with ``; charset=utf-8`` an error is
silently parsed as an empty success), and raises on any non-200 status.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from fleetops.errors import ApiError

CONTENT_TYPE = "application/json"


def new_request_id() -> str:
    return str(uuid.uuid4())


def success_body(fields: dict[str, Any], request_id: str) -> bytes:
    return orjson.dumps({"Response": {**fields, "RequestId": request_id}})


def error_body(error: ApiError, request_id: str, language: str) -> bytes:
    return orjson.dumps(
        {
            "Response": {
                "Error": {"Code": error.code, "Message": error.localized(language)},
                "RequestId": request_id,
            }
        }
    )

"""A hand-rolled Tencent Cloud API 3.0 client for the requests the official SDK cannot produce (tampered,
expired, malformed). Signing uses the SDK's own primitives (``tencentcloud.common.sign.Sign``)."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import urllib.parse
from datetime import UTC, datetime
from typing import Any

import requests
from tencentcloud.common.sign import Sign

VERSION = "2018-06-14"


def tc3_headers(
    *,
    host: str,
    secret_id: str,
    secret_key: str,
    action: str,
    body: bytes,
    method: str = "POST",
    query: str = "",
    content_type: str = "application/json",
    timestamp: int | None = None,
    version: str = VERSION,
    language: str = "en-US",
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    date = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical = "\n".join(
        [method, "/", query, f"content-type:{content_type}\nhost:{host}\n", "content-type;host", payload_hash]
    )
    scope = f"{date}/iotcloud/tc3_request"
    string_to_sign = "\n".join(["TC3-HMAC-SHA256", str(ts), scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = Sign.sign_tc3(secret_key, date, "iotcloud", string_to_sign)
    return {
        "Content-Type": content_type,
        "Host": host,
        "X-TC-Action": action,
        "X-TC-Version": version,
        "X-TC-Timestamp": str(ts),
        "X-TC-Language": language,
        "Authorization": (
            f"TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}"
        ),
    }


def tc3_post(
    url: str, host: str, secret_id: str, secret_key: str, action: str, params: dict[str, Any], **kw: Any
) -> dict[str, Any]:
    body = json.dumps(params).encode()
    headers = tc3_headers(host=host, secret_id=secret_id, secret_key=secret_key, action=action, body=body, **kw)
    return response_json(requests.post(url, data=body, headers=headers, timeout=10))


def v1_params(
    *,
    host: str,
    secret_id: str,
    secret_key: str,
    action: str,
    params: dict[str, str],
    method: str = "GET",
    sign_method: str = "HmacSHA1",
    timestamp: int | None = None,
    nonce: int | None = None,
) -> dict[str, str]:
    """Seed-style signature v1 parameters: flattened business params plus the common ones, signed. The Nonce is
    random unless given (a repeated one is refused within the signature's window, docs/protocol.md#replay)."""
    all_params = dict(params)
    all_params.update(
        Action=action,
        Version=VERSION,
        Timestamp=str(int(time.time()) if timestamp is None else timestamp),
        Nonce=str(secrets.randbelow(2**63 - 1) + 1 if nonce is None else nonce),
        SecretId=secret_id,
        SignatureMethod=sign_method,
        Language="en-US",
    )
    joined = "&".join(f"{k}={all_params[k]}" for k in sorted(all_params))
    all_params["Signature"] = Sign.sign(secret_key, f"{method}{host}/?{joined}", sign_method)
    return all_params


def v1_get(
    url: str, host: str, secret_id: str, secret_key: str, action: str, params: dict[str, str], **kw: Any
) -> dict[str, Any]:
    signed = v1_params(host=host, secret_id=secret_id, secret_key=secret_key, action=action, params=params, **kw)
    return response_json(requests.get(url + "?" + urllib.parse.urlencode(signed), timeout=10))


def response_json(resp: requests.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    data = resp.json()
    assert isinstance(data, dict)
    inner = data["Response"]
    assert isinstance(inner, dict)
    assert isinstance(inner["RequestId"], str) and len(inner["RequestId"]) == 36
    return inner


def error_code(response: dict[str, Any]) -> str:
    assert "Error" in response, f"expected an error, got {response}"
    return str(response["Error"]["Code"])

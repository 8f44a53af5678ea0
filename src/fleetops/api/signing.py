"""Signatures of Tencent Cloud API 3.0: TC3-HMAC-SHA256 (v3) and HmacSHA1/HmacSHA256 (v1).

Pure functions over plain data, pinned by the vectors of docs/protocol.md#test-vectors in
``tests/unit/test_signing.py``. :func:`fleetops.api.request.verify_signature` applies them to a parsed
request.
Signatures are compared with :func:`hmac.compare_digest`; neither keys nor signatures are logged.

TC3, as the SDK computes it::

    CanonicalRequest = "\\n".join([METHOD, "/", query, "content-type:<v>\\nhost:<v>\\n",
                                    "content-type;host", hex(sha256(body))])
    StringToSign     = "\\n".join(["TC3-HMAC-SHA256", X-TC-Timestamp, f"{date}/{service}/tc3_request",
                                    hex(sha256(CanonicalRequest))])
    kDate = HMAC("TC3" + key, date); kService = HMAC(kDate, service); kSigning = HMAC(kService, "tc3_request")
    Signature = hex(HMAC(kSigning, StringToSign))

v1::

    StringToSign = METHOD + Host + "/?" + "&".join(f"{k}={v}" for k, v in sorted(params but Signature))
    Signature    = base64(HMAC-SHA1 or HMAC-SHA256(key, StringToSign))
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from fleetops.api.text import cut
from fleetops.errors import InvalidAuthorization, SignatureFailure

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "SERVICE",
    "TC3_ALGORITHM",
    "UNSIGNED_PAYLOAD",
    "Tc3Authorization",
    "parse_authorization",
    "sha256_hex",
    "tc3_authorization",
    "tc3_canonical_request",
    "tc3_signature",
    "tc3_string_to_sign",
    "utc_date",
    "v1_signature",
    "v1_string_to_sign",
    "verify_tc3",
    "verify_v1",
]

SERVICE = "iotcloud"
TC3_ALGORITHM: Final = "TC3-HMAC-SHA256"
# Docs: the timestamp "may not differ from server time by more than five minutes". Symmetric (our choice:
# the docs do not say whether a request from the future gets more leeway).
MAX_CLOCK_SKEW_S = 300
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_HEADER_NAME = re.compile(r"[a-z0-9-]+")
_HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Tc3Authorization:
    """The parts of a TC3 ``Authorization`` header.

    ``TC3-HMAC-SHA256 Credential=<id>/<date>/<service>/tc3_request, SignedHeaders=..., Signature=...``
    """

    secret_id: str  # shape not checked here (AuthFailure.InvalidSecretId is the request parser's call)
    date: str  # as sent; checked against X-TC-Timestamp by verify_tc3
    service: str  # as sent; checked against our service name by verify_tc3
    signed_headers: tuple[str, ...]  # lower-case names, in the client's order
    signature: str  # 64 lower-case hex digits


def parse_authorization(value: str) -> Tc3Authorization:
    """Split a TC3 ``Authorization`` header; spaces around ``,`` and ``=`` are tolerated.

    Raises ``AuthFailure.InvalidAuthorization`` naming what is wrong.
    """
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != TC3_ALGORITHM:
        raise _bad_authorization(
            f"it must start with `{TC3_ALGORITHM}`, got `{cut(algorithm)}`",
            f"必须以 `{TC3_ALGORITHM}` 开头，实际为 `{cut(algorithm)}`",
        )
    parts: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, val = (s.strip() for s in part.partition("="))
        if not eq or key not in ("Credential", "SignedHeaders", "Signature") or key in parts:
            raise _bad_authorization(
                f"unexpected part `{cut(part.strip())}`; expected Credential=..., SignedHeaders=..., "
                "Signature=..., each once",
                f"无法识别的部分 `{cut(part.strip())}`",
            )
        parts[key] = val
    missing = [k for k in ("Credential", "SignedHeaders", "Signature") if k not in parts]
    if missing:
        raise _bad_authorization(f"`{missing[0]}` is missing", f"缺少 `{missing[0]}`")
    credential = parts["Credential"].split("/")
    if len(credential) != 4 or credential[3] != "tc3_request":
        raise _bad_authorization(
            "Credential must read `<SecretId>/<YYYY-MM-DD>/<service>/tc3_request`",
            "Credential 格式应为 `<SecretId>/<YYYY-MM-DD>/<service>/tc3_request`",
        )
    signed_headers = tuple(parts["SignedHeaders"].split(";"))
    if not all(_HEADER_NAME.fullmatch(h) for h in signed_headers):
        raise _bad_authorization(
            "SignedHeaders must list lower-case header names separated by `;`, e.g. `content-type;host`",
            "SignedHeaders 应为以 `;` 分隔的小写头部名称，例如 `content-type;host`",
        )
    # The docs make both mandatory; without host a signature could be replayed against another endpoint.
    for required in ("content-type", "host"):
        if required not in signed_headers:
            raise _bad_authorization(f"SignedHeaders must include `{required}`", f"SignedHeaders 必须包含 `{required}`")
    if not _HEX_SIGNATURE.fullmatch(parts["Signature"]):
        raise _bad_authorization("Signature must be 64 hexadecimal digits", "Signature 应为 64 位十六进制数字")
    secret_id, date, service, _ = credential
    return Tc3Authorization(secret_id, date, service, signed_headers, parts["Signature"].lower())


# --- primitives --------------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def utc_date(timestamp: int) -> str:
    """The credential-scope date of a TC3 request: ``YYYY-MM-DD`` of the timestamp in UTC."""
    return _utc_day(timestamp // 86_400)


@functools.lru_cache(maxsize=8)
def _utc_day(day: int) -> str:
    # every request asks; formatting a datetime each time was a measurable part of a request (issue 12)
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def tc3_canonical_request(method: str, query: str, headers: Sequence[tuple[str, str]], payload_hash: str) -> str:
    """``headers`` are the signed ``(name, value)`` pairs in SignedHeaders order, names lower-case."""
    canonical_headers = "".join(f"{name}:{value}\n" for name, value in headers)
    signed_headers = ";".join(name for name, _ in headers)
    # canonical_headers ends with "\n" and is then joined with "\n": the empty line is part of the format.
    return "\n".join((method, "/", query, canonical_headers, signed_headers, payload_hash))


def tc3_string_to_sign(timestamp: str, date: str, service: str, canonical_request: str) -> str:
    """``timestamp`` is the X-TC-Timestamp header text, which the client signed as it sent it."""
    digest = sha256_hex(canonical_request.encode("utf-8"))
    return f"{TC3_ALGORITHM}\n{timestamp}\n{date}/{service}/tc3_request\n{digest}"


def tc3_signature(secret_key: str, date: str, service: str, string_to_sign: str) -> str:
    return hmac.digest(_signing_key(secret_key, date, service), string_to_sign.encode("utf-8"), "sha256").hex()


@functools.lru_cache(maxsize=1024)
def _signing_key(secret_key: str, date: str, service: str) -> bytes:
    """The day's derived key of a SecretKey: the same for every request of that key and day, so derived once
    (the keys it is derived from are held in memory anyway, backend/keys.py)."""
    k_date = _hmac256(("TC3" + secret_key).encode("utf-8"), date)
    k_service = _hmac256(k_date, service)
    return _hmac256(k_service, "tc3_request")


def tc3_authorization(
    *,
    secret_id: str,
    secret_key: str,
    method: str,
    host: str,
    content_type: str,
    timestamp: int,
    query: str = "",
    body: bytes = b"",
    service: str = SERVICE,
    unsigned_payload: bool = False,
    action: str | None = None,
) -> str:
    """The ``Authorization`` header value the SDK would send (client side; for tests, benches and tools).

    With ``action`` the ``X-TC-Action`` header (that value) is signed too, which the SDK does not do: two actions
    with the same body signed in the same second then differ (docs/protocol.md#replay)."""
    date = utc_date(timestamp)
    headers = [("content-type", content_type), ("host", host)]
    if action is not None:
        headers.append(("x-tc-action", action))
    canonical = tc3_canonical_request(
        method,
        query if method == "GET" else "",
        headers,
        _payload_hash(method, body, unsigned_payload),
    )
    string_to_sign = tc3_string_to_sign(str(timestamp), date, service, canonical)
    signature = tc3_signature(secret_key, date, service, string_to_sign)
    signed = ";".join(name for name, _ in headers)
    return (
        f"{TC3_ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, "
        f"SignedHeaders={signed}, Signature={signature}"
    )


def v1_string_to_sign(method: str, host: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``pairs`` are every parameter except Signature, URL-decoded; they are sorted here."""
    # SDK quirk (abstract_client._format_sign_string): "_" in a name is signed as ".". No iotcloud parameter
    # has one, but doing the same keeps any SDK-signed request verifiable.
    signed = sorted((name.replace("_", "."), value) for name, value in pairs)
    return f"{method}{host}/?" + "&".join(f"{name}={value}" for name, value in signed)


def v1_signature(secret_key: str, string_to_sign: str, method: Literal["HmacSHA1", "HmacSHA256"]) -> str:
    digest = hashlib.sha256 if method == "HmacSHA256" else hashlib.sha1
    mac = hmac.new(secret_key.encode("utf-8"), string_to_sign.encode("utf-8"), digest).digest()
    return base64.b64encode(mac).decode("ascii")


# --- verification ------------------------------------------------------------------------------------------


def verify_tc3(
    auth: Tc3Authorization,
    secret_key: str,
    *,
    method: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    timestamp: int,
    service: str = SERVICE,
) -> None:
    """Raise ``SignatureFailure`` unless the request was signed with ``secret_key`` for ``service``.

    ``raw_query``, ``headers`` (lower-case names) and ``body`` exactly as received; the clock skew is not
    checked here.
    """
    if auth.service != service:
        raise SignatureFailure(
            f"The credential scope names the service `{cut(auth.service)}`; this endpoint is `{service}`.",
            message_zh=f"签名范围中的服务为 `{cut(auth.service)}`，本服务为 `{service}`。",
        )
    expected_date = utc_date(timestamp)
    if auth.date != expected_date:
        raise SignatureFailure(
            f"The credential scope date `{cut(auth.date)}` is not the UTC date of X-TC-Timestamp ({expected_date}).",
            message_zh=f"签名范围中的日期 `{cut(auth.date)}` 与 X-TC-Timestamp 的 UTC 日期（{expected_date}）不一致。",
        )
    unsigned = headers.get("x-tc-content-sha256", "").strip() == UNSIGNED_PAYLOAD
    body_hash = _payload_hash(method, body, unsigned)
    query = raw_query if method == "GET" else ""  # the SDK signs an empty query for POST
    timestamp_text = headers.get("x-tc-timestamp", "").strip()
    values = [headers.get(name, "").strip() for name in auth.signed_headers]
    # The docs say values are signed lower-cased, the SDK signs them as sent: accept either.
    candidates = [values]
    lowered = [v.lower() for v in values]
    if lowered != values:
        candidates.append(lowered)
    for candidate in candidates:
        signed = list(zip(auth.signed_headers, candidate, strict=True))
        canonical = tc3_canonical_request(method, query, signed, body_hash)
        string_to_sign = tc3_string_to_sign(timestamp_text, auth.date, service, canonical)
        expected = tc3_signature(secret_key, auth.date, service, string_to_sign)
        if hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("ascii")):
            return
    raise SignatureFailure()


def verify_v1(
    secret_key: str,
    *,
    method: str,
    host: str,
    signed_pairs: Sequence[tuple[str, str]],
    signature: str,
    scheme: Literal["HmacSHA1", "HmacSHA256"],
) -> None:
    """Raise ``SignatureFailure`` unless ``signature`` (Base64, URL-decoded) signs the pairs and the host."""
    expected = v1_signature(secret_key, v1_string_to_sign(method, host, signed_pairs), scheme)
    # Base64 never contains a space: one here is a "+" that a hand-made client forgot to percent-encode.
    received = signature.replace(" ", "+")
    if not hmac.compare_digest(expected.encode("ascii"), received.encode("utf-8")):
        raise SignatureFailure()


def _payload_hash(method: str, body: bytes, unsigned_payload: bool) -> str:
    # SDK behaviour: a GET hashes the empty string whatever its body, and X-TC-Content-SHA256:
    # UNSIGNED-PAYLOAD replaces the body by that literal string (for GET too).
    if unsigned_payload:
        return sha256_hex(UNSIGNED_PAYLOAD.encode("ascii"))
    return sha256_hex(b"" if method == "GET" else body)


def _hmac256(key: bytes, message: str) -> bytes:
    return hmac.digest(key, message.encode("utf-8"), "sha256")


def _bad_authorization(en: str, zh: str) -> InvalidAuthorization:
    return InvalidAuthorization(
        f"The Authorization header is malformed: {en}.",
        message_zh=f"Authorization 头部格式错误：{zh}。",
    )

"""Parse a raw Tencent Cloud API 3.0 request: common parameters, credentials, business parameters.

Three request shapes reach the server (all sent by the official SDK):

====================  ===================================  ==============================  ==================
shape                 business parameters                  common parameters               signature
====================  ===================================  ==============================  ==================
POST JSON             JSON object body                     ``X-TC-*`` headers              TC3-HMAC-SHA256
POST form             flat ``k=v&...`` body                body (v1) or headers (TC3)      v1 or TC3
GET                   flat URL query                       query (v1) or headers (TC3)     v1 or TC3
====================  ===================================  ==============================  ==================

A request is TC3 when it has an ``Authorization`` header, otherwise v1 (HmacSHA1/HmacSHA256, with
``SecretId``, ``Signature``, ``Timestamp`` and ``Nonce`` among the parameters). GET parameters come only
from the query and POST parameters only from the body: a query string on a POST is ignored.

The intended order of checks (docs/protocol.md#verification) is ``parse_request`` -> action lookup ->
``check_timestamp`` -> SecretId lookup -> ``verify_signature`` -> ``decode_params``. The signature arithmetic
itself lives in :mod:`fleetops.api.signing`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import orjson

from fleetops.api.decoding import unflatten
from fleetops.api.signing import (
    MAX_CLOCK_SKEW_S,
    SERVICE,
    TC3_ALGORITHM,
    Tc3Authorization,
    parse_authorization,
    verify_tc3,
    verify_v1,
)
from fleetops.api.text import cut
from fleetops.errors import (
    InvalidAuthorization,
    InvalidParameter,
    InvalidRequest,
    InvalidSecretId,
    MissingParameter,
    NoSuchVersion,
    RequestSizeLimitExceeded,
    SignatureExpire,
    UnsupportedProtocol,
)

__all__ = [
    "API_VERSION",
    "COMMON_PARAMS",
    "DEFAULT_LANGUAGE",
    "MAX_GET_QUERY_BYTES",
    "MAX_TC3_BODY_BYTES",
    "MAX_V1_BODY_BYTES",
    "ParsedRequest",
    "RawRequest",
    "Scheme",
    "check_timestamp",
    "detect_language",
    "parse_request",
    "verify_signature",
]

API_VERSION = "2018-06-14"
# The SDK always sends a language (its default is zh-CN). A request without one comes from a hand-written
# client, most likely a person reading the reply, so we answer in English.
DEFAULT_LANGUAGE = "en-US"
# Documented request size limits: GET 32 KB, v1-signed POST 1 MB (weakly attested), TC3 POST 10 MB.
MAX_GET_QUERY_BYTES = 32 * 1024
MAX_V1_BODY_BYTES = 1024 * 1024
MAX_TC3_BODY_BYTES = 10 * 1024 * 1024

# Common parameters of a v1 request; none of them is a business parameter. RequestClient is on the list
# because the SDK adds it to every v1 request although the docs do not mention it.
COMMON_PARAMS = frozenset(
    {
        "Action",
        "Version",
        "Region",
        "Timestamp",
        "Nonce",
        "SecretId",
        "Signature",
        "SignatureMethod",
        "Token",
        "Language",
        "RequestClient",
    }
)

Scheme = Literal["TC3-HMAC-SHA256", "HmacSHA1", "HmacSHA256"]

_SECRET_ID = re.compile(r"[A-Za-z0-9]{1,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,19}")
_LANGUAGE_PARAM = re.compile(r"(?:^|&)Language=([^&]*)")
_LANGUAGES = {"zh-cn": "zh-CN", "en-us": "en-US"}


@dataclass(frozen=True)
class RawRequest:
    """The request as received; nothing here is decoded or re-encoded."""

    method: str
    raw_query: str  # exactly as received: the TC3 signature covers these bytes
    headers: Mapping[str, str]  # names lower-cased
    body: bytes
    # the client's address (the peer's, or the one a trusted proxy forwards; "" when unknown): the signature
    # binding lets one client use one signature for several actions (docs/protocol.md#replay)
    client: str = ""


@dataclass(frozen=True)
class ParsedRequest:
    """A request whose shape is valid; its signature is not checked yet (see :func:`verify_signature`)."""

    action: str
    version: str
    language: str  # "zh-CN" or "en-US"
    region: str | None  # accepted and ignored: iotcloud 2018-06-14 actions take no region
    timestamp: int
    secret_id: str
    scheme: Scheme
    params: dict[str, Any]  # business parameters only; nested (JSON) or unflattened (GET/form)
    from_strings: bool  # True when every leaf of params is a string (GET/form)
    signature: str  # TC3: lower-case hex; v1: Base64 as received
    tc3: Tc3Authorization | None = None  # set for TC3
    signed_pairs: tuple[tuple[str, str], ...] = ()  # v1: every parameter but Signature, decoded
    nonce: int | None = None  # v1 only
    token: str | None = None
    request_client: str | None = None


def detect_language(raw: RawRequest) -> str:
    """``zh-CN`` or ``en-US`` from ``X-TC-Language`` or the ``Language`` parameter; never raises.

    Used to word errors raised before (or while) the request is parsed. Absent or unknown values give
    :data:`DEFAULT_LANGUAGE`.
    """
    header = raw.headers.get("x-tc-language")
    if header:
        return _language(header)
    if "authorization" in raw.headers:
        return DEFAULT_LANGUAGE  # TC3 carries the language in the header only; a query Language is business
    if raw.method == "GET":
        text = raw.raw_query
    elif _media_type(raw) == "application/x-www-form-urlencoded":
        text = raw.body[:MAX_V1_BODY_BYTES].decode("utf-8", errors="replace")
    else:
        return DEFAULT_LANGUAGE
    match = _LANGUAGE_PARAM.search(text)
    return _language(unquote_plus(match.group(1))) if match else DEFAULT_LANGUAGE


def parse_request(raw: RawRequest) -> ParsedRequest:
    """Read the common parameters, the credentials and the business parameters; raise ``ApiError``."""
    if raw.method not in ("GET", "POST"):
        raise UnsupportedProtocol(
            f"The HTTP method `{cut(raw.method)}` is not supported; use GET or POST.",
            message_zh=f"不支持 HTTP 方法 `{cut(raw.method)}`，请使用 GET 或 POST。",
        )
    authorization = raw.headers.get("authorization")
    _check_size(raw, tc3=authorization is not None)
    if authorization is not None:
        return _parse_tc3(raw, authorization)
    return _parse_v1(raw)


# --- TC3 ---------------------------------------------------------------------------------------------------


def _parse_tc3(raw: RawRequest, authorization: str) -> ParsedRequest:
    auth = parse_authorization(authorization)
    headers = raw.headers
    action = _required(headers.get("x-tc-action"), "X-TC-Action")
    version = _version(_required(headers.get("x-tc-version"), "X-TC-Version"))
    timestamp = _whole_number(_required(headers.get("x-tc-timestamp"), "X-TC-Timestamp"), "X-TC-Timestamp")
    _check_secret_id(auth.secret_id)
    for name in auth.signed_headers:
        if name not in headers:
            raise InvalidAuthorization(
                f"The Authorization header is malformed: SignedHeaders names `{name}`, which the request "
                "does not carry.",
                message_zh=f"Authorization 头部格式错误：SignedHeaders 包含 `{name}`，但请求中没有该头部。",
            )
    if raw.method == "GET":
        params, from_strings = unflatten(_form_pairs(raw.raw_query)), True
    else:
        params, from_strings = _post_params(raw)
    return ParsedRequest(
        action=action,
        version=version,
        language=_language(headers.get("x-tc-language", "")),
        region=headers.get("x-tc-region") or None,
        timestamp=timestamp,
        secret_id=auth.secret_id,
        scheme=TC3_ALGORITHM,
        params=params,
        from_strings=from_strings,
        signature=auth.signature,
        tc3=auth,
        token=headers.get("x-tc-token") or None,
        request_client=headers.get("x-tc-requestclient") or None,
    )


# --- clock and signature -----------------------------------------------------------------------------------


def check_timestamp(parsed: ParsedRequest, now: int, *, skew_s: int = MAX_CLOCK_SKEW_S) -> None:
    """Raise ``AuthFailure.SignatureExpire`` when the request time is over ``skew_s`` seconds from ``now``.

    The docs allow five minutes (300 s); the window is symmetric, so a client clock running fast fails the
    same way as a slow one.
    """
    off_s = abs(now - parsed.timestamp)
    if off_s > skew_s:
        raise SignatureExpire(
            f"The request timestamp {parsed.timestamp} differs from the server time {now} "
            f"by {off_s} seconds; "
            f"at most {skew_s} seconds are allowed. Check the client's clock and sign the request again.",
            message_zh=f"签名过期：请求时间戳 {parsed.timestamp} 与服务器时间 {now} 相差 {off_s} 秒，"
            f"最多允许 {skew_s} 秒。请校准客户端时钟后重新签名。",
        )


def verify_signature(
    parsed: ParsedRequest,
    raw: RawRequest,
    secret_key: str,
    *,
    now: int,
    skew_s: int = MAX_CLOCK_SKEW_S,
    service: str = SERVICE,
) -> None:
    """Raise ``SignatureExpire`` or ``SignatureFailure`` unless ``raw`` was signed with ``secret_key``.

    Repeats :func:`check_timestamp` (pass the same ``skew_s``) so that a caller that skipped it is still
    safe: a signature alone never makes a stale request valid.
    """
    check_timestamp(parsed, now, skew_s=skew_s)
    if parsed.tc3 is not None:
        verify_tc3(
            parsed.tc3,
            secret_key,
            method=raw.method,
            raw_query=raw.raw_query,
            headers=raw.headers,
            body=raw.body,
            timestamp=parsed.timestamp,
            service=service,
        )
        return
    verify_v1(
        secret_key,
        method=raw.method,
        host=raw.headers.get("host", ""),
        signed_pairs=parsed.signed_pairs,
        signature=parsed.signature,
        scheme="HmacSHA256" if parsed.scheme == "HmacSHA256" else "HmacSHA1",
    )


# --- v1 ----------------------------------------------------------------------------------------------------


def _parse_v1(raw: RawRequest) -> ParsedRequest:
    if raw.method == "GET":
        pairs = _form_pairs(raw.raw_query)
    else:
        pairs = _form_pairs(_post_form_text(raw))
    common: dict[str, str] = {}
    business: list[tuple[str, str]] = []
    for name, value in pairs:
        if name in COMMON_PARAMS:
            if name in common:
                raise InvalidParameter(
                    f"The parameter `{name}` is given more than once.",
                    message_zh=f"参数 `{name}` 重复出现。",
                )
            common[name] = value
        else:
            business.append((name, value))
    action = _required(common.get("Action"), "Action")
    version = _version(_required(common.get("Version"), "Version"))
    timestamp = _whole_number(_required(common.get("Timestamp"), "Timestamp"), "Timestamp")
    secret_id = _required(common.get("SecretId"), "SecretId")
    _check_secret_id(secret_id)
    signature = _required(common.get("Signature"), "Signature")
    nonce = _whole_number(_required(common.get("Nonce"), "Nonce"), "Nonce", what="a positive integer")
    params = unflatten(business)  # also refuses a business name given twice
    # Vendor rule (docs and SDK): HmacSHA256 only when asked for by name; anything else, or none, is HmacSHA1.
    scheme: Scheme = "HmacSHA256" if common.get("SignatureMethod") == "HmacSHA256" else "HmacSHA1"
    return ParsedRequest(
        action=action,
        version=version,
        language=_language(raw.headers.get("x-tc-language") or common.get("Language", "")),
        region=common.get("Region") or None,
        timestamp=timestamp,
        secret_id=secret_id,
        scheme=scheme,
        params=params,
        from_strings=True,
        signature=signature,
        signed_pairs=tuple((k, v) for k, v in pairs if k != "Signature"),
        nonce=nonce,
        token=common.get("Token") or None,
        request_client=common.get("RequestClient") or None,
    )


def _post_form_text(raw: RawRequest) -> str:
    media_type = _media_type(raw)
    if media_type == "application/json":
        # v1 signs flat key=value pairs, which a JSON body does not have; the SDK only sends JSON with TC3.
        raise InvalidAuthorization(
            "A request with a JSON body must be signed with TC3-HMAC-SHA256 (an Authorization header); "
            "HmacSHA1/HmacSHA256 requests are sent as GET or as an application/x-www-form-urlencoded POST.",
            message_zh="JSON 请求体必须使用 TC3-HMAC-SHA256 签名（Authorization 头部）；"
            "HmacSHA1/HmacSHA256 请求请使用 GET 或 application/x-www-form-urlencoded 表单 POST。",
        )
    if media_type != "application/x-www-form-urlencoded":
        raise _unsupported_content_type(media_type)
    return _utf8(raw.body)


# --- shared helpers ----------------------------------------------------------------------------------------


def _post_params(raw: RawRequest) -> tuple[dict[str, Any], bool]:
    media_type = _media_type(raw)
    if media_type == "application/x-www-form-urlencoded":
        return unflatten(_form_pairs(_utf8(raw.body))), True
    if media_type != "application/json":
        raise _unsupported_content_type(media_type)
    if not raw.body.strip():
        return {}, False  # lenient: an action without parameters may be sent with an empty body
    try:
        document = orjson.loads(raw.body)
    except orjson.JSONDecodeError as exc:
        raise InvalidParameter(
            f'The request body is not valid JSON ({exc}); send a JSON object such as {{"Offset": 0}}.',
            message_zh=f'请求体不是合法的 JSON（{exc}），请发送 JSON 对象，例如 {{"Offset": 0}}。',
        ) from exc
    if not isinstance(document, dict):
        raise InvalidParameter(
            'The request body must be a JSON object holding the parameters, e.g. {"Offset": 0}.',
            message_zh='请求体必须是包含参数的 JSON 对象，例如 {"Offset": 0}。',
        )
    return document, False


def _form_pairs(text: str) -> list[tuple[str, str]]:
    try:
        # keep_blank_values: "Name=" is an empty string, which a String parameter may legitimately be.
        return parse_qsl(text, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidParameter(
            "A parameter is not valid UTF-8 once URL-decoded; percent-encode the UTF-8 bytes of each value.",
            message_zh="参数在 URL 解码后不是合法的 UTF-8，请对每个值的 UTF-8 字节进行百分号编码。",
        ) from exc


def _utf8(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidParameter("The request body is not valid UTF-8.", message_zh="请求体不是合法的 UTF-8。") from exc


def _media_type(raw: RawRequest) -> str:
    # "application/json; charset=utf-8" is what several non-SDK clients send; the parameters after ";" do
    # not change how we read the body (always UTF-8).
    return raw.headers.get("content-type", "").partition(";")[0].strip().lower()


def _check_size(raw: RawRequest, *, tc3: bool) -> None:
    if raw.method == "GET":
        size, limit = len(raw.raw_query.encode("utf-8")), MAX_GET_QUERY_BYTES
    else:
        size, limit = len(raw.body), MAX_TC3_BODY_BYTES if tc3 else MAX_V1_BODY_BYTES
    if size > limit:
        raise RequestSizeLimitExceeded(
            f"The request is {size} bytes; at most {limit} bytes are accepted for this kind of request "
            "(GET 32 KB, HmacSHA1/HmacSHA256 POST 1 MB, TC3-HMAC-SHA256 POST 10 MB).",
            message_zh=f"请求大小为 {size} 字节，超过上限 {limit} 字节。",
        )


def _required(value: str | None, name: str) -> str:
    if not value:
        raise MissingParameter(
            f"The request is missing a required parameter `{name}`.",
            message_zh=f"缺少必需参数 `{name}`。",
        )
    return value


def _version(value: str) -> str:
    if value != API_VERSION:
        raise NoSuchVersion(
            f"The API version `{cut(value)}` does not exist; this service implements iotcloud version {API_VERSION}.",
            message_zh=f"API 版本 `{cut(value)}` 不存在；本服务实现的是 iotcloud {API_VERSION} 版本。",
        )
    return value


def _whole_number(value: str, name: str, *, what: str = "a Unix time in whole seconds") -> int:
    if not _TIMESTAMP.fullmatch(value):
        raise InvalidParameter(
            f"The parameter `{name}` must be {what}, got `{cut(value)}`.",
            message_zh=f"参数 `{name}` 应为非负整数，实际为 `{cut(value)}`。",
        )
    return int(value)


def _check_secret_id(secret_id: str) -> None:
    if not _SECRET_ID.fullmatch(secret_id):
        raise InvalidSecretId(
            "The SecretId is not a valid key id: it must be 1 to 128 letters and digits.",
            message_zh="SecretId 格式不正确：应为 1 到 128 个字母或数字。",
        )


def _language(value: str) -> str:
    return _LANGUAGES.get(value.strip().lower(), DEFAULT_LANGUAGE)


def _unsupported_content_type(media_type: str) -> InvalidRequest:
    shown = cut(media_type) or "(none)"
    return InvalidRequest(
        f"The Content-Type `{shown}` is not supported; send application/json or application/x-www-form-urlencoded.",
        message_zh=f"不支持 Content-Type `{shown}`，请使用 application/json 或 application/x-www-form-urlencoded。",
    )

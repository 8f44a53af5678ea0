"""Parsing raw requests: shapes, common parameters, Authorization headers, and the errors for each mistake."""

from __future__ import annotations

import dataclasses
import json

import pytest

from fleetops.api.request import (
    API_VERSION,
    DEFAULT_LANGUAGE,
    MAX_GET_QUERY_BYTES,
    MAX_TC3_BODY_BYTES,
    MAX_V1_BODY_BYTES,
    RawRequest,
    check_timestamp,
    detect_language,
    parse_request,
)
from fleetops.api.signing import Tc3Authorization, parse_authorization
from fleetops.errors import (
    ApiError,
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

SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
SIGNATURE = "cbb8ef2a30ef4d8d77ff80badf995ff7e202e56495a01afe8be099f0fed1bbfe"
AUTHORIZATION = (
    f"TC3-HMAC-SHA256 Credential={SECRET_ID}/2023-11-14/iotcloud/tc3_request, "
    f"SignedHeaders=content-type;host, Signature={SIGNATURE}"
)
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"


def tc3(
    method: str = "POST",
    body: bytes = b'{"Offset": 0, "Limit": 10}',
    query: str = "",
    content_type: str = JSON,
    **headers: str,
) -> RawRequest:
    base = {
        "host": "127.0.0.1:8080",
        "content-type": content_type,
        "x-tc-action": "DescribeProducts",
        "x-tc-version": "2018-06-14",
        "x-tc-timestamp": "1700000000",
        "authorization": AUTHORIZATION,
    }
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return RawRequest(method, query, {k: v for k, v in base.items() if v != "<absent>"}, body)


V1_COMMON = {
    "Action": "DescribeProducts",
    "Version": "2018-06-14",
    "Timestamp": "1700000000",
    "Nonce": "11886",
    "SecretId": SECRET_ID,
    "Signature": "EliP9YW3pW28FpsEdkXt/+WcGeI=",
}


def v1_query(**params: str) -> str:
    from urllib.parse import urlencode

    merged = {**V1_COMMON, **params}
    return urlencode({k: v for k, v in merged.items() if v != "<absent>"})


def v1_get(**params: str) -> RawRequest:
    return RawRequest("GET", v1_query(**params), {"host": "127.0.0.1:8080", "content-type": FORM}, b"")


def v1_post(content_type: str = FORM, **params: str) -> RawRequest:
    return RawRequest("POST", "", {"host": "127.0.0.1:8080", "content-type": content_type}, v1_query(**params).encode())


def error_of(raw: RawRequest) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_request(raw)
    return info.value


# --- shapes ------------------------------------------------------------------------------------------------


def test_tc3_json_post() -> None:
    parsed = parse_request(
        tc3(x_tc_region="ap-guangzhou", x_tc_language="zh-CN", x_tc_token="tok", x_tc_requestclient="SDK_X")
    )
    assert parsed.action == "DescribeProducts"
    assert parsed.version == API_VERSION
    assert parsed.timestamp == 1700000000
    assert parsed.secret_id == SECRET_ID
    assert parsed.scheme == "TC3-HMAC-SHA256"
    assert parsed.params == {"Offset": 0, "Limit": 10}
    assert parsed.from_strings is False
    assert parsed.language == "zh-CN"
    assert parsed.region == "ap-guangzhou"
    assert parsed.token == "tok"
    assert parsed.request_client == "SDK_X"
    assert parsed.nonce is None
    assert parsed.tc3 == Tc3Authorization(SECRET_ID, "2023-11-14", "iotcloud", ("content-type", "host"), SIGNATURE)


def test_tc3_without_region_or_language() -> None:
    parsed = parse_request(tc3())
    assert parsed.region is None
    assert parsed.token is None
    assert parsed.language == DEFAULT_LANGUAGE == "en-US"


def test_json_content_type_with_charset() -> None:
    assert parse_request(tc3(content_type="application/json; charset=utf-8")).params == {
        "Offset": 0,
        "Limit": 10,
    }


def test_tc3_get_takes_params_from_the_query_only() -> None:
    parsed = parse_request(
        tc3(
            method="GET",
            query="Offset=0&DeviceNames.0=aaa&DeviceNames.1=bbb",
            content_type=FORM,
            body=b"junk",
        )
    )
    assert parsed.params == {"Offset": "0", "DeviceNames": ["aaa", "bbb"]}
    assert parsed.from_strings is True


def test_tc3_form_post() -> None:
    parsed = parse_request(tc3(body=b"Attribute.Tags.0.Tag=note&Attribute.Tags.0.Type=2", content_type=FORM))
    assert parsed.params == {"Attribute": {"Tags": [{"Tag": "note", "Type": "2"}]}}
    assert parsed.from_strings is True
    assert parsed.scheme == "TC3-HMAC-SHA256"


def test_post_ignores_the_query_string() -> None:
    assert parse_request(tc3(query="Colour=red")).params == {"Offset": 0, "Limit": 10}
    assert parse_request(dataclasses.replace(v1_post(Limit="10"), raw_query="Colour=red")).params == {"Limit": "10"}


def test_empty_json_body_means_no_parameters() -> None:
    assert parse_request(tc3(body=b"")).params == {}
    assert parse_request(tc3(body=b"{}")).params == {}


def test_v1_get_separates_common_and_business_parameters() -> None:
    parsed = parse_request(
        v1_get(
            Offset="0",
            Region="ap-guangzhou",
            Language="zh-CN",
            RequestClient="SDK_PYTHON_3.0.1459",
            Token="tok",
            SignatureMethod="HmacSHA256",
        )
    )
    assert parsed.params == {"Offset": "0"}  # RequestClient & co. must not become UnknownParameter
    assert parsed.from_strings is True
    assert parsed.scheme == "HmacSHA256"
    assert parsed.nonce == 11886
    assert parsed.region == "ap-guangzhou"
    assert parsed.language == "zh-CN"
    assert parsed.token == "tok"
    assert parsed.request_client == "SDK_PYTHON_3.0.1459"
    assert parsed.signature == "EliP9YW3pW28FpsEdkXt/+WcGeI="
    assert parsed.tc3 is None
    signed_names = [name for name, _ in parsed.signed_pairs]
    assert "Signature" not in signed_names and {"Offset", "Nonce", "RequestClient"} <= set(signed_names)


def test_v1_form_post() -> None:
    parsed = parse_request(v1_post(**{"ProductProperties.ProductDescription": "seed style"}))
    assert parsed.params == {"ProductProperties": {"ProductDescription": "seed style"}}


@pytest.mark.parametrize(
    ("method", "expected"),
    [("HmacSHA256", "HmacSHA256"), ("HmacSHA1", "HmacSHA1"), ("hmacsha256", "HmacSHA1")],
)
def test_v1_signature_method(method: str, expected: str) -> None:
    # Vendor rule: anything but exactly "HmacSHA256" means HmacSHA1.
    assert parse_request(v1_get(SignatureMethod=method)).scheme == expected


def test_v1_without_signature_method_is_hmac_sha1() -> None:
    assert parse_request(v1_get()).scheme == "HmacSHA1"


# --- the method, the size, the body ------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["PUT", "DELETE", "HEAD", "get"])
def test_only_get_and_post(method: str) -> None:
    error = error_of(dataclasses.replace(tc3(), method=method))
    assert isinstance(error, UnsupportedProtocol)
    assert f"`{method}`" in error.message and "GET or POST" in error.message


def test_get_query_size_limit() -> None:
    filler = "a" * (MAX_GET_QUERY_BYTES - len("Colour="))
    parse_request(tc3(method="GET", query="Colour=" + filler, content_type=FORM, body=b""))
    error = error_of(tc3(method="GET", query="Colour=" + filler + "a", content_type=FORM, body=b""))
    assert isinstance(error, RequestSizeLimitExceeded)


def test_v1_post_is_limited_to_1_mb_and_tc3_to_10_mb() -> None:
    big_form = v1_post(Name="a" * MAX_V1_BODY_BYTES)
    assert isinstance(error_of(big_form), RequestSizeLimitExceeded)
    two_mb = json.dumps({"Name": "a" * (2 * 1024 * 1024)}).encode()
    assert parse_request(tc3(body=two_mb)).params["Name"] == "a" * (2 * 1024 * 1024)
    error = error_of(tc3(body=b" " * (MAX_TC3_BODY_BYTES + 1)))
    assert isinstance(error, RequestSizeLimitExceeded)
    assert str(MAX_TC3_BODY_BYTES) in error.message


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"Offset": 0,', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"Offset": NaN}', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"Offset"', "must be a JSON object"),
    ],
)
def test_bad_json_body(body: bytes, fragment: str) -> None:
    error = error_of(tc3(body=body))
    assert type(error) is InvalidParameter
    assert fragment in error.message
    assert "JSON" in error.localized("zh-CN") and error.localized("zh-CN") != error.message


@pytest.mark.parametrize(
    ("content_type", "shown"),
    [
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("text/plain", "text/plain"),
        ("", "(none)"),
    ],
)
def test_unsupported_content_type(content_type: str, shown: str) -> None:
    error = error_of(tc3(content_type=content_type))
    assert isinstance(error, InvalidRequest)
    assert f"`{shown}`" in error.message and "application/json" in error.message


def test_v1_with_a_json_body_is_an_authorization_error() -> None:
    raw = RawRequest("POST", "", {"host": "h", "content-type": JSON}, b'{"Action": "DescribeProducts"}')
    error = error_of(raw)
    assert isinstance(error, InvalidAuthorization)
    assert "TC3-HMAC-SHA256" in error.message


def test_form_body_that_is_not_utf8() -> None:
    assert isinstance(error_of(tc3(body=b"Name=\xff", content_type=FORM)), InvalidParameter)
    assert isinstance(error_of(tc3(method="GET", query="Name=%FF", content_type=FORM)), InvalidParameter)


def test_flattening_errors_surface_from_parse() -> None:
    error = error_of(tc3(method="GET", query="DeviceNames.0=a&DeviceNames.2=c", content_type=FORM))
    assert isinstance(error, InvalidParameter)
    assert "`DeviceNames.1` is missing" in error.message


# --- common parameters -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        (tc3(x_tc_action="<absent>"), "X-TC-Action"),
        (tc3(x_tc_version="<absent>"), "X-TC-Version"),
        (tc3(x_tc_timestamp="<absent>"), "X-TC-Timestamp"),
    ],
)
def test_tc3_missing_common_header(raw: RawRequest, name: str) -> None:
    error = error_of(raw)
    assert isinstance(error, MissingParameter)
    assert error.message == f"The request is missing a required parameter `{name}`."


@pytest.mark.parametrize("name", ["Action", "Version", "Timestamp", "Nonce", "SecretId", "Signature"])
def test_v1_missing_common_parameter(name: str) -> None:
    error = error_of(v1_get(**{name: "<absent>"}))
    assert isinstance(error, MissingParameter)
    assert error.message == f"The request is missing a required parameter `{name}`."
    assert error.localized("zh-CN") == f"缺少必需参数 `{name}`。"


def test_empty_action_is_missing() -> None:
    assert isinstance(error_of(tc3(x_tc_action="")), MissingParameter)


@pytest.mark.parametrize("value", ["abc", "1.5", "-5", " 1700000000", "1" * 20])
def test_timestamp_must_be_whole_seconds(value: str) -> None:
    error = error_of(tc3(x_tc_timestamp=value))
    assert isinstance(error, InvalidParameter)
    assert "`X-TC-Timestamp`" in error.message and "Unix time" in error.message
    assert isinstance(error_of(v1_get(Timestamp=value)), InvalidParameter)


def test_nonce_must_be_an_integer() -> None:
    error = error_of(v1_get(Nonce="abc"))
    assert isinstance(error, InvalidParameter) and "`Nonce`" in error.message


@pytest.mark.parametrize("raw", [tc3(x_tc_version="2021-04-08"), v1_get(Version="2021-04-08")])
def test_wrong_version(raw: RawRequest) -> None:
    error = error_of(raw)
    assert isinstance(error, NoSuchVersion)
    assert "`2021-04-08`" in error.message and "2018-06-14" in error.message
    assert "2018-06-14" in error.localized("zh-CN")


def test_common_parameter_given_twice_in_v1() -> None:
    raw = dataclasses.replace(v1_get(), raw_query=v1_get().raw_query + "&Action=DeleteProduct")
    error = error_of(raw)
    assert isinstance(error, InvalidParameter) and "`Action`" in error.message


@pytest.mark.parametrize("secret_id", ["AKID-123", "AKID 123", "AKID/123", "x" * 129, "密钥"])
def test_malformed_secret_id_v1(secret_id: str) -> None:
    assert isinstance(error_of(v1_get(SecretId=secret_id)), InvalidSecretId)


@pytest.mark.parametrize("secret_id", ["", "AKID-123", "AKID.123"])
def test_malformed_secret_id_tc3(secret_id: str) -> None:
    authorization = AUTHORIZATION.replace(SECRET_ID, secret_id)
    error = error_of(tc3(authorization=authorization))
    assert isinstance(error, InvalidSecretId)
    assert "letters and digits" in error.message


# --- Authorization header ----------------------------------------------------------------------------------


def test_authorization_tolerates_spaces() -> None:
    spaced = (
        f"TC3-HMAC-SHA256  Credential = {SECRET_ID}/2023-11-14/iotcloud/tc3_request ,SignedHeaders= "
        f"content-type;host,  Signature ={SIGNATURE.upper()} "
    )
    assert parse_authorization(spaced) == parse_authorization(AUTHORIZATION)


def test_authorization_with_more_signed_headers() -> None:
    auth = parse_authorization(AUTHORIZATION.replace("content-type;host", "content-type;host;x-tc-action"))
    assert auth.signed_headers == ("content-type", "host", "x-tc-action")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("", "must start with `TC3-HMAC-SHA256`"),
        (AUTHORIZATION.replace("TC3-HMAC-SHA256", "HMAC-SHA256"), "got `HMAC-SHA256`"),
        ("TC3-HMAC-SHA256 garbage", "unexpected part `garbage`"),
        (AUTHORIZATION.replace(", Signature=", ", Nonce=1, Signature="), "unexpected part `Nonce=1`"),
        (AUTHORIZATION + ", Signature=" + SIGNATURE, "each once"),
        (AUTHORIZATION.split(", Signature=")[0], "`Signature` is missing"),
        (AUTHORIZATION.replace("/tc3_request", "/tc4_request"), "Credential must read"),
        (AUTHORIZATION.replace("/iotcloud", ""), "Credential must read"),
        (AUTHORIZATION.replace("content-type;host", "content-type"), "must include `host`"),
        (AUTHORIZATION.replace("content-type;host", "host"), "must include `content-type`"),
        (AUTHORIZATION.replace("content-type;host", "Content-Type;Host"), "lower-case header names"),
        (AUTHORIZATION.replace("content-type;host", "content-type; host"), "lower-case header names"),
        (AUTHORIZATION.replace(SIGNATURE, SIGNATURE[:-1]), "64 hexadecimal digits"),
        (AUTHORIZATION.replace(SIGNATURE, "z" * 64), "64 hexadecimal digits"),
    ],
)
def test_malformed_authorization(header: str, fragment: str) -> None:
    error = error_of(tc3(authorization=header))
    assert isinstance(error, InvalidAuthorization)
    assert error.message.startswith("The Authorization header is malformed: ")
    assert fragment in error.message
    assert error.localized("zh-CN").startswith("Authorization 头部格式错误")


def test_signed_header_absent_from_the_request() -> None:
    header = AUTHORIZATION.replace("content-type;host", "content-type;host;x-tc-nonce")
    error = error_of(tc3(authorization=header))
    assert isinstance(error, InvalidAuthorization) and "`x-tc-nonce`" in error.message


def test_authorization_is_checked_before_common_parameters() -> None:
    # The order of docs/protocol.md#verification: the Authorization format first, then Action/Version/Timestamp.
    assert isinstance(error_of(tc3(authorization="Bearer x", x_tc_action="<absent>")), InvalidAuthorization)


# --- language ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (tc3(x_tc_language="zh-CN"), "zh-CN"),
        (tc3(x_tc_language="en-US"), "en-US"),
        (tc3(x_tc_language="zh-cn"), "zh-CN"),
        (tc3(x_tc_language="fr-FR"), "en-US"),
        (tc3(), "en-US"),
        (v1_get(Language="zh-CN"), "zh-CN"),
        (v1_post(Language="zh-CN"), "zh-CN"),
        (v1_get(), "en-US"),
        (RawRequest("PUT", "Language=zh-CN", {}, b""), "en-US"),
        (RawRequest("GET", "%ff%fe&Language=zh-CN&\x00", {}, b""), "zh-CN"),
        (RawRequest("POST", "", {"content-type": FORM}, b"\xff\xfe&Language=zh-CN"), "zh-CN"),
        (RawRequest("GET", "XLanguage=zh-CN", {}, b""), "en-US"),
        (tc3(method="GET", query="Language=zh-CN", content_type=FORM), "en-US"),  # TC3: header only
    ],
)
def test_detect_language(raw: RawRequest, expected: str) -> None:
    assert detect_language(raw) == expected


def test_detect_language_works_on_requests_that_do_not_parse() -> None:
    raw = RawRequest("POST", "", {"content-type": JSON, "x-tc-language": "zh-CN"}, b"not json")
    assert detect_language(raw) == "zh-CN"
    with pytest.raises(ApiError):
        parse_request(raw)


def test_parsed_language_matches_detect_language() -> None:
    tc3_get = tc3(method="GET", query="Language=zh-CN", content_type=FORM)
    for raw in (tc3(x_tc_language="zh-CN"), v1_get(Language="zh-CN"), tc3(), v1_get(), tc3_get):
        assert parse_request(raw).language == detect_language(raw)


# --- clock skew (check_timestamp lives with the parser; its window can be configured) ----------------------


def test_check_timestamp_with_a_configured_window() -> None:
    parsed = parse_request(tc3())
    check_timestamp(parsed, 1700000000 + 600, skew_s=600)
    with pytest.raises(SignatureExpire):
        check_timestamp(parsed, 1700000000 + 601, skew_s=600)
    with pytest.raises(SignatureExpire):
        check_timestamp(parsed, 1700000000 - 301)

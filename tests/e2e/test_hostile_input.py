"""Issue: no InternalError for any client input. The reproducers of the hostile-client probe, through the official
SDK and raw HTTP, on SQLite and PostgreSQL: each gets a documented error code naming the parameter, and nothing
is written."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from tests.raw_client import error_code, response_json, tc3_post, v1_params
from tests.support import LiveServer, new_product, sdk_client, sdk_error, server_on

INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with server_on(request.param, tmp_path_factory.mktemp("hostile-input")) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


@pytest.fixture(scope="module")
def product(client: Any) -> str:
    """A product with one device, d1."""
    product_id = new_product(client)
    client.call_json("CreateDevice", {"ProductId": product_id, "DeviceName": "d1"})
    return product_id


# --- 64-bit integers -------------------------------------------------------------------------------------


def _paged(action: str, product_id: str, offset: int) -> dict[str, Any]:
    params: dict[str, Any] = {"Offset": offset, "Limit": 10}
    if action == "DescribeDevices":
        params["ProductId"] = product_id
    return params


@pytest.mark.parametrize("action", ["DescribeProducts", "DescribeDevices", "DescribeTasks"])
@pytest.mark.parametrize("mode", ["TC3-POST", "TC3-GET", "HmacSHA256"])
def test_an_offset_past_int64_is_a_value_error_naming_offset(
    server: LiveServer, product: str, action: str, mode: str
) -> None:
    sdk = sdk_client(server, mode)
    for offset in (INT64_MAX + 1, UINT64_MAX):
        code, message = sdk_error(lambda o=offset: sdk.call_json(action, _paged(action, product, o)))
        assert code == "InvalidParameterValue"
        assert message == f"The parameter `Offset` must be between 0 and {INT64_MAX}, got `{offset}`."
    # the largest offset the store holds is a valid (empty) page, not a database error
    page = sdk.call_json(action, _paged(action, product, INT64_MAX))["Response"]
    assert page["TotalCount"] >= 0 and not any(isinstance(v, list) and v for v in page.values())


def test_a_get_offset_past_uint64_is_not_an_integer(server: LiveServer) -> None:
    """GET `Offset=18446744073709551615` is a value the vendor's type holds but the store does not; one more is
    no Integer at all."""

    def get(offset: str) -> dict[str, Any]:
        signed = v1_params(
            host=server.endpoint,
            secret_id=server.secret_id,
            secret_key=server.secret_key,
            action="DescribeProducts",
            params={"Offset": offset, "Limit": "10"},
        )
        return response_json(requests.get(server.url + "?" + urllib.parse.urlencode(signed), timeout=10))

    resp = get(str(UINT64_MAX))
    assert error_code(resp) == "InvalidParameterValue"
    assert f"`Offset` must be between 0 and {INT64_MAX}" in resp["Error"]["Message"]
    for offset in (str(UINT64_MAX + 1), "9" * 400):
        resp = get(offset)
        assert error_code(resp) == "InvalidParameter"
        assert resp["Error"]["Message"].startswith(f"The parameter `Offset` must be an Integer from 0 to {INT64_MAX}")


# --- NUL characters ----------------------------------------------------------------------------------------


def _nul_calls(product: str) -> list[tuple[str, dict[str, Any], str]]:
    """(action, parameters, the parameter the error names) of every reproducer: a NUL in a String."""
    task = {"Desired": json.dumps({"a": 1})}
    return [
        ("DescribeProduct", {"ProductId": "\x00"}, "ProductId"),
        ("DescribeTask", {"Id": "\x00"}, "Id"),
        ("CreateProduct", {"ProductName": "p\x00"}, "ProductName"),
        (
            "CreateProduct",
            {"ProductName": "nul-desc", "ProductProperties": {"ProductDescription": "lamps\x00"}},
            "ProductProperties.ProductDescription",
        ),
        ("DescribeDevices", {"ProductId": product, "Offset": 0, "Limit": 10, "DeviceName": "\x00"}, "DeviceName"),
        ("CreateDevice", {"ProductId": product, "DeviceName": "d2", "DefinedPsk": "\x00"}, "DefinedPsk"),
        (
            "CreateDevice",
            {
                "ProductId": product,
                "DeviceName": "d3",
                "Attribute": {"Tags": [{"Tag": "t", "Type": 2, "Value": "\x00"}]},
            },
            "Attribute.Tags.0.Value",
        ),
        (
            "CreateTask",
            {
                "TaskType": "UpdateShadow",
                "ProductId": product,
                "DeviceNameFilter": "d\x00",
                "ScheduleTimeInSeconds": 0,
                "Tasks": {"UpdateShadowTask": task},
            },
            "DeviceNameFilter",
        ),
        (
            "PublishMessage",
            {"ProductId": product, "DeviceName": "d1", "Topic": f"{product}/d1/data\x00", "Payload": "x"},
            "Topic",
        ),
        (
            "PublishMessage",
            {"ProductId": product, "DeviceName": "d1", "Topic": f"{product}/d1/data", "Payload": "\x00"},
            "Payload",
        ),
    ]


def test_a_nul_in_any_string_parameter_is_a_value_error_naming_it(
    server: LiveServer, client: Any, product: str
) -> None:
    for action, params, name in _nul_calls(product):
        code, message = sdk_error(lambda a=action, p=params: client.call_json(a, p))  # type: ignore[misc]
        assert (code, message.split(" must ")[0]) == ("InvalidParameterValue", f"The parameter `{name}`"), action
        assert "NUL character (U+0000)" in message
        # the same request as raw JSON (the SDK escapes NUL as \u0000 too)
        raw = tc3_post(server.url, server.endpoint, server.secret_id, server.secret_key, action, params)
        assert error_code(raw) == "InvalidParameterValue"
    # nothing was written
    names = [
        p["ProductName"]
        for p in client.call_json("DescribeProducts", {"Offset": 0, "Limit": 250})["Response"]["Products"]
    ]
    assert "nul-desc" not in names
    devices = client.call_json("DescribeDevices", {"ProductId": product, "Offset": 0, "Limit": 10})["Response"]
    assert [d["DeviceName"] for d in devices["Devices"]] == ["d1"]
    assert client.call_json("DescribeTasks", {"Offset": 0, "Limit": 10})["Response"]["TotalCount"] == 0


def _shadow_version(client: Any, product: str) -> int:
    doc = client.call_json("DescribeDeviceShadow", {"ProductId": product, "DeviceName": "d1"})["Response"]["Data"]
    return int(json.loads(doc)["payload"]["version"])


@pytest.mark.parametrize("desired", [{"a": "x\x00"}, {"a\x00": 1}, {"a": {"b": ["\x00"]}}])
def test_a_nul_inside_a_json_document_is_its_invalid_json_error(client: Any, product: str, desired: Any) -> None:
    before = _shadow_version(client, product)
    code, message = sdk_error(
        lambda: client.call_json(
            "UpdateDeviceShadow",
            {"ProductId": product, "DeviceName": "d1", "State": json.dumps({"desired": desired}), "ShadowVersion": 0},
        )
    )
    assert code == "InvalidParameterValue.InvalidJSON"
    assert "NUL character (U+0000)" in message
    assert _shadow_version(client, product) == before
    # a batch task's Desired is checked at CreateTask (it would otherwise fail on every device, forever)
    code, message = sdk_error(
        lambda: client.call_json(
            "CreateTask",
            {
                "TaskType": "UpdateShadow",
                "ProductId": product,
                "DeviceNameFilter": "d",
                "ScheduleTimeInSeconds": 0,
                "Tasks": {"UpdateShadowTask": {"Desired": json.dumps(desired)}},
            },
        )
    )
    assert code == "InvalidParameterValue"
    assert message.startswith("Tasks.UpdateShadowTask.Desired: ") and "NUL" in message


# --- methods and broken bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "PROPFIND", "PUT", "DELETE", "PATCH", "OPTIONS", "MKCOL"])
def test_every_method_gets_the_json_envelope(server: LiveServer, method: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.settings.port, timeout=10)
    try:
        conn.request(method, "/", body=b"{}", headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert (resp.status, resp.getheader("content-type")) == (200, "application/json")
    assert body["Response"]["Error"]["Code"] == "UnsupportedProtocol"
    assert f"`{method}`" in body["Response"]["Error"]["Message"]


def test_head_gets_the_envelope_headers(server: LiveServer) -> None:
    resp = requests.head(server.url, timeout=10)
    assert (resp.status_code, resp.headers["content-type"]) == (200, "application/json")


def _await_log(caplog: pytest.LogCaptureFixture, found: Callable[[list[str]], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found([r.getMessage() for r in caplog.records]):
            return
        time.sleep(0.02)
    raise AssertionError("expected log line not seen: " + repr([r.getMessage() for r in caplog.records]))


def test_a_client_gone_mid_body_is_logged_as_its_disconnect_not_an_internal_error(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", server.settings.port)) as sock:
            sock.sendall(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: TC3-HMAC-SHA256 x\r\n"
                b'X-TC-Action: DescribeProducts\r\nContent-Length: 1000\r\n\r\n{"Offset": 0'
            )
        _await_log(caplog, lambda lines: any("outcome=ClientDisconnected" in ln for ln in lines))
    assert not any(r.exc_info for r in caplog.records)
    assert not any("InternalError" in r.getMessage() for r in caplog.records)

"""Signatures bound to what they sign (docs/protocol.md#replay), on SQLite and PostgreSQL: the ledger itself,
and the official SDK's captured requests re-sent to a live node with another action, version or region."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.backend.signatures import PRUNE_GRACE_S
from fleetops.ports.signatures import Binding
from fleetops.store.database import open_database
from fleetops.store.signatures import SqlSignatureLedger
from tests.sdk_capture import Capture, resend, sdk_capture
from tests.support import LiveServer, new_product, sdk_client, start_server

CLIENT, ATTACKER = "198.51.100.20", "203.0.113.7"  # documentation addresses, forwarded by the proxy
SHADOW_FIELDS = ("DescribeDeviceShadow", "2018-06-14", "ap-guangzhou")
SHADOW = Binding(*SHADOW_FIELDS)
DELETE = Binding("DeleteDevice", "2018-06-14", "ap-guangzhou")


@pytest.fixture
def live_server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    """A node with the TC3 binding on, as `fleetops serve` runs by default."""
    # behind a reverse proxy on 127.0.0.1, so that a test can send from two client addresses (X-Forwarded-For)
    server = start_server(tmp_path / "data", database_url, signature_binding=True, trusted_proxies="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def capture() -> Iterator[Capture]:
    with sdk_capture() as capture:
        yield capture


# --- the ledger ---------------------------------------------------------------------------------------------


async def test_first_binding_wins_and_is_told_to_later_ones(database_url: str) -> None:
    db = open_database(database_url)
    try:
        ledger = SqlSignatureLedger(db)
        assert await ledger.bind("tc3:a", SHADOW, 2_000) is None
        assert await ledger.bind("tc3:a", SHADOW, 2_000) == SHADOW
        assert await ledger.bind("tc3:a", DELETE, 2_000) == SHADOW
        assert await ledger.bind("tc3:b", DELETE, 2_000) is None
        assert await ledger.bind("tc3:d", Binding(*SHADOW_FIELDS, CLIENT), 2_000) is None
        first = await ledger.bind("tc3:d", Binding(*SHADOW_FIELDS, ATTACKER), 2_000)
        assert first is not None and first.client == CLIENT  # the first client's address, kept
        odd = Binding("DescribeDevice", "2018-06-14", "x" * 500 + "\x00")  # stored as its digest
        assert await ledger.bind("tc3:c", odd, 2_000) is None
        assert await ledger.bind("tc3:c", odd, 2_000) == odd
        assert await ledger.bind("tc3:c", Binding("DescribeDevice", "2018-06-14", "x" * 501), 2_000) != odd
    finally:
        await db.dispose()


async def test_expired_rows_are_pruned_in_bounded_deletes(database_url: str) -> None:
    db = open_database(database_url)
    try:
        ledger = SqlSignatureLedger(db)
        for index in range(5):
            await ledger.bind(f"tc3:old{index}", SHADOW, 1_000)
        await ledger.bind("tc3:live", SHADOW, 3_000)
        assert await ledger.prune(2_000, limit=3) == 3
        assert await ledger.prune(2_000, limit=3) == 2
        assert await ledger.prune(2_000, limit=3) == 0
        assert await ledger.bind("tc3:old0", DELETE, 3_000) is None  # forgotten: bound anew
        assert await ledger.bind("tc3:live", DELETE, 3_000) == SHADOW  # kept
    finally:
        await db.dispose()


# --- through a live node ------------------------------------------------------------------------------------


def _device(server: LiveServer) -> tuple[Any, str, str]:
    client = sdk_client(server)
    product_id = new_product(client)
    req = models.CreateDeviceRequest()
    req.ProductId, req.DeviceName = product_id, "lamp"
    client.CreateDevice(req)
    return client, product_id, "lamp"


def _device_exists(client: Any, product_id: str, name: str) -> bool:
    req = models.DescribeDevicesRequest()
    req.ProductId, req.Offset, req.Limit = product_id, 0, 10
    return name in [d.DeviceName for d in client.DescribeDevices(req).Devices]


def test_a_captured_tc3_request_cannot_be_replayed_as_another_action_version_or_region(
    live_server: LiveServer, capture: Capture
) -> None:
    client, product_id, name = _device(live_server)
    params = {"ProductId": product_id, "DeviceName": name}
    raw = capture.send(
        "DescribeDeviceShadow", params, secret_id=live_server.secret_id, secret_key=live_server.secret_key
    )
    assert "Data" in resend(raw, live_server.endpoint, x_forwarded_for=CLIENT)  # the client's own request

    replayed = resend(
        raw, live_server.endpoint, x_tc_action="DeleteDevice", x_tc_language="en-US", x_forwarded_for=ATTACKER
    )
    assert replayed["Error"]["Code"] == "AuthFailure.SignatureFailure"
    message = replayed["Error"]["Message"]
    assert "already used for DescribeDeviceShadow (version 2018-06-14, region ap-guangzhou)" in message
    assert "DeleteDevice" in message and "signed anew" in message
    assert _device_exists(client, product_id, name)

    other_region = resend(
        raw, live_server.endpoint, x_tc_region="ap-beijing", x_tc_language="en-US", x_forwarded_for=ATTACKER
    )
    assert other_region["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert "region ap-beijing" in other_region["Error"]["Message"]
    # the only version there is: any other is refused before the signature is looked at
    assert resend(raw, live_server.endpoint, x_tc_version="2019-01-01")["Error"]["Code"] == "NoSuchVersion"

    zh = resend(raw, live_server.endpoint, x_tc_action="DeleteDevice", x_tc_language="zh-CN", x_forwarded_for=ATTACKER)
    assert zh["Error"]["Code"] == "AuthFailure.SignatureFailure" and "重新签名" in zh["Error"]["Message"]

    # without a forwarded address the proxy itself is the client: another address than the first one
    from_proxy = resend(raw, live_server.endpoint, x_tc_action="DeleteDevice")
    assert from_proxy["Error"]["Code"] == "AuthFailure.SignatureFailure"

    # an exact repeat looks like the client's retry: accepted (docs/protocol.md#replay)
    assert "Data" in resend(raw, live_server.endpoint, x_forwarded_for=ATTACKER)
    assert _device_exists(client, product_id, name)


def test_one_signature_serves_two_actions_from_the_client_that_first_presented_it(
    live_server: LiveServer, capture: Capture
) -> None:
    """The official SDK's CreateDevice-then-DeleteDevice in one second: one body, one signature, two actions, one
    client address (docs/protocol.md#replay), on any connection. From another address the second action is
    refused."""
    client, product_id, name = _device(live_server)
    raw = capture.send(
        "DescribeDeviceShadow",
        {"ProductId": product_id, "DeviceName": name},
        secret_id=live_server.secret_id,
        secret_key=live_server.secret_key,
    )
    assert "Data" in resend(raw, live_server.endpoint, x_forwarded_for=CLIENT)
    refused = resend(raw, live_server.endpoint, x_tc_action="DeleteDevice", x_forwarded_for=ATTACKER)
    assert refused["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert _device_exists(client, product_id, name)
    # a new connection, the same client: it signed it
    assert "Error" not in resend(raw, live_server.endpoint, x_tc_action="DeleteDevice", x_forwarded_for=CLIENT)
    assert not _device_exists(client, product_id, name)


def test_the_official_sdk_sends_two_actions_with_one_body_in_one_second(live_server: LiveServer) -> None:
    """Through the SDK itself, binding on: CreateDevice then DeleteDevice then CreateDevice of one device, as fast
    as it can (usually within one second, so the same signature each time: none refused)."""

    client, product_id, _name = _device(live_server)
    for round_ in range(3):
        name = f"pair-{round_}"
        create = models.CreateDeviceRequest()
        create.ProductId, create.DeviceName = product_id, name
        client.CreateDevice(create)
        delete = models.DeleteDeviceRequest()
        delete.ProductId, delete.DeviceName = product_id, name
        client.DeleteDevice(delete)
        assert not _device_exists(client, product_id, name)


@pytest.mark.parametrize("http_method", ["GET", "POST"])
def test_a_repeated_v1_nonce_is_refused_and_a_fresh_one_accepted(
    live_server: LiveServer, capture: Capture, http_method: str
) -> None:
    _client, product_id, name = _device(live_server)
    raw = capture.send(
        "DescribeDevice",
        {"ProductID": product_id, "DeviceName": name},  # sic: the vendor's spelling for this action
        secret_id=live_server.secret_id,
        secret_key=live_server.secret_key,
        sign_method="HmacSHA256",
        http_method=http_method,
    )
    first = resend(raw, live_server.endpoint)
    assert first.get("DeviceName") == name, first
    repeated = resend(raw, live_server.endpoint, x_tc_language="en-US")
    assert repeated["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert "Nonce" in repeated["Error"]["Message"] and "fresh random Nonce" in repeated["Error"]["Message"]
    # the SDK draws a new Nonce for each call
    v1 = sdk_client(live_server, "HmacSHA256")
    req = models.DescribeDeviceRequest()
    req.ProductID, req.DeviceName = product_id, name
    assert v1.DescribeDevice(req).DeviceName == name
    assert v1.DescribeDevice(req).DeviceName == name


def test_the_node_prunes_expired_bindings(live_server: LiveServer) -> None:
    ledger = live_server.node.stores.signatures
    guard = live_server.node.backend.signatures
    now = int(time.time())
    live_server.run(ledger.bind("tc3:expired", SHADOW, now - PRUNE_GRACE_S - 1))
    live_server.run(ledger.bind("tc3:in-grace", SHADOW, now - 1))
    assert live_server.run(guard.prune()) >= 1
    assert live_server.run(ledger.bind("tc3:expired", DELETE, now + 300)) is None  # forgotten
    assert live_server.run(ledger.bind("tc3:in-grace", DELETE, now + 300)) == SHADOW  # kept a while longer


def test_with_the_binding_off_another_action_is_accepted_and_a_repeated_nonce_still_refused(
    tmp_path: Path, sqlite_url: str, capture: Capture
) -> None:
    server = start_server(tmp_path / "data", sqlite_url, signature_binding=False)
    try:
        _client, product_id, name = _device(server)
        raw = capture.send(
            "DescribeDevice",
            {"ProductID": product_id, "DeviceName": name},
            secret_id=server.secret_id,
            secret_key=server.secret_key,
        )
        assert resend(raw, server.endpoint)["DeviceName"] == name
        renamed = resend(raw, server.endpoint, x_tc_action="DescribeDeviceShadow")
        assert renamed["Error"]["Code"] == "UnknownParameter"  # reached the action's parameters: not refused
        v1 = capture.send(
            "DescribeDevice",
            {"ProductID": product_id, "DeviceName": name},
            secret_id=server.secret_id,
            secret_key=server.secret_key,
            sign_method="HmacSHA1",
        )
        assert resend(v1, server.endpoint)["DeviceName"] == name
        assert resend(v1, server.endpoint)["Error"]["Code"] == "AuthFailure.SignatureFailure"
    finally:
        server.stop()


def test_the_operator_client_signs_its_action_so_one_body_serves_two_actions_in_one_second(
    live_server: LiveServer,
) -> None:
    from fleetops.client.api import ApiClient, Credentials, Endpoint

    _client, product_id, name = _device(live_server)
    second = float(int(time.time()))
    api = ApiClient(
        Endpoint.parse(live_server.endpoint),
        Credentials(live_server.secret_id, live_server.secret_key, "test"),
        clock=lambda: second,  # both calls signed in one second
    )
    params = {"ProductId": product_id, "DeviceName": name}
    assert "Data" in api.call("DescribeDeviceShadow", params)
    api.call("DeleteDevice", params)  # the same body and second: refused were the action not signed
    assert not _device_exists(sdk_client(live_server), product_id, name)

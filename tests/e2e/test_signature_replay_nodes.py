"""Two ``fleetops serve`` processes on one PostgreSQL database: a TC3 signature first seen by one node is refused
by the other with another action (docs/protocol.md#replay), and a repeated v1 Nonce likewise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.iotcloud.v20180614 import models

from tests.sdk_capture import resend, sdk_capture
from tests.serve_process import ServeProcess, serve_nodes
from tests.support import postgres_database

pytestmark = pytest.mark.postgres

CLIENT, ATTACKER = "198.51.100.20", "203.0.113.7"  # documentation addresses, forwarded by the proxy


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    with postgres_database() as url:
        # behind a reverse proxy on 127.0.0.1: the clients' addresses come in X-Forwarded-For
        with serve_nodes(tmp_path, url, FLEETOPS_TRUSTED_PROXIES="127.0.0.1") as (first, second):
            yield first, second


def _client(port: int, secret_id: str, secret_key: str, sign_method: str = "TC3-HMAC-SHA256") -> Any:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    profile = ClientProfile(
        httpProfile=HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="http"), signMethod=sign_method, language="en-US"
    )
    return iotcloud_client.IotcloudClient(credential.Credential(secret_id, secret_key), "ap-guangzhou", profile)


def test_a_signature_seen_by_one_node_is_refused_by_the_other_with_another_action(
    two_nodes: tuple[ServeProcess, ServeProcess],
) -> None:
    a, b = two_nodes
    saved = json.loads((a.data_dir / "credentials.json").read_text())
    secret_id, secret_key = saved["SecretId"], saved["SecretKey"]
    client = _client(a.port, secret_id, secret_key)
    product = models.CreateProductRequest()
    product.ProductName = "lamps"
    product_id = client.CreateProduct(product).ProductId
    device = models.CreateDeviceRequest()
    device.ProductId, device.DeviceName = product_id, "lamp"
    client.CreateDevice(device)
    params = {"ProductId": product_id, "DeviceName": "lamp"}

    with sdk_capture() as capture:
        shadow = capture.send("DescribeDeviceShadow", params, secret_id=secret_id, secret_key=secret_key)
        v1 = capture.send(
            "DescribeDeviceShadow", params, secret_id=secret_id, secret_key=secret_key, sign_method="HmacSHA1"
        )
    assert "Data" in resend(shadow, f"127.0.0.1:{a.port}", x_forwarded_for=CLIENT)
    replayed = resend(
        shadow, f"127.0.0.1:{b.port}", x_tc_action="DeleteDevice", x_tc_language="en-US", x_forwarded_for=ATTACKER
    )
    assert replayed["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert "already used for DescribeDeviceShadow" in replayed["Error"]["Message"]
    # the exact request: a retry on another node
    assert "Data" in resend(shadow, f"127.0.0.1:{b.port}", x_forwarded_for=ATTACKER)

    assert "Data" in resend(v1, f"127.0.0.1:{b.port}", x_forwarded_for=CLIENT)
    repeated = resend(v1, f"127.0.0.1:{a.port}", x_forwarded_for=CLIENT)  # a v1 Nonce: once, whoever sends it
    assert repeated["Error"]["Code"] == "AuthFailure.SignatureFailure"

    listing = models.DescribeDevicesRequest()
    listing.ProductId, listing.Offset, listing.Limit = product_id, 0, 10
    assert [d.DeviceName for d in _client(b.port, secret_id, secret_key).DescribeDevices(listing).Devices] == ["lamp"]
    # the client that first presented the signature may use it for another action, on the other node too (two
    # of its calls with one body in one second)
    assert "Error" not in resend(shadow, f"127.0.0.1:{b.port}", x_tc_action="DeleteDevice", x_forwarded_for=CLIENT)
    assert _client(b.port, secret_id, secret_key).DescribeDevices(listing).Devices == []

"""Issue: devices through the official SDK (CreateDevice, DescribeDevice(s), DeleteDevice,
UpdateDevicesEnableState, DeleteProduct with devices), on SQLite and on PostgreSQL."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.api.actions.devices import DEVICE_INFO_FIELDS
from tests.support import (
    LiveServer,
    new_product,
    sdk_client,
    sdk_error_code,
    server_on,
)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server per database for the whole module (tests use products of their own)."""
    with server_on(request.param, tmp_path_factory.mktemp("devices-api")) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


def create_device(
    client: Any,
    product_id: str,
    name: str,
    *,
    psk: str | None = None,
    tags: Sequence[tuple[str, int, str]] = (),
) -> Any:
    req = models.CreateDeviceRequest()
    req.ProductId, req.DeviceName = product_id, name
    if psk is not None:
        req.DefinedPsk = psk
    if tags:
        attribute = models.Attribute()
        attribute.Tags = []
        for tag, kind, value in tags:
            t = models.DeviceTag()
            t.Tag, t.Type, t.Value = tag, kind, value
            attribute.Tags.append(t)
        req.Attribute = attribute
    return client.CreateDevice(req)


def describe_device(client: Any, product_id: str, name: str) -> Any:
    req = models.DescribeDeviceRequest()
    req.ProductID, req.DeviceName = product_id, name
    return client.DescribeDevice(req)


def describe_devices(client: Any, product_id: str, offset: int = 0, limit: int = 250, **filters: Any) -> Any:
    req = models.DescribeDevicesRequest()
    req.ProductId, req.Offset, req.Limit = product_id, offset, limit
    for key, value in filters.items():
        setattr(req, key, value)
    return client.DescribeDevices(req)


def delete_device(client: Any, product_id: str, name: str) -> Any:
    req = models.DeleteDeviceRequest()
    req.ProductId, req.DeviceName = product_id, name
    return client.DeleteDevice(req)


def set_enabled(client: Any, product_id: str, names: list[str], status: int) -> Any:
    req = models.UpdateDevicesEnableStateRequest()
    req.ProductID, req.DeviceNames, req.Status = product_id, names, status
    return client.UpdateDevicesEnableState(req)


def delete_product(client: Any, product_id: str) -> Any:
    req = models.DeleteProductRequest()
    req.ProductId = product_id
    return client.DeleteProduct(req)


def test_device_lifecycle(client: Any) -> None:
    pid = new_product(client)
    created = create_device(client, pid, "lamp-01", tags=[("color", 2, "red"), ("watts", 1, "60")])
    assert created.DeviceName == "lamp-01"
    assert re.fullmatch(r"[A-Za-z0-9+/]{24}", created.DevicePsk)
    assert len(base64.b64decode(created.DevicePsk)) == 18
    assert (created.DeviceCert, created.DevicePrivateKey, created.LoraDevEui, created.LoraMoteType) == (
        "",
        "",
        "",
        0,
    )

    got = describe_device(client, pid, "lamp-01")
    wire = json.loads(got.to_json_string())
    assert set(DEVICE_INFO_FIELDS) <= set(wire)
    assert got.DeviceName == "lamp-01"
    assert got.DevicePsk == created.DevicePsk
    assert (got.Online, got.Version, got.DeviceType, got.EnableState, got.ClientIP, got.ConnIP) == (
        0,
        "",
        0,
        1,
        "",
        0,
    )
    assert abs(got.CreateTime - time.time()) < 60
    assert got.LastUpdateTime == got.CreateTime
    assert [(t.Tag, t.Type, t.Value) for t in got.Tags] == [("color", 2, "red"), ("watts", 1, "60")]

    listing = describe_devices(client, pid, limit=10)
    assert listing.TotalCount == 1
    assert [d.DeviceName for d in listing.Devices] == ["lamp-01"]
    assert listing.Devices[0].DevicePsk == created.DevicePsk
    assert set(DEVICE_INFO_FIELDS) <= set(json.loads(listing.to_json_string())["Devices"][0])

    delete_device(client, pid, "lamp-01")
    assert sdk_error_code(lambda: describe_device(client, pid, "lamp-01")) == "ResourceNotFound.DeviceNotExist"
    assert describe_devices(client, pid, limit=10).TotalCount == 0
    delete_product(client, pid)


def test_defined_psk(client: Any) -> None:
    pid = new_product(client)
    psk = base64.b64encode(b"0123456789abcdef").decode()
    assert create_device(client, pid, "mine", psk=psk).DevicePsk == psk
    assert describe_device(client, pid, "mine").DevicePsk == psk
    for bad in ("not base64!", "abc", "YWJj*"):
        code = sdk_error_code(lambda bad=bad: create_device(client, pid, "bad", psk=bad))
        assert code == "InvalidParameterValue.DefinedPskNotBase64", bad
    assert describe_devices(client, pid, limit=10).TotalCount == 1


def test_create_device_errors(client: Any) -> None:
    pid = new_product(client)
    create_device(client, pid, "dup")
    assert sdk_error_code(lambda: create_device(client, pid, "dup")) == "InvalidParameterValue.DeviceAlreadyExist"
    assert sdk_error_code(lambda: create_device(client, "NOPE000000", "x")) == "ResourceNotFound.ProductNotExist"
    for bad in ("has space", "x" * 49, "ünï", ""):
        assert sdk_error_code(lambda bad=bad: create_device(client, pid, bad)) in (
            "InvalidParameterValue",
            "MissingParameter",  # the SDK leaves an empty string in, the decoder sees it as given
        ), bad
    ok = ":_-aZ09" + "x" * 41  # every allowed character class, 48 characters
    assert create_device(client, pid, ok).DeviceName == ok


def test_device_limit_per_product(server: LiveServer, client: Any) -> None:
    pid = new_product(client)
    devices = server.node.backend.devices
    saved = devices.max_devices_per_product
    devices.max_devices_per_product = 2  # the real limit is 1,000,000; the rule is the same
    try:
        create_device(client, pid, "a")
        create_device(client, pid, "b")
        assert sdk_error_code(lambda: create_device(client, pid, "c")) == "LimitExceeded.DeviceExceedLimit"
        delete_device(client, pid, "a")
        create_device(client, pid, "c")
    finally:
        devices.max_devices_per_product = saved
    assert [d.DeviceName for d in describe_devices(client, pid, limit=10).Devices] == ["b", "c"]


def test_describe_devices_pages_and_filters(client: Any) -> None:
    pid = new_product(client)
    names = [f"lamp-{i:02d}" for i in range(12)] + ["door_1", "Door-2"]
    for name in names:
        create_device(client, pid, name)
    set_enabled(client, pid, ["lamp-03", "door_1"], 0)

    first = describe_devices(client, pid, 0, 10)
    second = describe_devices(client, pid, 10, 10)
    assert first.TotalCount == second.TotalCount == 14
    assert [d.DeviceName for d in first.Devices + second.Devices] == sorted(names)
    assert describe_devices(client, pid, 14, 10).Devices == []

    lamps = describe_devices(client, pid, 0, 10, DeviceName="lamp-1")
    assert (lamps.TotalCount, [d.DeviceName for d in lamps.Devices]) == (2, ["lamp-10", "lamp-11"])
    assert [d.DeviceName for d in describe_devices(client, pid, DeviceName="oor").Devices] == [
        "Door-2",
        "door_1",
    ]
    assert describe_devices(client, pid, DeviceName="LAMP").TotalCount == 0  # case-sensitive
    disabled = describe_devices(client, pid, EnableState=0)
    assert [(d.DeviceName, d.EnableState) for d in disabled.Devices] == [("door_1", 0), ("lamp-03", 0)]
    assert describe_devices(client, pid, EnableState=1).TotalCount == 12
    assert describe_devices(client, pid, FirmwareVersion="None-FirmwareVersion").TotalCount == 14
    assert describe_devices(client, pid, FirmwareVersion="1.0.0").TotalCount == 0

    for limit in (9, 251):
        code = sdk_error_code(lambda limit=limit: describe_devices(client, pid, 0, limit))
        assert code == "InvalidParameterValue"
    assert sdk_error_code(lambda: describe_devices(client, pid, EnableState=2)) == "InvalidParameterValue"
    assert sdk_error_code(lambda: describe_devices(client, "NOPE000000")) == "ResourceNotFound.ProductNotExist"


def test_update_devices_enable_state(server: LiveServer, client: Any) -> None:
    pid = new_product(client)
    for name in ("a", "b", "c"):
        create_device(client, pid, name)
    set_enabled(client, pid, ["a", "b"], 0)
    states = {n: describe_device(client, pid, n).EnableState for n in ("a", "b", "c")}
    assert states == {"a": 0, "b": 0, "c": 1}

    # all or nothing: one unknown name and nobody changes
    assert sdk_error_code(lambda: set_enabled(client, pid, ["a", "ghost"], 1)) == "ResourceNotFound.DeviceNotExist"
    assert describe_device(client, pid, "a").EnableState == 0
    assert sdk_error_code(lambda: set_enabled(client, "NOPE000000", ["a"], 1)) == "ResourceNotFound.ProductNotExist"
    assert sdk_error_code(lambda: set_enabled(client, pid, ["a"], 2)) == "InvalidParameterValue"

    # over GET the array is flattened (DeviceNames.0, DeviceNames.1): the same call works
    set_enabled(sdk_client(server, "TC3-GET"), pid, ["a", "b"], 1)
    assert [describe_device(client, pid, n).EnableState for n in ("a", "b")] == [1, 1]


def test_describe_and_delete_errors(client: Any) -> None:
    pid = new_product(client)
    assert sdk_error_code(lambda: describe_device(client, pid, "nope")) == "ResourceNotFound.DeviceNotExist"
    assert sdk_error_code(lambda: describe_device(client, "NOPE000000", "x")) == "ResourceNotFound.ProductNotExist"
    assert sdk_error_code(lambda: delete_device(client, pid, "nope")) == "ResourceNotFound.DeviceNotExist"
    assert sdk_error_code(lambda: delete_device(client, "NOPE000000", "x")) == "ResourceNotFound.ProductNotExist"


def test_delete_product_refused_while_it_has_devices(client: Any) -> None:
    pid = new_product(client)
    create_device(client, pid, "last")
    assert sdk_error_code(lambda: delete_product(client, pid)) == "UnauthorizedOperation.DevicesExistUnderProduct"
    assert describe_device(client, pid, "last").DeviceName == "last"
    delete_device(client, pid, "last")
    delete_product(client, pid)
    assert sdk_error_code(lambda: describe_devices(client, pid)) == "ResourceNotFound.ProductNotExist"


def test_another_account_cannot_see_or_change_devices(server: LiveServer, client: Any) -> None:
    pid = new_product(client)
    created = create_device(client, pid, "private")
    secret_id, secret_key = server.new_account()
    other = sdk_client(server, secret_id=secret_id, secret_key=secret_key)

    not_found = "ResourceNotFound.ProductNotExist"
    assert sdk_error_code(lambda: describe_device(other, pid, "private")) == not_found
    assert sdk_error_code(lambda: describe_devices(other, pid)) == not_found
    assert sdk_error_code(lambda: create_device(other, pid, "intruder")) == not_found
    assert sdk_error_code(lambda: delete_device(other, pid, "private")) == not_found
    assert sdk_error_code(lambda: set_enabled(other, pid, ["private"], 0)) == not_found
    assert sdk_error_code(lambda: delete_product(other, pid)) == not_found

    mine = describe_device(client, pid, "private")
    assert (mine.EnableState, mine.DevicePsk) == (1, created.DevicePsk)
    assert [d.DeviceName for d in describe_devices(client, pid).Devices] == ["private"]
    # and the other account's own product may use the same device name
    other_pid = new_product(other)
    create_device(other, other_pid, "private")
    assert sdk_error_code(lambda: describe_device(client, other_pid, "private")) == not_found

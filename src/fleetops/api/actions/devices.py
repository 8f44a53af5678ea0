"""Device actions: CreateDevice, DescribeDevice, DescribeDevices, DeleteDevice, UpdateDevicesEnableState
(iotcloud-actions.md section 3). Wire names (PascalCase) become snake_case here and nowhere else.

Note the vendor's odd casing, kept because clients send it: **ProductID** in DescribeDevice and
UpdateDevicesEnableState, ProductId everywhere else. Both decode to ``product_id``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from fleetops import errors
from fleetops.api.actions.products import PRODUCT_ID
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import Kind, Param
from fleetops.backend.devices import DEVICE_NAME_PATTERN, MAX_PSK_LENGTH, DeviceFilter
from fleetops.store.devices import DeviceRecord

# Our own bound (the vendor documents none): one transaction per call, and a request that stays small.
MAX_ENABLE_STATE_NAMES = 1000

DEVICE_NAME = Param("DeviceName", Kind.STRING, required=True, pattern=DEVICE_NAME_PATTERN, doc="[a-zA-Z0-9:_-]{1,48}")
PRODUCT_ID_UPPER = Param(
    "ProductID", Kind.STRING, required=True, max_length=10, doc="product id (note the vendor's upper-case ID)"
)
SKEY = Param("Skey", Kind.STRING, doc="LoRa only; ignored")

DEVICE_TAG = Param(
    "DeviceTag",
    Kind.OBJECT,
    doc="a device attribute",
    fields=(
        Param("Tag", Kind.STRING, required=True, max_length=128, doc="attribute name"),
        Param("Type", Kind.INTEGER, required=True, choices=(1, 2), doc="1 integer, 2 string"),
        Param("Value", Kind.STRING, required=True, max_length=1024, doc="value"),
        Param("Name", Kind.STRING, max_length=128, doc="display name"),
    ),
)

ATTRIBUTE = Param(
    "Attribute",
    Kind.OBJECT,
    doc="device attributes (returned as Tags by DescribeDevice)",
    fields=(Param("Tags", Kind.ARRAY, item=DEVICE_TAG, max_items=100, doc="attributes"),),
)


def _conn_ip(client_ip: str | None) -> int:
    """ConnIP: the IPv4 address as an integer; 0 when unknown or IPv6."""
    if not client_ip:
        return 0
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return 0
    return int(address) if address.version == 4 else 0


def _tag(tag: dict[str, Any]) -> dict[str, Any]:
    return {
        "Tag": tag.get("tag", ""),
        "Type": tag.get("type", 2),
        "Value": tag.get("value", ""),
        "Name": tag.get("name"),
    }


# The fields of DeviceInfo (section 6), in the vendor's order; device_info() renders exactly these.
DEVICE_INFO_FIELDS = (
    "DeviceName",
    "Online",
    "LoginTime",
    "Version",
    "LastUpdateTime",
    "DeviceCert",
    "DevicePsk",
    "Tags",
    "DeviceType",
    "Imei",
    "Isp",
    "ConnIP",
    "NbiotDeviceID",
    "LoraDevEui",
    "LoraMoteType",
    "LogLevel",
    "FirstOnlineTime",
    "LastOfflineTime",
    "CreateTime",
    "CertState",
    "EnableState",
    "Labels",
    "ClientIP",
    "FirmwareUpdateTime",
)


def device_info(d: DeviceRecord) -> dict[str, Any]:
    """DeviceInfo / the DescribeDevice response. Certificate, NB-IoT and LoRa fields are empty: fleetops
    implements key-authenticated normal devices only. No OTA: Version is "" and FirmwareUpdateTime 0."""
    return {
        "DeviceName": d.name,
        "Online": 1 if d.online else 0,
        "LoginTime": d.login_time,
        "Version": "",
        # no separate column: the latest time fleetops changed what this record reports about the device
        "LastUpdateTime": max(d.created_at, d.login_time, d.last_offline_time or 0),
        "DeviceCert": "",
        "DevicePsk": d.psk,
        "Tags": [_tag(t) for t in d.tags],
        "DeviceType": 0,
        "Imei": "",
        "Isp": 0,
        "ConnIP": _conn_ip(d.client_ip),
        "NbiotDeviceID": "",
        "LoraDevEui": "",
        "LoraMoteType": 0,
        "LogLevel": 0,
        "FirstOnlineTime": d.first_online_time or 0,
        "LastOfflineTime": d.last_offline_time or 0,
        "CreateTime": d.created_at,
        "CertState": 0,
        "EnableState": 1 if d.enabled else 0,
        "Labels": [],
        "ClientIP": d.client_ip or "",
        "FirmwareUpdateTime": 0,
    }


async def create_device(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    attribute = params.get("attribute") or {}
    record = await ctx.backend.devices.create(
        ctx.account_id,
        params["product_id"],
        params["device_name"],
        defined_psk=params.get("defined_psk"),
        tags=attribute.get("tags") or [],
    )
    return {
        "DeviceName": record.name,
        "DevicePsk": record.psk,
        "DeviceCert": "",
        "DevicePrivateKey": "",
        "LoraDevEui": "",
        "LoraMoteType": 0,
        "LoraAppKey": "",
        "LoraNwkKey": "",
    }


async def describe_device(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    record = await ctx.backend.devices.get(ctx.account_id, params["product_id"], params["device_name"])
    return device_info(record)


async def describe_devices(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    enable_state = params.get("enable_state")
    where = DeviceFilter(
        name_contains=params.get("device_name"),
        enabled=None if enable_state is None else enable_state == 1,
        firmware_version=params.get("firmware_version"),
    )
    page = await ctx.backend.devices.page(
        ctx.account_id, params["product_id"], params["offset"], params["limit"], where
    )
    return {"TotalCount": page.total, "Devices": [device_info(d) for d in page.devices]}


async def delete_device(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    await ctx.backend.devices.delete(ctx.account_id, params["product_id"], params["device_name"])
    return {}


async def update_devices_enable_state(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    names: list[str] = params["device_names"]
    if not names:
        raise errors.InvalidParameterValue("DeviceNames must name at least one device.")
    await ctx.backend.devices.set_enabled(ctx.account_id, params["product_id"], names, params["status"] == 1)
    return {}


ACTIONS = (
    Action(
        name="CreateDevice",
        summary="Create a key-authenticated device; its shadow starts empty at version 0.",
        params=(
            PRODUCT_ID,
            Param(
                "DeviceName",
                Kind.STRING,
                required=True,
                pattern=DEVICE_NAME_PATTERN,
                doc="[a-zA-Z0-9:_-]{1,48}, unique in the product",
            ),
            ATTRIBUTE,
            Param(
                "DefinedPsk",
                Kind.STRING,
                max_length=MAX_PSK_LENGTH,
                doc="the device key, Base64; absent or empty: fleetops generates 18 random bytes",
            ),
            Param("Isp", Kind.INTEGER, doc="NB-IoT only; ignored"),
            Param("Imei", Kind.STRING, doc="NB-IoT only; ignored"),
            Param("LoraDevEui", Kind.STRING, doc="LoRa only; ignored"),
            Param("LoraMoteType", Kind.INTEGER, doc="LoRa only; ignored"),
            SKEY,
            Param("LoraAppKey", Kind.STRING, doc="LoRa only; ignored"),
        ),
        handler=create_device,
        response=(
            "DeviceName",
            "DevicePsk",
            "DeviceCert",
            "DevicePrivateKey",
            "LoraDevEui",
            "LoraMoteType",
            "LoraAppKey",
            "LoraNwkKey",
        ),
        errors=(
            errors.InvalidParameterValue,
            errors.DefinedPskNotBase64,
            errors.DeviceAlreadyExist,
            errors.DeviceExceedLimit,
            errors.ProductNotExist,
        ),
        notes="Limit: 1,000,000 devices per product (`FLEETOPS_MAX_DEVICES_PER_PRODUCT`).",
    ),
    Action(
        name="DescribeDevice",
        summary="Describe one device (note the parameter ProductID).",
        params=(PRODUCT_ID_UPPER, DEVICE_NAME),
        handler=describe_device,
        response=DEVICE_INFO_FIELDS,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
    ),
    Action(
        name="DescribeDevices",
        summary="List a product's devices in name order, with optional filters.",
        params=(
            PRODUCT_ID,
            Param("Offset", Kind.INTEGER, required=True, doc="from 0"),
            Param("Limit", Kind.INTEGER, required=True, min_value=10, max_value=250, doc="10..250"),
            Param(
                "FirmwareVersion",
                Kind.STRING,
                max_length=64,
                doc="`None-FirmwareVersion` selects devices without a version (all: fleetops has no OTA); "
                "any other value matches none",
            ),
            Param("DeviceName", Kind.STRING, max_length=48, doc="case-sensitive substring of the device name"),
            Param("EnableState", Kind.INTEGER, choices=(0, 1), doc="0 disabled, 1 enabled; absent: both"),
        ),
        handler=describe_devices,
        response=("TotalCount", "Devices"),
        errors=(errors.InvalidParameterValue, errors.ProductNotExist),
    ),
    Action(
        name="DeleteDevice",
        summary="Delete a device and its shadow; its MQTT connection is closed.",
        params=(PRODUCT_ID, DEVICE_NAME, SKEY),
        handler=delete_device,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
    ),
    Action(
        name="UpdateDevicesEnableState",
        summary="Enable or disable devices, all or none (note the parameter ProductID).",
        params=(
            PRODUCT_ID_UPPER,
            Param(
                "DeviceNames",
                Kind.ARRAY,
                required=True,
                item=Param("DeviceName", Kind.STRING, pattern=DEVICE_NAME_PATTERN),
                max_items=MAX_ENABLE_STATE_NAMES,
                doc=f"1..{MAX_ENABLE_STATE_NAMES} device names; every one must exist",
            ),
            Param("Status", Kind.INTEGER, required=True, choices=(0, 1), doc="1 enable, 0 disable"),
        ),
        handler=update_devices_enable_state,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
        notes="Disabled devices are refused at MQTT CONNECT; disabling one that is connected closes its connection.",
    ),
)

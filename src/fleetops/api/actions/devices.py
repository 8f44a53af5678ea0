"""Device actions: CreateDevice, DescribeDevice, DescribeDevices, DeleteDevice, UpdateDevicesEnableState
(docs/api.md).

Note the vendor's odd casing, kept because clients send it: **ProductID** in DescribeDevice and
UpdateDevicesEnableState, ProductId everywhere else. Both are ``product_id`` inside.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from fleetops import errors
from fleetops.api.actions.products import product_id
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire
from fleetops.backend.devices import DEVICE_NAME_PATTERN, MAX_PSK_LENGTH, DeviceFilter
from fleetops.ports.store import DeviceRecord

# Our own bound (the vendor documents none): one transaction per call, and a request that stays small.
MAX_ENABLE_STATE_NAMES = 1000


def device_name(*, doc: str = "[a-zA-Z0-9:_-]{1,48}") -> Any:
    return wire("DeviceName", required=True, pattern=DEVICE_NAME_PATTERN, doc=doc)


def product_id_upper() -> Any:
    return product_id(name="ProductID", doc="product id (note the vendor's upper-case ID)")


@dataclass(frozen=True, slots=True)
class DeviceTag:
    tag: str = wire("Tag", required=True, max_length=128, doc="attribute name")
    type: int = wire("Type", required=True, choices=(1, 2), doc="1 integer, 2 string")
    value: str = wire("Value", required=True, max_length=1024, doc="value")
    name: str | None = wire("Name", max_length=128, doc="display name")


@dataclass(frozen=True, slots=True)
class DeviceAttribute:
    tags: list[DeviceTag] | None = wire("Tags", max_items=100, doc="attributes")


@dataclass(frozen=True, slots=True)
class CreateDeviceRequest:
    product_id: str = product_id()
    device_name: str = device_name(doc="[a-zA-Z0-9:_-]{1,48}, unique in the product")
    attribute: DeviceAttribute | None = wire("Attribute", doc="device attributes (returned as Tags by DescribeDevice)")
    defined_psk: str | None = wire(
        "DefinedPsk",
        max_length=MAX_PSK_LENGTH,
        doc="the device key, Base64; absent or empty: fleetops generates 18 random bytes",
    )
    isp: int | None = wire("Isp", doc="NB-IoT only; ignored")
    imei: str | None = wire("Imei", doc="NB-IoT only; ignored")
    lora_dev_eui: str | None = wire("LoraDevEui", doc="LoRa only; ignored")
    lora_mote_type: int | None = wire("LoraMoteType", doc="LoRa only; ignored")
    skey: str | None = wire("Skey", doc="LoRa only; ignored")
    lora_app_key: str | None = wire("LoraAppKey", doc="LoRa only; ignored")


@dataclass(frozen=True, slots=True)
class DescribeDeviceRequest:
    product_id: str = product_id_upper()
    device_name: str = device_name()


@dataclass(frozen=True, slots=True)
class DescribeDevicesRequest:
    product_id: str = product_id()
    offset: int = wire("Offset", required=True, doc="from 0")
    limit: int = wire("Limit", required=True, min_value=10, max_value=250, doc="10..250")
    firmware_version: str | None = wire(
        "FirmwareVersion",
        max_length=64,
        doc="`None-FirmwareVersion` selects devices without a version (all: fleetops has no OTA); "
        "any other value matches none",
    )
    device_name: str | None = wire("DeviceName", max_length=48, doc="case-sensitive substring of the device name")
    enable_state: int | None = wire("EnableState", choices=(0, 1), doc="0 disabled, 1 enabled; absent: both")


@dataclass(frozen=True, slots=True)
class DeleteDeviceRequest:
    product_id: str = product_id()
    device_name: str = device_name()
    skey: str | None = wire("Skey", doc="LoRa only; ignored")


@dataclass(frozen=True, slots=True)
class UpdateDevicesEnableStateRequest:
    product_id: str = product_id_upper()
    device_names: list[str] = wire(
        "DeviceNames",
        required=True,
        pattern=DEVICE_NAME_PATTERN,
        max_items=MAX_ENABLE_STATE_NAMES,
        doc=f"1..{MAX_ENABLE_STATE_NAMES} device names; every one must exist",
    )
    status: int = wire("Status", required=True, choices=(0, 1), doc="1 enable, 0 disable")


def _conn_ip(client_ip: str | None) -> int:
    """ConnIP: the IPv4 address as an integer; 0 when unknown or IPv6."""
    if not client_ip:
        return 0
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return 0
    return int(address) if address.version == 4 else 0


# The fields of DeviceInfo (docs/api.md#describedevice), in the vendor's order; device_info() renders exactly these.
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
        "Tags": [
            {"Tag": t.get("tag", ""), "Type": t.get("type", 2), "Value": t.get("value", ""), "Name": t.get("name")}
            for t in d.tags
        ],
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


async def create_device(ctx: ActionContext, req: CreateDeviceRequest) -> dict[str, Any]:
    tags = req.attribute.tags if req.attribute is not None and req.attribute.tags else []
    record = await ctx.backend.devices.create(
        ctx.account_id,
        req.product_id,
        req.device_name,
        defined_psk=req.defined_psk,
        tags=[
            {"tag": t.tag, "type": t.type, "value": t.value, **({"name": t.name} if t.name is not None else {})}
            for t in tags
        ],
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


async def describe_device(ctx: ActionContext, req: DescribeDeviceRequest) -> dict[str, Any]:
    return device_info(await ctx.backend.devices.get(ctx.account_id, req.product_id, req.device_name))


async def describe_devices(ctx: ActionContext, req: DescribeDevicesRequest) -> dict[str, Any]:
    where = DeviceFilter(
        name_contains=req.device_name,
        enabled=None if req.enable_state is None else req.enable_state == 1,
        firmware_version=req.firmware_version,
    )
    page = await ctx.backend.devices.page(ctx.account_id, req.product_id, req.offset, req.limit, where)
    return {"TotalCount": page.total, "Devices": [device_info(d) for d in page.devices]}


async def delete_device(ctx: ActionContext, req: DeleteDeviceRequest) -> dict[str, Any]:
    await ctx.backend.devices.delete(ctx.account_id, req.product_id, req.device_name)
    return {}


async def update_devices_enable_state(ctx: ActionContext, req: UpdateDevicesEnableStateRequest) -> dict[str, Any]:
    if not req.device_names:
        raise errors.InvalidParameterValue(
            "DeviceNames must name at least one device.", message_zh="DeviceNames 至少需要包含一个设备名称。"
        )
    await ctx.backend.devices.set_enabled(ctx.account_id, req.product_id, req.device_names, req.status == 1)
    return {}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="CreateDevice",
        summary="Create a key-authenticated device; its shadow starts empty at version 0.",
        request=CreateDeviceRequest,
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
        request=DescribeDeviceRequest,
        handler=describe_device,
        response=DEVICE_INFO_FIELDS,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
    ),
    Action(
        name="DescribeDevices",
        summary="List a product's devices in name order, with optional filters.",
        request=DescribeDevicesRequest,
        handler=describe_devices,
        response=("TotalCount", "Devices"),
        errors=(errors.InvalidParameterValue, errors.ProductNotExist),
    ),
    Action(
        name="DeleteDevice",
        summary="Delete a device and its shadow; its MQTT connection is closed.",
        request=DeleteDeviceRequest,
        handler=delete_device,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
    ),
    Action(
        name="UpdateDevicesEnableState",
        summary="Enable or disable devices, all or none (note the parameter ProductID).",
        request=UpdateDevicesEnableStateRequest,
        handler=update_devices_enable_state,
        errors=(errors.InvalidParameterValue, errors.DeviceNotExist, errors.ProductNotExist),
        notes="Disabled devices are refused at MQTT CONNECT; disabling one that is connected closes its connection.",
    ),
)

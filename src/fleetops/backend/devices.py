"""Device use cases: create, describe, list, delete, enable/disable (docs/api.md#describedevices,
docs/decisions.md#devices-and-shadows).

Everything is scoped by the calling account: another account's product is reported as not existing.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetops import errors, ids
from fleetops.backend.products import ProductNames
from fleetops.ports.messaging import DeviceSessions
from fleetops.ports.store import (
    DeviceLimitReached,
    DeviceMissing,
    DeviceNameTaken,
    DevicePage,
    DeviceRecord,
    DeviceStore,
    NewDevice,
    ProductMissing,
)

log = logging.getLogger("fleetops.devices")

MAX_DEVICES_PER_PRODUCT: Final = 1_000_000  # vendor usage limit (an older page said 200,000)
DEVICE_NAME_PATTERN: Final = r"[a-zA-Z0-9:_-]{1,48}"
_DEVICE_NAME = re.compile(DEVICE_NAME_PATTERN)
# DescribeDevices: this literal FirmwareVersion selects the devices that have not reported a version.
NO_FIRMWARE_VERSION: Final = "None-FirmwareVersion"
MAX_PSK_LENGTH: Final = 128  # characters of Base64, the column width


@dataclass(frozen=True)
class DeviceFilter:
    """The optional filters of DescribeDevices."""

    name_contains: str | None = None
    enabled: bool | None = None
    firmware_version: str | None = None


def is_valid_device_name(name: str) -> bool:
    return _DEVICE_NAME.fullmatch(name) is not None


def checked_psk(defined_psk: str | None) -> str:
    """The PSK to store: the caller's ``DefinedPsk`` if it is Base64, else a new random one.

    An empty ``DefinedPsk`` counts as absent (the platform generates one), as for every optional string.
    """
    if not defined_psk:
        return ids.new_device_psk()
    if len(defined_psk) > MAX_PSK_LENGTH:
        raise errors.InvalidParameterValue(
            f"DefinedPsk is {len(defined_psk)} characters long; at most {MAX_PSK_LENGTH} are accepted.",
            message_zh=f"DefinedPsk 长度为 {len(defined_psk)} 个字符，最多接受 {MAX_PSK_LENGTH} 个字符。",
        )
    try:
        base64.b64decode(defined_psk, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.DefinedPskNotBase64(
            "DefinedPsk must be standard Base64 (A-Z, a-z, 0-9, +, / and = padding), e.g. `vX6PQqazsGsMyf5SMfs6OA6y`.",
            message_zh="DefinedPsk 必须是标准 Base64（A-Z、a-z、0-9、+、/ 以及 = 填充），"
            "例如 `vX6PQqazsGsMyf5SMfs6OA6y`。",
        ) from exc
    return defined_psk


class DeviceService:
    def __init__(
        self,
        store: DeviceStore,
        clock: Callable[[], float],
        *,
        sessions: DeviceSessions | None,
        product_names: ProductNames,
        max_devices_per_product: int = MAX_DEVICES_PER_PRODUCT,
    ) -> None:
        """``sessions`` None: a node without an MQTT side (the CLI), where nothing is connected to close."""
        self._store = store
        self._product_names = product_names
        self._clock = clock
        self.max_devices_per_product = max_devices_per_product
        self._sessions = sessions

    async def create(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        *,
        defined_psk: str | None = None,
        tags: list[dict[str, Any]] | None = None,
    ) -> DeviceRecord:
        psk = checked_psk(defined_psk)
        try:
            return await self._store.insert(
                account_id,
                product_id,
                NewDevice(device_name, psk, tags or []),
                int(self._clock()),
                self.max_devices_per_product,
            )
        except ProductMissing as exc:
            raise await self._product_names.not_exist(account_id, product_id) from exc
        except DeviceLimitReached as exc:
            raise errors.DeviceExceedLimit(
                f"The product `{product_id}` already has {exc.limit} devices, the limit; delete some first.",
                message_zh=f"产品 `{product_id}` 已有 {exc.limit} 个设备，达到上限；请先删除部分设备。",
            ) from exc
        except DeviceNameTaken as exc:
            raise errors.DeviceAlreadyExist(
                f"The product `{product_id}` already has a device named `{device_name}`; choose another DeviceName.",
                message_zh=f"产品 `{product_id}` 下已有名为 `{device_name}` 的设备，请换一个 DeviceName。",
            ) from exc

    async def get(self, account_id: int, product_id: str, device_name: str) -> DeviceRecord:
        try:
            return await self._store.get(account_id, product_id, device_name)
        except ProductMissing as exc:
            raise await self._product_names.not_exist(account_id, product_id) from exc
        except DeviceMissing as exc:
            raise _device_not_exist(product_id, exc.names) from exc

    async def page(self, account_id: int, product_id: str, offset: int, limit: int, where: DeviceFilter) -> DevicePage:
        try:
            if where.firmware_version and where.firmware_version != NO_FIRMWARE_VERSION:
                # fleetops has no OTA: no device ever reports a firmware version, so only the "no version"
                # literal can match. The product must still exist.
                await self._store.product_pk(account_id, product_id)
                return DevicePage(0, [])
            return await self._store.page(
                account_id,
                product_id,
                offset,
                limit,
                name_contains=where.name_contains or None,
                enabled=where.enabled,
            )
        except ProductMissing as exc:
            raise await self._product_names.not_exist(account_id, product_id) from exc

    async def delete(self, account_id: int, product_id: str, device_name: str) -> None:
        """Delete the device and its shadow, then drop its MQTT session (best effort)."""
        try:
            await self._store.delete(account_id, product_id, device_name)
        except ProductMissing as exc:
            raise await self._product_names.not_exist(account_id, product_id) from exc
        except DeviceMissing as exc:
            raise _device_not_exist(product_id, exc.names) from exc
        await self._disconnect(product_id, [device_name])

    async def set_enabled(self, account_id: int, product_id: str, device_names: Sequence[str], enabled: bool) -> None:
        """Enable or disable every named device, or (one name unknown) none. Disabling drops sessions."""
        try:
            await self._store.set_enabled(account_id, product_id, device_names, enabled)
        except ProductMissing as exc:
            raise await self._product_names.not_exist(account_id, product_id) from exc
        except DeviceMissing as exc:
            raise _device_not_exist(product_id, exc.names) from exc
        if not enabled:
            await self._disconnect(product_id, device_names)

    async def _disconnect(self, product_id: str, device_names: Sequence[str]) -> None:
        # The database is the truth: a disabled or deleted device is refused at its next CONNECT anyway, so a
        # broker that cannot drop the connection now must not fail the API call.
        if self._sessions is None:
            return
        for name in dict.fromkeys(device_names):
            try:
                await self._sessions.disconnect_device(product_id, name)
            except Exception:
                log.warning("could not disconnect %s/%s", product_id, name, exc_info=True)


def _device_not_exist(product_id: str, names: Sequence[str]) -> errors.DeviceNotExist:
    quoted, more = [f"`{n}`" for n in names[:10]], len(names) - 10
    shown = ", ".join(quoted) + (f" and {more} more" if more > 0 else "")
    shown_zh = "、".join(quoted) + (f" 等 {len(names)} 个设备" if more > 0 else "")
    noun = "device" if len(names) == 1 else "devices"
    return errors.DeviceNotExist(
        f"The product `{product_id}` has no {noun} {shown}.",
        message_zh=f"产品 `{product_id}` 下没有设备 {shown_zh}。",
    )

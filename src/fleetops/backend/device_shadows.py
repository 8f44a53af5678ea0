"""A device's own shadow requests (MQTT ``get`` / ``update``), the :class:`~fleetops.ports.messaging.DeviceShadows`
the device shadow protocol (``messaging/shadow_protocol.py``) calls.

A device proves who it is with its PSK at CONNECT and has no account to speak of: its product's owner is looked
up by the globally unique ProductId (cached; a product never changes owner), then the same store and the same
compare-and-set as the cloud API apply the domain's rules.
"""

from __future__ import annotations

from typing import Final

from fleetops import errors
from fleetops.domain.shadow import DeviceUpdate, Shadow, UpdateResult, apply_device_update
from fleetops.ports.store import DeviceStore, ShadowMissing, ShadowStore
from fleetops.ports.telemetry import NO_TELEMETRY, ShadowSource, Telemetry

_OWNER_CACHE_SIZE: Final = 10_000


def _gone(product_id: str, device_name: str) -> errors.DeviceNotExist:
    return errors.DeviceNotExist(
        f"The device {product_id}/{device_name} does not exist (deleted while connected?).",
        message_zh=f"设备 {product_id}/{device_name} 不存在（是否在连接期间被删除？）。",
    )


class DeviceShadowService:
    def __init__(self, shadows: ShadowStore, devices: DeviceStore, telemetry: Telemetry = NO_TELEMETRY) -> None:
        self._shadows = shadows
        self._devices = devices
        self._telemetry = telemetry
        self._owners: dict[str, int] = {}

    async def device_get(self, product_id: str, device_name: str) -> Shadow:
        account_id = await self._owner(product_id, device_name)
        try:
            return await self._shadows.read(account_id, product_id, device_name)
        except ShadowMissing as exc:
            raise _gone(product_id, device_name) from exc

    async def device_update(self, product_id: str, device_name: str, update: DeviceUpdate, now_ms: int) -> UpdateResult:
        account_id = await self._owner(product_id, device_name)

        def change(current: Shadow) -> tuple[Shadow | None, UpdateResult]:
            outcome = apply_device_update(current, update, now_ms)
            return (outcome.shadow if outcome.accepted else None), outcome

        try:
            result = await self._shadows.update(account_id, product_id, device_name, change)
        except ShadowMissing as exc:
            raise _gone(product_id, device_name) from exc
        if result.accepted:
            self._telemetry.shadows_written(ShadowSource.DEVICE, 1)
        return result

    async def _owner(self, product_id: str, device_name: str) -> int:
        owner = self._owners.get(product_id)
        if owner is None:
            owner = await self._devices.product_owner(product_id)
            if owner is None:
                raise _gone(product_id, device_name)
            if len(self._owners) >= _OWNER_CACHE_SIZE:
                self._owners.clear()
            self._owners[product_id] = owner
        return owner

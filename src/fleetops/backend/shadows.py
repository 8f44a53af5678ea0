"""The cloud API's shadow use cases: DescribeDeviceShadow and UpdateDeviceShadow (docs/api.md).

The rules are the pure functions of ``fleetops.domain.shadow``; this module reads, applies them, and writes
with the store's compare-and-set, so a cloud write and a device write to one shadow never lose each other.

After a successful UpdateDeviceShadow the delta is pushed (QoS 0) on ``{Prefix}/operation/result/{pid}/{dn}``.
The shadow in the database is the truth and the push is only a hint: if the broker is down or slow the API call
still succeeds (the failure is logged, the wait is bounded by ``delta_publish_timeout_s``), and the device learns
the desired values from the ``delta`` of its next ``get`` (pushes are never stored: docs/device-protocol.md#delta).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from fleetops import errors
from fleetops.backend.products import ProductNames
from fleetops.domain.shadow import (
    JSONObject,
    Shadow,
    apply_desired,
    check_version,
    parse_state_json,
    validate_state_document,
)
from fleetops.ports.messaging import DeviceMessages
from fleetops.ports.store import ShadowContention, ShadowMissing, ShadowStore
from fleetops.ports.telemetry import NO_TELEMETRY, ShadowSource, Telemetry

log = logging.getLogger("fleetops.shadows")

SHADOW_PREFIX: Final = "$shadow"
TEMPLATE_PREFIX: Final = "$template"
PREFIXES: Final = (SHADOW_PREFIX, TEMPLATE_PREFIX)
DEFAULT_DELTA_PUBLISH_TIMEOUT_S: Final = 2.0


def checked_prefix(prefix: str | None) -> str:
    """UpdateDeviceShadow ``Prefix``: ``$shadow`` (default, also for an empty string) or ``$template``."""
    if not prefix:
        return SHADOW_PREFIX
    if prefix not in PREFIXES:
        raise errors.PrefixInvalid(
            f"Prefix `{prefix}` is not valid: use `$shadow` (the default) or `$template`.",
            message_zh=f"Prefix `{prefix}` 无效：请使用 `$shadow`（默认）或 `$template`。",
        )
    return prefix


@dataclass(frozen=True)
class ShadowRead:
    shadow: Shadow
    read_at_ms: int  # the time the reply shows


@dataclass(frozen=True)
class ShadowWrite:
    shadow: Shadow  # the new document
    patch: JSONObject | None  # the desired patch as written (None: the desired section was removed)


class ShadowService:
    """DescribeDeviceShadow and UpdateDeviceShadow for an account."""

    def __init__(
        self,
        store: ShadowStore,
        messages: DeviceMessages,
        clock: Callable[[], float],
        *,
        product_names: ProductNames,
        delta_publish_timeout_s: float = DEFAULT_DELTA_PUBLISH_TIMEOUT_S,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._store = store
        self._telemetry = telemetry
        self._product_names = product_names
        self._messages = messages
        self._clock = clock
        self._delta_publish_timeout_s = delta_publish_timeout_s

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def describe(self, account_id: int, product_id: str, device_name: str) -> ShadowRead:
        try:
            shadow = await self._store.read(account_id, product_id, device_name)
        except ShadowMissing as exc:
            raise await self._not_found(account_id, product_id, device_name) from exc
        return ShadowRead(shadow, self._now_ms())

    async def update(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        state_text: str,
        shadow_version: int,
        prefix: str | None = None,
    ) -> ShadowWrite:
        """Merge ``State`` (``{"desired": ...}`` only) and push the delta.

        Checks, in order: Prefix, JSON, nodes, depth and size (all before touching the database), then the
        version (``ShadowVersion`` 0 skips it) against the current document, inside the compare-and-set loop.
        """
        topic_prefix = checked_prefix(prefix)
        state = validate_state_document(parse_state_json(state_text), allow_desired_only=True)
        patch: JSONObject | None = state["desired"]
        now_ms = self._now_ms()

        def change(current: Shadow) -> tuple[Shadow, tuple[Shadow, JSONObject]]:
            check_version(current, shadow_version)
            new, pushed = apply_desired(current, patch, now_ms)
            return new, (new, pushed)

        try:
            new, pushed = await self._store.update(account_id, product_id, device_name, change)
        except ShadowMissing as exc:
            raise await self._not_found(account_id, product_id, device_name) from exc
        except ShadowContention as exc:
            raise errors.InternalError(
                "The shadow is being changed by many writers at once; retry the update.",
                message_zh="影子正被多个写入方同时修改，请重试本次更新。",
            ) from exc
        self._telemetry.shadows_written(ShadowSource.API, 1)
        if pushed:
            await self._push_delta(topic_prefix, product_id, device_name, new.version, pushed, now_ms)
        return ShadowWrite(new, patch)

    async def _not_found(self, account_id: int, product_id: str, device_name: str) -> errors.ProductOrDeviceNotExist:
        hint = await self._product_names.hint(account_id, product_id)
        return errors.ProductOrDeviceNotExist(
            f"The device `{device_name}` of product `{product_id}` does not exist in this account.{hint.en}",
            message_zh=f"该账号下不存在产品 `{product_id}` 的设备 `{device_name}`。{hint.zh}",
        )

    async def _push_delta(
        self, prefix: str, product_id: str, device_name: str, version: int, pushed: JSONObject, now_ms: int
    ) -> None:
        try:
            async with asyncio.timeout(self._delta_publish_timeout_s):
                await self._messages.push_delta(prefix, product_id, device_name, version, pushed, now_ms)
        except Exception:  # the shadow is written; the device gets the delta on its next get
            self._telemetry.broker_error()
            log.warning(
                "delta push to %s/%s failed; the device will see it on its next get",
                product_id,
                device_name,
                exc_info=True,
            )

"""Device shadow use cases: the cloud API (DescribeDeviceShadow, UpdateDeviceShadow) and the device's own MQTT
``get`` / ``update`` requests (:class:`ShadowService` is the ``ShadowRequestHandler`` of
``ports/messaging.py``).

The rules are the pure functions of ``fleetops.domain.shadow``; this module reads, applies them, and writes
with the store's compare-and-set, so a cloud write and a device write to one shadow never lose each other.

After a successful UpdateDeviceShadow the delta is pushed (QoS 0) on
``{Prefix}/operation/result/{pid}/{dn}``. The shadow in the database is the truth and the push is only a hint:
if the broker is down or slow the API call still succeeds (the failure is logged, the wait is bounded by
``delta_publish_timeout_s``), and the device learns the desired values from the ``delta`` of its next ``get``
(device-protocol.md section 6.6: pushes are never stored).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import orjson

from fleetops import errors
from fleetops.domain.shadow import (
    ResultCode,
    Shadow,
    ShadowOp,
    ShadowRequestRejected,
    UpdateResult,
    apply_desired,
    apply_device_update,
    check_version,
    parse_device_request,
    parse_state_json,
    render_delta_push,
    render_describe_shadow_data,
    render_error_reply,
    render_get_reply,
    render_update_reply,
    render_update_shadow_data,
    validate_state_document,
)
from fleetops.ports.messaging import Publisher
from fleetops.store.devices import DeviceStore
from fleetops.store.shadows import ShadowContention, ShadowMissing, ShadowStore

log = logging.getLogger("fleetops.shadows")

SHADOW_PREFIX: Final = "$shadow"
TEMPLATE_PREFIX: Final = "$template"
PREFIXES: Final = (SHADOW_PREFIX, TEMPLATE_PREFIX)
DEFAULT_DELTA_PUBLISH_TIMEOUT_S: Final = 2.0
# ProductId -> owning account, for the MQTT side (a product never changes owner).
_OWNER_CACHE_SIZE: Final = 10_000

JSONObject = dict[str, Any]


def result_topic(prefix: str, product_id: str, device_name: str) -> str:
    """Where replies and delta pushes go: ``{prefix}/operation/result/{pid}/{dn}``."""
    return f"{prefix}/operation/result/{product_id}/{device_name}"


def checked_prefix(prefix: str | None) -> str:
    """UpdateDeviceShadow ``Prefix``: ``$shadow`` (default, also for an empty string) or ``$template``."""
    if not prefix:
        return SHADOW_PREFIX
    if prefix not in PREFIXES:
        raise errors.PrefixInvalid(f"Prefix `{prefix}` is not valid: use `$shadow` (the default) or `$template`.")
    return prefix


def _not_found(product_id: str, device_name: str) -> errors.ProductOrDeviceNotExist:
    return errors.ProductOrDeviceNotExist(
        f"The device `{device_name}` of product `{product_id}` does not exist in this account."
    )


def _dumps(document: JSONObject) -> bytes:
    return orjson.dumps(document)


class ShadowService:
    """Shadow reads and writes for the API and the devices.

    ``publisher`` carries delta pushes; it may be None (unit tests, or before the MQTT side is up: see
    :meth:`attach_publisher`, which breaks the cycle "the broker needs this handler, this handler needs the
    broker's publisher").
    """

    def __init__(
        self,
        store: ShadowStore,
        devices: DeviceStore,
        clock: Callable[[], float],
        *,
        publisher: Publisher | None = None,
        delta_publish_timeout_s: float = DEFAULT_DELTA_PUBLISH_TIMEOUT_S,
    ) -> None:
        self._store = store
        self._devices = devices
        self._clock = clock
        self._publisher = publisher
        self._delta_publish_timeout_s = delta_publish_timeout_s
        self._owners: dict[str, int] = {}

    def attach_publisher(self, publisher: Publisher | None) -> None:
        self._publisher = publisher

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- cloud API ------------------------------------------------------------------------------------------

    async def describe(self, account_id: int, product_id: str, device_name: str) -> JSONObject:
        """DescribeDeviceShadow ``Data`` (as a JSON object; the action serializes it to the wire string)."""
        try:
            shadow = await self._store.read(account_id, product_id, device_name)
        except ShadowMissing as exc:
            raise _not_found(product_id, device_name) from exc
        return render_describe_shadow_data(shadow, self._now_ms())

    async def update(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        state_text: str,
        shadow_version: int,
        prefix: str | None = None,
    ) -> JSONObject:
        """UpdateDeviceShadow: merge ``State`` (``{"desired": ...}`` only) and push the delta.

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
            raise _not_found(product_id, device_name) from exc
        except ShadowContention as exc:
            raise errors.InternalError(
                "The shadow is being changed by many writers at once; retry the update."
            ) from exc
        if pushed:
            await self._push_delta(topic_prefix, product_id, device_name, new.version, pushed, now_ms)
        return render_update_shadow_data(new, patch)

    async def _push_delta(
        self, prefix: str, product_id: str, device_name: str, version: int, pushed: JSONObject, now_ms: int
    ) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        topic = result_topic(prefix, product_id, device_name)
        # The embedded broker knows whether anyone listens; skipping saves encoding and a broker round-trip.
        if publisher.subscribed(topic) is False:
            return
        payload = _dumps(render_delta_push(version, pushed, now_ms))
        try:
            async with asyncio.timeout(self._delta_publish_timeout_s):
                await publisher.publish(topic, payload, 0)
        except Exception:  # the shadow is written; the device gets the delta on its next get
            log.warning("delta push to %s failed; the device will see it on its next get", topic, exc_info=True)

    # --- the device (MQTT) ----------------------------------------------------------------------------------

    async def handle_shadow_request(self, product_id: str, device_name: str, payload: bytes) -> bytes | None:
        """The reply to a device's ``$shadow/operation/{pid}/{dn}`` message (``ShadowRequestHandler``).

        ``get``: the whole document (no metadata). ``update``: merged with the same compare-and-set as the
        API; the reply holds what changed, or result 5005 with the full current document on a version
        mismatch. Malformed requests get the result code of device-protocol.md section 6.8. Always returns a
        reply.
        """
        now_ms = self._now_ms()
        try:
            request = parse_device_request(payload)
        except ShadowRequestRejected as rejected:
            return _dumps(render_error_reply(rejected.request_type, rejected.client_token, rejected.result, now_ms))
        token = request.client_token
        try:
            account_id = await self._owner(product_id)
            if account_id is None:
                raise ShadowMissing(product_id)
            if request.type is ShadowOp.GET:
                shadow = await self._store.read(account_id, product_id, device_name)
                return _dumps(render_get_reply(shadow, token, now_ms))

            def change(current: Shadow) -> tuple[Shadow | None, UpdateResult]:
                outcome = apply_device_update(current, request, now_ms)
                return (outcome.shadow if outcome.accepted else None), outcome

            outcome = await self._store.update(account_id, product_id, device_name, change)
            return _dumps(render_update_reply(outcome, token, now_ms))
        except ShadowMissing:
            # deleted while connected (its session is being dropped)
            return _dumps(render_error_reply(request.type.value, token, ResultCode.DEVICE_NOT_EXIST, now_ms))
        except Exception:
            log.exception("shadow %s request of %s/%s failed", request.type.value, product_id, device_name)
            return _dumps(render_error_reply(request.type.value, token, ResultCode.INTERNAL_ERROR, now_ms))

    async def _owner(self, product_id: str) -> int | None:
        owner = self._owners.get(product_id)
        if owner is None:
            owner = await self._devices.product_owner(product_id)
            if owner is not None:
                if len(self._owners) >= _OWNER_CACHE_SIZE:
                    self._owners.clear()
                self._owners[product_id] = owner
        return owner

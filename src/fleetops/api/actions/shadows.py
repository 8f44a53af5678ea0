"""Shadow actions: DescribeDeviceShadow, UpdateDeviceShadow (docs/api.md).

``Data`` is a JSON document serialized into a string, as the vendor returns it; its layout (with metadata, all
timestamps in milliseconds) is rendered here, the API's wire format (the MQTT replies differ:
``messaging/shadow_protocol.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from fleetops import errors
from fleetops.api.actions.devices import device_name
from fleetops.api.actions.products import product_id
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire
from fleetops.domain.limits import SHADOW_MAX_DEPTH, SHADOW_STATE_MAX_BYTES
from fleetops.domain.shadow import DESIRED, REPORTED, JSONObject, Shadow, stamp_metadata, state_view


@dataclass(frozen=True, slots=True)
class DescribeDeviceShadowRequest:
    product_id: str = product_id()
    device_name: str = device_name()


@dataclass(frozen=True, slots=True)
class UpdateDeviceShadowRequest:
    product_id: str = product_id()
    device_name: str = device_name()
    state: str = wire(
        "State",
        required=True,
        doc='JSON text holding only the desired node, e.g. {"desired":{"color":"red"}}; a null value '
        f"deletes a key; at most {SHADOW_STATE_MAX_BYTES} bytes and {SHADOW_MAX_DEPTH} levels",
    )
    shadow_version: int = wire(
        "ShadowVersion", required=True, doc="must equal the shadow's current version; 0 skips the check"
    )
    prefix: str | None = wire("Prefix", doc="topic prefix of the delta push: $shadow (default) or $template")


def render_describe_shadow_data(shadow: Shadow, now_ms: int) -> JSONObject:
    """DescribeDeviceShadow ``Data``: the document with metadata, timestamps in ms.

    Example: {"payload":{"state":{"reported":{"color":"red"}},"metadata":{"reported":{"color":{"timestamp":
    1509092895971}}},"timestamp":1509443636326,"version":5},"result":0,"timestamp":1509440846582,"type":"get"}.
    A never-modified shadow shows the reply time as payload.timestamp, as the MQTT get does.
    """
    metadata: JSONObject = {REPORTED: shadow.metadata_reported}
    if shadow.desired is not None:
        metadata[DESIRED] = shadow.metadata_desired
    state = state_view(shadow)
    return {
        "payload": {
            "state": state,
            "metadata": metadata,
            "timestamp": shadow.timestamp_ms if shadow.version else now_ms,
            "version": shadow.version,
        },
        "result": 0,
        "timestamp": now_ms,
        "type": "get",
    }


def render_update_shadow_data(shadow: Shadow, desired_patch: JSONObject | None) -> JSONObject:
    """UpdateDeviceShadow ``Data`` for the shadow returned by :func:`apply_desired`.

    ``payload.state`` echoes what this call touched (the patch as written, deletions as null); metadata stamps
    the written keys. Example: {"payload":{"state":{"desired":{"color":"red"}},"metadata":{"desired":{"color":
    {"timestamp":1509092895971}}},"timestamp":1509443636326,"version":5},"result":0,"timestamp":...,
    "type":"update"}.
    """
    written = shadow.timestamp_ms
    metadata: JSONObject = (
        {} if desired_patch is None else {DESIRED: stamp_metadata(None, None, desired_patch, written)}
    )
    return {
        "payload": {
            "state": {DESIRED: desired_patch},
            "metadata": metadata,
            "timestamp": written,
            "version": shadow.version,
        },
        "result": 0,
        "timestamp": written,
        "type": "update",
    }


def _data(document: dict[str, Any]) -> str:
    return orjson.dumps(document).decode()


async def describe_device_shadow(ctx: ActionContext, req: DescribeDeviceShadowRequest) -> dict[str, Any]:
    read = await ctx.backend.shadows.describe(ctx.account_id, req.product_id, req.device_name)
    return {"Data": _data(render_describe_shadow_data(read.shadow, read.read_at_ms))}


async def update_device_shadow(ctx: ActionContext, req: UpdateDeviceShadowRequest) -> dict[str, Any]:
    written = await ctx.backend.shadows.update(
        ctx.account_id, req.product_id, req.device_name, req.state, req.shadow_version, req.prefix
    )
    return {"Data": _data(render_update_shadow_data(written.shadow, written.patch))}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="DescribeDeviceShadow",
        summary="Read a device's shadow document.",
        request=DescribeDeviceShadowRequest,
        handler=describe_device_shadow,
        response=("Data",),
        errors=(errors.InvalidParameterValue, errors.ProductOrDeviceNotExist),
        notes='`Data` is a JSON string: `{"payload":{"state":{"reported":{...},"desired":{...},'
        '"delta":{...}},"metadata":{...},"timestamp":ms,"version":n},"result":0,"timestamp":ms,'
        '"type":"get"}`; `desired` and `delta` only when the shadow has a desired section.',
    ),
    Action(
        name="UpdateDeviceShadow",
        summary="Merge desired state into a device's shadow and push the delta to the device.",
        request=UpdateDeviceShadowRequest,
        handler=update_device_shadow,
        response=("Data",),
        errors=(
            errors.UpdateVersionNotMatch,
            errors.InvalidParameterValue,
            errors.InvalidJSON,
            errors.JSONHasInvalidNode,
            errors.JSONSizeExceedLimit,
            errors.JSONLevelExceedLimit,
            errors.PrefixInvalid,
            errors.ProductOrDeviceNotExist,
        ),
        notes="After the write, the delta is published (QoS 0) on "
        "`{Prefix}/operation/result/{ProductId}/{DeviceName}`. The shadow is the truth: if the broker is "
        "down the call still succeeds and the device sees the desired values in the `delta` of its next "
        "`get`.",
    ),
)

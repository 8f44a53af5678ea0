"""Shadow actions: DescribeDeviceShadow, UpdateDeviceShadow (iotcloud-actions.md section 4).

``Data`` is a JSON document serialized into a string, as the vendor returns it.
"""

from __future__ import annotations

from typing import Any

import orjson

from fleetops import errors
from fleetops.api.actions.devices import DEVICE_NAME
from fleetops.api.actions.products import PRODUCT_ID
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import Kind, Param
from fleetops.domain.limits import SHADOW_MAX_DEPTH, SHADOW_STATE_MAX_BYTES


def _data(document: dict[str, Any]) -> str:
    return orjson.dumps(document).decode()


async def describe_device_shadow(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    document = await ctx.backend.shadows.describe(ctx.account_id, params["product_id"], params["device_name"])
    return {"Data": _data(document)}


async def update_device_shadow(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    document = await ctx.backend.shadows.update(
        ctx.account_id,
        params["product_id"],
        params["device_name"],
        params["state"],
        params["shadow_version"],
        params.get("prefix"),
    )
    return {"Data": _data(document)}


ACTIONS = (
    Action(
        name="DescribeDeviceShadow",
        summary="Read a device's shadow document.",
        params=(PRODUCT_ID, DEVICE_NAME),
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
        params=(
            PRODUCT_ID,
            DEVICE_NAME,
            Param(
                "State",
                Kind.STRING,
                required=True,
                doc='JSON text holding only the desired node, e.g. {"desired":{"color":"red"}}; a null value '
                f"deletes a key; at most {SHADOW_STATE_MAX_BYTES} bytes and {SHADOW_MAX_DEPTH} levels",
            ),
            Param(
                "ShadowVersion",
                Kind.INTEGER,
                required=True,
                doc="must equal the shadow's current version; 0 skips the check",
            ),
            Param("Prefix", Kind.STRING, doc="topic prefix of the delta push: $shadow (default) or $template"),
        ),
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

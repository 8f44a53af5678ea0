"""PublishMessage (iotcloud-actions.md section 5.1)."""

from __future__ import annotations

from typing import Any

from fleetops import errors
from fleetops.api.actions.devices import DEVICE_NAME
from fleetops.api.actions.products import PRODUCT_ID
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import Kind, Param


async def publish_message(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    await ctx.backend.messages.publish(
        ctx.account_id,
        params["product_id"],
        params["device_name"],
        params["topic"],
        params["payload"],
        params.get("qos", 0),
        params.get("payload_encoding"),
    )
    return {}


ACTIONS = (
    Action(
        name="PublishMessage",
        summary="Publish one message to one device's topic.",
        params=(
            Param(
                "Topic",
                Kind.STRING,
                required=True,
                # no length limit here: any topic that is not the device's is FailedOperation.InvalidTopicName
                doc="{ProductId}/{DeviceName}/[a-zA-Z0-9:_-]{1,128}",
            ),
            Param("Payload", Kind.STRING, required=True, doc="message body, at most 16384 bytes (after decoding)"),
            PRODUCT_ID,
            DEVICE_NAME,
            Param("Qos", Kind.INTEGER, choices=(0, 1), doc="0 (default) or 1"),
            Param("PayloadEncoding", Kind.STRING, doc="`base64`: Payload is Base64 and is decoded before delivery"),
        ),
        handler=publish_message,
        errors=(
            errors.FailedOperation,
            errors.DeviceAlreadyDisabled,
            errors.DeviceNoSubscription,
            errors.DeviceOffline,
            errors.OfflineMessageExceedLimit,
            errors.InvalidMsgLen,
            errors.InvalidTopicName,
            errors.InvalidParameterValue,
            errors.PayloadOverLimit,
            errors.DeviceNotExist,
            errors.ProductOrDeviceNotExist,
        ),
        notes=(
            "The embedded broker knows who is connected: a message to an online device without a matching "
            "subscription is `FailedOperation.DeviceNoSubscription`; to an offline device "
            "`FailedOperation.DeviceOffline`, except QoS 1 to a persistent session subscribed to the topic, "
            "which is queued and succeeds. On an external broker the message is published as MQTT routes it. "
            "A broker that cannot be reached within 2 s is `FailedOperation` (retry)."
        ),
    ),
)

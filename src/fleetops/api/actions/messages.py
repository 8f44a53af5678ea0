"""PublishMessage (docs/api.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetops import errors
from fleetops.api.actions.devices import device_name
from fleetops.api.actions.products import product_id
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire


@dataclass(frozen=True, slots=True)
class PublishMessageRequest:
    # no length limit on Topic here: any topic that is not the device's is FailedOperation.InvalidTopicName
    topic: str = wire("Topic", required=True, doc="{ProductId}/{DeviceName}/[a-zA-Z0-9:_-]{1,128}")
    payload: str = wire("Payload", required=True, doc="message body, at most 16384 bytes (after decoding)")
    product_id: str = product_id()
    device_name: str = device_name()
    qos: int = wire("Qos", default=0, choices=(0, 1), doc="0 (default) or 1")
    payload_encoding: str | None = wire(
        "PayloadEncoding", doc="`base64`: Payload is Base64 and is decoded before delivery"
    )


async def publish_message(ctx: ActionContext, req: PublishMessageRequest) -> dict[str, Any]:
    await ctx.backend.messages.publish(
        ctx.account_id, req.product_id, req.device_name, req.topic, req.payload, req.qos, req.payload_encoding
    )
    return {}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="PublishMessage",
        summary="Publish one message to one device's topic.",
        request=PublishMessageRequest,
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

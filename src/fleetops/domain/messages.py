"""Cloud-to-device message rules (PublishMessage; docs/api.md#publishmessage). Pure."""

from __future__ import annotations

import base64
import binascii
import string

from fleetops.domain import limits
from fleetops.errors import InvalidMsgLen, InvalidParameterValue, InvalidTopicName, PayloadOverLimit

TOPIC_SUFFIX_CHARS = frozenset(string.ascii_letters + string.digits + ":_-")


def is_topic_suffix(value: str) -> bool:
    """``[a-zA-Z0-9:_-]{1,128}``: the custom part of a device topic, after ``{ProductId}/{DeviceName}/``."""
    return 1 <= len(value) <= limits.TOPIC_SUFFIX_MAX_LENGTH and TOPIC_SUFFIX_CHARS.issuperset(value)


def check_device_topic(topic: str, product_id: str, device_name: str) -> str:
    """The topic must be one of this device's own: ``{ProductId}/{DeviceName}/{suffix}``."""
    prefix = f"{product_id}/{device_name}/"
    if not topic.startswith(prefix) or not is_topic_suffix(topic[len(prefix) :]):
        suffix = f"[a-zA-Z0-9:_-]{{1,{limits.TOPIC_SUFFIX_MAX_LENGTH}}}"
        raise InvalidTopicName(
            f"Topic `{topic}` is not a topic of device {product_id}/{device_name}: it must be "
            f"`{prefix}` followed by {suffix}, e.g. `{prefix}control`.",
            message_zh=f"Topic `{topic}` 不属于设备 {product_id}/{device_name}：必须是 `{prefix}` 后接 {suffix}，"
            f"例如 `{prefix}control`。",
        )
    return topic


def decode_payload(payload: str, encoding: str | None) -> bytes:
    """The bytes to deliver: ``Payload`` as UTF-8, or Base64-decoded when ``PayloadEncoding`` is ``base64``."""
    if encoding in (None, ""):
        data = payload.encode()
    elif encoding == "base64":
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidParameterValue(
                "Payload is not valid Base64, but PayloadEncoding is `base64`: encode it, or omit PayloadEncoding.",
                message_zh="PayloadEncoding 为 `base64`，但 Payload 不是合法的 Base64："
                "请先编码，或不填 PayloadEncoding。",
            ) from exc
    else:
        raise InvalidParameterValue(
            f"PayloadEncoding `{encoding}` is not supported: use `base64` or omit it.",
            message_zh=f"不支持 PayloadEncoding `{encoding}`：请使用 `base64` 或不填。",
        )
    if not data:
        raise InvalidMsgLen(
            "Payload is empty: a message needs at least one byte.", message_zh="Payload 为空：消息至少需要一个字节。"
        )
    if len(data) > limits.PUBLISH_PAYLOAD_MAX_BYTES:
        raise PayloadOverLimit(
            f"Payload is {len(data)} bytes; at most {limits.PUBLISH_PAYLOAD_MAX_BYTES} bytes can be published.",
            message_zh=f"Payload 为 {len(data)} 字节，最多可发布 {limits.PUBLISH_PAYLOAD_MAX_BYTES} 字节。",
        )
    return data

"""PublishMessage: one message from the cloud to one device.

The action: docs/api.md#publishmessage; what fleetops decided where the vendor is silent:
docs/decisions.md#publishmessage.
"""

from __future__ import annotations

import asyncio
import logging

from fleetops import errors
from fleetops.backend.devices import DeviceService
from fleetops.domain.messages import check_device_topic, decode_payload
from fleetops.ports.messaging import DeviceMessages
from fleetops.ports.telemetry import NO_TELEMETRY, Telemetry

log = logging.getLogger(__name__)


class MessageService:
    def __init__(
        self,
        devices: DeviceService,
        messages: DeviceMessages,
        *,
        publish_timeout_s: float = 5.0,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._devices = devices
        self._messages = messages
        self._publish_timeout_s = publish_timeout_s
        self._telemetry = telemetry

    async def publish(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        topic: str,
        payload: str,
        qos: int,
        payload_encoding: str | None,
    ) -> None:
        try:
            device = await self._devices.get(account_id, product_id, device_name)
        except errors.ProductNotExist as exc:
            # PublishMessage's documented codes have no ProductNotExist: an unknown product is reported so
            raise errors.ProductOrDeviceNotExist(exc.message, message_zh=exc.localized("zh-CN")) from exc
        check_device_topic(topic, product_id, device_name)
        data = decode_payload(payload, payload_encoding)
        if not device.enabled:
            raise errors.DeviceAlreadyDisabled(
                f"The device {product_id}/{device_name} is disabled; enable it (UpdateDevicesEnableState) first.",
                message_zh=f"设备 {product_id}/{device_name} 已被禁用，请先启用（UpdateDevicesEnableState）。",
            )
        self._check_deliverable(product_id, device_name, topic, qos)
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await self._messages.publish(topic, data, qos)
        except (errors.BrokerUnavailable, TimeoutError) as exc:
            self._telemetry.broker_error()
            reason = str(exc) or f"no answer within {self._publish_timeout_s:g} s"
            log.warning("PublishMessage to %s: broker unavailable (%s)", topic, reason)
            raise errors.FailedOperation(
                f"The MQTT broker cannot be reached right now ({reason}); the message may not have been delivered. "
                "Retry later.",
                message_zh=f"暂时无法连接 MQTT broker（{reason}），消息可能未送达，请稍后重试。",
            ) from exc

    def _check_deliverable(self, product_id: str, device_name: str, topic: str, qos: int) -> None:
        """What the broker knows of the device (the embedded broker knows; an external one says None)."""
        view = self._messages.delivery_view(product_id, device_name, topic)
        online, subscribed, room = view.online, view.subscribed, view.offline_room
        if online is None or subscribed is None:
            return
        if online and not subscribed:
            raise errors.DeviceNoSubscription(
                f"The device {product_id}/{device_name} is online but has not subscribed to `{topic}`.",
                message_zh=f"设备 {product_id}/{device_name} 在线，但未订阅 `{topic}`。",
            )
        if online:
            return
        # offline: a QoS 1 message is kept only by a persistent session subscribed to the topic with QoS 1, and
        # only while its queue has room (docs/decisions.md: then the call succeeds); anything else would be lost,
        # so it is refused with the reason
        if qos == 0 or room is None:
            device = f"{product_id}/{device_name}"
            if qos == 1:
                en = f"The device {device} is offline and has no persistent session subscribed to the topic with QoS 1."
                zh = f"设备 {device} 不在线，且没有以 QoS 1 订阅该 Topic 的持久会话。"
            else:
                en = f"The device {device} is offline; QoS 0 messages are not kept for offline devices."
                zh = f"设备 {device} 不在线；QoS 0 消息不会为离线设备保留。"
            raise errors.DeviceOffline(en, message_zh=zh)
        if room == 0:
            raise errors.OfflineMessageExceedLimit(
                f"The device {product_id}/{device_name} is offline and already has the most messages its "
                "session keeps (150); it gets them when it reconnects. Retry after that.",
                message_zh=f"设备 {product_id}/{device_name} 不在线，其会话保留的消息已达上限（150 条），"
                "设备重连后会收到这些消息，请在此之后重试。",
            )

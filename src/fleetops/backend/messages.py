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

log = logging.getLogger(__name__)


class MessageService:
    def __init__(self, devices: DeviceService, messages: DeviceMessages, *, publish_timeout_s: float = 5.0) -> None:
        self._devices = devices
        self._messages = messages
        self._publish_timeout_s = publish_timeout_s

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
            raise errors.ProductOrDeviceNotExist(f"The product `{product_id}` does not exist in this account.") from exc
        check_device_topic(topic, product_id, device_name)
        data = decode_payload(payload, payload_encoding)
        if not device.enabled:
            raise errors.DeviceAlreadyDisabled(
                f"The device {product_id}/{device_name} is disabled; enable it (UpdateDevicesEnableState) first."
            )
        self._check_deliverable(product_id, device_name, topic, qos)
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                await self._messages.publish(topic, data, qos)
        except (errors.BrokerUnavailable, TimeoutError) as exc:
            reason = str(exc) or f"no answer within {self._publish_timeout_s:g} s"
            log.warning("PublishMessage to %s: broker unavailable (%s)", topic, reason)
            raise errors.FailedOperation(
                f"The MQTT broker cannot be reached right now ({reason}); the message may not have been delivered. "
                "Retry later."
            ) from exc

    def _check_deliverable(self, product_id: str, device_name: str, topic: str, qos: int) -> None:
        """What the broker knows of the device (the embedded broker knows; an external one says None)."""
        view = self._messages.delivery_view(product_id, device_name, topic)
        online, subscribed, room = view.online, view.subscribed, view.offline_room
        if online is None or subscribed is None:
            return
        if online and not subscribed:
            raise errors.DeviceNoSubscription(
                f"The device {product_id}/{device_name} is online but has not subscribed to `{topic}`."
            )
        if online:
            return
        # offline: a QoS 1 message is kept only by a persistent session subscribed to the topic with QoS 1, and
        # only while its queue has room (docs/decisions.md: then the call succeeds); anything else would be lost,
        # so it is refused with the reason
        if qos == 0 or room is None:
            raise errors.DeviceOffline(
                f"The device {product_id}/{device_name} is offline"
                + (
                    " and has no persistent session subscribed to the topic with QoS 1."
                    if qos == 1
                    else "; QoS 0 messages are not kept for offline devices."
                )
            )
        if room == 0:
            raise errors.OfflineMessageExceedLimit(
                f"The device {product_id}/{device_name} is offline and already has the most messages its "
                "session keeps (150); it gets them when it reconnects. Retry after that."
            )

"""Topics of the IoT Hub device protocol and the device ACL (pure functions, no I/O).

A device connects with client id ``${productId}${deviceName}``: the product id is the first 10 characters
(``[A-Z0-9]{10}``), the device name the rest (``[a-zA-Z0-9:_-]{1,48}``). It may use only topics carrying its
own ids (device-protocol §3.1):

=============================================  =============  ==========================================
topic                                          device may     use
=============================================  =============  ==========================================
``{pid}/{dn}/control``                         subscribe      cloud → device (PublishMessage)
``{pid}/{dn}/event``                           publish        device → cloud
``{pid}/{dn}/data``                            both           both directions
``{pid}/{dn}/{custom}``                        both           custom topic ``[a-zA-Z0-9:_-]{1,128}``
``$shadow/operation/{pid}/{dn}``               publish        shadow get/update requests
``$shadow/operation/result/{pid}/{dn}``        subscribe      shadow replies and delta pushes
``$ota/report/{pid}/{dn}``                     publish        firmware reports
``$ota/update/{pid}/{dn}``                     subscribe      firmware notices
``${X}/operation/{pid}/{dn}``                  publish        X = template, sys, log, config, gateway
``${X}/operation/result/{pid}/{dn}``           subscribe      replies to the above
``$rrpc/rxd/{pid}/{dn}/{id}``                  subscribe      also as the filter ``$rrpc/rxd/{pid}/{dn}/+``
``$rrpc/txd/{pid}/{dn}/{id}``                  publish        RRPC replies
``$broadcast/rxd/{pid}/{dn}``                  subscribe      broadcasts
=============================================  =============  ==========================================

Custom topics: the vendor grants publish/subscribe per topic class (CreateTopicPolicy); fleetops has no topic
policies yet, so every custom suffix of the device's own namespace is allowed both ways (it can only reach
the device's own topics). Topics are limited to 255 UTF-8 bytes and 10 levels.

Wildcards (§3.2): a filter is granted only if *every* topic it can match is subscribable. With the table
above that holds for exactly one shape, ``$rrpc/rxd/{pid}/{dn}/+``; any other wildcard filter - every ``#``
(it also matches deeper levels, which no row allows), ``{pid}/{dn}/+`` (it matches the publish-only
``event``), or a wildcard before the last level - is refused (SUBACK 0x80). Shared subscriptions
(``$share/...``) are refused too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import IntFlag

PRODUCT_ID_LENGTH = 10
TOPIC_MAX_BYTES = 255
TOPIC_MAX_LEVELS = 10

_PRODUCT_ID = re.compile(r"[A-Z0-9]{10}")
_DEVICE_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,48}")
_CUSTOM_SUFFIX = re.compile(r"[a-zA-Z0-9:_-]{1,128}")

# System topic families shaped ``{prefix}/operation/{pid}/{dn}`` (device → cloud) and
# ``{prefix}/operation/result/{pid}/{dn}`` (cloud → device).
_OPERATION_PREFIXES = frozenset({"$shadow", "$template", "$sys", "$log", "$config", "$gateway"})

SHADOW_PREFIX = "$shadow"


class Access(IntFlag):
    """What a device may do with a topic."""

    NONE = 0
    PUBLISH = 1
    SUBSCRIBE = 2
    BOTH = 3


@dataclass(frozen=True)
class DeviceId:
    product_id: str
    device_name: str

    @property
    def client_id(self) -> str:
        """The MQTT client id: the plain concatenation, no separator."""
        return self.product_id + self.device_name


def is_valid_product_id(product_id: str) -> bool:
    return _PRODUCT_ID.fullmatch(product_id) is not None


def is_valid_device_name(device_name: str) -> bool:
    return _DEVICE_NAME.fullmatch(device_name) is not None


def split_client_id(client_id: str) -> DeviceId | None:
    """Split ``${productId}${deviceName}`` after character 10; None if either part is malformed."""
    product_id, device_name = client_id[:PRODUCT_ID_LENGTH], client_id[PRODUCT_ID_LENGTH:]
    if is_valid_product_id(product_id) and is_valid_device_name(device_name):
        return DeviceId(product_id, device_name)
    return None


# --- topic names --------------------------------------------------------------------------------------


def device_topic(product_id: str, device_name: str, suffix: str) -> str:
    """``{pid}/{dn}/{suffix}``: PublishMessage topics; batch tasks give only the suffix (e.g. ``control``)."""
    return f"{product_id}/{device_name}/{suffix}"


def shadow_request_topic(product_id: str, device_name: str) -> str:
    return f"{SHADOW_PREFIX}/operation/{product_id}/{device_name}"


def shadow_result_topic(product_id: str, device_name: str, prefix: str = SHADOW_PREFIX) -> str:
    """Shadow replies and delta pushes; ``prefix`` is UpdateDeviceShadow's Prefix ($shadow, $template)."""
    return f"{prefix}/operation/result/{product_id}/{device_name}"


def parse_shadow_request_topic(topic: str) -> DeviceId | None:
    """The device of ``$shadow/operation/{pid}/{dn}``; None for any other topic."""
    levels = topic.split("/")
    if len(levels) != 4 or levels[0] != SHADOW_PREFIX or levels[1] != "operation":
        return None
    if is_valid_product_id(levels[2]) and is_valid_device_name(levels[3]):
        return DeviceId(levels[2], levels[3])
    return None


# --- MQTT topic syntax --------------------------------------------------------------------------------


def _is_mqtt_string(text: str) -> bool:
    """Non-empty, encodable as UTF-8 (no lone surrogates, MQTT-1.5.3-1), no NUL (MQTT-1.5.3-2)."""
    if not text or "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: a valid MQTT string without wildcards (MQTT 3.1.1 §4.7)."""
    return _is_mqtt_string(topic) and "+" not in topic and "#" not in topic


def is_valid_topic_filter(topic_filter: str) -> bool:
    """A SUBSCRIBE filter: ``+`` fills a whole level, ``#`` a whole last level (MQTT 3.1.1 §4.7.1)."""
    if not _is_mqtt_string(topic_filter):
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 §4.7 matching (a ``$`` topic never matches a filter starting with a wildcard)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or (level != "+" and level != topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def wildcard_prefix(topic_filter: str) -> str | None:
    """The literal levels before the first wildcard (``a/b`` for ``a/b/+/c``), None without a wildcard.

    Topics that a filter can match all start with its prefix levels, which lets a broker index its wildcard
    filters by prefix.
    """
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if level in ("+", "#"):
            return "/".join(levels[:index])
    return None


# --- the device ACL -----------------------------------------------------------------------------------


def _within_limits(topic: str) -> bool:
    return len(topic.encode("utf-8")) <= TOPIC_MAX_BYTES and topic.count("/") < TOPIC_MAX_LEVELS


def topic_access(device: DeviceId, topic: str) -> Access:
    """What ``device`` may do with the concrete topic ``topic`` (module docstring table)."""
    if not is_valid_topic_name(topic) or not _within_limits(topic):
        return Access.NONE
    levels = topic.split("/")
    pid, dn = device.product_id, device.device_name
    count = len(levels)
    if count == 3 and levels[0] == pid and levels[1] == dn:
        suffix = levels[2]
        if suffix == "control":
            return Access.SUBSCRIBE
        if suffix == "event":
            return Access.PUBLISH
        if _CUSTOM_SUFFIX.fullmatch(suffix):  # "data" and the custom topics
            return Access.BOTH
        return Access.NONE
    head = levels[0]
    if head in _OPERATION_PREFIXES and count >= 4 and levels[1] == "operation":
        if count == 4 and levels[2] == pid and levels[3] == dn:
            return Access.PUBLISH
        if count == 5 and levels[2] == "result" and levels[3] == pid and levels[4] == dn:
            return Access.SUBSCRIBE
        return Access.NONE
    if count == 4 and levels[2] == pid and levels[3] == dn:
        if head == "$ota":
            return {"report": Access.PUBLISH, "update": Access.SUBSCRIBE}.get(levels[1], Access.NONE)
        if head == "$broadcast" and levels[1] == "rxd":
            return Access.SUBSCRIBE
        return Access.NONE
    if count == 5 and head == "$rrpc" and levels[2] == pid and levels[3] == dn and levels[4]:
        return {"rxd": Access.SUBSCRIBE, "txd": Access.PUBLISH}.get(levels[1], Access.NONE)
    return Access.NONE


def may_publish(device: DeviceId, topic: str) -> bool:
    return Access.PUBLISH in topic_access(device, topic)


def may_subscribe(device: DeviceId, topic_filter: str) -> bool:
    """Whether ``device`` may subscribe to ``topic_filter`` (wildcard rule in the module docstring)."""
    if not is_valid_topic_filter(topic_filter):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return Access.SUBSCRIBE in topic_access(device, topic_filter)
    # The only wildcard filter whose every match is subscribable: a "+" for the RRPC message id.
    return topic_filter == f"$rrpc/rxd/{device.product_id}/{device.device_name}/+" and _within_limits(topic_filter)

"""Topics of the IoT Hub device protocol and the device ACL (pure functions, no I/O).

A device connects with client id ``${productId}${deviceName}``: the product id is the first 10 characters
(``[A-Z0-9]{10}``), the device name the rest (``[a-zA-Z0-9:_-]{1,48}``). It may use only topics carrying its
own ids (docs/device-protocol.md#topics). The rules are not written here: they are the rule file ``device_acl.rules``
next to this module (read by :mod:`fleetops.messaging.topic_rules`), which the Mosquitto plugin is compiled
from too, so every broker fleetops supports applies the same ACL. In short:

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

Wildcards (docs/device-protocol.md#authorization): a filter is granted only if *every* topic it can match is
subscribable. With the table above that holds for exactly one shape, ``$rrpc/rxd/{pid}/{dn}/+``, which the rule
file spells as its own rule; any other wildcard filter - every ``#`` (it also matches deeper levels, which no row
allows), ``{pid}/{dn}/+`` (it matches the publish-only ``event``), or a wildcard before the last level - is
refused (SUBACK 0x80). Shared subscriptions (``$share/...``) are refused too."""

from __future__ import annotations

from dataclasses import dataclass

from fleetops.messaging.topic_rules import Access as Access  # re-exported: callers import it from here
from fleetops.messaging.topic_rules import load_rules

RULES = load_rules()
PRODUCT_ID_LENGTH = RULES.product_id.max_length
TOPIC_MAX_BYTES = RULES.topic_max_bytes
TOPIC_MAX_LEVELS = RULES.topic_max_levels

_PRODUCT_ID = RULES.product_id.pattern
_DEVICE_NAME = RULES.device_name.pattern

SHADOW_PREFIX = "$shadow"


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


# --- the device ACL (the rules: device_acl.rules) -------------------------------------------------------


def topic_access(device: DeviceId, topic: str) -> Access:
    """What ``device`` may do with the concrete topic ``topic`` (the first matching rule of the rule file)."""
    if not is_valid_topic_name(topic) or not RULES.within_limits(topic):
        return Access.NONE
    return RULES.topic_access(device.product_id, device.device_name, topic)


def may_publish(device: DeviceId, topic: str) -> bool:
    return Access.PUBLISH in topic_access(device, topic)


def may_subscribe(device: DeviceId, topic_filter: str) -> bool:
    """Whether ``device`` may subscribe to ``topic_filter`` (wildcard rule in the module docstring)."""
    if not is_valid_topic_filter(topic_filter):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return Access.SUBSCRIBE in topic_access(device, topic_filter)
    return RULES.within_limits(topic_filter) and RULES.filter_granted(
        device.product_id, device.device_name, topic_filter
    )

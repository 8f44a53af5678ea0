"""The device ACL probe table, written once: what a device may subscribe to and publish, checked against the
Python rules (tests/unit/test_topics.py), the embedded broker and Mosquitto with the plugin
(tests/integration/test_mosquitto_plugin_acl.py).

``{pid}``/``{dn}`` are the device's own ids, ``{other}`` another device of the same product and ``{node}`` a
fleetops node's client id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Probe:
    action: Literal["subscribe", "publish"]
    topic: str
    allowed: bool

    def render(self, product_id: str, device_name: str, other: str, node: str = "node-1") -> str:
        return self.topic.format(pid=product_id, dn=device_name, other=other, node=node)

    @property
    def id(self) -> str:
        return f"{self.action} {self.topic} -> {'allowed' if self.allowed else 'refused'}"


def _probes(action: Literal["subscribe", "publish"], rows: list[tuple[str, bool]]) -> list[Probe]:
    return [Probe(action, topic, allowed) for topic, allowed in rows]


SUBSCRIBE_PROBES = _probes(
    "subscribe",
    [
        ("{pid}/{dn}/control", True),
        ("{pid}/{dn}/data", True),
        ("{pid}/{dn}/custom_1", True),
        ("$shadow/operation/result/{pid}/{dn}", True),
        ("$template/operation/result/{pid}/{dn}", True),
        ("$ota/update/{pid}/{dn}", True),
        ("$rrpc/rxd/{pid}/{dn}/+", True),
        ("$rrpc/rxd/{pid}/{dn}/42", True),
        ("$broadcast/rxd/{pid}/{dn}", True),
        ("{pid}/{dn}/event", False),  # publish-only
        ("$shadow/operation/{pid}/{dn}", False),  # the request topic: the cloud side reads it
        ("#", False),
        ("+", False),
        ("+/+/control", False),
        ("{pid}/#", False),
        ("{pid}/{dn}/#", False),
        ("{pid}/{dn}/+", False),  # would match the publish-only "event"
        ("{pid}/+/control", False),
        ("{pid}/{other}/control", False),
        ("{pid}/{other}/data", False),
        ("$shadow/operation/result/{pid}/{other}", False),
        ("$shadow/operation/result/+/{dn}", False),
        ("$shadow/#", False),
        ("$rrpc/rxd/{pid}/{other}/+", False),
        ("$rrpc/rxd/{pid}/{dn}/#", False),
        ("$share/group/{pid}/{dn}/control", False),
        ("$fleetops/#", False),
        ("$fleetops/node/{node}/#", False),
        ("$SYS/#", False),
    ],
)

PUBLISH_PROBES = _probes(
    "publish",
    [
        ("{pid}/{dn}/event", True),
        ("{pid}/{dn}/data", True),
        ("{pid}/{dn}/custom_1", True),
        ("$shadow/operation/{pid}/{dn}", True),
        ("$ota/report/{pid}/{dn}", True),
        ("$rrpc/txd/{pid}/{dn}/42", True),
        ("{pid}/{dn}/control", False),  # subscribe-only
        ("$shadow/operation/result/{pid}/{dn}", False),  # replies come from fleetops, never from a device
        ("{pid}/{other}/data", False),
        ("{pid}/{other}/control", False),
        ("$shadow/operation/{pid}/{other}", False),
        ("$shadow/operation/result/{pid}/{other}", False),
        ("$rrpc/rxd/{pid}/{other}/42", False),
        ("$fleetops/ack/{node}", False),
        ("$fleetops/hello/{node}", False),
        ("$fleetops/node/{node}/shadow/1/{pid}/{other}", False),
    ],
)

PROBES = SUBSCRIBE_PROBES + PUBLISH_PROBES

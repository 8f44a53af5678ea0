"""Telling the optional :class:`~fleetops.ports.messaging.DeviceEvents` listener, for every broker fleetops runs
on (the embedded gateway, and the node side of the Mosquitto plugin)."""

from __future__ import annotations

import logging

from fleetops.ports.messaging import DeviceEvents

log = logging.getLogger("fleetops.messaging.events")


def tell(listener: DeviceEvents | None, event: str, *args: object) -> None:
    """Call ``listener.<event>(*args)``; a listener that fails is logged and never stops the broker's work."""
    if listener is None:
        return
    try:
        getattr(listener, event)(*args)
    except Exception:
        log.exception("the device event listener failed on %s", event)

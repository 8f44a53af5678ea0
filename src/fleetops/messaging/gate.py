"""Device authentication with the credential lookup: ``device_auth`` (pure) plus a ``DeviceDirectory``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from fleetops.messaging import device_auth
from fleetops.messaging.device_auth import ConnectDecision
from fleetops.messaging.topics import split_client_id
from fleetops.ports.messaging import DeviceCredentials


class CredentialSource(Protocol):
    """A ``DeviceDirectory``, or the gateway's batching :class:`~fleetops.messaging.batching.CredentialLookup`."""

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None: ...


class DeviceGate:
    """Decides a CONNECT: used by the embedded gateway and by the HTTP auth endpoint."""

    def __init__(self, directory: CredentialSource, clock: Callable[[], float]) -> None:
        self.directory = directory
        self.clock = clock

    async def decide(
        self, client_id: str, username: str | None, password: str | bytes | None, keepalive_s: int
    ) -> ConnectDecision:
        refused = device_auth.precheck_connect(client_id, keepalive_s)
        if refused is not None:
            return refused  # no lookup for a malformed client id
        device = split_client_id(client_id)
        credentials = await self.directory.device_credentials(device.product_id, device.device_name) if device else None
        return device_auth.check_connect(client_id, username, password, keepalive_s, credentials, self.clock())

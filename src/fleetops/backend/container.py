"""The use cases an API handler can reach, built once by the composition root (fleetops.node)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetops.backend.devices import DeviceService
from fleetops.backend.keys import KeyService
from fleetops.backend.messages import MessageService
from fleetops.backend.products import ProductService
from fleetops.backend.shadows import ShadowService
from fleetops.backend.signatures import SignatureGuard
from fleetops.backend.tasks import TaskService


@dataclass(frozen=True)
class Backend:
    keys: KeyService
    products: ProductService
    devices: DeviceService
    shadows: ShadowService
    tasks: TaskService
    messages: MessageService
    signatures: SignatureGuard

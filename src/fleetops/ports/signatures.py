"""The signature ledger: what each signature was first seen with, shared by every node of a deployment.

The official SDK signs only ``content-type;host`` of a TC3 request, so the action, version and region headers
are outside its signature: the ledger binds a signature to the (Action, Version, Region) it was first presented
with, for as long as its timestamp is valid, so that it cannot be presented again with another action on any
node (docs/protocol.md#replay). A v1 request's Nonce is recorded the same way under its own key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Binding:
    """What a signature was presented with (an absent region is the empty string), and by which client address
    (not part of the binding's identity: the same binding from two addresses is the same binding)."""

    action: str
    version: str
    region: str
    client: str = field(default="", compare=False)


class SignatureLedger(Protocol):
    async def bind(self, key: str, binding: Binding, expires_at: int) -> Binding | None:
        """Record ``key`` as bound to ``binding`` until ``expires_at`` (Unix s): None when ``key`` was not bound
        yet (it is now), else the binding it was first seen with (which may equal ``binding``). Atomic across
        nodes: of two nodes binding one key at once, one records it and the other is told what it recorded."""
        ...

    async def prune(self, now_s: int, limit: int) -> int:
        """Forget at most ``limit`` keys that expired before ``now_s``; how many were forgotten."""
        ...

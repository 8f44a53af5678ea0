"""Signatures bound to what they sign (docs/protocol.md#replay).

The official SDK signs only the ``content-type`` and ``host`` headers of a TC3 request: ``X-TC-Action``,
``X-TC-Version`` and ``X-TC-Region`` are outside the signature, so a captured request could be re-sent as
another action. :class:`SignatureGuard` refuses a TC3 signature presented with another (Action, Version, Region)
than the one it was first seen with, on any node (the ledger is in the shared database), until the request's
timestamp leaves the clock-skew window; and a v1 request whose (SecretId, Nonce) was seen already.

In front of the database, each process keeps the bindings it has confirmed (:class:`BindingCache`): a binding
never changes once stored, so a repeated signature (a client's retry, a benchmark replaying one request) is
answered from memory. A key not in memory always goes to the database: the cache only saves round trips, it
never decides what the database has not recorded.

One exception to the binding, for the official SDK: two requests with the same body signed by one key in the
same second have the same signature whatever their actions (CreateDevice then DeleteDevice of one device). The
ledger records the client address that first presented a signature, and the signature stays usable for other
actions **from that address**, on any node: a captured request replayed from elsewhere is refused. What that
does not cover (an attacker sharing the client's address, a proxy whose forwarded address is not believed) is in
docs/protocol.md#replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from fleetops import errors
from fleetops.ports.signatures import Binding, SignatureLedger

log = logging.getLogger("fleetops.api")

# docs/limits.md#signature-ledger
CACHE_ENTRIES: Final = 50_000  # bindings kept in memory per process (about 270 bytes each, 13 MB when full)
PRUNE_INTERVAL_S: Final = 5.0
PRUNE_BATCH: Final = 1000  # rows per DELETE; repeated while a DELETE is full
# expired rows are kept this much longer, so that a node whose clock runs behind the pruning node's still finds
# the binding of a signature its own clock holds valid
PRUNE_GRACE_S: Final = 60
_SHARED_BINDINGS: Final = 1024  # distinct bindings shared by the cache's entries (actions x regions x clients)


class BindingCache:
    """A bounded map of keys to the binding the ledger confirmed for them, each until its expiry.

    Full, it drops the expired entries at its front, then the oldest one. An expired entry is never answered.
    """

    def __init__(self, max_entries: int = CACHE_ENTRIES) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[Binding, int]] = OrderedDict()
        # one instance per distinct (action, version, region, client): Binding's equality leaves the client out
        self._shared: dict[tuple[str, str, str, str], Binding] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now_s: int) -> Binding | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] < now_s:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: str, binding: Binding, expires_at: int, now_s: int) -> None:
        if key in self._entries:
            return  # a binding never changes once stored
        entries = self._entries
        while entries:
            _first, (_binding, expiry) = next(iter(entries.items()))
            if expiry >= now_s and len(entries) < self.max_entries:
                break
            entries.popitem(last=False)
        identity = (binding.action, binding.version, binding.region, binding.client)
        shared = self._shared.get(identity)
        if shared is None and len(self._shared) < _SHARED_BINDINGS:
            shared = self._shared[identity] = binding
        entries[key] = (shared or binding, expires_at)


class SignatureGuard:
    """The replay checks of the API pipeline, and the background pruning of the ledger."""

    def __init__(
        self,
        ledger: SignatureLedger,
        clock: Callable[[], float],
        *,
        bind_tc3: bool = True,
        cache: BindingCache | None = None,
        prune_interval_s: float = PRUNE_INTERVAL_S,
    ) -> None:
        """``bind_tc3`` False (``FLEETOPS_SIGNATURE_BINDING=false``): TC3 signatures are not bound to their action,
        for clients that send two actions with the same body in the same second (docs/protocol.md#replay)."""
        self._ledger = ledger
        self._bind_tc3 = bind_tc3
        self._clock = clock
        self.cache = cache if cache is not None else BindingCache()
        self._prune_interval_s = prune_interval_s
        self._pruner: asyncio.Task[None] | None = None

    async def _first_binding(self, key: str, binding: Binding, expires_at: int) -> Binding | None:
        """None when ``key`` is new (bound now to ``binding``), else what it was bound to first."""
        now_s = int(self._clock())
        known = self.cache.get(key, now_s)
        if known is not None:
            return known
        first = await self._ledger.bind(key, binding, expires_at)
        self.cache.put(key, binding if first is None else first, expires_at, now_s)
        return first

    async def bind_tc3(self, signature: str, binding: Binding, expires_at: int) -> None:
        """Raise ``AuthFailure.SignatureFailure`` when ``signature`` was first seen with another binding from
        another client address (``Binding.client``; an unknown address "" is never the same client)."""
        if not self._bind_tc3:
            return
        first = await self._first_binding("tc3:" + signature, binding, expires_at)
        if first is None or first == binding:
            return
        if binding.client and first.client == binding.client:
            return  # the client that first presented it: two of its actions with one body in one second
        raise _reused_signature(first, binding)

    async def claim_nonce(self, secret_id: str, nonce: int, binding: Binding, expires_at: int) -> None:
        """Raise ``AuthFailure.SignatureFailure`` when this SecretId used ``nonce`` already within the window."""
        first = await self._first_binding(f"v1:{secret_id}:{nonce}", binding, expires_at)
        if first is not None:
            raise _reused_nonce(nonce, first)

    # --- pruning ------------------------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the expired rows now (bounded DELETEs until none is full); how many were deleted."""
        total = 0
        while True:
            deleted = await self._ledger.prune(int(self._clock()) - PRUNE_GRACE_S, PRUNE_BATCH)
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    async def start(self) -> None:
        if self._pruner is None:
            self._pruner = asyncio.create_task(self._prune_loop(), name="fleetops-signature-ledger")

    async def stop(self) -> None:
        pruner, self._pruner = self._pruner, None
        if pruner is not None:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval_s)
            try:
                await self.prune()
            except Exception:  # the database may be away for a while: the rows wait for the next round
                log.exception("pruning the signature ledger failed; retrying in %g s", self._prune_interval_s)


def _described(binding: Binding) -> str:
    return f"{binding.action} (version {binding.version}, region {binding.region or 'none'})"


def _described_zh(binding: Binding) -> str:
    return f"{binding.action}（版本 {binding.version}，地域 {binding.region or '无'}）"


def _reused_signature(first: Binding, now: Binding) -> errors.SignatureFailure:
    return errors.SignatureFailure(
        f"This signature was already used for {_described(first)}; it cannot be used for {_described(now)}. "
        "Each request must be signed anew: X-TC-Action, X-TC-Version and X-TC-Region are outside a signature "
        "whose SignedHeaders are content-type;host, so two requests with the same body signed in the same second "
        "have the same signature. Sign it a second later, or add x-tc-action to SignedHeaders.",
        message_zh=f"该签名已用于 {_described_zh(first)}，不能再用于 {_described_zh(now)}。每个请求都必须重新签名："
        "SignedHeaders 为 content-type;host 时，X-TC-Action、X-TC-Version 和 X-TC-Region 不在签名范围内，"
        "同一秒内签名且请求体相同的两个请求签名相同。请在下一秒再签名，或将 x-tc-action 加入 SignedHeaders。",
    )


def _reused_nonce(nonce: int, first: Binding) -> errors.SignatureFailure:
    return errors.SignatureFailure(
        f"The Nonce {nonce} was already used with this SecretId (by a {first.action} request) within the "
        "signature's validity window. Use a fresh random Nonce for every request and sign it anew.",
        message_zh=f"该 SecretId 在签名有效期内已使用过 Nonce {nonce}（{first.action} 请求）。"
        "请为每个请求使用新的随机 Nonce 并重新签名。",
    )

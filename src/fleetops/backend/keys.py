"""API keys as the protocol layer sees them: the SecretId of a request resolved to its account and key.

Every signed request resolves its SecretId; a read of the database per request cost more than the rest of a
point read action (issue 12). Resolved keys are kept in this process for :data:`KEY_CACHE_TTL_S`, so a key
disabled with ``fleetops keys disable`` (on any node: the change is in the database) is refused everywhere
within that time. An unknown or disabled SecretId is not kept: a client sending random ones cannot grow the
cache, and a new or re-enabled key works at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from fleetops.ports.store import AccountStore, ApiKey

# docs/limits.md: how long a disabled key may still be accepted (under the 0.5 s promised there)
KEY_CACHE_TTL_S: Final = 0.4
# more distinct enabled keys than this in one TTL and the cache starts over (a bound, never reached in practice)
_MAX_CACHED_KEYS: Final = 10_000


class KeyService:
    def __init__(
        self,
        accounts: AccountStore,
        *,
        ttl_s: float = KEY_CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._accounts = accounts
        self._ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ApiKey]] = {}

    async def resolve(self, secret_id: str) -> ApiKey | None:
        """The enabled key with this SecretId, or None (unknown or disabled: the caller cannot tell apart)."""
        now = self._clock()
        cached = self._cache.get(secret_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        key = await self._accounts.get_key(secret_id)
        if key is None or not key.enabled:
            self._cache.pop(secret_id, None)
            return None
        if len(self._cache) >= _MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[secret_id] = (now + self._ttl_s, key)
        return key

"""Per SecretId, per action request rate limit (the vendor documents 100 requests/second per action).

A fixed one-second window per (SecretId, Action): cheap, exact at the documented granularity, and other actions
and keys are unaffected. Counters live in this process: with several nodes each node enforces the limit on the
requests it serves (documented in docs/limits.md).
"""

from __future__ import annotations

from collections.abc import Callable


class RateLimiter:
    def __init__(self, per_second: int, clock: Callable[[], float]) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = -1
        self._counts: dict[tuple[str, str], int] = {}

    @property
    def per_second(self) -> int:
        return self._per_second

    def allow(self, secret_id: str, action: str) -> bool:
        window = int(self._clock())
        if window != self._window:
            self._window = window
            self._counts.clear()
        key = (secret_id, action)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count <= self._per_second

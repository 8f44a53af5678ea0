"""Per SecretId, per action request rate limit (the vendor documents 100 requests/second per action).

A fixed one-second window per (SecretId, Action): cheap, exact at the documented granularity, and other actions
and keys are unaffected. Two ways to count it (docs/limits.md#the-api-rate-limit):

* :class:`LocalRateLimiter` counts in this process: exact for one node (SQLite, where a database file serves one
  node).
* :class:`SharedRateLimiter` holds the limit for the whole deployment (PostgreSQL, several nodes). The window's
  counter lives in the database (``ports.store.RateWindows``), but a request does not go there: the node
  *leases* a slice of the window's quota with one statement, serves requests from it in memory, and asks for
  the next slice when it is used up. The database never grants more than the limit in a window, so the nodes
  together never serve more. Slices start small and double while the node keeps using them, and never take more
  than half of what the deployment has left (but at least ``limit / 32``), so one node alone reaches the limit
  in a few statements and a node that stops leaves little unused. Concurrent requests waiting for a slice share
  one reservation; with a slice in hand a request costs a dict lookup.

When the database cannot be reached (or takes longer than ``timeout_s``), the shared limiter counts the limit on
this node alone for ``retry_s`` (today's per-node bound: N nodes allow up to N times the limit) and says so in
one log line per ``retry_s``: the limit protects the service, it is no reason to fail a request whose action
may not need the database at all.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from fleetops.ports.store import RateWindows

log = logging.getLogger("fleetops.api")

Key = tuple[str, str]  # (SecretId, Action)


class RateLimiter(Protocol):
    @property
    def per_second(self) -> int: ...

    async def allow(self, secret_id: str, action: str) -> bool:
        """Whether this request is within the limit of its (SecretId, Action) in the current second."""
        ...


class LocalRateLimiter:
    """The limit counted in this process alone."""

    def __init__(self, per_second: int, clock: Callable[[], float]) -> None:
        self._per_second = per_second
        self._clock = clock
        self._window = -1
        self._counts: dict[Key, int] = {}

    @property
    def per_second(self) -> int:
        return self._per_second

    async def allow(self, secret_id: str, action: str) -> bool:
        window = int(self._clock())
        if window != self._window:
            self._window = window
            self._counts.clear()
        key = (secret_id, action)
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        return count <= self._per_second


def first_slice(limit: int) -> int:
    """What a node asks for first in a window: a sixteenth of the limit."""
    return max(1, math.ceil(limit / 16))


def next_slice(limit: int, last: int, remaining: int) -> int:
    """The next slice after one of ``last`` requests, with ``remaining`` left to the deployment: twice the last,
    but at most half of what is left (at least ``limit / 32``, and never more than is left)."""
    floor = max(1, math.ceil(limit / 32))
    return max(1, min(remaining, max(floor, min(2 * last, math.ceil(remaining / 2)))))


@dataclass
class _Lease:
    """This node's share of one key's current window."""

    ask: int  # the size of the next slice to ask for
    left: int = 0  # granted to this node and not served yet
    granted: int = 0  # granted to this node in all this window
    exhausted: bool = False  # no more to be had this window: the deployment's quota is given out (or counted here)
    pending: asyncio.Task[None] | None = field(default=None, repr=False)  # the reservation under way


class SharedRateLimiter:
    """The limit for the whole deployment, leased in slices from ``windows``."""

    def __init__(
        self,
        per_second: int,
        clock: Callable[[], float],
        windows: RateWindows,
        *,
        timeout_s: float = 1.0,
        retry_s: float = 10.0,
    ) -> None:
        self._per_second = per_second
        self._clock = clock
        self._windows = windows
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._window = -1
        self._leases: dict[Key, _Lease] = {}
        self._local_until = -math.inf  # the database failed: count here until then
        self._in_flight: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks
        self.reservations = 0  # statements sent (bench and tests)

    @property
    def per_second(self) -> int:
        return self._per_second

    async def allow(self, secret_id: str, action: str) -> bool:
        key = (secret_id, action)
        while True:
            now = self._clock()
            window = int(now)
            if window != self._window:
                self._window = window
                self._leases.clear()
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease(ask=first_slice(self._per_second))
                if now < self._local_until:
                    self._count_here(lease)
            if lease.left > 0:
                lease.left -= 1
                return True
            if lease.exhausted:
                return False
            if lease.pending is None:
                lease.pending = asyncio.create_task(self._reserve(key, window, lease))
                self._in_flight.add(lease.pending)
                lease.pending.add_done_callback(self._in_flight.discard)
            # shielded: a request that is cancelled (its client went away) leaves the reservation to the others
            await asyncio.shield(lease.pending)
            # then round again: the window may have turned meanwhile, and others may have taken the slice

    async def _reserve(self, key: Key, window: int, lease: _Lease) -> None:
        limit = self._per_second
        self.reservations += 1
        try:
            grant = await asyncio.wait_for(self._windows.reserve(*key, window, lease.ask, limit), self._timeout_s)
        except Exception as exc:  # any failure of the database: the limit is counted here for a while
            now = self._clock()
            if now >= self._local_until:  # one line, not one per key whose reservation was under way
                self._log_fallback(exc)
            self._local_until = now + self._retry_s
            self._count_here(lease)
            return
        finally:
            lease.pending = None
        lease.left += grant.granted
        lease.granted += grant.granted
        remaining = limit - grant.used
        if remaining <= 0 or grant.granted == 0:
            lease.exhausted = True
        else:
            lease.ask = next_slice(limit, lease.ask, remaining)

    def _log_fallback(self, exc: Exception) -> None:
        log.warning(
            "the shared rate limit counter failed (%s: %s); each node counts the API rate limit alone "
            "for the next %g s (docs/limits.md#the-api-rate-limit)",
            type(exc).__name__,
            str(exc).splitlines()[0] if str(exc) else "no answer",
            self._retry_s,
        )

    def _count_here(self, lease: _Lease) -> None:
        """The rest of the window from this node's own count: the limit less what it has served already."""
        served = lease.granted - lease.left
        lease.left = max(0, self._per_second - served)
        lease.granted = served + lease.left
        lease.exhausted = True

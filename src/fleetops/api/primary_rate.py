"""The API rate limit of one SQLite node with API workers (``fleetops serve --workers N``): the primary holds the
windows' counters in memory, and its workers lease their slices from it over the forwarding socket
(docs/limits.md#the-api-rate-limit).

The policy is :class:`~fleetops.api.ratelimit.SharedRateLimiter`'s, as on PostgreSQL; only where the counter of
each (SecretId, Action) lives differs. On PostgreSQL it is a row of ``rate_windows``, shared by every node. On
SQLite a database file serves one node, so its processes need no row: a reservation there would be a write,
waiting for SQLite's one write lock behind task batches and shadow writes (over the limiter's 1 s timeout, then
its fallback to each process counting alone, with 12 writers at once in the tests). :class:`RateWindowsInMemory`
grants exactly as the upsert of ``store/rate_windows.py`` does; the primary's own limiter calls it directly, a
worker's through :class:`RateWindowsOfPrimary`, one round trip per slice.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from fleetops.api.forwarding import Forwarder, ForwardingFailed
from fleetops.ports.store import Grant

RATE_PATH: Final = "/_fleetops/rate-reserve"  # served on the forwarding socket only


class RateWindowsInMemory:
    """:class:`~fleetops.ports.store.RateWindows` in this process: one counter per (SecretId, Action), reused
    from window to window (as the table's rows are, one per key and action ever called)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], tuple[int, int]] = {}  # (window, used)

    async def reserve(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        return self.reserve_now(secret_id, action, window_s, asked, limit)

    def reserve_now(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        fresh = max(0, min(asked, limit))  # a new window (or a new counter): what was asked, up to the limit
        row = self._rows.get((secret_id, action))
        if row is None or window_s > row[0]:
            self._rows[secret_id, action] = (window_s, fresh)
            return Grant(fresh, fresh)
        window, used = row  # a process whose clock is behind is charged to the newer window
        left = max(0, min(asked, limit - used))
        self._rows[secret_id, action] = (window, used + left)
        return Grant(left, used + left)

    def answer(self, body: bytes) -> bytes:
        """A worker's reservation (``RATE_PATH``) and its grant, as JSON; ValueError when it is not one."""
        try:
            asked: Any = orjson.loads(body)
            grant = self.reserve_now(
                str(asked["secret_id"]),
                str(asked["action"]),
                int(asked["window_s"]),
                int(asked["asked"]),
                int(asked["limit"]),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a reservation: {exc}") from exc
        return orjson.dumps({"granted": grant.granted, "used": grant.used})


class RateWindowsOfPrimary:
    """A worker's :class:`~fleetops.ports.store.RateWindows`: the primary's :class:`RateWindowsInMemory`, asked
    over the forwarding socket. A failure raises, and the limiter counts alone for a while, as it does when the
    database fails on PostgreSQL."""

    def __init__(self, forwarder: Forwarder) -> None:
        self._forwarder = forwarder

    async def reserve(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        request = {"secret_id": secret_id, "action": action, "window_s": window_s, "asked": asked, "limit": limit}
        answer = await self._forwarder.post(RATE_PATH, orjson.dumps(request))
        if answer.status != 200:
            raise ForwardingFailed(f"the primary refused a reservation (HTTP {answer.status})", "主进程拒绝了预留")
        granted: Any = orjson.loads(answer.body)
        return Grant(int(granted["granted"]), int(granted["used"]))

"""api/ratelimit.py: the leased quota on a fake shared counter and a fake clock, with 1-3 simulated nodes."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from fleetops.api.ratelimit import LocalRateLimiter, SharedRateLimiter, first_slice, next_slice
from fleetops.ports.store import Grant
from tests.support import FakeClock


class FakeWindows:
    """``ports.store.RateWindows`` as the database does it (store/rate_windows.py), with the statements counted;
    ``delay_s`` makes each reservation take that long (on the event loop), ``fail`` makes it raise."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[int, int]] = {}  # key -> (window, used)
        self.granted: dict[tuple[str, str, int], int] = {}  # what was granted per key and window, in all
        self.statements = 0
        self.delay_s = 0.0
        self.fail: Exception | None = None

    async def reserve(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        self.statements += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        key = (secret_id, action)
        window, used = self.rows.get(key, (window_s, 0))
        if window_s > window:
            window, used = window_s, 0
        grant = max(0, min(asked, limit - used))
        self.rows[key] = (window, used + grant)
        self.granted[(secret_id, action, window)] = self.granted.get((secret_id, action, window), 0) + grant
        return Grant(grant, used + grant)


def nodes(count: int, limit: int, clock: FakeClock, windows: FakeWindows) -> list[SharedRateLimiter]:
    return [SharedRateLimiter(limit, clock, windows) for _ in range(count)]


async def served(limiter: SharedRateLimiter, n: int, key: tuple[str, str] = ("AKID1", "DescribeDevice")) -> int:
    return sum([await limiter.allow(*key) for _ in range(n)])


def test_slices_grow_and_never_take_more_than_half_of_what_is_left() -> None:
    assert first_slice(100) == 7 and first_slice(5) == 1
    assert next_slice(100, 7, 93) == 14
    assert next_slice(100, 28, 51) == 26  # half of what is left, not twice the last
    assert next_slice(100, 13, 6) == 4  # at least limit / 32
    assert next_slice(100, 4, 2) == 2  # never more than is left
    assert next_slice(1, 1, 1) == 1


async def test_one_node_alone_reaches_the_limit_in_a_few_statements() -> None:
    clock, windows = FakeClock(), FakeWindows()
    (node,) = nodes(1, 100, clock, windows)
    assert await served(node, 150) == 100
    assert windows.statements <= 8
    # refused requests after the quota is given out send nothing more
    assert await served(node, 1000) == 0
    assert windows.statements <= 8


async def test_a_large_limit_costs_one_statement_per_window() -> None:
    clock, windows = FakeClock(), FakeWindows()
    (node,) = nodes(1, 1_000_000, clock, windows)
    for _ in range(5):
        assert await served(node, 3000) == 3000
        clock.advance(1)
    assert windows.statements == 5


@pytest.mark.parametrize("count", [2, 3])
async def test_nodes_together_never_exceed_the_limit(count: int) -> None:
    clock, windows = FakeClock(), FakeWindows()
    fleet = nodes(count, 100, clock, windows)
    rng = random.Random(count)
    for _ in range(5):
        total = 0
        for _ in range(600):  # requests arrive at random nodes, more than the limit in all
            total += await rng.choice(fleet).allow("AKID1", "DescribeDevice")
        assert total == 100  # all of it used: nobody is left holding an unused slice when everyone keeps asking
        assert max(windows.granted.values()) <= 100
        clock.advance(1)
    assert windows.statements <= 5 * 8 * count


async def test_a_node_that_stops_leaves_little_to_the_others() -> None:
    clock, windows = FakeClock(), FakeWindows()
    a, b = nodes(2, 100, clock, windows)
    assert await served(a, 30) == 30  # a holds part of its last slice unused, then goes quiet
    assert await served(b, 200) == 100 - 49  # a was granted 7 + 14 + 28 and keeps 19 of it unused
    assert windows.granted[("AKID1", "DescribeDevice", int(clock()))] <= 100


async def test_a_new_window_resets_and_other_keys_and_actions_are_apart() -> None:
    clock, windows = FakeClock(), FakeWindows()
    a, b = nodes(2, 5, clock, windows)
    assert await served(a, 4) + await served(b, 4) == 5
    assert await served(a, 3, ("AKID1", "DescribeProduct")) == 3
    assert await served(b, 7, ("AKID2", "DescribeDevice")) == 5
    clock.advance(1)
    assert await served(b, 10) == 5


async def test_concurrent_requests_share_one_reservation() -> None:
    clock, windows = FakeClock(), FakeWindows()
    windows.delay_s = 0.01
    (node,) = nodes(1, 1000, clock, windows)
    results = await asyncio.gather(*(node.allow("AKID1", "DescribeDevice") for _ in range(50)))
    assert all(results)
    assert windows.statements == 1  # 63 granted at once: 50 waiting requests, one statement


async def test_the_window_turning_during_a_reservation_is_not_served_from_the_old_slice() -> None:
    clock, windows = FakeClock(), FakeWindows()
    (node,) = nodes(1, 5, clock, windows)
    assert await served(node, 5) == 5
    assert not await node.allow("AKID1", "DescribeDevice")
    clock.advance(1)
    assert await served(node, 6) == 5


async def test_a_failing_database_falls_back_to_counting_here_with_one_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock, windows = FakeClock(), FakeWindows()
    (node,) = nodes(1, 5, clock, windows)
    assert await served(node, 2) == 2  # a slice of 1, then 2: one left in hand
    windows.fail = OSError("Connect call failed ('127.0.0.1', 5432)")
    windows.delay_s = 0.01  # three keys' reservations fail while under way together: still one line
    with caplog.at_level(logging.WARNING, logger="fleetops.api"):
        others = [("AKID1", "DescribeProduct"), ("AKID2", "DescribeDevice")]
        counts = await asyncio.gather(served(node, 10), *(served(node, 7, key) for key in others))
        assert counts == [3, 5, 5]  # the one in hand, then its own count: 5 in the window
        windows.delay_s = 0
        clock.advance(1)
        for _ in range(5):  # within retry_s: counted here, no statement, no new line
            assert await served(node, 10) == 5
            clock.advance(1)
    lines = [r.getMessage() for r in caplog.records if "rate limit counter failed" in r.getMessage()]
    assert len(lines) == 1 and "OSError" in lines[0]
    assert windows.statements == 5
    windows.fail = None
    clock.advance(10)
    assert await served(node, 10) == 5
    assert windows.statements > 5  # back on the shared counter


async def test_a_database_that_does_not_answer_is_given_up_after_the_timeout() -> None:
    clock, windows = FakeClock(), FakeWindows()
    windows.delay_s = 5
    node = SharedRateLimiter(5, clock, windows, timeout_s=0.05)
    assert await served(node, 6) == 5


async def test_local_counting() -> None:
    clock = FakeClock()
    limiter = LocalRateLimiter(3, clock)
    assert [await limiter.allow("A", "X") for _ in range(4)] == [True, True, True, False]
    assert await limiter.allow("A", "Y") and await limiter.allow("B", "X")
    clock.advance(1)
    assert await limiter.allow("A", "X")

"""The rate limit of a SQLite node with API workers (api/primary_rate.py): the primary's counters grant exactly as
the shared table does, to its own limiter and, over the forwarding socket, to its workers'
(docs/limits.md#the-api-rate-limit)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from fleetops.api.forwarding import ForwardedFront, Forwarder
from fleetops.api.primary_rate import RATE_PATH, RateWindowsInMemory, RateWindowsOfPrimary
from fleetops.api.ratelimit import SharedRateLimiter
from fleetops.ports.store import Grant
from fleetops.workers import ForwardingServer, ForwardingSocket
from tests.support import RESERVATIONS, FakeClock

W = 1_700_000_000


async def test_grants_stop_at_the_limit_and_a_new_window_starts_again() -> None:
    # the same grants as the table's (tests/integration/test_rate_windows.py)
    store = RateWindowsInMemory()
    for asked, granted in RESERVATIONS:
        assert await store.reserve(*asked) == Grant(*granted), asked


async def test_the_primary_and_its_workers_serve_at_most_the_limit_between_them(tmp_path: Path) -> None:
    windows = RateWindowsInMemory()
    forwarding = ForwardingSocket.open(tmp_path)
    server = ForwardingServer(ForwardedFront(_nothing, internal={RATE_PATH: windows.answer}, forwarded=lambda: None))
    serving = asyncio.create_task(server.serve(sockets=[forwarding.sock]))
    forwarders = [Forwarder(str(forwarding.path)) for _ in range(2)]
    try:
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        clock = FakeClock(float(W))
        limiters = [SharedRateLimiter(100, clock, windows, timeout_s=30)] + [
            SharedRateLimiter(100, clock, RateWindowsOfPrimary(forwarder), timeout_s=30) for forwarder in forwarders
        ]

        async def hammer(limiter: SharedRateLimiter) -> int:
            return sum(await asyncio.gather(*(limiter.allow("AKID1", "DescribeTask") for _ in range(200))))

        for _ in range(3):
            served = await asyncio.gather(*(hammer(limiter) for limiter in limiters))
            assert sum(served) == 100, served
            assert all(served), served  # the workers' reservations went through the socket
            clock.advance(1)
    finally:
        for forwarder in forwarders:
            forwarder.close()
        server.should_exit = True
        await serving
        forwarding.remove()


async def test_a_worker_whose_primary_does_not_answer_counts_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = SharedRateLimiter(5, FakeClock(float(W)), RateWindowsOfPrimary(Forwarder(str(tmp_path / "gone.sock"))))
    with caplog.at_level(logging.WARNING, "fleetops.api"):
        assert [await limiter.allow("AKID1", "DescribeTask") for _ in range(7)] == [True] * 5 + [False] * 2
    assert "the shared rate limit counter failed (ForwardingFailed: cannot reach the primary process" in caplog.text


async def _nothing(scope: object, receive: object, send: object) -> None:
    raise AssertionError("only the rate path is asked")

"""store/rate_windows.py: the shared counter of the API rate limit, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fleetops.api.ratelimit import SharedRateLimiter
from fleetops.ports.store import Grant
from fleetops.store.database import open_database
from fleetops.store.rate_windows import RateWindowStore
from tests.support import RESERVATIONS, FakeClock, free_port, postgres_database

W = 1_700_000_000


async def test_grants_stop_at_the_limit_and_a_new_window_starts_again(database_url: str) -> None:
    db = open_database(database_url)
    try:
        store = RateWindowStore(db)
        for asked, granted in RESERVATIONS:
            assert await store.reserve(*asked) == Grant(*granted), asked
        async with db.connect() as conn:
            rows = (await conn.exec_driver_sql("SELECT count(*) FROM rate_windows")).scalar_one()
        assert rows == 3
    finally:
        await db.dispose()


@pytest.mark.postgres
async def test_two_nodes_reserving_at_once_never_get_more_than_the_limit(_migrated_templates: Path) -> None:
    # several nodes share a database on PostgreSQL only (docs/deployment.md)
    with postgres_database() as url:
        await _two_nodes(url)


async def _two_nodes(url: str) -> None:
    dbs = [open_database(url), open_database(url)]  # two pools, as two nodes have
    try:
        clock = FakeClock(float(W))
        # a generous timeout: this is about the counter under concurrency, not about a slow machine's fallback
        nodes = [SharedRateLimiter(100, clock, RateWindowStore(db), timeout_s=30) for db in dbs]
        for db in dbs:  # each pool connected first, so that both nodes race from the first slice
            await RateWindowStore(db).reserve("AKIDwarm", "DescribeDevice", W, 1, 1)

        async def hammer(node: SharedRateLimiter) -> int:
            return sum(await asyncio.gather(*(node.allow("AKID1", "DescribeDevice") for _ in range(300))))

        for _ in range(3):
            served = await asyncio.gather(*(hammer(node) for node in nodes))
            assert sum(served) == 100, served
            clock.advance(1)
        assert sum(node.reservations for node in nodes) <= 3 * 2 * 8
    finally:
        for db in dbs:
            await db.dispose()


async def test_a_database_that_cannot_be_reached_leaves_the_limit_to_each_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = open_database(f"postgresql://postgres@127.0.0.1:{free_port()}/fleetops")  # nothing listens there
    try:
        node = SharedRateLimiter(5, FakeClock(float(W)), RateWindowStore(db))
        with caplog.at_level("WARNING", logger="fleetops.api"):
            assert [await node.allow("AKID1", "DescribeDevice") for _ in range(7)] == [True] * 5 + [False] * 2
        assert any("the shared rate limit counter failed" in r.getMessage() for r in caplog.records)
    finally:
        await db.dispose()

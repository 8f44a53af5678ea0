"""The API rate limit's cost on one node: ``allow`` calls per second, and statements sent to the database.

    .venv/bin/python bench/ratelimit.py --calls 1000000 --database postgresql

In one process, on one event loop, as the API endpoint calls it (docs/limits.md#the-api-rate-limit):

* ``LocalRateLimiter`` (SQLite: counted in memory) and ``SharedRateLimiter`` on the real ``rate_windows`` counter
  (slices leased from the database), each called ``--calls`` times for one key with the limit raised to
  ``--limit`` (the hot loop: a slice in hand), first from one task, then from ``--tasks`` concurrent tasks;
* the shared limiter with the default limit (100/s) hammered for ``--seconds`` s by one key: requests served
  and refused per second, and the statements that cost.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from benchdb import bench_database

from fleetops.api.ratelimit import LocalRateLimiter, RateLimiter, SharedRateLimiter
from fleetops.store.database import open_migrated_database
from fleetops.store.rate_windows import RateWindowStore


async def hot_loop(limiter: RateLimiter, calls: int, tasks: int) -> float:
    """Calls per second of ``allow`` for one key, split over ``tasks`` concurrent tasks."""

    async def run(n: int) -> None:
        for _ in range(n):
            await limiter.allow("AKIDbench", "DescribeProducts")

    started = time.perf_counter()
    await asyncio.gather(*(run(calls // tasks) for _ in range(tasks)))
    return (calls // tasks * tasks) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="postgresql", help="sqlite | postgresql | a database URL")
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--tasks", type=int, default=50)
    parser.add_argument("--limit", type=int, default=1_000_000_000)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    with bench_database(args.database) as url:
        db = await open_migrated_database(url)
        try:
            windows = RateWindowStore(db)
            local = LocalRateLimiter(args.limit, time.time)
            for tasks in (1, args.tasks):
                rate = await hot_loop(local, args.calls, tasks)
                print(f"local, {tasks} task(s): {rate:,.0f} allow/s")
            for tasks in (1, args.tasks):
                shared = SharedRateLimiter(args.limit, time.time, windows)
                started = time.perf_counter()
                rate = await hot_loop(shared, args.calls, tasks)
                elapsed_s = time.perf_counter() - started
                print(
                    f"shared, {tasks} task(s): {rate:,.0f} allow/s, {shared.reservations} reservation(s) in "
                    f"{elapsed_s:.2f} s"
                )
            shared = SharedRateLimiter(100, time.time, windows)
            served = refused = 0
            await asyncio.sleep(1 - time.time() % 1)  # whole windows
            deadline = int(time.time()) + args.seconds
            while time.time() < deadline:
                if await shared.allow("AKIDhammer", "DescribeProducts"):
                    served += 1
                else:
                    refused += 1
                    await asyncio.sleep(0)
            print(
                f"shared, limit 100/s hammered for {args.seconds} whole seconds: {served / args.seconds:.0f} served/s, "
                f"{refused / args.seconds:,.0f} refused/s, {shared.reservations / args.seconds:.1f} reservations/s"
            )
        finally:
            await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())

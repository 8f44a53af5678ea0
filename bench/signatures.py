"""What the signature ledger costs (docs/protocol.md#replay, docs/limits.md#signature-ledger).

    .venv/bin/python bench/signatures.py --database sqlite --binds 5000 --concurrency 1 8

On a fresh migrated database (SQLite temp file, or a fresh PostgreSQL database with ``--database postgresql``):

* ``--binds`` new signatures bound through the store (``SqlSignatureLedger.bind``: one INSERT ... ON CONFLICT
  each), sequentially and with each ``--concurrency`` in flight; prints binds/s and p50 / p99 latency;
* the same signatures again through ``SignatureGuard`` (a client's retries: answered by the in-memory cache);
* the memory of a full in-memory cache (``tracemalloc``), per entry.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from benchdb import bench_database

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fleetops.backend.signatures import CACHE_ENTRIES, BindingCache, SignatureGuard  # noqa: E402
from fleetops.ports.signatures import Binding  # noqa: E402
from fleetops.store.database import open_migrated_database  # noqa: E402
from fleetops.store.signatures import SqlSignatureLedger  # noqa: E402

BINDING = Binding("DescribeDeviceShadow", "2018-06-14", "ap-guangzhou")


def _keys(count: int) -> list[str]:
    return ["tc3:" + secrets.token_hex(32) for _ in range(count)]


async def _bind_all(ledger: SqlSignatureLedger, keys: list[str], concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    expires_at = int(time.time()) + 300
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            started = time.perf_counter()
            assert await ledger.bind(key, BINDING, expires_at) is None
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


def _cache_bytes_per_entry(entries: int) -> float:
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = BindingCache(max_entries=entries)
    for key in _keys(entries):
        # a new Binding per request, as the API builds one: the cache shares equal ones
        cache.put(key, Binding(*(str(part) for part in ("DescribeDevice", "2018-06-14", "ap-guangzhou"))), 2**40, 0)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(cache) == entries
    return (after - before) / entries


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="sqlite", help="sqlite, postgresql or a URL")
    parser.add_argument("--binds", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    with bench_database(args.database) as url:
        db = await open_migrated_database(url)
        try:
            ledger = SqlSignatureLedger(db)
            for concurrency in args.concurrency:
                keys = _keys(args.binds)
                elapsed, latencies = await _bind_all(ledger, keys, concurrency)
                q = statistics.quantiles(latencies, n=100)
                print(
                    f"{args.database} new signatures, concurrency {concurrency}: {len(keys) / elapsed:,.0f} binds/s, "
                    f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms"
                )
            guard = SignatureGuard(ledger, time.time)
            keys = _keys(min(args.binds, CACHE_ENTRIES))
            expires_at = int(time.time()) + 300
            for key in keys:
                await guard.bind_tc3(key, BINDING, expires_at)
            started = time.perf_counter()
            for _ in range(10):
                for key in keys:
                    await guard.bind_tc3(key, BINDING, expires_at)
            elapsed = time.perf_counter() - started
            print(f"repeated signatures (in-memory cache): {10 * len(keys) / elapsed:,.0f} checks/s")
        finally:
            await db.dispose()
    print(f"in-memory cache: {_cache_bytes_per_entry(CACHE_ENTRIES):.0f} bytes per entry ({CACHE_ENTRIES:,} entries)")


if __name__ == "__main__":
    asyncio.run(main())

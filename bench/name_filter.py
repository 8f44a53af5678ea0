"""Names per second of NameFilter.filter over synthetic device names (default 1M), median of 3 runs.

Usage: python bench/name_filter.py [--names N] [--reference]

``--reference`` also times google-re2's public ``search``, the obvious way the filter is not written.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import re2

from fleetops.domain.name_filter import compile_name_filter

PATTERNS = ["", "^lamp-1", "door$", "(a+)+$", "^lamp-[0-9]+$", "(?i)DOOR"]
KINDS = ["lamp", "door", "sensor", "gw", "aaaa"]


def synthetic_names(count: int) -> list[str]:
    rng = random.Random(42)
    names = []
    for i in range(count):
        kind = rng.choice(KINDS)
        suffix = "-door" if i % 3 == 0 else ""
        names.append(f"{kind}-{i}{suffix}")
    return names


def median_seconds(run: Callable[[list[str]], object], names: list[str], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(names)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--names", type=int, default=1_000_000)
    parser.add_argument("--reference", action="store_true")
    args = parser.parse_args()
    names = synthetic_names(args.names)
    print(f"{'pattern':<16} {'matched':>9} {'seconds':>8} {'names/s':>12}")
    for pattern in PATTERNS:
        name_filter = compile_name_filter(pattern)
        matched = len(name_filter.filter(names))
        seconds = median_seconds(name_filter.filter, names)
        print(f"{pattern!r:<16} {matched:>9} {seconds:>8.3f} {len(names) / seconds:>12,.0f}")
        if args.reference and pattern:
            search = re2.compile(pattern).search

            def public_api(names: list[str], search: Callable[[str], object] = search) -> list[str]:
                return [name for name in names if search(name)]

            seconds = median_seconds(public_api, names)
            print(f"{'  re2.search':<16} {'':>9} {seconds:>8.3f} {len(names) / seconds:>12,.0f}")


if __name__ == "__main__":
    main()

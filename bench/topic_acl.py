"""Device ACL decisions per second in Python (``topic_access`` / ``may_subscribe``), median of 3 runs.

Usage: python bench/topic_acl.py [--checks N]

The embedded broker and the EMQX ACL endpoint ask ``may_publish`` for every device PUBLISH and
``may_subscribe`` for every SUBSCRIBE filter; the mix below is what devices send (their own topics, mostly
allowed) plus topics of other devices and malformed ones (refused).
"""

from __future__ import annotations

import argparse
import statistics
import time

from fleetops.messaging.topics import DeviceId, may_publish, may_subscribe, topic_access

DEVICE = DeviceId("ABCDE12345", "lamp01")
TOPICS = [
    "ABCDE12345/lamp01/control",
    "ABCDE12345/lamp01/event",
    "ABCDE12345/lamp01/data",
    "ABCDE12345/lamp01/custom_topic-1",
    "$shadow/operation/ABCDE12345/lamp01",
    "$shadow/operation/result/ABCDE12345/lamp01",
    "$rrpc/rxd/ABCDE12345/lamp01/12345",
    "$ota/report/ABCDE12345/lamp01",
    "ABCDE12345/lamp02/control",
    "$shadow/operation/ABCDE12345/lamp02",
    "a/b/c/d/e/f",
    "#",
]
FILTERS = ["$rrpc/rxd/ABCDE12345/lamp01/+", "ABCDE12345/lamp01/control", "ABCDE12345/+/control", "#"]


def rate(fn: object, items: list[str], checks: int) -> float:
    assert callable(fn)
    rounds = max(1, checks // len(items))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            for item in items:
                fn(DEVICE, item)
        times.append(time.perf_counter() - start)
    return rounds * len(items) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checks", type=int, default=300_000)
    args = parser.parse_args()
    print(f"{'function':<16} {'checks/s':>12}")
    for name, fn, items in (
        ("topic_access", topic_access, TOPICS),
        ("may_publish", may_publish, TOPICS),
        ("may_subscribe", may_subscribe, TOPICS + FILTERS),
    ):
        print(f"{name:<16} {rate(fn, items, args.checks):>12,.0f}")


if __name__ == "__main__":
    main()

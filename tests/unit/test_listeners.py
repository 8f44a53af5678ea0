"""What the listeners share (fleetops.listeners): which connection is evicted and when one is refused, log lines
that stay one per interval however often their event repeats, accept() failures on both event loops, and the
warning when the connection caps do not fit the file limit."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from fleetops import listeners
from fleetops.event_loop import loop_factory
from fleetops.listeners import (
    RESERVED_FILES,
    Acceptor,
    ConnectionTable,
    LimitedLog,
    LimitedLogFilter,
    warn_if_over_file_limit,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


def table(max_connections: int, clock: Clock | None = None) -> ConnectionTable[Conn]:
    limited = LimitedLog(logging.getLogger("test"), 10, clock or Clock())
    return ConnectionTable("HTTP", max_connections, limited, setting="FLEETOPS_HTTP_MAX_CONNECTIONS", owed="request")


def test_a_full_listener_evicts_the_connection_waiting_longest() -> None:
    t = table(3)
    a, b, c, d = Conn("a"), Conn("b"), Conn("c"), Conn("d")
    for conn in (a, b, c):
        assert t.admit(conn)
    t.busy(a)  # a's request arrived whole: it is not evicted
    assert t.admit(d)
    assert (a.evicted, b.evicted, c.evicted) == (False, True, False)
    assert (t.open_connections, t.waiting_connections, t.evicted) == (3, 2, 1)


def test_a_connection_waiting_again_goes_to_the_back() -> None:
    t = table(2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    t.admit(a)
    t.admit(b)
    t.busy(a)
    t.waiting(a)  # its response is done: it waits for the next request, as the newest
    assert t.admit(c)
    assert (a.evicted, b.evicted) == (False, True)


def test_a_served_connection_waiting_again_goes_after_every_never_served_one() -> None:
    t = table(3)
    a, b, c, d, e = Conn("a"), Conn("b"), Conn("c"), Conn("d"), Conn("e")
    t.admit(a)
    t.busy(a)
    t.waiting(a)  # a keep-alive client between two requests, then a flood of half-sent connections
    t.admit(b)
    t.admit(c)
    assert t.admit(d) and b.evicted and not a.evicted
    assert t.oldest_waiting() is c
    t.busy(c)
    t.busy(d)
    assert t.admit(e) and a.evicted  # none never served is waiting: the served one goes
    assert (t.open_connections, t.waiting_connections, t.evicted) == (3, 1, 2)


def test_a_listener_full_of_requests_in_progress_refuses() -> None:
    t = table(2)
    a, b, c = Conn("a"), Conn("b"), Conn("c")
    for conn in (a, b):
        t.admit(conn)
        t.busy(conn)
    assert not t.admit(c)
    assert (t.refused, t.open_connections) == (1, 2)
    assert not a.evicted and not b.evicted
    t.closed(a)
    assert t.admit(c)


def test_closed_and_evicted_connections_are_forgotten() -> None:
    t = table(2)
    a, b = Conn("a"), Conn("b")
    t.admit(a)
    t.closed(a)
    t.closed(a)  # twice (a TLS failure and the connection's loss both report it): counted once
    t.waiting(a)  # a late call for a closed connection does not bring it back
    assert (t.open_connections, t.waiting_connections) == (0, 0)
    t.admit(b)
    assert t.evict_oldest_waiting() and b.evicted
    assert not t.evict_oldest_waiting()


def test_limited_log_says_once_per_interval_how_often(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    limited = LimitedLog(logging.getLogger("test.limited"), 10, clock)
    with caplog.at_level(logging.INFO, logger="test.limited"):
        assert limited("k", logging.WARNING, "full %s", "x")
        for _ in range(499):
            assert not limited("k", logging.WARNING, "full %s", "x")
        assert limited("other", logging.WARNING, "other")  # another key has its own interval
        clock.now += 10
        assert limited("k", logging.WARNING, "full %s", "x")
    assert [r.getMessage() for r in caplog.records] == ["full x", "other", "full x (500 times in the last 10 s)"]


def test_the_filter_lets_a_repeated_uvicorn_warning_through_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("test.uvicorn")
    f = LimitedLogFilter(LimitedLog(logger, 10, clock), frozenset({"Invalid HTTP request received."}))
    logger.addFilter(f)
    try:
        with caplog.at_level(logging.INFO, logger="test.uvicorn"):
            for _ in range(1000):
                logger.warning("Invalid HTTP request received.")
            logger.warning("something else")
            clock.now += 11
            logger.warning("Invalid HTTP request received.")
    finally:
        logger.removeFilter(f)
    assert [r.getMessage() for r in caplog.records] == [
        "Invalid HTTP request received.",
        "something else",
        "Invalid HTTP request received. (1000 times in the last 10 s)",
    ]


def test_caps_that_do_not_fit_the_file_limit_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    caps = {"FLEETOPS_HTTP_MAX_CONNECTIONS": 1000, "FLEETOPS_MQTT_MAX_CONNECTIONS x 2": 20_000}
    with caplog.at_level(logging.WARNING, logger="fleetops"):
        warn_if_over_file_limit(21_000 + RESERVED_FILES, caps)
        assert not caplog.records
        warn_if_over_file_limit(20_000, caps)
    (line,) = [r.getMessage() for r in caplog.records]
    assert "21000 connections" in line and "FLEETOPS_MQTT_MAX_CONNECTIONS x 2 20000" in line and "20000 files" in line


class FailingListener(socket.socket):
    """A listening socket whose accept() first fails with each of ``failures`` (errno values), as the kernel's
    would for a process out of descriptors."""

    failures: list[int]

    def accept(self) -> tuple[socket.socket, object]:
        if self.failures:
            code = self.failures.pop(0)
            raise OSError(code, f"failure {errno.errorcode[code]}")
        return super().accept()


@pytest.mark.parametrize("event_loop", ["asyncio", "uvloop"])
def test_accept_failures_are_one_line_each_interval_free_a_descriptor_and_accepting_resumes(
    event_loop: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on asyncio's loop and uvloop's, whose own accept loops report such failures differently (or not
    at all): the Acceptor calls accept() itself."""
    monkeypatch.setattr(listeners, "ACCEPT_PAUSE_S", 0.001)
    t = table(10)
    half_open = [Conn(name) for name in "abcd"]
    for conn in half_open:
        t.admit(conn)

    async def run() -> socket.socket:
        accepted: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        with FailingListener(socket.AF_INET, socket.SOCK_STREAM) as listening:
            listening.failures = [errno.EMFILE, errno.EMFILE, errno.ENFILE, errno.EPERM]
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            acceptor = Acceptor(t, accepted.set_result)
            acceptor.start([listening])
            with socket.create_connection(listening.getsockname()):
                try:
                    return await asyncio.wait_for(accepted, 10)
                finally:
                    acceptor.stop()

    factory = loop_factory(event_loop)
    with caplog.at_level(logging.INFO), asyncio.Runner(loop_factory=factory) as runner:
        with runner.run(run()) as sock:
            assert type(runner.get_loop()).__module__.startswith(event_loop)
            assert not sock.getblocking() and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    failed = [r for r in caplog.records if "accept() failed" in r.getMessage()]
    # one line for the three failures for lack of descriptors (once per interval), one for the other failure
    assert [r.levelno for r in failed] == [logging.ERROR, logging.WARNING], [r.getMessage() for r in failed]
    assert "failure EMFILE" in failed[0].getMessage() and "FLEETOPS_HTTP_MAX_CONNECTIONS" in failed[0].getMessage()
    assert "EPERM" in failed[1].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    # each failure for lack of descriptors closed the connection waiting longest; the other failure none
    assert [conn.evicted for conn in half_open] == [True, True, True, False]

"""The HTTP listener's bookkeeping (fleetops.http_limits): which connection is evicted, when one is refused, and
accept() errors as one line per interval."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from fleetops.http_limits import ConnectionTable, install_accept_error_handler
from fleetops.listeners import LimitedLog


class Conn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.evicted = False

    def evict(self) -> None:
        self.evicted = True

    def __repr__(self) -> str:
        return self.name


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def table(max_connections: int, clock: Clock | None = None) -> ConnectionTable:
    return ConnectionTable("HTTP", max_connections, LimitedLog(logging.getLogger("test"), 10, clock or Clock()))


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


async def test_accept_errors_are_one_line_without_traceback_and_free_a_descriptor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    t = table(10)
    half_open = [Conn("a"), Conn("b")]
    for conn in half_open:
        t.admit(conn)
    with socket.socket() as listening, socket.socket() as other:
        install_accept_error_handler(loop, {listening.fileno(): t}, t.limited_log)
        try:
            with caplog.at_level(logging.INFO):
                for _ in range(300):  # what asyncio reports while the process is out of descriptors
                    loop.call_exception_handler(
                        {
                            "message": "socket.accept() out of system resource",
                            "exception": OSError(errno.EMFILE, "Too many open files"),
                            "socket": listening,
                        }
                    )
                # anything else still reaches the previous handler (asyncio's default: logged with its traceback)
                loop.call_exception_handler(
                    {"message": "unrelated", "exception": OSError(errno.EMFILE, "x"), "socket": other}
                )
        finally:
            loop.set_exception_handler(None)
    accept_lines = [r for r in caplog.records if "accept() failed" in r.getMessage()]
    assert len(accept_lines) == 1 and accept_lines[0].exc_info is None
    assert "Too many open files" in accept_lines[0].getMessage()
    assert all(conn.evicted for conn in half_open)  # each failure freed a descriptor while one was waiting
    assert any(r.getMessage().startswith("unrelated") for r in caplog.records)

"""The HTTP listener (fleetops.http_limits): accept() errors as one line per interval that frees a descriptor.
Its deadlines, caps and TLS against a live server: tests/e2e/test_http_limits.py."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import pytest

from fleetops.http_limits import install_accept_error_handler
from tests.unit.test_listeners import Conn, table


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

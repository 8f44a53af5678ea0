"""What the listeners share (fleetops.listeners): log lines that stay one per interval however often their event
repeats, and the warning when the connection caps do not fit the file limit."""

from __future__ import annotations

import logging

import pytest

from fleetops.listeners import RESERVED_FILES, LimitedLog, LimitedLogFilter, warn_if_over_file_limit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


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

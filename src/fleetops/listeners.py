"""What every listening socket of fleetops shares (the HTTP API, the MQTT gateway's listeners): TLS contexts from
PEM files, log lines limited to one per interval, and the process's file limit."""

from __future__ import annotations

import logging
import resource
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from fleetops.errors import ConfigurationError

__all__ = [
    "RESERVED_FILES",
    "LimitedLog",
    "LimitedLogFilter",
    "raise_file_limit",
    "server_tls_context",
    "warn_if_over_file_limit",
]

log = logging.getLogger("fleetops")

# File descriptors kept for everything but listener connections (the database, logs, outgoing connections).
RESERVED_FILES: Final = 1024


class LimitedLog:
    """A log line at most once per interval per key, with the number of occurrences it stands for."""

    def __init__(self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._logger = logger
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def due(self, key: str) -> int:
        """Count one occurrence of ``key``; the occurrences to report if a line is due now, else 0."""
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            return 0
        count, self._counts[key] = self._counts[key], 0
        self._last[key] = now
        return count

    def suffix(self, count: int) -> str:
        return f" ({count} times in the last {self.interval_s:g} s)" if count > 1 else ""

    def __call__(self, key: str, level: int, message: str, *args: object) -> bool:
        """Log ``message`` unless ``key`` was logged less than an interval ago; True when it was logged."""
        count = self.due(key)
        if count:
            self._logger.log(level, message + self.suffix(count), *args)
        return bool(count)


class LimitedLogFilter(logging.Filter):
    """Lets a message through at most once per interval (keyed by its text), with the count appended.

    For uvicorn's per-request warnings ("Invalid HTTP request received.", "Unsupported upgrade request."): a
    client can send any number of bad requests, and the log must not grow with them.
    """

    def __init__(self, limited: LimitedLog, messages: frozenset[str]) -> None:
        super().__init__()
        self._limited = limited
        self._messages = messages

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or record.msg not in self._messages:
            return True
        count = self._limited.due(record.msg)
        if count:
            record.msg = record.msg + self._limited.suffix(count)
        return bool(count)


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (a process may); the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def server_tls_context(cert_file: Path, key_file: Path, *, what: str, settings_hint: str) -> ssl.SSLContext:
    """A server-side TLS context (TLS 1.2 or later, the default ciphers; server authentication only) from PEM
    files, or a one-line ConfigurationError naming them and the settings that set them."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load the {what} certificate {cert_file} / key {key_file}: {exc}; check {settings_hint}"
        ) from exc
    return context


def warn_if_over_file_limit(file_limit: int, connections: dict[str, int]) -> None:
    """Warn when the listeners' connection caps (by the setting that sets each) do not fit the file limit with
    RESERVED_FILES to spare: accept() would fail before the caps are reached."""
    total = sum(connections.values())
    if file_limit != resource.RLIM_INFINITY and total > file_limit - RESERVED_FILES:
        caps = ", ".join(f"{setting} {count}" for setting, count in connections.items())
        log.warning(
            "the listeners allow %d connections (%s) but the process may open only %d files (ulimit -n), %d of "
            "them kept for everything else: raise the limit or lower those settings, or accept() will fail "
            "under load",
            total,
            caps,
            file_limit,
            RESERVED_FILES,
        )

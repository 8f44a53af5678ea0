"""How the commands show API values to a person: times, statuses, aligned columns."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from fleetops.domain.tasks import TaskStatus


def local_time(unix_s: int | None) -> str:
    """``2025-06-01 14:03:20`` in the local time zone; ``-`` for 0 or None (a time that has not come yet)."""
    if not unix_s:
        return "-"
    return datetime.fromtimestamp(unix_s).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def status_name(status: int) -> str:
    """``2 processing``: the vendor's number (what DescribeTask returns) and what it means."""
    try:
        return f"{status} {TaskStatus(status).name.lower()}"
    except ValueError:
        return str(status)


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces (greppable; ``--json`` is for programs)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    return [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]

"""What SQLite and PostgreSQL do differently, in one place.

Everything else in ``fleetops.store`` is shared SQLAlchemy Core. The differences kept here:

* a case-sensitive substring test (SQLite's ``LIKE`` ignores ASCII case, PostgreSQL's does not; and ``_``, a
  legal device-name character, is a ``LIKE`` wildcard), so both use a plain position function instead;
* the larger / smaller of two values: ``greatest`` / ``least`` on PostgreSQL, the many-argument ``max`` / ``min``
  on SQLite;
* bulk insert of devices: SQLite ``executemany`` in the caller's transaction, PostgreSQL ``COPY`` through the
  asyncpg connection under SQLAlchemy's adapter (docs/decisions.md#measured-choices: COPY 79k rows/s against 46k
  for batched INSERT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection


def contains(conn_or_dialect: AsyncConnection | str, column: sa.ColumnElement[str], text: str) -> Any:
    """``column`` contains ``text`` as a case-sensitive substring."""
    name = conn_or_dialect if isinstance(conn_or_dialect, str) else conn_or_dialect.dialect.name
    function = sa.func.strpos(column, text) if name == "postgresql" else sa.func.instr(column, text)
    return function > 0


def greatest(dialect: str, *values: Any) -> Any:
    return (sa.func.greatest if dialect == "postgresql" else sa.func.max)(*values)


def least(dialect: str, *values: Any) -> Any:
    return (sa.func.least if dialect == "postgresql" else sa.func.min)(*values)


async def copy_rows(
    conn: AsyncConnection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table`` inside ``conn``'s open transaction.

    JSON columns take their values already serialized (``str``): SQLite stores JSON as text, and SQLAlchemy's
    asyncpg codec for ``jsonb`` encodes a ``str``. On PostgreSQL the rows go through ``COPY`` on the driver
    connection; the SQLAlchemy transaction has started it on the same connection, so the copy commits or rolls
    back with the rest of the batch.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # The asyncpg adapter opens its transaction lazily, on the first statement; make sure it is open
        # before the COPY runs, or the COPY would autocommit on its own.
        await conn.execute(sa.text("SELECT 1"))
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None  # an open pooled connection always has one
        try:
            await driver.copy_records_to_table(table.name, records=rows, columns=list(columns))
        except asyncpg.IntegrityConstraintViolationError as exc:
            # the same exception SQLAlchemy raises for an INSERT, so callers need not know which path ran
            raise IntegrityError(f"COPY {table.name}", None, exc) from exc
        return
    placeholders = ", ".join("?" for _ in columns)
    sql = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({placeholders})"
    await conn.exec_driver_sql(sql, [tuple(r) for r in rows])

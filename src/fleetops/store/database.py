"""The database handle: one AsyncEngine on SQLite (aiosqlite) or PostgreSQL (asyncpg).

The differences between the two databases live here and in ``store/dialect.py``; everything else is shared Core.

Point reads (:meth:`Database.read`: a few rows by key, such as a request's key, a task or a shadow) on SQLite run
in the event loop on a plain ``sqlite3`` connection of a second, synchronous engine on the same file: such a read
takes microseconds, less than aiosqlite's hand-off to its thread and back (issue 12 measured 60 % of a request's
time in those hand-offs). Reads that may scan (pages, counts) and writes stay off the loop, so a long statement
or a wait for the write lock never holds it: most writes go through aiosqlite, and a write of one statement
(a shadow's compare-and-set) runs whole in a worker thread (:meth:`Database.write_one`). In WAL mode a reader
neither waits for nor blocks the writer, and each SELECT outside a transaction sees the newest committed state,
as on the aiosqlite connections. On PostgreSQL the point reads, and the writes of one statement, have a pool of
their own in autocommit, without a ping per checkout (``Database.pg_autocommit``): a read or a compare-and-set
is one round trip.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Final

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable

from fleetops.errors import ConfigurationError
from fleetops.ports.telemetry import NO_TELEMETRY, Telemetry


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def async_url(url: str) -> str:
    """Map a user-facing URL (sqlite:///..., postgresql://...) to its asyncio driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend == "postgresql":
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ConfigurationError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)}: fleetops runs on SQLite "
        "(sqlite:///PATH) or PostgreSQL (postgresql://user@host:5432/name)"
    )


class ReadConnection:
    """A connection for point reads (:meth:`Database.read`): ``execute`` answers a buffered Result, as
    ``AsyncConnection.execute`` does, whether the statement ran in the loop (SQLite) or on the driver (asyncpg)."""

    def __init__(self, conn: AsyncConnection | sa.Connection) -> None:
        self._conn = conn
        self.dialect = conn.dialect

    async def execute(self, statement: Executable, parameters: dict[str, Any] | None = None) -> sa.Result[Any]:
        if not isinstance(self._conn, AsyncConnection):
            return self._conn.execute(statement, parameters)
        try:
            return await self._conn.execute(statement, parameters)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # the read pool does not ping on checkout: a connection the server closed (a restart, a terminated
            # backend) fails once, SQLAlchemy drops it and every older one of the pool, and the read runs again
            # on a new connection
            await self._conn.rollback()
            return await self._conn.execute(statement, parameters)


@dataclass
class Database:
    engine: AsyncEngine
    # SQLite: a synchronous engine on the same file, for the point reads that run in the loop and the single
    # statement writes that run whole in a worker thread (module docstring)
    sqlite_sync: sa.Engine | None = None
    # PostgreSQL: the pool of the point reads and of the writes of one statement (write_one), in autocommit (no
    # BEGIN and COMMIT or ROLLBACK around the statement) and without a ping per checkout (ReadConnection retries
    # a read whose connection was closed; a write is never retried): one round trip, not four. Last in, first
    # out, so a write_one right after a read takes the connection that read just proved alive.
    pg_autocommit: AsyncEngine | None = None
    # its connection kept for the thread that reads most (the serving loop): a pool checkout and return cost as
    # much as the read itself; another thread, or a read inside a read, takes one from the pool
    _kept: sa.Connection | None = field(default=None, init=False, repr=False)
    _kept_thread: int = field(default=0, init=False, repr=False)
    _kept_busy: bool = field(default=False, init=False, repr=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[ReadConnection]:
        """A connection for a short read of a few rows by key (never a scan: it may run in the event loop)."""
        if self.sqlite_sync is None:
            async with (self.pg_autocommit or self.engine).connect() as conn:
                yield ReadConnection(conn)
            return
        if self._kept_busy or (self._kept is not None and self._kept_thread != threading.get_ident()):
            with self.sqlite_sync.connect() as sync_conn:
                yield ReadConnection(sync_conn)
            return
        if self._kept is None:
            self._kept, self._kept_thread = self.sqlite_sync.connect(), threading.get_ident()
        kept, self._kept_busy = self._kept, True
        try:
            yield ReadConnection(kept)
        except BaseException:
            self._kept = None  # a failed read may leave the connection unusable: the next read takes a new one
            kept.close()
            raise
        finally:
            self._kept_busy = False
        # ends SQLAlchemy's transaction (sqlite3 opened none for a SELECT): the next read sees the newest commit
        kept.rollback()

    async def write_one(self, statement: Executable, parameters: dict[str, Any]) -> int:
        """Run one write statement as a transaction by itself and answer its row count. SQLite: BEGIN, the
        statement, COMMIT, whole in a worker thread (one thread hand-off instead of one per step through
        aiosqlite). PostgreSQL: the statement alone on the autocommit pool (a single statement is atomic): one
        round trip.

        Never run twice: when the connection breaks during the statement, it may have committed all the same, so
        the error (``DBAPIError.connection_invalidated``) is raised for the caller to decide, not retried as a
        read is (a compare-and-set run again would look lost and be applied again on top of itself)."""
        engine = self.sqlite_sync
        if engine is None:
            async with (self.pg_autocommit or self.engine).connect() as conn:
                result = await conn.execute(statement, parameters)
                if self.pg_autocommit is None:
                    await conn.commit()
                return int(result.rowcount)

        def run() -> int:
            with engine.begin() as conn:
                return int(conn.execute(statement, parameters).rowcount)

        return await asyncio.to_thread(run)

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One short transaction."""
        async with self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as conn:
            yield conn

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.pg_autocommit is not None:
            await self.pg_autocommit.dispose()
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        if self.sqlite_sync is not None:
            self.sqlite_sync.dispose()


def open_database(url: str, *, pool_size: int = 10, telemetry: Telemetry = NO_TELEMETRY) -> Database:
    """``telemetry`` hears of every failed database operation (``fleetops_database_errors_total``)."""
    aurl = async_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _dumps, "json_deserializer": orjson.loads}
    pg_autocommit = None
    if aurl.startswith("postgresql"):
        kwargs.update(pool_size=pool_size, max_overflow=pool_size)
        pg_autocommit = create_async_engine(aurl, isolation_level="AUTOCOMMIT", pool_use_lifo=True, **kwargs)
        event.listen(pg_autocommit.sync_engine, "handle_error", partial(_count_error, telemetry))
        kwargs.update(pool_pre_ping=True)
    engine = create_async_engine(aurl, **kwargs)
    sqlite_sync = None
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        # the pool may hand a connection to another thread's loop (tests, bench scripts): sqlite3 allows it
        # when asked, and a connection is only ever used by one caller at a time
        sqlite_sync = sa.create_engine(
            make_url(aurl).set(drivername="sqlite+pysqlite"),
            connect_args={"check_same_thread": False},
            **kwargs,
        )
        event.listen(sqlite_sync, "connect", _sqlite_pragmas)
        event.listen(sqlite_sync, "handle_error", partial(_count_error, telemetry))
    event.listen(engine.sync_engine, "handle_error", partial(_count_error, telemetry))
    return Database(engine, sqlite_sync, pg_autocommit)


def _count_error(telemetry: Telemetry, context: ExceptionContext) -> None:
    """SQLAlchemy's hook for every error of a statement or a connect. Not counted: a unique violation (the
    stores turn it into a name-taken answer: a client's conflict, not a database fault) and the pool's
    pre-ping of a stale connection (the pool replaces the connection and nothing fails)."""
    if context.is_pre_ping or isinstance(context.sqlalchemy_exception, IntegrityError):
        return
    telemetry.database_error()


class DatabaseHealth:
    """:class:`~fleetops.ports.telemetry.HealthCheck` of the database: one ``SELECT 1`` on a pooled connection."""

    name: Final = "database"

    def __init__(self, db: Database) -> None:
        self._db = db

    async def problem(self) -> str | None:
        """The kind of trouble only: ``/readyz`` answers anyone who can reach the port, and the database's
        address and the driver's words are for the log (the operations that fail log them)."""
        try:
            async with self._db.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
        except (DBAPIError, OSError) as exc:
            return _trouble(exc).value
        return None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the executor writes; NORMAL is durable across process crashes (not power loss)
    # in WAL mode; busy_timeout makes concurrent writers wait instead of failing with "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def display_url(url: str) -> str:
    """The database URL as it may be shown and logged: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a URL SQLAlchemy cannot parse is shown as given (it holds no parsed password)
        return url


class _Trouble(StrEnum):
    """What kind of database problem an exception shows (one classification for both ways of saying it)."""

    MISSING = "the database does not exist"
    UNREACHABLE = "cannot connect to the database server"
    SQLITE_FILE = "cannot open the SQLite file"
    CREDENTIALS = "the database refused the credentials"
    OTHER = "the database cannot be used"


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", None) or exc).splitlines()[0] if str(exc) else type(exc).__name__


def _trouble(exc: BaseException) -> _Trouble:
    text = _first_line(exc)
    if "does not exist" in text and "database" in text:
        return _Trouble.MISSING
    if isinstance(exc, OSError) or "Connect call failed" in text or "could not connect" in text.lower():
        return _Trouble.UNREACHABLE
    if "unable to open database file" in text:
        return _Trouble.SQLITE_FILE
    if "password authentication failed" in text or "authentication" in text.lower():
        return _Trouble.CREDENTIALS
    return _Trouble.OTHER


def _explain(exc: BaseException, url: str) -> str:
    """One line saying what is wrong with the database and what to do (for the operator starting a command)."""
    shown, text = display_url(url), _first_line(exc)
    trouble = _trouble(exc)
    if trouble is _Trouble.MISSING:
        name = make_url(url).database
        return f"the database {shown} does not exist: create it (createdb {name}) or use another --database URL"
    if trouble is _Trouble.UNREACHABLE:
        return f"cannot connect to the database {shown} ({text}): is the server running and reachable?"
    if trouble is _Trouble.SQLITE_FILE:
        return f"cannot open the SQLite database {shown}: check that its directory exists and is writable"
    if trouble is _Trouble.CREDENTIALS:
        return f"the database {shown} refused the credentials ({text}): check the user and password in the URL"
    return f"cannot use the database {shown}: {text}"


async def open_migrated_database(url: str, *, telemetry: Telemetry = NO_TELEMETRY) -> Database:
    """Open the database and migrate it to the newest schema; ConfigurationError with one readable line when it
    cannot be reached or used (a setup mistake is never a traceback)."""
    from fleetops.store.migrate import upgrade  # migrate imports this module

    db = open_database(url, telemetry=telemetry)
    try:
        await upgrade(db)
    except (DBAPIError, OSError) as exc:
        await db.dispose()
        raise ConfigurationError(_explain(exc, url)) from exc
    except BaseException:
        await db.dispose()
        raise
    return db

"""The database handle: one AsyncEngine on SQLite (aiosqlite) or PostgreSQL (asyncpg).

The differences between the two databases live here and in ``store/dialect.py``; everything else is shared Core.

Point reads (:meth:`Database.point`: a few rows by key, such as a request's key, a task or a shadow) on SQLite run
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
from collections import namedtuple
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from typing import Any, Final, TypeVar

import asyncpg  # type: ignore[import-untyped]
import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.base import Executable

from fleetops.errors import ConfigurationError
from fleetops.ports.telemetry import NO_TELEMETRY, Telemetry

T = TypeVar("T")


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


class PointQuery:
    """A SELECT of a few rows by key, compiled once per dialect and run on the driver's own connection.

    A read through SQLAlchemy's execution path costs several times the read itself (issue 12: on SQLite 75 us of
    CPU against 9 us for the same statement on the ``sqlite3`` connection; on PostgreSQL 330 us against 85 us on
    the asyncpg connection, most of it the pool checkout). Here the statement is compiled once per dialect
    (``Compiled.string``, ``Compiled.positiontup``), each column's result processor is taken from its type
    (``TypeEngine.dialect_impl(...).result_processor``, the same conversion SQLAlchemy applies: JSON text
    decoded on SQLite, booleans from integers), and a row comes back as a named tuple with the statement's
    column keys, so ``row.name`` reads as on a SQLAlchemy Row. Parameters must be plain values (str, int, ...).
    """

    def __init__(self, statement: sa.Select[Any]) -> None:
        self.statement = statement
        self._compiled: dict[str, _CompiledPoint] = {}

    def compiled(self, dialect: sa.Dialect) -> _CompiledPoint:
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            columns = list(self.statement.selected_columns)
            found = self._compiled[dialect.name] = _CompiledPoint(
                sql=compiled.string,
                names=tuple(compiled.positiontup or ()),
                processors=tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns),
                row=namedtuple("PointRow", [c.key for c in columns], rename=True),  # type: ignore[misc]
            )
        return found


@dataclass(frozen=True)
class _CompiledPoint:
    sql: str
    names: tuple[str, ...]  # the bound parameters, in their positional order
    processors: tuple[Callable[[Any], Any] | None, ...]
    row: Callable[..., Any]

    def args(self, parameters: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(parameters[name] for name in self.names)

    def rows(self, raw: Sequence[Sequence[Any]]) -> list[Any]:
        processors, make = self.processors, self.row
        return [make(*(v if f is None else f(v) for f, v in zip(processors, r, strict=True))) for r in raw]


@dataclass
class Database:
    engine: AsyncEngine
    # SQLite: a synchronous engine on the same file, for the point reads that run in the loop and the single
    # statement writes that run whole in a worker thread (module docstring)
    sqlite_sync: sa.Engine | None = None
    # PostgreSQL: the pool of the point reads and of the writes of one statement (write_one), in autocommit (no
    # BEGIN and COMMIT or ROLLBACK around the statement) and without a ping per checkout (Database.point retries
    # a read whose connection was closed; a write is never retried): one round trip, not four. Last in, first
    # out, so a write_one right after a read takes the connection that read just proved alive.
    pg_autocommit: AsyncEngine | None = None
    # its connection kept for the thread that reads most (the serving loop): a pool checkout and return cost as
    # much as the read itself; another thread, or a read inside a read, takes one from the pool
    _kept: sa.Connection | None = field(default=None, init=False, repr=False)
    _kept_thread: int = field(default=0, init=False, repr=False)
    # PostgreSQL: connections of pg_autocommit held open for PointQuery reads (a checkout costs more than the read)
    _held: list[AsyncConnection] = field(default_factory=list, init=False, repr=False)
    _held_loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    held_limit: int = 10
    telemetry: Telemetry = NO_TELEMETRY

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def _sqlite_rows(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """SQLite: the rows of ``sql``, run in the loop on the ``sqlite3`` connection kept for the thread that reads
        most (the serving loop: a pool checkout costs as much as the read); another thread takes one from the
        pool. No SQLAlchemy transaction is opened (sqlite3 opens none for a SELECT), so each read sees the newest
        commit."""
        engine = self.sqlite_sync
        assert engine is not None
        if self._kept is not None and self._kept_thread != threading.get_ident():
            with engine.connect() as conn:
                return _driver_rows(conn, sql, args)
        if self._kept is None:
            self._kept, self._kept_thread = engine.connect(), threading.get_ident()
        try:
            return _driver_rows(self._kept, sql, args)
        except BaseException:
            kept, self._kept = self._kept, None  # a failed read may leave it unusable: the next takes a new one
            kept.close()
            raise

    async def point(self, query: PointQuery, parameters: dict[str, Any]) -> list[Any]:
        """The rows of a :class:`PointQuery` (a few rows by key: it may run in the event loop on SQLite)."""
        compiled = query.compiled(self.engine.dialect)
        args = compiled.args(parameters)
        if self.sqlite_sync is None:
            return compiled.rows(await self._pg_point(compiled.sql, args))
        try:
            raw = self._sqlite_rows(compiled.sql, args)
        except Exception:
            self.telemetry.database_error()
            raise
        return compiled.rows(raw)

    async def _pg_point(self, sql: str, args: tuple[Any, ...]) -> Sequence[Sequence[Any]]:
        for attempt in (1, 2):
            try:
                async with self._autocommit() as conn:
                    driver = (await conn.get_raw_connection()).driver_connection
                    assert driver is not None
                    rows: Sequence[Sequence[Any]] = await driver.fetch(sql, *args)
                    return rows
            except Exception as exc:
                # a connection the server closed (a restart, a terminated backend): the read runs once more, on a
                # new connection (_autocommit has dropped the ones that may be as stale)
                if attempt == 2 or not _connection_lost(exc):
                    self.telemetry.database_error()
                    raise
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """PostgreSQL: a connection of the autocommit pool, held open between uses (a checkout costs more than
        a point read), last used first (the one most recently proved alive).

        Held connections belong to the loop that opened them (the serving loop); another loop (a script's second
        asyncio.run) gets a connection of its own, not held. A statement that fails drops its connection, and
        when the connection was lost every held one is dropped and the pool disposed (SQLAlchemy does the same
        for a disconnect it sees itself): after a server restart each of them would fail once more.
        """
        assert self.pg_autocommit is not None
        loop = asyncio.get_running_loop()
        if self._held_loop is None:
            self._held_loop = loop
        holding = loop is self._held_loop
        conn = self._held.pop() if self._held and holding else await self.pg_autocommit.connect()
        try:
            yield conn
        except BaseException as exc:
            await _drop(conn)
            if _connection_lost(exc):
                held, self._held = self._held, []
                for stale in held:
                    await _drop(stale)
                await self.pg_autocommit.dispose()
            raise
        if holding and len(self._held) < self.held_limit:
            self._held.append(conn)
        else:
            await conn.close()

    async def scan(self, read: Callable[[sa.Connection], T]) -> T:
        """A read that may scan (a page, a count): ``read`` runs whole off the event loop on a synchronous
        connection. SQLite: in a worker thread, one hand-off for all its statements (through aiosqlite each
        statement, the checkout and the rollback are a hand-off each); PostgreSQL: ``AsyncConnection.run_sync`` on
        the autocommit pool (each statement is its own snapshot, as in a READ COMMITTED transaction)."""
        engine = self.sqlite_sync
        if engine is None:
            async with (self.pg_autocommit or self.engine).connect() as conn:
                return await conn.run_sync(read)

        def run() -> T:
            with engine.connect() as conn:
                return read(conn)

        return await asyncio.to_thread(run)

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
            async with self._autocommit() as conn:
                return int((await conn.execute(statement, parameters)).rowcount)

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
        held, self._held = self._held, []
        if self._held_loop is asyncio.get_running_loop():
            for conn in held:
                await conn.close()
        self._held_loop = None
        await self.engine.dispose()
        if self.pg_autocommit is not None:
            await self.pg_autocommit.dispose()
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        if self.sqlite_sync is not None:
            self.sqlite_sync.dispose()


def _driver_rows(conn: sa.Connection, sql: str, args: tuple[Any, ...]) -> list[Any]:
    driver = conn.connection.driver_connection
    assert driver is not None
    return list(driver.execute(sql, args).fetchall())


async def _drop(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
    except Exception:  # the connection is unusable whatever invalidate() says
        pass


def _connection_lost(exc: BaseException) -> bool:
    """An error that says the connection is gone or unusable, not that the statement failed."""
    if isinstance(exc, DBAPIError):  # through SQLAlchemy (write_one): it has told a disconnect apart
        return bool(exc.connection_invalidated)
    return isinstance(exc, _CONNECTION_LOST)


# asyncpg's errors for a connection the server closed (a restart: AdminShutdown; a terminated backend, or one
# that went away: ConnectionDoesNotExist; the socket's own) and for a connection in a state it cannot be used in
# (Interface; InternalClient: an idle connection that received the server's termination notice answers the next
# statement with "another operation is in progress")
_CONNECTION_LOST: Final = (
    OSError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)


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
    return Database(engine, sqlite_sync, pg_autocommit, held_limit=pool_size, telemetry=telemetry)


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

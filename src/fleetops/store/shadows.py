"""Device shadows: read, and write without lost updates. The only module that writes the ``shadow_*`` columns.

The cloud API, the device (MQTT ``update``) and batch tasks may all write one shadow at the same moment. A
write here is optimistic: read the row, let a pure function compute the new document
(``fleetops.domain.shadow``), then ``UPDATE ... WHERE id = :id AND shadow_version = :read_version``. If
another writer got there first the update touches no row; the whole read-compute-write is then repeated on the
fresh document, a bounded number of times. The same statements run on SQLite and PostgreSQL, so both behave
alike; no database lock is held while Python computes.

Writes of one shadow on one node are committed in groups (:class:`ShadowStore`): the changes waiting for a
shadow run one after the other on one read and are written by one compare-and-set, each caller answered with
its own step (its own version), so one shadow takes as many writes per second as a node sends it, not one over
the latency of a write. Without an outcome watch the compare-and-set is one statement alone
(``Database.write_one``: on SQLite whole in a worker thread, on PostgreSQL one round trip in autocommit); with
a watch it is a transaction that also decides the outcome.

The task engine's batched merge of a desired patch into many shadows is here too (:func:`merge_desired_flat`,
:func:`merge_desired_each`), run inside the engine's batch transaction (``store/batches.py``): a flat patch
(``domain.shadow.is_flat``) is merged by the database itself - SQLite's built-in ``json_patch``, on PostgreSQL
``(desired - null_keys) || non_null_values`` - with the metadata of each written key set to
``{"timestamp": now}`` and deleted keys losing theirs, which is exactly ``domain.shadow.merge_patch`` and
``stamp_metadata`` for a flat patch (tests/integration/test_shadow_merge_sql.py checks both dialects against
them). Any other patch is merged row by row with a function of the domain, under the batch's lock. Every
writer increments ``shadow_version``: that is what makes the compare-and-set sound.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.outcomes import DeviceOutcome, holds, tracked_values
from fleetops.domain.shadow import JSONObject, Shadow
from fleetops.ports.store import DesiredMerge, ShadowContention, ShadowMissing
from fleetops.store.database import Database, PointQuery
from fleetops.store.outcomes import TaskWatches, decide_watch, insert_batch
from fleetops.store.tables import devices, products

T = TypeVar("T")

# --- a new device's shadow (Shadow.new()) ----------------------------------------------------------------


def _columns(shadow: Shadow) -> dict[str, Any]:
    return {
        "shadow_reported": shadow.reported,
        "shadow_desired": sa.null() if shadow.desired is None else shadow.desired,
        "shadow_meta_reported": shadow.metadata_reported,
        "shadow_meta_desired": shadow.metadata_desired,
        "shadow_version": shadow.version,
        "shadow_ts_ms": shadow.timestamp_ms,
    }


# Column values of a new device's shadow, for single-row inserts through SQLAlchemy.
NEW_SHADOW_COLUMNS: Final[Mapping[str, Any]] = _columns(Shadow.new())
# The bulk insert writes only these, as JSON text (no per-row encoding); the others take their server defaults,
# which are the new shadow's (no desired section, version 0, time 0). tests/integration/test_device_store.py
# checks that both insert paths give the same shadow.
NEW_SHADOW_COLUMN_NAMES: Final = ("shadow_reported", "shadow_meta_reported", "shadow_meta_desired")
NEW_SHADOW_TEXT: Final = tuple(orjson.dumps(NEW_SHADOW_COLUMNS[name]).decode() for name in NEW_SHADOW_COLUMN_NAMES)

# Enough for dozens of writers on other nodes hammering one shadow; a lost round costs a read and a pause.
DEFAULT_MAX_ATTEMPTS = 100
# The most changes of one shadow written by one compare-and-set: a burst is drained in a few writes, and the
# changes run in the event loop between two writes stay a short slice of it.
MAX_GROUP: Final = 256
_BACKOFF_CAP_S = 0.01


# The two hot statements are built once: constructing a Core statement costs about as much as running it on
# SQLite. Values go in as bound parameters.
_READ = PointQuery(
    sa.select(
        devices.c.id,
        devices.c.shadow_reported,
        devices.c.shadow_desired,
        devices.c.shadow_meta_reported,
        devices.c.shadow_meta_desired,
        devices.c.shadow_version,
        devices.c.shadow_ts_ms,
        devices.c.watch_task,
    )
    .select_from(devices.join(products, products.c.id == devices.c.product_pk))
    .where(
        products.c.account_id == sa.bindparam("account_id"),
        products.c.product_id == sa.bindparam("product_id"),
        devices.c.name == sa.bindparam("device_name"),
    )
)

# None must become SQL NULL ("no desired section"), not the JSON value null.
_JSON_OR_NULL = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
_COMPARE_AND_SET = (
    sa.update(devices)
    .where(devices.c.id == sa.bindparam("pk"), devices.c.shadow_version == sa.bindparam("read_version"))
    .values(
        shadow_reported=sa.bindparam("reported", type_=_JSON_OR_NULL),
        shadow_desired=sa.bindparam("desired", type_=_JSON_OR_NULL),
        shadow_meta_reported=sa.bindparam("meta_reported", type_=_JSON_OR_NULL),
        shadow_meta_desired=sa.bindparam("meta_desired", type_=_JSON_OR_NULL),
        shadow_version=sa.bindparam("version", type_=sa.BigInteger),
        shadow_ts_ms=sa.bindparam("ts_ms", type_=sa.BigInteger),
        watch_task=sa.bindparam("watch", type_=sa.String),
    )
)


@dataclass(eq=False, slots=True)
class _Writer:
    """One caller of :meth:`ShadowStore.update` waiting in its shadow's queue."""

    change: Callable[[Shadow], tuple[Shadow | None, Any]]
    answer: asyncio.Future[Any]  # its result or its exception; cancelled when the caller is


@dataclass(eq=False, slots=True)
class _Queue:
    """The writers of one shadow waiting for the next group, and the task writing the groups."""

    waiting: deque[_Writer] = field(default_factory=deque)
    leader: asyncio.Task[None] | None = None


@dataclass(slots=True)
class _Run:
    """A group's changes run in order on one read: the document after the last, the documents of the accepted
    steps (what the watch decides on), and each writer's answer (False: the change raised ``value``)."""

    final: Shadow
    accepted: list[Shadow]
    answers: list[tuple[bool, Any]]


class ShadowStore:
    """Shadow reads and compare-and-set writes, committed in groups per shadow.

    Writers that share one ShadowStore (one node) queue per shadow, and their changes are written together: a
    leader task (started by the writer that finds no queue, ending when the queue is empty) takes up to
    :data:`MAX_GROUP` waiting changes, reads the shadow once, runs the changes in their order of arrival (each
    on the document the previous one left), and writes the last document with one compare-and-set on the
    version it read. Once the write has won, each writer gets its own step's answer, as if the changes had run
    one after the other; a lost compare-and-set runs them all again on a fresh read. The changes that arrive
    while a group is being written form the next group, so writes of one shadow go one at a time, as before,
    but a write serves every writer that came meanwhile. The compare-and-set still guards against every other
    writer (other nodes, other stores, the task executor).

    A writer cancelled while it waits leaves its shadow's queue and its change is not run again; its answer is
    dropped. The leader is not the writer's own task, so cancelling a writer never stops the group it is in: a
    change in the group being written may be written although its writer was cancelled (as a cancelled write
    always could), and it is never written twice.

    A write of a device that an outcome-tracking task watches (``devices.watch_task``) also decides, in the
    same transaction, whether the device has now Converged or was Superseded for that task
    (``store/outcomes.py``): the outcome cannot disagree with the shadow that caused it.
    """

    def __init__(self, db: Database, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> None:
        self._db = db
        self._max_attempts = max_attempts
        self._queues: dict[tuple[int, str, str], _Queue] = {}
        self._watches = TaskWatches()

    async def read(self, account_id: int, product_id: str, device_name: str) -> Shadow:
        """The current shadow. Raises ShadowMissing."""
        _pk, shadow, _watch = await _read(self._db, account_id, product_id, device_name)
        return shadow

    async def update(
        self,
        account_id: int,
        product_id: str,
        device_name: str,
        change: Callable[[Shadow], tuple[Shadow | None, T]],
    ) -> T:
        """Apply ``change`` atomically with respect to every other writer, and return its result.

        ``change(current)`` returns ``(new, result)``; ``new`` None means "write nothing" (a refused update,
        such as a version mismatch reported as a result). ``change`` must be pure: it may run more than once,
        each time on a fresher document, and only its last result is returned. Exceptions it raises propagate
        and nothing of it is written. Raises ShadowMissing, ShadowContention.
        """
        key = (account_id, product_id, device_name)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue()
        writer = _Writer(change, asyncio.get_running_loop().create_future())
        queue.waiting.append(writer)
        if queue.leader is None:
            queue.leader = asyncio.create_task(self._lead(key, queue), name=f"shadow writes {product_id}/{device_name}")
        result: T = await writer.answer
        return result

    async def _lead(self, key: tuple[int, str, str], queue: _Queue) -> None:
        """Write the queue's groups one after the other until it is empty, then drop it."""
        group: list[_Writer] = []
        try:
            while queue.waiting:
                group = []
                while queue.waiting and len(group) < MAX_GROUP:
                    writer = queue.waiting.popleft()
                    if not writer.answer.done():  # done: cancelled while it waited
                        group.append(writer)
                await self._write_group(key, group)
        except BaseException:
            # cancelled (the event loop is closing) or a change raised what is not an Exception: nobody may wait
            # for an answer that will not come
            for writer in (*group, *queue.waiting):
                writer.answer.cancel()
            raise
        finally:
            # no await since the last look at the queue: a writer that comes now finds no queue and starts anew
            queue.leader = None
            if self._queues.get(key) is queue:
                del self._queues[key]

    async def _write_group(self, key: tuple[int, str, str], group: list[_Writer]) -> None:
        """Run ``group``'s changes and write them with one compare-and-set; answer every writer of the group."""
        account_id, product_id, device_name = key
        for attempt in range(self._max_attempts):
            # a writer cancelled since the last attempt (whose change was not written) is not run again
            group = [writer for writer in group if not writer.answer.done()]
            if not group:
                return
            try:
                # The read is a point read outside any transaction (Database.point: on SQLite in the loop, no
                # thread hand-off), the write a compare-and-set on the version read: PostgreSQL (READ COMMITTED)
                # re-checks the WHERE against the newest committed row, and SQLite's UPDATE waits on
                # busy_timeout, never on a stale snapshot. A group whose changes are all refused writes nothing
                # and takes no write connection.
                pk, current, watch = await _read(self._db, account_id, product_id, device_name)
                run = _run_changes(group, current)
                if not run.accepted:
                    _answer(group, run.answers)
                    return
                written = await self._write(pk, current.version, run, watch, device_name)
            except ShadowMissing:
                _fail(group, lambda: ShadowMissing(f"{product_id}/{device_name}"))
                return
            except Exception as exc:  # the database's: every writer of the group hears of it
                _fail(group, exc)
                return
            if written:
                _answer(group, run.answers)
                return
            if attempt + 1 < self._max_attempts:
                await _back_off(attempt)
        gave_up = f"{product_id}/{device_name}: gave up after {self._max_attempts} attempts"
        _fail(group, lambda: ShadowContention(gave_up))

    async def _write(self, pk: int, read_version: int, run: _Run, watch: str | None, device_name: str) -> bool:
        """Whether the compare-and-set of ``run.final`` on ``read_version`` won."""
        if watch is None:  # one statement, alone (Database.write_one: SQLite in a worker thread)
            return await self._compare_and_set(None, pk, read_version, run.final, None)
        async with self._db.connect() as conn:
            # What writing the steps one at a time would decide: each step is decided on its own document while
            # the watch lasts; the first that decides (or finds the task keeps no outcomes any more) ends the
            # watch, and the later steps find none. decide_watch reads the task and its batches, which a shadow
            # write does not change, so one transaction for the group decides as a transaction per step would.
            # (The last document alone would not: a device that reports the values and then something else has
            # Converged.)
            decided = None
            for new in run.accepted:
                watch, decided = await decide_watch(conn, self._watches, watch, device_name, new)
                if watch is None:
                    break
            written = await self._compare_and_set(conn, pk, read_version, run.final, watch)
            if written and decided is not None:
                await conn.execute(decided)
            await conn.commit()
        return written

    async def _compare_and_set(
        self, conn: AsyncConnection | None, device_pk: int, read_version: int, new: Shadow, watch: str | None
    ) -> bool:
        """Whether the write won. Without ``conn``: a statement by itself (:meth:`Database.write_one`), never
        run twice (a broken connection raises: the write may have been committed)."""
        params = _cas_params(device_pk, read_version, new, watch)
        if conn is None:
            return bool(await self._db.write_one(_COMPARE_AND_SET, params))
        return bool((await conn.execute(_COMPARE_AND_SET, params)).rowcount)


def _run_changes(group: Sequence[_Writer], current: Shadow) -> _Run:
    """Each change on the document the previous one left; a change that refuses (``new`` None) or raises
    leaves it as it was."""
    document = current
    accepted: list[Shadow] = []
    answers: list[tuple[bool, Any]] = []
    for writer in group:
        try:
            new, result = writer.change(document)
        except Exception as exc:
            answers.append((False, exc))
            continue
        if new is not None:
            document = new
            accepted.append(new)
        answers.append((True, result))
    return _Run(document, accepted, answers)


def _answer(group: Sequence[_Writer], answers: Sequence[tuple[bool, Any]]) -> None:
    for writer, (ok, value) in zip(group, answers, strict=True):
        if writer.answer.done():  # cancelled meanwhile: nobody listens
            continue
        if ok:
            writer.answer.set_result(value)
        else:
            writer.answer.set_exception(value)


def _fail(group: Sequence[_Writer], error: Exception | Callable[[], Exception]) -> None:
    """Every writer still listening gets ``error``: the one exception, or a new one each from a factory."""
    for writer in group:
        if not writer.answer.done():
            writer.answer.set_exception(error if isinstance(error, Exception) else error())


async def _back_off(attempt: int) -> None:
    """Someone else wrote in between: wait a little (jittered, so losers spread out) before the next attempt."""
    await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, 0.0002 * 2**attempt)))


def _cas_params(device_pk: int, read_version: int, new: Shadow, watch: str | None) -> dict[str, Any]:
    return {
        "pk": device_pk,
        "read_version": read_version,
        "reported": new.reported,
        "desired": new.desired,
        "meta_reported": new.metadata_reported,
        "meta_desired": new.metadata_desired,
        "version": new.version,
        "ts_ms": new.timestamp_ms,
        "watch": watch,
    }


async def _read(db: Database, account_id: int, product_id: str, device_name: str) -> tuple[int, Shadow, str | None]:
    """(device pk, shadow, the task watching it)."""
    rows = await db.point(_READ, {"account_id": account_id, "product_id": product_id, "device_name": device_name})
    if not rows:
        raise ShadowMissing(f"{product_id}/{device_name}")
    row = rows[0]
    shadow = Shadow(
        reported=dict(row.shadow_reported or {}),
        desired=None if row.shadow_desired is None else dict(row.shadow_desired),
        metadata_reported=dict(row.shadow_meta_reported or {}),
        metadata_desired=dict(row.shadow_meta_desired or {}),
        version=int(row.shadow_version),
        timestamp_ms=int(row.shadow_ts_ms),
    )
    return int(row.id), shadow, row.watch_task


# --- the task engine's batched desired merge (run inside the batch transaction of store/batches.py) --------

# the devices of one batch: a key range of the (product_pk, name) index, restricted to the task's snapshot
_RANGE: Final = "product_pk = :pk AND name > :after AND name <= :through AND id <= :snapshot"

_SQLITE_FLAT_MERGE: Final = (
    "UPDATE devices SET "
    "shadow_desired = json_patch(coalesce(shadow_desired, '{{}}'), :patch), "
    "shadow_meta_desired = CASE WHEN json_type(shadow_desired) = 'object' "
    "THEN json_patch(json_patch(shadow_meta_desired, :clear), :stamps) ELSE :stamps END, "
    "shadow_version = shadow_version + 1, shadow_ts_ms = :now_ms{watch} "
    "WHERE " + _RANGE + "{names} RETURNING name, shadow_version{reported}"
)
_SQLITE_NAMES: Final = " AND name IN (SELECT value FROM json_each(:names))"

_POSTGRESQL_FLAT_MERGE: Final = (
    "UPDATE devices SET "
    "shadow_desired = (CASE WHEN jsonb_typeof(shadow_desired) = 'object' THEN shadow_desired "
    "ELSE '{{}}'::jsonb END - CAST(:null_keys AS text[])) || CAST(:values AS jsonb), "
    "shadow_meta_desired = CASE WHEN jsonb_typeof(shadow_desired) = 'object' "
    "THEN shadow_meta_desired - CAST(:keys AS text[]) ELSE '{{}}'::jsonb END || CAST(:stamps AS jsonb), "
    "shadow_version = shadow_version + 1, shadow_ts_ms = :now_ms{watch} "
    "WHERE " + _RANGE + "{names} RETURNING name, shadow_version{reported}"
)
_POSTGRESQL_NAMES: Final = " AND name = ANY(CAST(:names AS text[]))"


# A task that keeps outcomes also learns, for each device it writes, whether the device reports its values
# already (Converged at once: store/outcomes.py records it with the batch) and becomes the watch of the others
# (their later shadow writes decide). On PostgreSQL the UPDATE itself decides, with jsonb equality (numbers by
# value, true is not 1: domain.outcomes.holds for the scalar and array values of a flat patch), so no reported
# state crosses the network; on SQLite (in-process) the merge reads the reported state back and Python decides,
# then clears the watch of the devices converged already.
_TRACKING: Final = {"watch": ", watch_task = :watch", "reported": ", shadow_reported"}
_PLAIN: Final = {"watch": "", "reported": ""}
_tracked_statements: dict[tuple[bool, int], sa.TextClause] = {}


def _postgresql_tracked(listed: bool, keys: int) -> sa.TextClause:
    """The tracked merge for ``keys`` tracked values (their names and values are bound parameters)."""
    statement = _tracked_statements.get((listed, keys))
    if statement is None:
        converged = " AND ".join(
            f"(shadow_reported -> CAST(:k{i} AS text)) = CAST(:v{i} AS jsonb)" for i in range(keys)
        )
        converged = f"({converged or 'TRUE'})"
        statement = _tracked_statements[listed, keys] = sa.text(
            _POSTGRESQL_FLAT_MERGE.format(
                names=_POSTGRESQL_NAMES if listed else "",
                watch=f", watch_task = CASE WHEN {converged} THEN NULL ELSE :watch END",
                reported=f", {converged}",
            )
        )
    return statement


_SQLITE_UNWATCH: Final = sa.text(
    "UPDATE devices SET watch_task = NULL WHERE product_pk = :pk AND name IN (SELECT value FROM json_each(:names))"
)


def _statements(template: str, names_clause: str) -> dict[tuple[bool, bool], sa.TextClause]:
    """The variants by (only the listed names, tracking), built once."""
    return {
        (listed, tracking): sa.text(
            template.format(names=names_clause if listed else "", **(_TRACKING if tracking else _PLAIN))
        )
        for listed in (False, True)
        for tracking in (False, True)
    }


_SQLITE_MERGES: Final = _statements(_SQLITE_FLAT_MERGE, _SQLITE_NAMES)
_POSTGRESQL_MERGES: Final = _statements(_POSTGRESQL_FLAT_MERGE, _POSTGRESQL_NAMES)

_WRITE_BACK_VALUES: Final = {
    "shadow_desired": sa.bindparam("b_desired", type_=_JSON_OR_NULL),
    "shadow_meta_desired": sa.bindparam("b_meta", type_=_JSON_OR_NULL),
    "shadow_version": sa.bindparam("b_version", type_=sa.BigInteger),
    "shadow_ts_ms": sa.bindparam("b_ts_ms", type_=sa.BigInteger),
}
_WRITE_BACK: Final = sa.update(devices).where(devices.c.id == sa.bindparam("b_id")).values(**_WRITE_BACK_VALUES)
_WRITE_BACK_WATCHED: Final = (
    sa.update(devices)
    .where(devices.c.id == sa.bindparam("b_id"))
    .values(**_WRITE_BACK_VALUES, watch_task=sa.bindparam("b_watch", type_=sa.String))
)


def _reported(value: Any) -> JSONObject | None:
    """A RETURNING'd reported state: text on SQLite, decoded already on PostgreSQL."""
    if value is None:
        return None
    decoded = orjson.loads(value) if isinstance(value, str | bytes) else value
    return decoded if isinstance(decoded, dict) else None


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def batch_bounds(product_pk: int, after: str, through: str, snapshot_id: int) -> dict[str, Any]:
    """The key range of one batch: devices named in ``(after, through]`` of the task's snapshot."""
    return {"pk": product_pk, "after": after, "through": through, "snapshot": snapshot_id}


async def merge_desired_flat(
    conn: AsyncConnection,
    bounds: Mapping[str, Any],
    names: Sequence[str] | None,
    patch: JSONObject,
    now_ms: int,
    watch: str | None = None,
) -> list[tuple[str, int]]:
    """Merge a flat ``patch`` (``domain.shadow.is_flat``) in SQL: (name, new version) per device written.
    ``watch`` (a task that keeps outcomes) also becomes each device's watch and gets its outcome rows."""
    values = {key: value for key, value in patch.items() if value is not None}
    stamps = _dumps({key: {"timestamp": now_ms} for key in values})
    params: dict[str, Any] = {**bounds, "stamps": stamps, "now_ms": now_ms}
    if watch is not None:
        params["watch"] = watch
    if conn.dialect.name == "sqlite":
        statements = _SQLITE_MERGES
        params.update(patch=_dumps(patch), clear=_dumps(dict.fromkeys(patch)))
        if names is not None:
            params["names"] = _dumps(list(names))
    else:
        statements = _POSTGRESQL_MERGES
        params.update(
            null_keys=[key for key, value in patch.items() if value is None], values=_dumps(values), keys=list(patch)
        )
        if names is not None:
            params["names"] = list(names)
    if watch is None:
        result = await conn.execute(statements[names is not None, False], params)
        return [(name, int(version)) for name, version in result]
    tracked = tracked_values(patch)
    if conn.dialect.name == "sqlite":
        result = await conn.execute(statements[names is not None, True], params)
        rows = [(name, int(version), holds(_reported(reported), tracked)) for name, version, reported in result]
        converged = [name for name, _version, done in rows if done]
        if converged:
            await conn.execute(_SQLITE_UNWATCH, {"pk": bounds["pk"], "names": _dumps(converged)})
    else:
        for i, (key, value) in enumerate(tracked.items()):
            params[f"k{i}"], params[f"v{i}"] = key, _dumps(value)
        result = await conn.execute(_postgresql_tracked(names is not None, len(tracked)), params)
        rows = [(name, int(version), bool(done)) for name, version, done in result]
    return await _record_written(conn, watch, bounds["through"], rows, now_ms)


async def _record_written(
    conn: AsyncConnection, watch: str, through: str, rows: Sequence[tuple[str, int, bool]], now_ms: int
) -> list[tuple[str, int]]:
    """The batch's outcomes (Converged when the device reported the values already, else Written)."""
    outcomes = [
        (name, version, DeviceOutcome.CONVERGED if done else DeviceOutcome.WRITTEN) for name, version, done in rows
    ]
    await insert_batch(conn, watch, through, outcomes, now_ms)
    return [(name, version) for name, version, _ in rows]


async def merge_desired_each(
    conn: AsyncConnection,
    bounds: Mapping[str, Any],
    names: Sequence[str] | None,
    merge: DesiredMerge,
    now_ms: int,
    watch: str | None = None,
    tracked: JSONObject | None = None,
) -> list[tuple[str, int]]:
    """Merge row by row with ``merge``: the batch's rows are read under its lock (SQLite ``BEGIN IMMEDIATE``,
    PostgreSQL ``FOR UPDATE``) and written back with one ``executemany``.

    For a patch with nested objects, whose metadata depends on each device's old value (an object written over
    a scalar drops the scalar's timestamp leaf), which no constant SQL patch can express.
    """
    query = (
        sa.select(
            devices.c.id,
            devices.c.name,
            devices.c.shadow_desired,
            devices.c.shadow_meta_desired,
            devices.c.shadow_version,
            # only a tracking task reads it (decoding every row's reported state costs)
            (devices.c.shadow_reported if watch is not None else sa.null()).label("shadow_reported"),
        )
        .where(
            devices.c.product_pk == bounds["pk"],
            devices.c.name > bounds["after"],
            devices.c.name <= bounds["through"],
            devices.c.id <= bounds["snapshot"],
        )
        .order_by(devices.c.product_pk, devices.c.name)
    )
    if conn.dialect.name != "sqlite":
        query = query.with_for_update()  # SQLite: BEGIN IMMEDIATE already excludes every other writer
    wanted = None if names is None else set(names)
    updates: list[dict[str, Any]] = []
    written: list[tuple[str, int, bool]] = []
    for row in await conn.execute(query):
        if wanted is not None and row.name not in wanted:
            continue
        old = row.shadow_desired if isinstance(row.shadow_desired, dict) else None
        desired, metadata = merge(old, row.shadow_meta_desired)
        version = int(row.shadow_version) + 1
        update = {"b_id": row.id, "b_desired": desired, "b_meta": metadata, "b_version": version, "b_ts_ms": now_ms}
        done = watch is not None and holds(_reported(row.shadow_reported), tracked or {})
        if watch is not None:
            update["b_watch"] = None if done else watch
        updates.append(update)
        written.append((row.name, version, done))
    if updates:
        await conn.execute(_WRITE_BACK if watch is None else _WRITE_BACK_WATCHED, updates)
    if watch is None:
        return [(name, version) for name, version, _ in written]
    return await _record_written(conn, watch, bounds["through"], written, now_ms)

"""Group commit of one shadow's writes (store/shadows.py, ShadowStore): the writers of one shadow on one node
are written together, one compare-and-set per group, and each gets the answer it would have got alone, in
their order of arrival. On SQLite and PostgreSQL (every test runs on both)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.shadow import DeviceUpdate, Shadow, UpdateResult, apply_desired, apply_device_update
from fleetops.ports.store import ShadowContention, ShadowMissing
from fleetops.store import shadows as shadows_module
from fleetops.store.outcomes import TaskOutcomeStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.tables import devices
from tests.support import TaskEnv, close_server_connections, task_env

LAMPS = [f"lamp-{i}" for i in range(10)]
HOT = "lamp-0"

Change = Callable[[Shadow], tuple[Shadow | None, Any]]


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[TaskEnv]:
    async with task_env(database_url, LAMPS) as env:
        yield env


def counting(tag: str, runs: Counter[str] | None = None) -> Change:
    """Adds one to the desired counter ``n`` and records the count it wrote under ``tag``; answers (its version,
    the count it saw). A change applied twice would count twice."""

    def change(current: Shadow) -> tuple[Shadow, tuple[int, int]]:
        if runs is not None:
            runs[tag] += 1
        seen = int((current.desired or {}).get("n", 0))
        new, _pushed = apply_desired(current, {"n": seen + 1, tag: seen + 1, "last": tag}, 1000 + seen)
        return new, (new.version, seen)

    return change


def put(key: str) -> Change:
    def change(current: Shadow) -> tuple[Shadow, int]:
        new, _pushed = apply_desired(current, {key: True}, 1)
        return new, new.version

    return change


def device_reports(reported: dict[str, Any], version: int | None = None) -> Change:
    """The device's own ``update`` (backend/device_shadows.py): a refused update writes nothing."""

    def change(current: Shadow) -> tuple[Shadow | None, UpdateResult]:
        outcome = apply_device_update(current, DeviceUpdate({"reported": reported}, version), 1)
        return (outcome.shadow if outcome.accepted else None), outcome

    return change


async def update(env: TaskEnv, store: ShadowStore, change: Change, name: str = HOT) -> Any:
    return await store.update(env.account_id, env.product_id, name, change)


async def stored(env: TaskEnv, name: str = HOT) -> Shadow:
    return await ShadowStore(env.db).read(env.account_id, env.product_id, name)


def count_writes(store: ShadowStore) -> list[int]:
    """The read version of each compare-and-set ``store`` sends (won or lost)."""
    sent: list[int] = []
    original = store._compare_and_set

    async def spy(
        conn: AsyncConnection | None, device_pk: int, read_version: int, new: Shadow, watch: str | None
    ) -> bool:
        sent.append(read_version)
        return await original(conn, device_pk, read_version, new, watch)

    store._compare_and_set = spy  # type: ignore[method-assign]
    return sent


class HeldWrite:
    """Holds ``store``'s compare-and-sets until released; ``before`` runs first (once, at the first one)."""

    def __init__(self, store: ShadowStore) -> None:
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.before: Callable[[], Any] | None = None
        original = store._compare_and_set

        async def held(
            conn: AsyncConnection | None, device_pk: int, read_version: int, new: Shadow, watch: str | None
        ) -> bool:
            self.entered.set()
            await self.gate.wait()
            if self.before is not None:
                before, self.before = self.before, None
                await before()
            return await original(conn, device_pk, read_version, new, watch)

        store._compare_and_set = held  # type: ignore[method-assign]


def replay(start: Shadow, changes: Sequence[Change]) -> Shadow:
    document = start
    for change in changes:
        new, _result = change(document)
        document = new or document
    return document


# --- many writers of one shadow ------------------------------------------------------------------------------


async def test_two_hundred_writers_of_one_shadow_get_the_versions_one_to_two_hundred_and_lose_nothing(
    env: TaskEnv,
) -> None:
    store = ShadowStore(env.db)
    writes = count_writes(store)
    runs: Counter[str] = Counter()
    changes = [counting(f"w{i}", runs) for i in range(200)]
    results = await asyncio.gather(*(update(env, store, change) for change in changes))

    versions = [version for version, _seen in results]
    assert sorted(versions) == list(range(1, 201))  # each its own version, none twice
    # each saw the document the writers before it in version order left, and nothing else
    assert all(seen == version - 1 for version, seen in results)
    # they all came before the first read: one group, one compare-and-set
    assert writes == [0]
    assert set(runs.values()) == {1}
    final = await stored(env)
    assert final.version == 200 and final.desired is not None and final.desired["n"] == 200
    # the stored document is the changes merged one at a time in the order of their versions
    in_order = [change for _version, change in sorted(zip(versions, changes, strict=True), key=lambda p: p[0])]
    assert final == replay(Shadow.new(), in_order)
    assert final.desired["last"] == "w199"  # arrival order: the last to call is the last step
    assert store._queues == {}


async def test_a_group_holds_at_most_max_group_changes(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    writes = count_writes(store)
    n = shadows_module.MAX_GROUP + 44
    results = await asyncio.gather(*(update(env, store, counting(f"w{i}")) for i in range(n)))
    assert sorted(version for version, _ in results) == list(range(1, n + 1))
    assert writes == [0, shadows_module.MAX_GROUP]  # two groups, the second on the first's version
    assert (await stored(env)).version == n


async def test_writers_arriving_during_a_write_form_the_next_group(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    writes = count_writes(store)
    held = HeldWrite(store)
    first = asyncio.create_task(update(env, store, put("first")))
    await held.entered.wait()
    later = [asyncio.create_task(update(env, store, put(f"later{i}"))) for i in range(5)]
    await asyncio.sleep(0.01)
    held.gate.set()
    assert await first == 1
    assert sorted(await asyncio.gather(*later)) == [2, 3, 4, 5, 6]
    assert writes == [0, 1]


async def test_a_change_that_raises_or_refuses_mid_group_leaves_the_others_alone(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    writes = count_writes(store)

    def broken(_current: Shadow) -> tuple[Shadow | None, None]:
        raise ValueError("a rule broke")

    seen_by_refusal: list[int] = []

    def refuses(current: Shadow) -> tuple[Shadow | None, str]:
        seen_by_refusal.append(current.version)
        return None, "refused"

    calls = [
        put("a"),  # v1
        broken,
        device_reports({"temp": 1}, version=1),  # sees v1 (a's step): accepted, v2
        refuses,  # sees v2, writes nothing
        device_reports({"temp": 2}, version=2),  # sees v2 still (the refusal changed nothing): v3
        device_reports({"temp": 3}, version=2),  # sees v3: a version mismatch, writes nothing
        put("b"),  # v4
    ]
    results = await asyncio.gather(*(update(env, store, change) for change in calls), return_exceptions=True)
    assert results[0] == 1
    assert isinstance(results[1], ValueError)
    assert isinstance(results[2], UpdateResult) and results[2].accepted and results[2].shadow.version == 2
    assert results[3] == "refused" and seen_by_refusal == [2]
    assert isinstance(results[4], UpdateResult) and results[4].accepted and results[4].shadow.version == 3
    assert isinstance(results[5], UpdateResult) and results[5].version_mismatch
    assert results[5].shadow.version == 3  # the unchanged document it was refused on
    assert results[6] == 4
    assert writes == [0]
    final = await stored(env)
    assert final.version == 4 and final.reported == {"temp": 2} and final.desired == {"a": True, "b": True}


async def test_a_group_whose_changes_all_refuse_writes_nothing(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    writes = count_writes(store)
    results = await asyncio.gather(
        *(update(env, store, device_reports({"t": i}, version=7)) for i in range(5)),
        update(env, store, lambda _s: (None, "no")),
    )
    assert [r.version_mismatch for r in results[:5]] == [True] * 5 and results[5] == "no"
    assert writes == [] and (await stored(env)).version == 0


async def test_a_missing_shadow_fails_every_writer_of_the_group(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    results = await asyncio.gather(
        *(update(env, store, put(f"k{i}"), name="nobody") for i in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ShadowMissing) for r in results)
    assert len({id(r) for r in results}) == 3  # an exception each, not one raised in three tasks
    assert store._queues == {}


# --- other writers: lost compare-and-sets -------------------------------------------------------------------


async def test_a_lost_compare_and_set_runs_the_whole_group_again_without_applying_anything_twice(
    env: TaskEnv,
) -> None:
    store, other_node = ShadowStore(env.db), ShadowStore(env.db)
    writes = count_writes(store)
    held = HeldWrite(store)

    async def other_writes() -> None:
        assert await update(env, other_node, counting("other")) == (1, 0)

    held.before = other_writes  # between the group's read (v0) and its compare-and-set
    held.gate.set()
    runs: Counter[str] = Counter()
    changes = [counting(f"w{i}", runs) for i in range(50)]
    results = await asyncio.gather(*(update(env, store, change) for change in changes))
    assert writes == [0, 1]  # lost on v0, won on a fresh read of v1
    assert set(runs.values()) == {2}  # every change ran again on the fresh document
    assert sorted(version for version, _ in results) == list(range(2, 52))
    assert all(seen == version - 1 for version, seen in results)  # the other node's write counted once
    final = await stored(env)
    assert final.version == 51 and final.desired is not None and final.desired["n"] == 51


async def test_writers_on_two_nodes_at_once_lose_nothing(env: TaskEnv) -> None:
    node_a, node_b = ShadowStore(env.db), ShadowStore(env.db)
    runs: Counter[str] = Counter()

    async def node(store: ShadowStore, prefix: str) -> list[tuple[int, int]]:
        results: list[tuple[int, int]] = []
        for burst in range(4):
            results += await asyncio.gather(
                *(update(env, store, counting(f"{prefix}{burst}-{i}", runs)) for i in range(25))
            )
        return results

    a, b = await asyncio.gather(node(node_a, "a"), node(node_b, "b"))
    assert sorted(version for version, _ in a + b) == list(range(1, 201))
    assert all(seen == version - 1 for version, seen in a + b)
    final = await stored(env)
    assert final.version == 200 and final.desired is not None and final.desired["n"] == 200
    assert len(runs) == 200


async def test_writers_give_up_together_after_the_bounded_attempts(env: TaskEnv) -> None:
    impatient, other_node = ShadowStore(env.db, max_attempts=3), ShadowStore(env.db)
    writes = count_writes(impatient)
    original = impatient._compare_and_set

    async def overtaken(
        conn: AsyncConnection | None, device_pk: int, read_version: int, new: Shadow, watch: str | None
    ) -> bool:
        await update(env, other_node, put(f"other{read_version}"))
        return await original(conn, device_pk, read_version, new, watch)

    impatient._compare_and_set = overtaken  # type: ignore[method-assign]
    results = await asyncio.gather(*(update(env, impatient, put(f"mine{i}")) for i in range(4)), return_exceptions=True)
    assert all(isinstance(r, ShadowContention) for r in results) and len({id(r) for r in results}) == 4
    assert writes == [0, 1, 2]
    final = await stored(env)
    assert final.version == 3 and not any(key.startswith("mine") for key in final.desired or {})


# --- cancellation -------------------------------------------------------------------------------------------


async def test_a_writer_cancelled_while_it_waits_is_not_written_and_the_others_are(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    held = HeldWrite(store)
    first = asyncio.create_task(update(env, store, put("first")))
    await held.entered.wait()
    waiting = [asyncio.create_task(update(env, store, put(key))) for key in ("b", "c", "d")]
    await asyncio.sleep(0.01)
    waiting[1].cancel()
    held.gate.set()
    assert await first == 1
    assert await waiting[0] == 2 and await waiting[2] == 3
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]
    final = await stored(env)
    assert final.version == 3 and final.desired == {"first": True, "b": True, "d": True}
    assert store._queues == {}


async def test_the_writer_that_started_the_leader_cancelled_mid_write_stops_no_one(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    held = HeldWrite(store)
    starter = asyncio.create_task(update(env, store, put("starter")))
    same_group = asyncio.create_task(update(env, store, put("same")))
    await held.entered.wait()
    next_group = asyncio.create_task(update(env, store, put("next")))
    await asyncio.sleep(0.01)
    starter.cancel()
    await asyncio.sleep(0.01)
    held.gate.set()
    assert await same_group == 2 and await next_group == 3
    with pytest.raises(asyncio.CancelledError):
        await starter
    # its change was in the write already: written, once (a second time would make version 4), unanswered
    final = await stored(env)
    assert final.version == 3 and final.desired == {"starter": True, "same": True, "next": True}
    assert await update(env, store, put("after")) == 4
    assert store._queues == {}


async def test_a_writer_cancelled_during_a_lost_write_is_not_run_again(env: TaskEnv) -> None:
    store, other_node = ShadowStore(env.db), ShadowStore(env.db)
    held = HeldWrite(store)
    runs: Counter[str] = Counter()
    kept = asyncio.create_task(update(env, store, counting("kept", runs)))
    dropped = asyncio.create_task(update(env, store, counting("dropped", runs)))
    await held.entered.wait()

    async def other_writes_and_cancel() -> None:
        await update(env, other_node, counting("other"))
        dropped.cancel()
        await asyncio.sleep(0)

    held.before = other_writes_and_cancel
    held.gate.set()
    assert await kept == (2, 1)
    with pytest.raises(asyncio.CancelledError):
        await dropped
    assert runs == {"kept": 2, "dropped": 1}
    final = await stored(env)
    assert final.version == 2 and final.desired is not None and "dropped" not in final.desired


async def test_a_cancelled_leader_answers_every_writer_and_the_next_writer_starts_anew(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    held = HeldWrite(store)
    in_write = [asyncio.create_task(update(env, store, put(f"w{i}"))) for i in range(3)]
    await held.entered.wait()
    queued = asyncio.create_task(update(env, store, put("queued")))
    await asyncio.sleep(0.01)
    leader = store._queues[(env.account_id, env.product_id, HOT)].leader
    assert leader is not None
    leader.cancel()  # what closing the event loop does
    for writer in [*in_write, queued]:
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(writer, 5)
    assert store._queues == {}
    assert (await stored(env)).version == 0  # cancelled before its compare-and-set: nothing written
    held.gate.set()
    assert await update(env, store, put("after")) == 1


# --- a write whose connection breaks ------------------------------------------------------------------------


async def test_a_compare_and_set_whose_connection_broke_is_not_sent_again(env: TaskEnv) -> None:
    store = ShadowStore(env.db)
    real = env.db.write_one
    sent = 0

    async def committed_then_broke(statement: Any, parameters: dict[str, Any]) -> int:
        nonlocal sent
        sent += 1
        await real(statement, parameters)
        raise DBAPIError("UPDATE devices ...", None, ConnectionResetError("reset"), connection_invalidated=True)

    env.db.write_one = committed_then_broke  # type: ignore[method-assign]
    results = await asyncio.gather(*(update(env, store, put(f"k{i}")) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, DBAPIError) for r in results)
    assert sent == 1
    # the write did commit: once (run again, it would have lost, and the changes been applied on top of it)
    assert (await stored(env)).version == 5


@pytest.mark.postgres
async def test_a_shadow_write_after_the_server_closed_the_connections_succeeds(env: TaskEnv) -> None:
    if env.db.is_sqlite:
        pytest.skip("the autocommit pool without a ping is PostgreSQL's")
    store = ShadowStore(env.db)
    assert await update(env, store, put("before")) == 1  # the autocommit pool now holds a connection
    assert close_server_connections(env.db.engine.url.render_as_string(hide_password=False)) >= 1
    # the group's read meets the closed connection and runs again on a new one; the write takes a live one
    assert sorted(await asyncio.gather(*(update(env, store, put(f"k{i}")) for i in range(3)))) == [2, 3, 4]
    assert (await stored(env)).version == 4


# --- a device an outcome-tracking task watches --------------------------------------------------------------


async def test_a_group_on_a_watched_device_decides_its_outcome_as_one_write_at_a_time_would(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("^lamp-", {"color": "red"}, track_outcomes=True)
    await env.worker(batch_size=20).run_until_idle()
    scripts: dict[str, list[Change]] = {
        # converges at the second step, reports something else at the third: Converged (the document alone
        # at the end would say Written)
        "converges": [device_reports({"level": 1}), device_reports({"color": "red"}), device_reports({"color": "x"})],
        # the desired state says otherwise at the second step: Superseded, later steps change nothing
        "superseded": [put("other"), lambda s: (apply_desired(s, {"color": "green"}, 1)[0], None), put("x")],
        # nothing decides: still Written, the watch stays
        "undecided": [device_reports({"color": "blue"}), put("other")],
    }
    grouped = dict(zip(scripts, ["lamp-1", "lamp-2", "lamp-3"], strict=True))
    one_by_one = dict(zip(scripts, ["lamp-4", "lamp-5", "lamp-6"], strict=True))
    store = ShadowStore(env.db)
    writes = count_writes(store)
    for script, changes in scripts.items():
        await asyncio.gather(*(update(env, store, change, grouped[script]) for change in changes))
        for change in changes:
            await update(env, ShadowStore(env.db), change, one_by_one[script])
    assert len(writes) == 3  # one compare-and-set per grouped device

    window = None
    _total, page = await TaskOutcomeStore(env.db).page(task_id, None, window, int(env.clock() * 1000), 0, 100)
    outcome = {r.device_name: r.outcome for r in page}
    async with env.db.connect() as conn:
        rows = await conn.execute(sa.select(devices.c.name, devices.c.watch_task))
        watch = {row.name: row.watch_task for row in rows}
    shadows = await env.shadows()
    expected = {
        "converges": DeviceOutcome.CONVERGED,
        "superseded": DeviceOutcome.SUPERSEDED,
        "undecided": DeviceOutcome.WRITTEN,
    }
    for script in scripts:
        group, alone = grouped[script], one_by_one[script]
        assert outcome[group] is outcome[alone] is expected[script], script
        assert watch[group] == watch[alone] == (task_id if script == "undecided" else None), script
        assert shadows[group] == shadows[alone], script

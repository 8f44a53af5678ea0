"""The task extensions on SQLite and PostgreSQL (docs/extensions.md): per-device outcomes written by the batches
and moved on by the devices' shadow writes, the convergence window, abort criteria, rollout pacing, StopTask,
ClientToken, PreviewTask, counting before the start, resuming on another node, the purge.

The engine runs in burst mode (``run_until_idle``) with a fake clock, unless a test measures the pacing (then
the clock is the wall clock, shifted by what the test advances).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest

from fleetops import errors
from fleetops.backend.tasks import TaskDraft
from fleetops.domain.extensions import AbortCriterionDraft
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import Rollout
from fleetops.domain.shadow import DeviceUpdate, Shadow, apply_desired, apply_device_update
from fleetops.domain.tasks import TaskStatus
from fleetops.engine.executor import Outcome
from fleetops.ports.messaging import Delivery
from fleetops.store.outcomes import TaskOutcomeStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.tasks import TaskStore
from tests.support import FakeClock, TaskEnv, TaskPublisher, task_env

LAMPS = [f"lamp-{i:03d}" for i in range(60)]
DOORS = [f"door-{i:03d}" for i in range(20)]
W, C, S, NC = (DeviceOutcome.WRITTEN, DeviceOutcome.CONVERGED, DeviceOutcome.SUPERSEDED, DeviceOutcome.NOT_CONVERGED)


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[TaskEnv]:
    async with task_env(database_url, LAMPS + DOORS) as env:
        yield env


class PresencePublisher(TaskPublisher):
    """A recording publisher that knows who is connected, and says so per message (as the gateway does)."""

    def __init__(self, online: set[str]) -> None:
        super().__init__()
        self.connected = online

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        await super().publish_many(messages, qos)
        return [Delivery.SENT if topic.split("/")[1] in self.connected else Delivery.DROPPED for topic, _ in messages]


class WallClock(FakeClock):
    """Real time (the pacing waits for it), moved ahead by ``advance`` like the fake clock."""

    def __init__(self) -> None:
        super().__init__(0.0)

    def __call__(self) -> float:
        return time.time() + self.now


def outcomes(env: TaskEnv) -> TaskOutcomeStore:
    return TaskOutcomeStore(env.db)


async def outcome_of(env: TaskEnv, task_id: str, **kwargs: Any) -> dict[str, DeviceOutcome]:
    task = await env.task(task_id)
    window = task.extensions.convergence_window_ms if task.extensions else None
    _total, page = await outcomes(env).page(task_id, None, window, int(env.clock() * 1000), 0, 10_000)
    return {r.device_name: r.outcome for r in page}


async def device_reports(env: TaskEnv, name: str, reported: dict[str, Any], *, clear_desired: bool = False) -> None:
    """The device's own ``update`` (what the MQTT side runs), through the store's compare-and-set."""
    state: dict[str, Any] = {"reported": reported}
    if clear_desired:
        state["desired"] = None

    def change(current: Shadow) -> tuple[Shadow | None, None]:
        result = apply_device_update(current, DeviceUpdate(state), int(env.clock() * 1000))
        assert result.accepted, result.error
        return result.shadow, None

    await ShadowStore(env.db).update(env.account_id, env.product_id, name, change)


async def cloud_writes_desired(env: TaskEnv, name: str, patch: dict[str, Any]) -> None:
    """UpdateDeviceShadow's write (version check skipped)."""

    def change(current: Shadow) -> tuple[Shadow, None]:
        return apply_desired(current, patch, int(env.clock() * 1000))[0], None

    await ShadowStore(env.db).update(env.account_id, env.product_id, name, change)


# --- UpdateShadow outcomes -----------------------------------------------------------------------------------


async def test_update_shadow_outcomes_follow_the_devices_shadow_writes(env: TaskEnv) -> None:
    await device_reports(env, "lamp-001", {"color": "red", "level": 3})  # holds the values before the task
    task_id = await env.update_shadow_task("^lamp-00", {"color": "red", "old": None}, track_outcomes=True)

    assert await env.worker(batch_size=4).run_until_idle() == {task_id: Outcome.COMPLETED}
    rows = await outcome_of(env, task_id)
    assert set(rows) == {f"lamp-00{i}" for i in range(10)}
    assert rows["lamp-001"] is C  # converged at once: it reported red already
    assert {rows[n] for n in rows if n != "lamp-001"} == {W}
    _total, page = await outcomes(env).page(task_id, None, None, 0, 0, 3)
    versions = {r.device_name: r.version for r in page}
    assert versions == {"lamp-000": 1, "lamp-001": 2, "lamp-002": 1}  # the version the task wrote

    await device_reports(env, "lamp-002", {"color": "red"})  # applied
    await device_reports(env, "lamp-003", {"color": "blue"})  # something else: still written
    await device_reports(env, "lamp-004", {"level": 1}, clear_desired=True)  # a clear is not a change of intent
    await cloud_writes_desired(env, "lamp-005", {"color": "green"})  # a later write: superseded
    await cloud_writes_desired(env, "lamp-006", {"other": 1})  # another key: still written
    await device_reports(env, "lamp-005", {"color": "red"})  # too late: superseded stays
    rows = await outcome_of(env, task_id)
    assert [rows[f"lamp-00{i}"] for i in range(7)] == [W, C, C, W, W, S, W]

    counts = await outcomes(env).counts(task_id, None, 0)
    assert counts == {W: 7, C: 2, S: 1}
    total, converged = await outcomes(env).page(task_id, C, None, 0, 0, 10)
    assert total == 2 and [r.device_name for r in converged] == ["lamp-001", "lamp-002"]
    # the device's own write cleared its watch once decided; the undecided ones keep it
    watched = await watch_of(env)
    assert watched["lamp-002"] is None and watched["lamp-003"] == task_id and watched["lamp-010"] is None


async def watch_of(env: TaskEnv) -> dict[str, str | None]:
    import sqlalchemy as sa

    from fleetops.store.tables import devices

    async with env.db.connect() as conn:
        rows = await conn.execute(sa.select(devices.c.name, devices.c.watch_task))
        return {row.name: row.watch_task for row in rows}


async def test_nested_desired_converges_on_the_leaves_it_set(env: TaskEnv) -> None:
    patch = {"light": {"color": "red", "gone": None}, "mode": "eco"}
    task_id = await env.update_shadow_task("^door-00[0-2]$", patch, track_outcomes=True)
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}  # the row-by-row merge path

    await device_reports(env, "door-000", {"light": {"color": "red", "level": 9}, "mode": "eco"})
    await device_reports(env, "door-001", {"light": {"color": "red"}})  # mode missing
    await cloud_writes_desired(env, "door-002", {"light": {"color": "white"}})
    assert list((await outcome_of(env, task_id)).values()) == [C, W, S]


async def test_the_convergence_window_makes_written_devices_not_converged_for_good(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("^lamp-01", {"fw": "2.0"}, convergence_window_s=60)
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}
    await device_reports(env, "lamp-010", {"fw": "2.0"})
    env.clock.advance(59)
    await device_reports(env, "lamp-011", {"fw": "2.0"})  # within the window
    env.clock.advance(2)
    await device_reports(env, "lamp-012", {"fw": "2.0"})  # after it: not converged, and stays so

    rows = await outcome_of(env, task_id)
    assert [rows[f"lamp-01{i}"] for i in range(4)] == [C, C, NC, NC]
    task = await env.task(task_id)
    assert task.tracks_outcomes  # the window implies outcomes
    counts = await outcomes(env).counts(task_id, 60_000, int(env.clock() * 1000))
    assert counts == {C: 2, NC: 8}
    total, page = await outcomes(env).page(task_id, NC, 60_000, int(env.clock() * 1000), 2, 3)
    assert total == 8 and [r.device_name for r in page] == ["lamp-014", "lamp-015", "lamp-016"]


async def test_a_later_tracking_task_supersedes_the_devices_whose_values_it_changes(env: TaskEnv) -> None:
    first = await env.update_shadow_task("^lamp-02", {"color": "red", "level": 1}, track_outcomes=True)
    await env.worker().run_until_idle()
    second = await env.update_shadow_task("^lamp-02[0-4]", {"level": 2}, track_outcomes=True)
    third = await env.update_shadow_task("^lamp-02[5-9]", {"level": 1, "x": 0}, track_outcomes=True)
    assert set((await env.worker(batch_size=3).run_until_idle()).values()) == {Outcome.COMPLETED}

    rows = await outcome_of(env, first)
    assert [rows[f"lamp-02{i}"] for i in range(10)] == [S] * 5 + [W] * 5  # the third set level to 1 again
    assert set((await outcome_of(env, second)).values()) == {W}
    assert set((await outcome_of(env, third)).values()) == {W}
    await device_reports(env, "lamp-025", {"color": "red", "level": 1, "x": 0})  # the watch is the third's now
    assert (await outcome_of(env, third))["lamp-025"] is C


async def test_a_task_without_extensions_keeps_no_outcomes_and_leaves_no_watch(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("", {"a": 1})
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}
    task = await env.task(task_id)
    assert task.extensions is None and not task.tracks_outcomes
    assert await outcomes(env).counts(task_id, None, 0) == {}
    assert set((await watch_of(env)).values()) == {None}


# --- PublishMessage outcomes and abort criteria ---------------------------------------------------------------


async def test_publish_message_outcomes_say_who_was_connected(env: TaskEnv) -> None:
    publisher = PresencePublisher({"door-001", "door-003"})
    task_id = await env.publish_task("^door-00[0-4]$", "control", "open", track_outcomes=True)
    assert await env.worker(publisher=publisher).run_until_idle() == {task_id: Outcome.COMPLETED}
    rows = await outcome_of(env, task_id)
    assert rows == {
        "door-000": DeviceOutcome.OFFLINE,
        "door-001": DeviceOutcome.SENT,
        "door-002": DeviceOutcome.OFFLINE,
        "door-003": DeviceOutcome.SENT,
        "door-004": DeviceOutcome.OFFLINE,
    }
    assert len(publisher.messages) == 5  # QoS 0 to every matched device, as a Tencent task does
    assert await outcomes(env).mark(task_id, "door-000", DeviceOutcome.SENT, 5)  # a late delivery
    assert not await outcomes(env).mark(task_id, "door-001", DeviceOutcome.OFFLINE, 6)  # never backwards
    assert await outcomes(env).counts(task_id, None, 0) == {DeviceOutcome.SENT: 3, DeviceOutcome.OFFLINE: 2}


async def test_an_external_broker_says_published(env: TaskEnv) -> None:
    task_id = await env.publish_task("^door-00[0-1]$", "control", "open", track_outcomes=True)
    await env.worker().run_until_idle()  # TaskPublisher cannot tell who is connected
    assert set((await outcome_of(env, task_id)).values()) == {DeviceOutcome.PUBLISHED}


async def test_too_many_offline_devices_abort_the_task_within_one_batch(env: TaskEnv) -> None:
    # lamps 0..9 connected, the rest not: past 20 devices more than 50 % are offline
    publisher = PresencePublisher({f"lamp-{i:03d}" for i in range(10)})
    criteria = (AbortCriterionDraft("Offline", 50, 20),)
    task_id = await env.publish_task("^lamp-", "control", "go", abort_criteria=criteria)

    assert await env.worker(batch_size=5, publisher=publisher).run_until_idle() == {task_id: Outcome.ABORTED}
    task = await env.task(task_id)
    assert task.status is TaskStatus.FAILED and task.ret_code == 2
    # 10 sent, then 5 offline per batch: at 25 processed, 15 offline is 60 % > 50 %; at 20 it was exactly 50 %
    assert task.done_device_cnt == 25
    assert task.err_msg == (
        "aborted by AbortCriteria[0]: 15 of 25 processed devices (60.0 %) Offline, more than the 50 % allowed "
        "once at least 20 devices are processed (after 25 of 60 devices)"
    )
    assert len(publisher.messages) == 25 and len(await outcome_of(env, task_id)) == 25


async def test_not_converged_devices_abort_a_task_whose_window_passes(env: TaskEnv) -> None:
    async def slow(_call: int) -> None:
        env.clock.advance(10)  # each batch (its delta pushes) takes 10 s

    env.publisher.before_publish = slow
    criteria = (AbortCriterionDraft("NotConverged", 40, 10),)
    task_id = await env.update_shadow_task("^lamp-", {"fw": 3}, convergence_window_s=25, abort_criteria=criteria)
    assert await env.worker(batch_size=10).run_until_idle() == {task_id: Outcome.ABORTED}
    task = await env.task(task_id)
    # batches written at t=0,10,20,30 and checked at t=10,20,30,40: at 30 the first batch's window (25 s) has
    # passed, 10 of 30 devices = 33 % (not more than 40 %); at 40 two batches have: 20 of 40 = 50 %
    assert (task.done_device_cnt, task.ret_code) == (40, 2)
    assert "20 of 40 processed devices (50.0 %) NotConverged" in task.err_msg


async def test_abort_counts_survive_a_resume_on_another_node(env: TaskEnv) -> None:
    publisher = PresencePublisher(set())  # nobody connected

    async def crash(call: int) -> None:
        if call == 3:
            raise RuntimeError("simulated crash")  # two batches committed, 10 offline

    publisher.before_publish = crash
    criteria = (AbortCriterionDraft("Offline", 90, 15),)
    task_id = await env.publish_task("^lamp-", "control", "go", abort_criteria=criteria)
    assert await env.worker("node-a", batch_size=5, publisher=publisher).run_until_idle() == {task_id: Outcome.LOST}
    assert (await env.task(task_id)).done_device_cnt == 10

    publisher.before_publish = None
    env.clock.advance(31)  # node A's lease expires
    assert await env.worker("node-b", batch_size=5, publisher=publisher).run_until_idle() == {task_id: Outcome.ABORTED}
    task = await env.task(task_id)
    # node B counted node A's 10 offline devices: it aborts at 15, not at 25
    assert task.done_device_cnt == 15 and "15 of 15 processed devices" in task.err_msg
    assert len(await outcome_of(env, task_id)) == 15  # each device once, across both nodes


# --- rollout ---------------------------------------------------------------------------------------------


async def test_a_rollout_paces_its_batches(database_url: str) -> None:
    async with task_env(database_url, clock=WallClock()) as env:
        await env.add_devices(LAMPS)
        task_id = await env.publish_task("", "control", "go", rollout=Rollout(max_per_s=40))
        started = time.monotonic()
        assert await env.worker(batch_size=500).run_until_idle() == {task_id: Outcome.COMPLETED}
        elapsed = time.monotonic() - started
        # 60 devices at 40/s in batches of 20 (half a second each): the last batch goes out at 1.0 s
        assert elapsed >= 1.0
        assert elapsed < 30  # a bound that catches a hang, not a timing test
        assert [len(m) for m in env.publisher.batches] == [20, 20, 20]


async def test_an_exponential_rollout_grows_and_resumes_at_the_rate_it_reached(database_url: str) -> None:
    async with task_env(database_url, clock=WallClock()) as env:
        await env.add_devices(LAMPS)
        rollout = Rollout(max_per_s=1000, base_per_s=8, increment_percent=100, increment_every=8)

        async def crash(call: int) -> None:
            if call == 4:
                raise RuntimeError("simulated crash")

        env.publisher.before_publish = crash
        task_id = await env.publish_task("", "control", "go", rollout=rollout)
        assert await env.worker("node-a", batch_size=500).run_until_idle() == {task_id: Outcome.LOST}
        # 8/s for 8 devices (4 a batch: half a second), then 16/s (8); a batch never crosses a rate increase
        assert [len(m) for m in env.publisher.batches] == [4, 4, 8]
        assert (await env.task(task_id)).done_device_cnt == 16

        env.publisher.before_publish = None
        env.clock.advance(31)
        assert await env.worker("node-b", batch_size=500).run_until_idle() == {task_id: Outcome.COMPLETED}
        # node B goes on at the rate reached, 32/s, in batches of 8 (one rate step each)
        assert [len(m) for m in env.publisher.batches[3:]] == [8, 8, 8, 8, 8, 4]


# --- StopTask ------------------------------------------------------------------------------------------------


async def test_stop_ends_a_running_task_after_the_batch_in_flight(env: TaskEnv) -> None:
    store = TaskStore(env.db)
    task_id = await env.publish_task("^lamp-", "control", "go", track_outcomes=True)

    async def stop_during_third(call: int) -> None:
        if call == 3:
            assert await env.service.stop(env.account_id, task_id) is TaskStatus.PROCESSING
            assert await env.service.stop(env.account_id, task_id) is TaskStatus.PROCESSING  # asked twice: same

    env.publisher.before_publish = stop_during_third
    assert await env.worker(batch_size=10).run_until_idle() == {task_id: Outcome.CANCELLED}
    task = await env.task(task_id)
    assert task.status is TaskStatus.CANCELLED and task.done_device_cnt == 30  # the third batch went out
    assert task.err_msg == "stopped by StopTask after 30 of 60 devices" and task.ret_code == 0
    assert task.done_time == int(env.clock())
    assert sorted(await outcome_of(env, task_id)) == LAMPS[:30]
    with pytest.raises(errors.TaskAlreadyEnded, match="status 5"):
        await env.service.stop(env.account_id, task_id)
    assert await store.stop(env.account_id + 1000, task_id, 0, 0) is None  # another account: no such task


async def test_stop_cancels_a_waiting_task_and_plain_cancel_keeps_tencents_rule(env: TaskEnv) -> None:
    later = await env.publish_task("", "c", "x", schedule_time_s=int(env.clock()) + 60)
    assert await env.service.stop(env.account_id, later) is TaskStatus.CANCELLED
    assert (await env.task(later)).status is TaskStatus.CANCELLED

    running = await env.update_shadow_task("", {"a": 1})

    async def cancel_then_stop(call: int) -> None:
        if call == 1:
            with pytest.raises(errors.AsyncTaskAlreadyStarted):
                await env.service.cancel(env.account_id, running)
            await env.service.stop(env.account_id, running)

    env.publisher.before_publish = cancel_then_stop
    assert await env.worker(batch_size=30).run_until_idle() == {running: Outcome.CANCELLED}
    assert (await env.task(running)).done_device_cnt == 30


async def test_a_stop_requested_while_no_node_runs_the_task_ends_it_when_claimed(env: TaskEnv) -> None:
    store = TaskStore(env.db)
    task_id = await env.update_shadow_task("", {"a": 1})
    now = int(env.clock())
    claimed = await store.claim_next("node-a", now, 30)
    assert claimed is not None and claimed.status is TaskStatus.WAITING  # counted before it starts
    assert await store.start(task_id, "node-a", 80, now, now + 30)
    assert await env.service.stop(env.account_id, task_id) is TaskStatus.PROCESSING  # node A died here
    env.clock.advance(31)
    assert await env.worker("node-b").run_until_idle() == {task_id: Outcome.CANCELLED}
    task = await env.task(task_id)
    assert (task.status, task.done_device_cnt, task.all_device_cnt) == (TaskStatus.CANCELLED, 0, 80)


# --- counting before the start -------------------------------------------------------------------------------


async def test_a_task_is_shown_started_only_with_its_device_count(env: TaskEnv) -> None:
    seen: list[tuple[TaskStatus, int]] = []
    task_id = await env.update_shadow_task("^lamp-", {"a": 1})

    async def look(_call: int) -> None:
        task = await env.task(task_id)
        seen.append((task.status, task.all_device_cnt))

    env.publisher.before_publish = look
    await env.worker(batch_size=20).run_until_idle()
    assert seen == [(TaskStatus.PROCESSING, 60)] * 3


async def test_a_cancel_while_the_devices_are_counted_wins(env: TaskEnv) -> None:
    store = TaskStore(env.db)
    task_id = await env.update_shadow_task("", {"a": 1})
    claimed = await store.claim_next("node-a", int(env.clock()), 30)
    assert claimed is not None and claimed.status is TaskStatus.WAITING
    await env.service.cancel(env.account_id, task_id)  # still waiting: Tencent's CancelTask applies
    assert not await store.start(task_id, "node-a", 80, int(env.clock()), int(env.clock()) + 30)
    assert (await env.task(task_id)).status is TaskStatus.CANCELLED
    assert {s.version for s in (await env.shadows()).values()} == {0}


# --- ClientToken ---------------------------------------------------------------------------------------------


async def test_the_same_client_token_returns_the_first_task_and_creates_nothing(env: TaskEnv) -> None:
    first = await env.publish_task("^lamp-", "control", "go", client_token="deploy-42")
    assert await env.publish_task("^lamp-", "control", "go", client_token="deploy-42") == first
    other = await env.publish_task("^lamp-", "control", "go", client_token="deploy-43")
    assert other != first
    assert (await env.service.page(env.account_id, 0, 10))[0] == 2

    with pytest.raises(errors.InvalidParameterValue, match="ClientToken `deploy-42` was used") as misuse:
        await env.publish_task("^lamp-", "control", "STOP", client_token="deploy-42")
    assert first in misuse.value.message

    env.clock.advance(86_401)  # a day later the token is forgotten
    again = await env.publish_task("^lamp-", "control", "go", client_token="deploy-42")
    assert again not in (first, other)


async def test_a_client_token_retried_at_the_pending_cap_still_answers(database_url: str) -> None:
    async with task_env(database_url, max_open_tasks=1) as env:
        later = int(env.clock()) + 3600
        first = await env.publish_task("", "c", "x", schedule_time_s=later, client_token="t")
        assert await env.publish_task("", "c", "x", schedule_time_s=later, client_token="t") == first
        with pytest.raises(errors.PengingOrProcessingTasksExceedLimit):
            await env.publish_task("", "c", "x", schedule_time_s=later, client_token="u")


async def test_concurrent_creates_with_one_token_make_one_task(database_url: str) -> None:
    async with task_env(database_url) as env:
        draft = TaskDraft(
            env.draft("PublishMessage", "", topic="c", payload="x").task_type,
            env.product_id,
            "",
            0,
            topic="c",
            payload="x",
            client_token="once",
        )
        created = await asyncio.gather(*(service.create(env.account_id, draft) for service in [env.service] * 4))
        assert len(set(created)) == 1
        assert (await env.service.page(env.account_id, 0, 10))[0] == 1


# --- PreviewTask ---------------------------------------------------------------------------------------------


async def test_preview_counts_the_matches_now_and_writes_nothing(env: TaskEnv) -> None:
    preview = await env.service.preview(env.account_id, env.draft("UpdateShadow", r"^lamp-0[0-2]\d$", desired="{}"))
    assert preview.matched_device_cnt == 30
    assert preview.device_names == LAMPS[:10]
    everyone = await env.service.preview(env.account_id, env.draft("PublishMessage", "", topic="c", payload="x"))
    assert (everyone.matched_device_cnt, everyone.device_names) == (80, sorted(DOORS + LAMPS)[:10])
    assert (await env.service.page(env.account_id, 0, 10))[0] == 0
    assert {s.version for s in (await env.shadows()).values()} == {0}


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"desired": "[1]"}, "must be a JSON object"),
        ({"desired": "{}", "device_name_filter": "(a"}, "not a valid RE2"),
        ({"desired": "{}", "schedule_time": 5}, "ScheduleTimeInSeconds must be 0"),
        ({"desired": "{}", "deliver_on_connect": True}, "DeliverOnConnect applies to PublishMessage"),
        (
            {"desired": "{}", "abort_criteria": (AbortCriterionDraft("NotConverged", 5, 1),)},
            "needs ConvergenceWindowInSeconds",
        ),
        ({"desired": "{}", "abort_criteria": (AbortCriterionDraft("Offline", 5, 1),)}, "must be NotConverged"),
        ({"desired": "{}", "rollout": Rollout(10, 20, 50, 10)}, "must not exceed"),
        ({"desired": "{}", "rollout": Rollout(10, 5)}, "go together"),
    ],
)
async def test_preview_refuses_what_create_refuses(env: TaskEnv, fields: dict[str, Any], error: str) -> None:
    fields = {"device_name_filter": "", "schedule_time": 0, **fields}
    draft = TaskDraft(env.draft("UpdateShadow", "").task_type, env.product_id, **fields)
    with pytest.raises(errors.InvalidParameterValue, match=error) as previewed:
        await env.service.preview(env.account_id, draft)
    with pytest.raises(errors.InvalidParameterValue) as created:
        await env.service.create(env.account_id, draft)
    assert previewed.value.message == created.value.message


async def test_preview_answers_the_pending_cap_and_a_foreign_product_as_create(database_url: str) -> None:
    async with task_env(database_url, max_open_tasks=1) as env:
        await env.publish_task("", "c", "x", schedule_time_s=int(env.clock()) + 60)
        draft = env.draft("PublishMessage", "", topic="c", payload="x")
        with pytest.raises(errors.PengingOrProcessingTasksExceedLimit, match="at most 1 are allowed"):
            await env.service.preview(env.account_id, draft)
        with pytest.raises(errors.ProductNotExist):
            await env.service.preview(env.account_id + 1000, draft)


# --- the purge -----------------------------------------------------------------------------------------------


async def test_the_purge_deletes_old_outcomes_and_tokens(env: TaskEnv) -> None:
    task_id = await env.publish_task("^door-", "c", "x", track_outcomes=True, client_token="old")
    await env.worker().run_until_idle()
    store = TaskStore(env.db)
    now = int(env.clock())
    assert await store.purge(now - 1, now - 1) == 0  # too young: nothing goes
    assert len(await outcome_of(env, task_id)) == 20
    assert await store.purge(now + 1, now + 1) == 1
    assert await outcomes(env).counts(task_id, None, 0) == {}
    assert await env.publish_task("^door-", "c", "x", client_token="old") != task_id


REPORTED_STATES: list[dict[str, Any]] = [
    {},
    {"n": 1},
    {"n": 1.0, "s": "on"},
    {"n": True, "s": "on"},
    {"n": 1, "s": "on", "a": [1, "x"]},
    {"n": 1, "s": "on", "a": [1.0, "x"]},
    {"n": 1, "s": "on", "a": ["x", 1]},
    {"n": 2, "s": "on", "a": [1, "x"], "extra": {"deep": 1}},
    {"n": 1, "s": "off", "a": [1, "x"]},
    {"n": 1, "s": "on", "a": [1, "x"], "b": None},
]


@pytest.mark.parametrize("patch", [{"n": 1, "s": "on", "a": [1, "x"], "gone": None}, {"gone": None}, {"n": 1}])
async def test_converged_at_write_is_the_domain_rule_on_both_databases(env: TaskEnv, patch: dict[str, Any]) -> None:
    from fleetops.domain.outcomes import holds, tracked_values

    names = DOORS[: len(REPORTED_STATES)]
    for name, reported in zip(names, REPORTED_STATES, strict=True):
        reported = {k: v for k, v in reported.items() if v is not None}
        await device_reports(env, name, reported)
    task_id = await env.update_shadow_task("^door-", patch, track_outcomes=True)  # a flat patch: merged in SQL
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}
    rows = await outcome_of(env, task_id)
    for name, reported in zip(names, REPORTED_STATES, strict=True):
        reported = {k: v for k, v in reported.items() if v is not None}
        expected = C if holds(reported, tracked_values(patch)) else W
        assert rows[name] is expected, (name, reported)


class AckingPublisher(PresencePublisher):
    """A gateway-like publisher that acknowledges each QoS 1 message at once, before the task's batch commits
    (as a fast device does), and queues the messages of ``queued`` devices (offline persistent sessions)."""

    def __init__(self, online: set[str], queued: set[str]) -> None:
        super().__init__(online)
        self.queued = queued
        self.acked: list[str] = []

    async def publish_many_acked(
        self, messages: Sequence[tuple[str, bytes]], on_puback: Callable[[int], None]
    ) -> list[Delivery]:
        deliveries: list[Delivery] = []
        for index, (topic, _payload) in enumerate(messages):
            name = topic.split("/")[1]
            if name in self.connected:
                on_puback(index)
                self.acked.append(name)
                deliveries.append(Delivery.SENT)
            else:
                deliveries.append(Delivery.QUEUED if name in self.queued else Delivery.DROPPED)
        with self._lock:
            self.messages.extend(messages)
        return deliveries


async def test_acknowledgements_before_the_commit_are_recorded_and_queued_devices_are_not_sent_twice(
    env: TaskEnv,
) -> None:
    from fleetops.engine.deliveries import TaskDeliveries
    from fleetops.store.tasks import TaskStore as Tasks

    publisher = AckingPublisher({"door-000", "door-001"}, queued={"door-002"})
    made: list[TaskDeliveries] = []

    def deliveries(messages: Any) -> TaskDeliveries:
        made.append(TaskDeliveries(Tasks(env.db), outcomes(env), messages, env.clock))
        return made[0]

    task_id = await env.publish_task("^door-00[0-3]$", "c", "x", deliver_on_connect=True)
    worker = env.worker(publisher=publisher, deliveries=deliveries)
    assert await worker.run_until_idle() == {task_id: Outcome.COMPLETED}
    rows = await outcome_of(env, task_id)
    assert rows == dict.fromkeys(["door-000", "door-001"], DeviceOutcome.SENT) | dict.fromkeys(
        ["door-002", "door-003"], DeviceOutcome.OFFLINE
    )
    await made[0].flush()  # the acks came before the rows were committed: recorded now
    rows = await outcome_of(env, task_id)
    assert rows["door-000"] is rows["door-001"] is DeviceOutcome.ACKNOWLEDGED

    # both offline devices connect: door-003 gets the message late, door-002's waits in its session's queue
    publisher.connected |= {"door-002", "door-003"}
    sent_before = len(publisher.messages)
    await made[0].deliver_late(env.product_id, "door-002")
    await made[0].deliver_late(env.product_id, "door-003")
    await made[0].deliver_late(env.product_id, "door-003")  # a second SUBSCRIBE: still once
    assert [topic.split("/")[1] for topic, _ in publisher.messages[sent_before:]] == ["door-003"]
    await made[0].flush()
    rows = await outcome_of(env, task_id)
    assert rows["door-002"] is DeviceOutcome.OFFLINE and rows["door-003"] is DeviceOutcome.ACKNOWLEDGED


class RecordedPresencePublisher(TaskPublisher):
    """An external broker with the Mosquitto plugin: it says UNKNOWN for every message, and that the devices'
    presence is recorded (in the database, by the serving nodes)."""

    def __init__(self) -> None:
        super().__init__()
        self.qos: list[int] = []

    def presence_recorded(self) -> bool:
        return True

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        self.calls += 1
        if self.before_publish is not None:
            await self.before_publish(self.calls)
        with self._lock:
            self.messages.extend(messages)
            self.qos.extend([qos] * len(messages))
        return [Delivery.UNKNOWN] * len(messages)


async def test_recorded_presence_tells_the_outcomes_on_an_external_broker(env: TaskEnv) -> None:
    from fleetops.engine.deliveries import TaskDeliveries
    from fleetops.store.devices import DeviceStore

    devices = DeviceStore(env.db)
    assert await devices.online_among(env.product_id, []) == set()
    for name in ("door-001", "door-003"):
        await devices.set_online(env.product_id, name, True, "10.0.0.1", 1)
    assert await devices.online_among(env.product_id, ["door-000", "door-001", "door-003", "nope"]) == {
        "door-001",
        "door-003",
    }
    publisher = RecordedPresencePublisher()

    async def door_002_connects(call: int) -> None:  # between the presence read and the publish
        if call == 1:
            await devices.set_online(env.product_id, "door-002", True, "10.0.0.2", 2)

    publisher.before_publish = door_002_connects
    made: list[TaskDeliveries] = []

    def deliveries(messages: Any) -> TaskDeliveries:
        made.append(TaskDeliveries(TaskStore(env.db), outcomes(env), messages, env.clock, presence=devices))
        return made[0]

    task_id = await env.publish_task("^door-00[0-4]$", "c", "x", deliver_on_connect=True)
    assert await env.worker(publisher=publisher, deliveries=deliveries).run_until_idle() == {task_id: Outcome.COMPLETED}
    # door-002 was offline when read, so Offline in the batch; the batch's retry found it online: Sent
    assert await outcome_of(env, task_id) == dict.fromkeys(["door-001", "door-002", "door-003"], DeviceOutcome.SENT) | {
        "door-000": DeviceOutcome.OFFLINE,
        "door-004": DeviceOutcome.OFFLINE,
    }
    topics = [topic.split("/")[1] for topic, _ in publisher.messages]
    assert topics == ["door-000", "door-001", "door-002", "door-003", "door-004", "door-002"]  # retry: door-002 only
    assert publisher.qos == [0] * 5 + [1]  # the batch as a Tencent task sends it; the late one with QoS 1

    # door-000 subscribes, first to another topic (nothing), then to the task's: Sent on the event's word, its
    # presence not written yet
    late = made[0]
    await late.deliver_late(env.product_id, "door-000", f"{env.product_id}/door-000/other")
    assert len(publisher.messages) == 6
    await late.deliver_late(env.product_id, "door-000", f"{env.product_id}/door-000/#")
    await late.deliver_late(env.product_id, "door-000", f"{env.product_id}/door-000/c")  # a second: still once
    assert [topic.split("/")[1] for topic, _ in publisher.messages[6:]] == ["door-000"]
    rows = await outcome_of(env, task_id)
    assert rows["door-000"] is DeviceOutcome.SENT and rows["door-004"] is DeviceOutcome.OFFLINE


async def test_pages_of_outcomes_cross_batches_and_skip_whole_ones(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("^lamp-", {"fw": 9}, track_outcomes=True)
    assert await env.worker(batch_size=7).run_until_idle() == {task_id: Outcome.COMPLETED}  # many batches
    converged = LAMPS[3::11]  # a few devices, spread over the batches
    for name in converged:
        await device_reports(env, name, {"fw": 9})
    store = outcomes(env)
    expected = {C: converged, W: [n for n in LAMPS if n not in converged]}
    for outcome, names in expected.items():
        for offset, limit in [(0, 3), (2, 4), (len(names) - 2, 10), (len(names), 5)]:
            total, page = await store.page(task_id, outcome, None, 0, offset, limit)
            assert total == len(names)
            assert [r.device_name for r in page] == names[offset : offset + limit], (outcome, offset)
            assert {r.outcome for r in page} <= {outcome}
    total, everything = await store.page(task_id, None, None, 0, 0, 1000)
    assert total == 60 and [r.device_name for r in everything] == LAMPS
    assert {r.version for r in everything} == {1}

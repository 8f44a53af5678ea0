"""The task engine on SQLite and PostgreSQL: batches, the merge against the domain rules, pushes, resume after
a crash, leases, the deadline, the schedule, cancel, a broker outage, the snapshot. Time is a fake clock; the
worker runs in burst mode (``run_until_idle``) unless a test needs the loop."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson
import pytest

from fleetops.domain.shadow import Shadow, apply_desired
from fleetops.domain.tasks import TaskStatus
from fleetops.engine.executor import Outcome
from fleetops.messaging.shadow_protocol import render_delta_push
from fleetops.ports.messaging import Delivery
from tests.support import TaskEnv, TaskPublisher, task_env, wait_until

LAMPS = [f"lamp-{i:03d}" for i in range(150)]
DOORS = [f"door-{i:03d}" for i in range(80)]


@pytest.fixture
async def env(database_url: str) -> AsyncIterator[TaskEnv]:
    async with task_env(database_url, LAMPS + DOORS) as env:
        yield env


async def has_status(env: TaskEnv, task_id: str, status: TaskStatus) -> bool:
    return bool((await env.task(task_id)).status is status)


def shadow_topic(env: TaskEnv, name: str) -> str:
    return f"$shadow/operation/result/{env.product_id}/{name}"


def prior_state(name: str, index: int) -> Shadow:
    """Varied shadows before a task: no desired section, scalars, nested objects, arrays."""
    kind = index % 4
    if kind == 0:
        return Shadow.new()
    if kind == 1:
        return Shadow({"color": "blue"}, {"color": "blue", "keep": 1}, {}, {"color": {"timestamp": 5}}, 3, 5)
    if kind == 2:
        desired = {"a": 7, "x": [1, 2], "keep": {"deep": True}}
        meta = {"a": {"timestamp": 6}, "x": {"timestamp": 6}, "keep": {"deep": {"timestamp": 6}}}
        return Shadow({}, desired, {}, meta, 9, 6)
    desired = {"a": {"c": 1, "d": 2}, "x": "text"}
    meta = {"a": {"c": {"timestamp": 7}, "d": {"timestamp": 7}}, "x": {"timestamp": 7}}
    return Shadow({"r": 1}, desired, {"r": {"timestamp": 7}}, meta, 11, 7)


PATCHES: dict[str, dict[str, Any]] = {
    "flat": {"color": "red", "keep": None, "level": 3, "x": [3]},
    "nested": {"a": {"c": None, "e": {"f": 1}}, "x": None, "s": "t"},
}


@pytest.mark.parametrize("patch_kind", list(PATCHES))
async def test_update_shadow_changes_each_matching_shadow_once_as_the_domain_rules_say(
    env: TaskEnv, patch_kind: str
) -> None:
    patch = PATCHES[patch_kind]
    for index, name in enumerate(LAMPS[:40] + DOORS[:8]):
        await env.set_shadow(name, prior_state(name, index))
    before = await env.shadows()
    name_filter = r"^lamp-\d*[05]$"  # a real regex (not a literal): every fifth lamp
    matching = {n for n in LAMPS if re.search(name_filter, n)}
    task_id = await env.update_shadow_task(name_filter, patch)

    outcomes = await env.worker(batch_size=40).run_until_idle()

    assert outcomes == {task_id: Outcome.COMPLETED}
    after = await env.shadows()
    pushed_state = {k: v for k, v in patch.items() if v is not None}
    pushes = env.publisher.by_topic()
    assert set(pushes) == {shadow_topic(env, n) for n in matching}
    for name, old in before.items():
        new = after[name]
        if name not in matching:
            assert new == old, name
            continue
        expected, _ = apply_desired(old, patch, new.timestamp_ms)
        assert new == expected, name  # desired, metadata, version + 1: exactly UpdateDeviceShadow's rules
        assert new.version == old.version + 1
        assert pushes[shadow_topic(env, name)] == [
            orjson.dumps(render_delta_push(new.version, pushed_state, new.timestamp_ms))
        ]
    task = await env.task(task_id)
    assert (task.status, task.all_device_cnt, task.done_device_cnt) == (TaskStatus.COMPLETED, 30, 30)
    assert task.done_time == int(env.clock()) and task.ret_code == 0 and task.err_msg == ""
    assert task.applied_cursor == task.pushed_cursor == max(LAMPS + DOORS)


async def test_a_crash_between_commit_and_push_resumes_on_another_node_exactly_once(env: TaskEnv) -> None:
    crash_at = 4

    async def crash(call: int) -> None:
        if call == crash_at:  # batch 4 is committed; its pushes have not gone out
            raise RuntimeError("simulated crash")

    env.publisher.before_publish = crash
    task_id = await env.update_shadow_task("lamp", {"power": "on"})
    first = await env.worker("node-a", batch_size=20).run_until_idle()

    assert first == {task_id: Outcome.LOST}
    crashed = await env.task(task_id)
    assert crashed.status is TaskStatus.PROCESSING and crashed.lease_owner == "node-a"
    assert crashed.done_device_cnt == 4 * 20
    assert crashed.applied_cursor == LAMPS[79] and crashed.pushed_cursor == LAMPS[59]

    env.publisher.before_publish = None
    assert await env.worker("node-b", batch_size=20).run_until_idle() == {}  # the lease still holds
    env.clock.advance(31)
    assert await env.worker("node-b", batch_size=20).run_until_idle() == {task_id: Outcome.COMPLETED}

    after = await env.shadows()
    assert all(after[n].version == 1 and after[n].desired == {"power": "on"} for n in LAMPS)
    assert all(after[n].version == 0 and after[n].desired is None for n in DOORS)
    pushes = env.publisher.by_topic()
    assert {topic: len(p) for topic, p in pushes.items()} == {shadow_topic(env, n): 1 for n in LAMPS}
    task = await env.task(task_id)
    assert (task.status, task.all_device_cnt, task.done_device_cnt) == (TaskStatus.COMPLETED, 150, 150)


async def test_an_expired_lease_passes_the_task_on_and_the_old_node_writes_nothing_more(env: TaskEnv) -> None:
    worker_b = env.worker("node-b", batch_size=25)
    taken_over: dict[str, Outcome] = {}

    async def node_a_stalls(call: int) -> None:
        if call == 2:  # node A hangs past its lease in its second batch; node B takes the task over
            env.clock.advance(31)
            taken_over.update(await worker_b.run_until_idle())

    env.publisher.before_publish = node_a_stalls
    task_id = await env.update_shadow_task("", {"mode": "eco"})
    outcome_a = await env.worker("node-a", batch_size=25).run_until_idle()

    assert taken_over == {task_id: Outcome.COMPLETED}
    assert outcome_a == {task_id: Outcome.LOST}
    after = await env.shadows()
    assert {s.version for s in after.values()} == {1}  # 230 devices, each written exactly once
    counts = {topic: len(p) for topic, p in env.publisher.by_topic().items()}
    assert set(counts) == {shadow_topic(env, n) for n in after}
    # at least once: only node A's interrupted batch may have been pushed twice
    assert sorted(n for n, c in counts.items() if c > 1) == sorted(shadow_topic(env, n) for n in sorted(after)[25:50])
    assert (await env.task(task_id)).done_device_cnt == 230


async def test_the_deadline_fails_the_task_and_says_how_far_it_got(env: TaskEnv) -> None:
    async def slow(_call: int) -> None:
        env.clock.advance(2)  # every batch takes two seconds

    env.publisher.before_publish = slow
    task_id = await env.update_shadow_task("", {"v": 1}, max_execution_time_s=5)

    assert await env.worker(batch_size=20).run_until_idle() == {task_id: Outcome.FAILED}

    task = await env.task(task_id)
    assert task.status is TaskStatus.FAILED
    assert (task.ret_code, task.err_msg) == (1, "deadline of 5 s passed after 60 of 230 devices")
    assert task.done_device_cnt == 60 and task.done_time == int(env.clock())
    versions = [s.version for _, s in sorted((await env.shadows()).items())]
    assert versions == [1] * 60 + [0] * 170


async def test_a_scheduled_task_does_not_start_early(env: TaskEnv) -> None:
    start = int(env.clock()) + 100
    task_id = await env.update_shadow_task("door", {"lock": True}, schedule_time_s=start)
    worker = env.worker()

    assert await worker.run_until_idle() == {}
    env.clock.advance(99)
    assert await worker.run_until_idle() == {}
    assert (await env.task(task_id)).status is TaskStatus.WAITING
    assert not env.publisher.messages
    env.clock.advance(1)
    assert await worker.run_until_idle() == {task_id: Outcome.COMPLETED}
    assert (await env.task(task_id)).started_at == start


async def test_a_cancelled_task_never_touches_a_device(env: TaskEnv) -> None:
    before = await env.shadows()
    task_id = await env.update_shadow_task("", {"x": 1}, schedule_time_s=int(env.clock()) + 10)
    await env.service.cancel(env.account_id, task_id)
    env.clock.advance(60)

    assert await env.worker().run_until_idle() == {}
    assert await env.shadows() == before
    assert not env.publisher.messages
    assert (await env.task(task_id)).status is TaskStatus.CANCELLED


async def test_publish_message_waits_for_the_broker_and_retries_the_same_batch(env: TaskEnv) -> None:
    env.publisher.down = True
    task_id = await env.publish_task("^door-0[0-4]", "control", "close")
    worker = env.worker(batch_size=20)

    assert await worker.run_until_idle() == {task_id: Outcome.BLOCKED}
    blocked = await env.task(task_id)
    assert (blocked.status, blocked.done_device_cnt, blocked.applied_cursor) == (
        TaskStatus.PROCESSING,
        0,
        None,
    )
    assert blocked.lease_until == 0  # released: any node may retry it at once

    env.publisher.down = False
    assert await worker.run_until_idle() == {task_id: Outcome.COMPLETED}
    expected = {f"{env.product_id}/{n}/control": [b"close"] for n in DOORS[:50]}
    assert env.publisher.by_topic() == expected
    task = await env.task(task_id)
    assert (task.status, task.all_device_cnt, task.done_device_cnt) == (TaskStatus.COMPLETED, 50, 50)


async def test_the_worker_loop_rides_out_a_broker_outage(env: TaskEnv) -> None:
    async def outage(call: int) -> None:
        env.publisher.down = 3 <= call <= 6  # the broker goes away after two batches, for four attempts

    env.publisher.before_publish = outage
    task_id = await env.publish_task("", "data", "x")
    worker = env.worker(batch_size=40)
    await worker.start()
    try:
        await wait_until(lambda: has_status(env, task_id, TaskStatus.COMPLETED))
    finally:
        await worker.stop()

    assert env.publisher.refused == 4
    counts = {topic: len(p) for topic, p in env.publisher.by_topic().items()}
    assert counts == {f"{env.product_id}/{n}/data": 1 for n in LAMPS + DOORS}


async def test_devices_created_after_the_start_are_not_part_of_the_task(env: TaskEnv) -> None:
    late = [f"zz-{i}" for i in range(30)]

    async def add_late_devices(call: int) -> None:
        if call == 1:
            await env.add_devices(late)  # after every existing name: a naive cursor would reach them

    env.publisher.before_publish = add_late_devices
    task_id = await env.update_shadow_task("", {"v": 1})

    assert await env.worker(batch_size=100).run_until_idle() == {task_id: Outcome.COMPLETED}
    after = await env.shadows()
    assert all(after[n].version == 0 for n in late)
    assert all(after[n].version == 1 for n in LAMPS + DOORS)
    task = await env.task(task_id)
    assert (task.all_device_cnt, task.done_device_cnt) == (230, 230)


async def test_a_task_matching_no_device_completes_at_once(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("^window-", {"v": 1})
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}
    task = await env.task(task_id)
    assert (task.status, task.all_device_cnt, task.done_device_cnt) == (TaskStatus.COMPLETED, 0, 0)
    assert not env.publisher.messages


async def test_a_patch_that_only_deletes_pushes_nothing(env: TaskEnv) -> None:
    task_id = await env.update_shadow_task("door-00", {"gone": None})
    assert await env.worker().run_until_idle() == {task_id: Outcome.COMPLETED}
    after = await env.shadows()
    assert all(after[n].version == 1 and after[n].desired == {} for n in DOORS[:10])
    assert not env.publisher.messages


async def test_a_catastrophic_filter_runs_in_linear_time(database_url: str) -> None:
    async with task_env(database_url) as env:
        # (a+)+$ backtracks exponentially in Python's re on a long run of a's that does not end the name
        names = [f"{'a' * 40}{i:04d}" for i in range(400)] + [f"{i:04d}{'a' * 40}" for i in range(100)]
        await env.add_devices(names)
        task_id = await env.publish_task("(a+)+$", "control", "hi")
        started = time.perf_counter()
        assert await env.worker(batch_size=100).run_until_idle() == {task_id: Outcome.COMPLETED}
        assert time.perf_counter() - started < 5
        task = await env.task(task_id)
        assert (task.all_device_cnt, task.done_device_cnt) == (100, 100)


async def test_stopping_releases_the_lease_so_another_worker_resumes_at_once(env: TaskEnv) -> None:
    worker_a = env.worker("node-a", batch_size=30)

    async def stop_a(call: int) -> None:
        if call == 2:
            worker_a._stop.set()  # what stop() does first; the batch in hand finishes

    env.publisher.before_publish = stop_a
    task_id = await env.publish_task("", "control", "x")
    await worker_a.start()
    await wait_until(lambda: asyncio.sleep(0, worker_a._stop.is_set()))
    await worker_a.stop()
    stopped = await env.task(task_id)
    assert (stopped.status, stopped.done_device_cnt, stopped.lease_until) == (TaskStatus.PROCESSING, 60, 0)

    env.publisher.before_publish = None
    assert await env.worker("node-b", batch_size=30).run_until_idle() == {task_id: Outcome.COMPLETED}
    counts = {topic: len(p) for topic, p in env.publisher.by_topic().items()}
    assert counts == {f"{env.product_id}/{n}/control": 1 for n in LAMPS + DOORS}


async def test_a_restarted_node_resumes_its_own_tasks_without_waiting_for_the_lease(env: TaskEnv) -> None:
    async def crash(call: int) -> None:
        if call == 2:
            raise RuntimeError("killed")

    env.publisher.before_publish = crash
    task_id = await env.publish_task("", "control", "x")
    assert await env.worker("node-a", batch_size=50).run_until_idle() == {task_id: Outcome.LOST}

    env.publisher.before_publish = None
    restarted = env.worker("node-a", batch_size=50)
    await restarted.start()  # expires the leases left under its own name
    try:
        await wait_until(lambda: has_status(env, task_id, TaskStatus.COMPLETED))
    finally:
        await restarted.stop()
    assert len(env.publisher.messages) == 230  # the crashed batch was never published: nothing repeated


class HoldingPublisher(TaskPublisher):
    """Holds every message to a lamp until a door has been published to."""

    def __init__(self) -> None:
        super().__init__()
        self.door_published = asyncio.Event()

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        if any("/lamp-" in topic for topic, _ in messages):
            await asyncio.wait_for(self.door_published.wait(), 5)
        statuses = await super().publish_many(messages, qos)
        if any("/door-" in topic for topic, _ in messages):
            self.door_published.set()
        return statuses


async def test_a_long_task_does_not_delay_the_start_of_another(env: TaskEnv) -> None:
    publisher = HoldingPublisher()
    first = await env.publish_task("^lamp-", "control", "1")
    second = await env.publish_task("^door-", "control", "2")
    worker = env.worker(batch_size=200, concurrency=2, publisher=publisher)
    await worker.start()
    try:
        await wait_until(lambda: has_status(env, first, TaskStatus.COMPLETED))
        await wait_until(lambda: has_status(env, second, TaskStatus.COMPLETED))
    finally:
        await worker.stop()
    assert len(publisher.messages) == 230


async def test_a_long_wait_in_a_batch_keeps_the_lease(env: TaskEnv) -> None:
    worker_b = env.worker("node-b", lease_s=3)
    b_claimed: dict[str, Outcome] = {}

    async def publish_blocks(call: int) -> None:
        if call == 1:
            env.clock.advance(2)
            await asyncio.sleep(1.3)  # a broker taking its time; node A's heartbeat renews the lease meanwhile
            env.clock.advance(2)  # past the lease node A took when it claimed the task
            b_claimed.update(await worker_b.run_until_idle())

    env.publisher.before_publish = publish_blocks
    task_id = await env.publish_task("^door-00", "control", "x")
    assert await env.worker("node-a", lease_s=3).run_until_idle() == {task_id: Outcome.COMPLETED}
    assert b_claimed == {}

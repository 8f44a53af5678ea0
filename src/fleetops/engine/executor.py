"""Running one leased task: count the snapshot, then batches of devices until done or the deadline passes.

Start (a task is claimed with its device snapshot fixed, ``store.tasks.TaskStore.claim_next``): unless the
first batch is committed already, count the snapshot's matching devices (AllDeviceCnt) in keyset pages of
names through the RE2 filter (an empty filter is one SQL count).

Each batch: the next page of ``batch_size`` names after ``applied_cursor``, filtered in Python with RE2, then

* **UpdateShadow** - ONE transaction merges the desired patch into the matching devices (RETURNING name and
  new version) and advances ``applied_cursor`` and ``done_device_cnt`` (``store/batches.py``). Then the
  delta pushes go out (``DeviceMessages.push_deltas``: QoS 0 on ``$shadow/operation/result/{pid}/{dn}``).
  ``pushed_cursor`` rides in the next batch's transaction. After a crash, the devices between ``pushed_cursor`` and
  ``applied_cursor`` get their delta again: shadows change exactly once, pushes at least once;
* **PublishMessage** - publish the batch (``DeviceMessages.publish_to_devices``, QoS 0), then commit the
  progress. A crash between the two repeats at most that one batch of messages.

A broker that is down (:class:`~fleetops.errors.BrokerUnavailable`) makes the task wait and retry the same
batch (in burst mode, :meth:`TaskExecutor.run` with ``wait_for_broker=False``, it returns BLOCKED instead).
Before each batch the deadline is checked: MaxExecutionTimeInSeconds after the start with work left, the
task fails (status 4) with a message saying how far it got. Memory stays flat: one page of names at a time.
While a task runs, a heartbeat renews its lease every third of the lease length, so only a dead or hung node
loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Final

from fleetops.domain.name_filter import NameFilter, compile_name_filter
from fleetops.domain.shadow import is_flat, merge_section
from fleetops.domain.tasks import (
    PublishMessageSpec,
    TaskStatus,
    TaskType,
    UpdateShadowSpec,
    failure_message,
    is_overdue,
)
from fleetops.errors import BrokerUnavailable
from fleetops.ports.messaging import DeviceMessages
from fleetops.ports.store import DeviceBatches, FenceLost, Progress, TaskRecord, TaskStore
from fleetops.ports.telemetry import NO_TELEMETRY, ShadowSource, Telemetry

log = logging.getLogger("fleetops.engine")

# Counting reads bigger pages than batches: no transaction, no write, just names through the filter.
COUNT_PAGE_SIZE: Final = 20_000
QOS: Final = 0  # spec proposal for batch PublishMessage and for delta pushes
BROKER_LOG_INTERVAL_S: Final = 60.0  # one warning a minute while a task waits for the broker


class Outcome(StrEnum):
    COMPLETED = "completed"  # status 3
    FAILED = "failed"  # status 4: the deadline passed
    STOPPED = "stopped"  # the worker is stopping: lease released, the task resumes later
    BLOCKED = "blocked"  # burst mode only: the broker is down; lease released
    LOST = "lost"  # another node holds the task now (our lease expired): nothing more is written


@dataclass(frozen=True)
class ExecutorConfig:
    node_id: str
    batch_size: int = 5000
    lease_s: int = 30
    broker_retry_s: float = 0.5  # pause before publishing a batch again after BrokerUnavailable


class _Stop(Exception):
    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome


class TaskExecutor:
    """Runs leased tasks; one instance serves every task of a node (it keeps no per-task state)."""

    def __init__(
        self,
        tasks: TaskStore,
        devices: DeviceBatches,
        messages: DeviceMessages,
        config: ExecutorConfig,
        clock: Callable[[], float],
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._tasks = tasks
        self._devices = devices
        self._messages = messages
        self._config = config
        self._clock = clock
        self._telemetry = telemetry

    async def run(self, task: TaskRecord, stop: asyncio.Event, *, wait_for_broker: bool = True) -> Outcome:
        """Run ``task`` (leased to this node by its claim) until it ends, the worker stops or loses it."""
        run = _Run(self, task, stop, wait_for_broker)
        heartbeat = asyncio.create_task(run.heartbeat(), name=f"fleetops-lease-{task.id}")
        try:
            return await run.execute()
        except _Stop as stopped:
            if stopped.outcome in (Outcome.STOPPED, Outcome.BLOCKED):
                await self._tasks.release(task.id, self._config.node_id)
            return stopped.outcome
        except FenceLost:
            log.warning("task %s: another node holds it now; dropped here", task.id)
            return Outcome.LOST
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)


class _Run:
    """The state of one task's execution on this node."""

    def __init__(self, executor: TaskExecutor, task: TaskRecord, stop: asyncio.Event, wait: bool) -> None:
        self.x = executor
        self.task = task
        self.stop = stop
        self.wait_for_broker = wait
        self.owner = executor._config.node_id
        self.batch_size = executor._config.batch_size
        self.cursor = task.applied_cursor
        self.pushed = task.pushed_cursor
        self.done = task.done_device_cnt
        self.all_devices = task.all_device_cnt
        self.snapshot = task.snapshot_device_id or 0
        self.started_at = task.started_at if task.started_at is not None else task.schedule_time
        self.lease_lost = False

    # --- time, lease, outcome -------------------------------------------------------------------------------

    def now_s(self) -> int:
        return int(self.x._clock())

    def lease_until(self) -> int:
        return self.now_s() + self.x._config.lease_s

    async def heartbeat(self) -> None:
        """Renew the lease every third of its length, whatever the task is doing (a count over millions of
        names, a publish waiting for a broker): only a dead or hung node lets its lease expire."""
        interval_s = self.x._config.lease_s / 3
        while True:
            await asyncio.sleep(interval_s)
            if not await self.x._tasks.renew(self.task.id, self.owner, self.lease_until()):
                self.lease_lost = True
                return

    async def check_running(self) -> None:
        """Between steps: stop if asked or the lease is gone, fail if the deadline has passed."""
        if self.lease_lost:
            raise FenceLost(self.task.id)
        if self.stop.is_set():
            raise _Stop(Outcome.STOPPED)
        now = self.now_s()
        if is_overdue(self.started_at, self.task.max_execution_s, now):
            ret_code, message = failure_message(self.done, self.all_devices, self.task.max_execution_s)
            if not await self.x._tasks.fail(self.task.id, self.owner, ret_code, message, now):
                raise FenceLost(self.task.id)
            self.x._telemetry.task_finished(self.task.type, TaskStatus.FAILED, now - self.started_at)
            log.info("task %s failed: %s", self.task.id, message)
            raise _Stop(Outcome.FAILED)

    async def pause(self) -> None:
        """Wait before a retry (woken by stop); the lease must still be ours."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), self.x._config.broker_retry_s)
        if not await self.x._tasks.renew(self.task.id, self.owner, self.lease_until()):
            raise FenceLost(self.task.id)

    # --- the steps ----------------------------------------------------------------------------------------

    async def execute(self) -> Outcome:
        await self.check_running()  # first: a task that cannot run at all still ends at its deadline
        name_filter = compile_name_filter(self.task.name_filter)
        if self.cursor is None:
            self.all_devices = await self.count(name_filter)
            if not await self.x._tasks.set_device_count(self.task.id, self.owner, self.all_devices, self.lease_until()):
                raise FenceLost(self.task.id)
            self.done = 0
        spec = self.task.spec
        if isinstance(spec, UpdateShadowSpec) and self.pushed != self.cursor:
            await self.push_again(name_filter, spec)
        while True:
            await self.check_running()
            names = await self.x._devices.names_after(self.task.product_pk, self.cursor, self.snapshot, self.batch_size)
            if names:
                if isinstance(spec, UpdateShadowSpec):
                    await self.update_shadows(names, name_filter.filter(names), spec)
                else:
                    await self.publish_messages(names, name_filter.filter(names), spec)
            if len(names) < self.batch_size:
                now = self.now_s()
                if not await self.x._tasks.complete(self.task.id, self.owner, self.cursor, now):
                    raise FenceLost(self.task.id)
                self.x._telemetry.task_finished(self.task.type, TaskStatus.COMPLETED, now - self.started_at)
                log.info("task %s completed: %d of %d devices", self.task.id, self.done, self.all_devices)
                return Outcome.COMPLETED

    async def count(self, name_filter: NameFilter) -> int:
        """AllDeviceCnt: the snapshot's devices whose name matches, one page of names at a time."""
        if not name_filter.pattern:
            return await self.x._devices.count(self.task.product_pk, self.snapshot)
        matched, after = 0, None
        while True:
            names = await self.x._devices.names_after(self.task.product_pk, after, self.snapshot, COUNT_PAGE_SIZE)
            matched += len(name_filter.filter(names))
            if len(names) < COUNT_PAGE_SIZE:
                return matched
            after = names[-1]
            if self.stop.is_set():
                raise _Stop(Outcome.STOPPED)

    async def update_shadows(self, names: list[str], matched: list[str], spec: UpdateShadowSpec) -> None:
        through = names[-1]
        if not matched:  # nothing to write or push in this page: only the cursors move
            await self.advance(through, through, 0)
            return
        progress = Progress(
            task_id=self.task.id,
            owner=self.owner,
            expected_cursor=self.cursor,
            applied_cursor=through,
            pushed_cursor=self.pushed,  # the previous batch's pushes went out before this batch started
            done_delta=0,  # replaced by the number of devices written
            lease_until=self.lease_until(),
        )
        now_ms = int(self.x._clock() * 1000)
        patch = spec.desired
        written = await self.x._devices.merge_desired(
            progress,
            self.task.product_pk,
            self.snapshot,
            through,
            None if len(matched) == len(names) else matched,
            patch,
            now_ms,
            None if is_flat(patch) else partial(merge_section, patch=patch, now_ms=now_ms),
        )
        self.cursor, self.done = through, self.done + len(written)
        self.x._telemetry.devices_processed(TaskType.UPDATE_SHADOW, len(written))
        self.x._telemetry.shadows_written(ShadowSource.TASK, len(written))
        await self.push_deltas(written, spec, now_ms)
        self.pushed = through

    async def advance(self, applied: str, pushed: str, done_delta: int) -> None:
        progress = Progress(
            task_id=self.task.id,
            owner=self.owner,
            expected_cursor=self.cursor,
            applied_cursor=applied,
            pushed_cursor=pushed,
            done_delta=done_delta,
            lease_until=self.lease_until(),
        )
        if not await self.x._tasks.advance(progress):
            raise FenceLost(self.task.id)
        self.cursor, self.pushed, self.done = applied, pushed, self.done + done_delta

    async def push_deltas(self, written: Sequence[tuple[str, int]], spec: UpdateShadowSpec, now_ms: int) -> None:
        pushed_state = {key: value for key, value in spec.desired.items() if value is not None}
        if not pushed_state or not written:
            return  # a patch that only deletes keys pushes nothing (docs/mqtt.md#delta)
        await self.deliver(partial(self.x._messages.push_deltas, self.task.product_id, written, pushed_state, now_ms))

    async def push_again(self, name_filter: NameFilter, spec: UpdateShadowSpec) -> None:
        """After a crash: the deltas of the last committed batch may not have gone out; send them (again)."""
        assert self.cursor is not None  # pushed != cursor and pushed trails cursor
        after = self.pushed
        while True:
            rows = await self.x._devices.versions_between(
                self.task.product_pk, self.snapshot, after, self.cursor, self.batch_size
            )
            matching = set(name_filter.filter([name for name, _ in rows]))
            await self.push_deltas([row for row in rows if row[0] in matching], spec, int(self.x._clock() * 1000))
            if len(rows) < self.batch_size:
                break
            after = rows[-1][0]
        self.pushed = self.cursor

    async def publish_messages(self, names: list[str], matched: list[str], spec: PublishMessageSpec) -> None:
        if matched:
            send = self.x._messages.publish_to_devices
            await self.deliver(partial(send, self.task.product_id, matched, spec.topic, spec.payload, QOS))
        await self.advance(names[-1], names[-1], len(matched))
        self.x._telemetry.devices_processed(TaskType.PUBLISH_MESSAGE, len(matched))

    async def deliver(self, send: Callable[[], Awaitable[None]]) -> None:
        """Send one batch, retrying it while the broker is down (until stop or the deadline)."""
        down_since: float | None = None
        while True:
            try:
                await send()
                if down_since is not None:
                    log.info("task %s: the broker took the batch again; going on", self.task.id)
                return
            except BrokerUnavailable as exc:
                self.x._telemetry.broker_error()
                if not self.wait_for_broker:
                    raise _Stop(Outcome.BLOCKED) from exc
                now = self.x._clock()
                if down_since is None or now - down_since >= BROKER_LOG_INTERVAL_S:
                    log.warning("task %s waits for the MQTT broker (%s); it retries the batch", self.task.id, exc)
                    down_since = now
            await self.check_running()
            await self.pause()

"""Running one leased task: count the snapshot, then batches of devices until done or the deadline passes.

Start (a waiting task is claimed with its device snapshot fixed, ``store.tasks.TaskStore.claim_next``): count
the snapshot's matching devices in keyset pages of names through the RE2 filter (an empty filter is one SQL
count), then move the task to status 2 with that AllDeviceCnt (``start``), so that no DescribeTask shows a
started task whose count is still 0. A CancelTask while it counts wins: the task never starts.

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

The extensions (docs/extensions.md), each only when the task asked for it:

* **outcomes**: the batch transaction also writes each device's outcome (``store/batches.py``; for
  PublishMessage the Delivery of each message, sent with QoS 1 where the device's PUBACK can be told:
  ``engine/deliveries.py``, which also makes the late deliveries);
* **rollout**: before each batch the task waits for its time on the plan (``domain.rollout.Pacer``), and a
  batch holds about half a second of devices at the current rate;
* **abort criteria**: after each batch the counts are checked (Offline from the batches, NotConverged from the
  batches whose window has passed); a criterion that holds fails the task (status 4, RetCode 2) before the
  next batch;
* **StopTask**: the request is seen in the batch's own progress write (and the lease renewals); the task ends
  in status 5 after that batch, DoneDeviceCnt saying how far it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Final, TypeVar

from fleetops.domain.name_filter import NameFilter, compile_name_filter
from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.rollout import ABORT_RET_CODE, Pacer, abort_check
from fleetops.domain.shadow import is_flat, merge_section
from fleetops.domain.tasks import (
    PublishMessageSpec,
    TaskStatus,
    TaskType,
    UpdateShadowSpec,
    failure_message,
    is_overdue,
    stop_message,
)
from fleetops.engine.deliveries import TaskDeliveries
from fleetops.errors import BrokerUnavailable
from fleetops.ports.messaging import DeviceMessages
from fleetops.ports.store import (
    Committed,
    DeviceBatches,
    DeviceResult,
    FenceLost,
    Progress,
    StopRequested,
    TaskOutcomes,
    TaskRecord,
    TaskStore,
)
from fleetops.ports.telemetry import NO_TELEMETRY, ShadowSource, Telemetry

log = logging.getLogger("fleetops.engine")

T = TypeVar("T")

QOS: Final = 0  # batch PublishMessage and delta pushes (docs/decisions.md#tasks)
BROKER_LOG_INTERVAL_S: Final = 60.0  # one warning a minute while a task waits for the broker


class Outcome(StrEnum):
    COMPLETED = "completed"  # status 3
    FAILED = "failed"  # status 4: the deadline passed
    ABORTED = "aborted"  # status 4: the task's abort criteria held
    CANCELLED = "cancelled"  # status 5: stopped by StopTask, or cancelled while its devices were counted
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
        outcomes: TaskOutcomes,
        deliveries: TaskDeliveries,
        telemetry: Telemetry = NO_TELEMETRY,
    ) -> None:
        self._tasks = tasks
        self._devices = devices
        self._messages = messages
        self._outcomes = outcomes
        self._deliveries = deliveries
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
        self.waiting = task.status is TaskStatus.WAITING  # claimed to count its devices, not started yet
        self.lease_lost = False
        self.stop_requested = task.stop_requested
        extensions = task.extensions
        self.tracking = task.tracks_outcomes
        self.criteria = extensions.abort_criteria if extensions is not None else ()
        self.window_ms = extensions.convergence_window_ms if extensions is not None else None
        rollout = extensions.rollout if extensions is not None else None
        self.pacer = None if rollout is None else Pacer(rollout, self.done, executor._clock())
        # abort criteria: Offline counted from the batches' deliveries; NotConverged from the batches whose
        # window has passed, (last device name, write time in ms) each, oldest first
        self.offline = 0
        self.windows: deque[tuple[str, int]] = deque()
        self.not_converged = 0
        self.expired_through: str | None = None

    # --- time, lease, outcome -------------------------------------------------------------------------------

    def now_s(self) -> int:
        return int(self.x._clock())

    def now_ms(self) -> int:
        return int(self.x._clock() * 1000)

    def lease_until(self) -> int:
        return self.now_s() + self.x._config.lease_s

    async def heartbeat(self) -> None:
        """Renew the lease every third of its length, whatever the task is doing (a count over millions of
        names, a publish waiting for a broker): only a dead or hung node lets its lease expire."""
        interval_s = self.x._config.lease_s / 3
        while True:
            await asyncio.sleep(interval_s)
            if not await self.renew():
                return

    async def renew(self) -> bool:
        """Extend the lease; False (and lease_lost) when it is no longer ours. Notes a waiting StopTask."""
        stop_requested = await self.x._tasks.renew(self.task.id, self.owner, self.lease_until())
        if stop_requested is None:
            self.lease_lost = True
            return False
        self.stop_requested = self.stop_requested or stop_requested
        return True

    async def check_running(self) -> None:
        """Between steps: stop if asked or the lease is gone, end a stopped task, fail it if the deadline has
        passed."""
        if self.lease_lost:
            raise FenceLost(self.task.id)
        if self.stop.is_set():
            raise _Stop(Outcome.STOPPED)
        if self.waiting:
            return  # the deadline applies from the start, once the devices are counted
        now = self.now_s()
        if self.stop_requested:
            message = stop_message(self.done, self.all_devices)
            if not await self.x._tasks.end_stopped(self.task.id, self.owner, message, now):
                raise FenceLost(self.task.id)
            self.x._telemetry.task_finished(self.task.type, TaskStatus.CANCELLED, now - self.started_at)
            log.info("task %s stopped by StopTask: %d of %d devices", self.task.id, self.done, self.all_devices)
            raise _Stop(Outcome.CANCELLED)
        if is_overdue(self.started_at, self.task.max_execution_s, now):
            ret_code, message = failure_message(self.done, self.all_devices, self.task.max_execution_s)
            await self.end_failed(ret_code, message, Outcome.FAILED)

    async def end_failed(self, ret_code: int, message: str, outcome: Outcome) -> None:
        now = self.now_s()
        if not await self.x._tasks.fail(self.task.id, self.owner, ret_code, message, now):
            raise FenceLost(self.task.id)
        self.x._telemetry.task_finished(self.task.type, TaskStatus.FAILED, now - self.started_at)
        log.info("task %s failed: %s", self.task.id, message)
        raise _Stop(outcome)

    async def pause(self, delay_s: float) -> None:
        """Wait (woken by stop); the lease must still be ours."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay_s)
        if not await self.renew():
            raise FenceLost(self.task.id)

    # --- the steps ----------------------------------------------------------------------------------------

    async def execute(self) -> Outcome:
        await self.check_running()  # first: a task that cannot run at all still ends at its deadline
        name_filter = compile_name_filter(self.task.name_filter)
        if self.waiting:
            await self.start(name_filter)
        elif self.cursor is None and self.all_devices == 0:
            # started by a version that counted after the start: count again (nothing is written yet)
            self.all_devices, _ = await self.x._devices.count_matching(self.task.product_pk, self.snapshot, name_filter)
            if not await self.x._tasks.set_device_count(self.task.id, self.owner, self.all_devices, self.lease_until()):
                raise FenceLost(self.task.id)
            self.done = 0
        await self.check_running()
        await self.resume_counts()
        spec = self.task.spec
        if isinstance(spec, UpdateShadowSpec) and self.pushed != self.cursor:
            await self.push_again(name_filter, spec)
        while True:
            await self.check_running()
            limit = self.batch_size
            if self.pacer is not None:
                await self.pace()
                limit = self.pacer.rollout.batch_limit(self.done)
            names = await self.x._devices.names_after(self.task.product_pk, self.cursor, self.snapshot, self.batch_size)
            matched = name_filter.filter(names)
            last_page = len(names) < self.batch_size
            if len(matched) > limit:  # the rollout's share of this page: up to its limit-th matching device
                matched, last_page = matched[:limit], False
                names = names[: bisect_right(names, matched[-1])]
            if names:
                if isinstance(spec, UpdateShadowSpec):
                    await self.update_shadows(names, matched, spec)
                else:
                    await self.publish_messages(names, matched, spec)
                await self.check_abort()
            if last_page:
                now = self.now_s()
                if not await self.x._tasks.complete(self.task.id, self.owner, self.cursor, now):
                    raise FenceLost(self.task.id)
                self.x._telemetry.task_finished(self.task.type, TaskStatus.COMPLETED, now - self.started_at)
                log.info("task %s completed: %d of %d devices", self.task.id, self.done, self.all_devices)
                return Outcome.COMPLETED

    async def start(self, name_filter: NameFilter) -> None:
        """Count the snapshot's matching devices (AllDeviceCnt), then status 1 -> 2 with that count."""
        counted, _ = await self.x._devices.count_matching(self.task.product_pk, self.snapshot, name_filter)
        await self.check_running()
        if not await self.x._tasks.start(self.task.id, self.owner, counted, self.now_s(), self.lease_until()):
            now = await self.x._tasks.read(self.task.id)
            if now is not None and now.status is TaskStatus.CANCELLED:
                log.info("task %s was cancelled while its devices were counted", self.task.id)
                raise _Stop(Outcome.CANCELLED)
            raise FenceLost(self.task.id)
        self.waiting, self.all_devices, self.done = False, counted, 0
        if self.pacer is not None:
            self.pacer = Pacer(self.pacer.rollout, 0, self.x._clock())

    async def resume_counts(self) -> None:
        """What the abort criteria count, from the outcomes written before this run (a resumed task)."""
        if not self.criteria or self.cursor is None:
            return
        counts = await self.x._outcomes.counts(self.task.id, None, self.now_ms())
        self.offline = counts.get(DeviceOutcome.OFFLINE, 0)
        newest_ms = await self.x._outcomes.newest_write_ms(self.task.id)
        if newest_ms is not None and self.window_ms is not None:
            # the earlier runs' devices as one batch, as new as the newest of them: counted when all have expired
            self.windows.append((self.cursor, newest_ms))

    async def pace(self) -> None:
        """Wait for the next device's time on the rollout plan (stop and StopTask end the wait early)."""
        assert self.pacer is not None
        while True:
            delay_s = self.pacer.due_s(self.done, self.x._clock()) - self.x._clock()
            if delay_s <= 0:
                return
            await self.pause(min(delay_s, self.x._config.lease_s / 3))
            await self.check_running()

    async def check_abort(self) -> None:
        """After a batch: fail the task when one of its abort criteria holds (it takes effect before the next)."""
        if not self.criteria:
            return
        counts = {DeviceOutcome.OFFLINE: self.offline, DeviceOutcome.NOT_CONVERGED: await self.count_not_converged()}
        abort = abort_check(self.criteria, self.done, counts)
        if abort is not None:
            message = f"{abort.message} (after {self.done} of {self.all_devices} devices)"
            await self.end_failed(ABORT_RET_CODE, message, Outcome.ABORTED)

    async def count_not_converged(self) -> int:
        """Written devices whose window has passed, counted once each: the batches whose window has passed."""
        if self.window_ms is None:
            return 0
        cutoff_ms = self.now_ms() - self.window_ms
        while self.windows and self.windows[0][1] < cutoff_ms:
            through, _written_ms = self.windows.popleft()
            self.not_converged += await self.x._outcomes.pending_between(self.task.id, self.expired_through, through)
            self.expired_through = through
        return self.not_converged

    def progress(self, applied: str, pushed: str | None, done_delta: int, *, unless_stopped: bool = False) -> Progress:
        return Progress(
            task_id=self.task.id,
            owner=self.owner,
            expected_cursor=self.cursor,
            applied_cursor=applied,
            pushed_cursor=pushed,
            done_delta=done_delta,
            lease_until=self.lease_until(),
            unless_stopped=unless_stopped,
        )

    def committed(self, commit: Committed) -> None:
        self.stop_requested = self.stop_requested or commit.stop_requested

    async def update_shadows(self, names: list[str], matched: list[str], spec: UpdateShadowSpec) -> None:
        through = names[-1]
        if not matched:  # nothing to write or push in this page: only the cursors move
            await self.advance(through, through, 0)
            return
        # the previous batch's pushes went out before this batch started; done_delta is replaced by the
        # number of devices written. A StopTask that came during the previous batch (its pushes) refuses this
        # one: the task stops after the batch that was in flight.
        progress = self.progress(through, self.pushed, 0, unless_stopped=True)
        now_ms = self.now_ms()
        patch = spec.desired
        try:
            commit = await self.x._devices.merge_desired(
                progress,
                self.task.product_pk,
                self.snapshot,
                through,
                None if len(matched) == len(names) else matched,
                patch,
                now_ms,
                None if is_flat(patch) else partial(merge_section, patch=patch, now_ms=now_ms),
                tracking=self.tracking,
            )
        except StopRequested:
            self.stop_requested = True  # nothing of this batch was written; check_running ends the task
            return
        self.committed(commit)
        self.cursor, self.done = through, self.done + len(commit.written)
        self.x._telemetry.devices_processed(TaskType.UPDATE_SHADOW, len(commit.written))
        self.x._telemetry.shadows_written(ShadowSource.TASK, len(commit.written))
        if self.window_ms is not None and commit.written:
            self.windows.append((through, now_ms))
        await self.push_deltas(commit.written, spec, now_ms)
        self.pushed = through

    async def advance(
        self, applied: str, pushed: str, done_delta: int, results: Sequence[DeviceResult] = (), now_ms: int = 0
    ) -> None:
        commit = await self.x._tasks.advance(self.progress(applied, pushed, done_delta), results, now_ms)
        self.committed(commit)
        self.cursor, self.pushed, self.done = applied, pushed, self.done + done_delta

    async def push_deltas(self, written: Sequence[tuple[str, int]], spec: UpdateShadowSpec, now_ms: int) -> None:
        pushed_state = {key: value for key, value in spec.desired.items() if value is not None}
        if not pushed_state or not written:
            return  # a patch that only deletes keys pushes nothing (docs/device-protocol.md#delta)
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
            await self.push_deltas([row for row in rows if row[0] in matching], spec, self.now_ms())
            if len(rows) < self.batch_size:
                break
            after = rows[-1][0]
        self.pushed = self.cursor

    async def publish_messages(self, names: list[str], matched: list[str], spec: PublishMessageSpec) -> None:
        results: list[DeviceResult] = []
        offline: list[str] = []
        now_ms = self.now_ms()
        if not matched:
            pass
        elif self.tracking:  # QoS 1 where the device's acknowledgement can be told; each device's outcome
            outcomes = await self.deliver(partial(self.x._deliveries.send, self.task, matched))
            results = [DeviceResult(name, outcome) for name, outcome in zip(matched, outcomes, strict=True)]
            offline = [r.device_name for r in results if r.outcome is DeviceOutcome.OFFLINE]
            self.offline += len(offline)
        else:
            send = self.x._messages.publish_to_devices
            await self.deliver(partial(send, self.task.product_id, matched, spec.topic, spec.payload, QOS))
        await self.advance(names[-1], names[-1], len(matched), results, now_ms)
        self.x._telemetry.devices_processed(TaskType.PUBLISH_MESSAGE, len(matched))
        await self.x._deliveries.after_batch(self.task, offline)

    async def deliver(self, send: Callable[[], Awaitable[T]]) -> T:
        """Send one batch, retrying it while the broker is down (until stop or the deadline)."""
        down_since: float | None = None
        while True:
            try:
                sent = await send()
                if down_since is not None:
                    log.info("task %s: the broker took the batch again; going on", self.task.id)
                return sent
            except BrokerUnavailable as exc:
                self.x._telemetry.broker_error()
                if not self.wait_for_broker:
                    raise _Stop(Outcome.BLOCKED) from exc
                now = self.x._clock()
                if down_since is None or now - down_since >= BROKER_LOG_INTERVAL_S:
                    log.warning("task %s waits for the MQTT broker (%s); it retries the batch", self.task.id, exc)
                    down_since = now
            await self.check_running()
            await self.pause(self.x._config.broker_retry_s)

"""The task worker: a short loop that claims due tasks and runs them, and can stop and drain.

    worker = TaskWorker(Scheduler(...), TaskExecutor(...), concurrency=4)   # built by fleetops.node
    await worker.start()            # the loop, as a service of the node
    worker.wake()                   # a task was just created: look now instead of at the next poll
    await worker.stop()             # running tasks stop at their next batch and release their lease
    outcomes = await worker.run_until_idle()   # tests: run what is due now, without the loop or sleeping

Each claimed task runs as its own asyncio task, up to ``concurrency`` at once, so a long task does not delay
the start of another one. Time comes from the injected clock (leases, schedule, deadline); only the poll
pause is real time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from fleetops.engine.executor import Outcome, TaskExecutor
from fleetops.engine.scheduler import Scheduler
from fleetops.ports.store import TaskRecord

log = logging.getLogger("fleetops.engine")

_DRAIN_S = 10.0  # how long stop() waits for running tasks to reach a batch boundary
# the run outcomes after which the task is over (status 3, 4 or 5)
ENDED = frozenset({Outcome.COMPLETED, Outcome.FAILED, Outcome.ABORTED, Outcome.CANCELLED})


def default_node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TaskWorker:
    def __init__(
        self,
        scheduler: Scheduler,
        executor: TaskExecutor,
        *,
        concurrency: int = 4,
        poll_interval_s: float = 0.5,
    ) -> None:
        self.scheduler = scheduler
        self.executor = executor
        self._concurrency = max(1, concurrency)
        self._poll_interval_s = poll_interval_s
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._running: dict[str, asyncio.Task[Outcome]] = {}
        self._loop_task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    @property
    def running(self) -> tuple[str, ...]:
        return tuple(self._running)

    # --- the service --------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stop.clear()
        await self.scheduler.release_previous_leases()
        self._loop_task = asyncio.create_task(self._loop(), name="fleetops-task-worker")

    async def stop(self) -> None:
        self._stop.set()
        loop_task, self._loop_task = self._loop_task, None
        if loop_task is not None:
            await loop_task
        running = list(self._running.values())
        if running:
            _done, pending = await asyncio.wait(running, timeout=_DRAIN_S)
            for task in pending:  # mid-transaction: the batch rolls back; the lease expires; no work is lost
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self.scheduler.purge_if_due()
                await self._fill()
            except Exception:  # the database may be down for a while; keep polling
                log.exception("task scheduling failed; retrying")
            waits = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._wake.wait())]
            try:
                await asyncio.wait(waits, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def _fill(self) -> None:
        while len(self._running) < self._concurrency and not self._stop.is_set():
            task = await self.scheduler.claim(self._running)
            if task is None:
                return
            runner = asyncio.create_task(self._run(task), name=f"fleetops-task-{task.id}")
            self._running[task.id] = runner
            runner.add_done_callback(self._finished)

    def _finished(self, runner: asyncio.Task[Outcome]) -> None:
        for task_id, candidate in list(self._running.items()):
            if candidate is runner:
                del self._running[task_id]
        self._wake.set()  # a slot is free

    async def _run(self, task: TaskRecord, *, wait_for_broker: bool = True) -> Outcome:
        try:
            return await self.executor.run(task, self._stop, wait_for_broker=wait_for_broker)
        except Exception:
            # Keep the lease: it expires after task_lease_s and the task is claimed again then, which spaces
            # out retries of a persistent fault; the deadline still ends the task in the end.
            log.exception("task %s failed unexpectedly; it resumes when its lease expires", task.id)
            return Outcome.LOST

    # --- burst mode ---------------------------------------------------------------------------------------

    async def run_until_idle(self) -> dict[str, Outcome]:
        """Run every task due now to its end, one after the other, and return their outcomes.

        A task that cannot go on (the broker is down: BLOCKED) is released and not tried again in this call.
        """
        outcomes: dict[str, Outcome] = {}
        skipped: set[str] = set()
        await self.scheduler.purge_if_due()
        while True:
            task = await self.scheduler.claim({*skipped, *self._running})
            if task is None:
                return outcomes
            outcome = await self._run(task, wait_for_broker=False)
            outcomes[task.id] = outcome
            if outcome not in ENDED:
                skipped.add(task.id)

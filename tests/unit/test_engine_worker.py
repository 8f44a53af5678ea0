"""The worker loop without a database: stop wakes it at once, wake() starts work without waiting for the poll,
no more than ``concurrency`` tasks run at a time, and stop() drains running tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from fleetops.engine.executor import Outcome, TaskExecutor
from fleetops.engine.scheduler import Scheduler
from fleetops.engine.worker import TaskWorker
from tests.support import wait_until


class FakeTask:
    def __init__(self, task_id: str) -> None:
        self.id = task_id


class FakeScheduler:
    """Hands out the queued task ids; records what the worker says it runs."""

    def __init__(self) -> None:
        self.queue: list[str] = []
        self.claims = 0
        self.released_previous = 0

    async def claim(self, running: Iterable[str] = ()) -> Any:
        self.claims += 1
        busy = set(running)
        for task_id in self.queue:
            if task_id not in busy:
                self.queue.remove(task_id)
                return FakeTask(task_id)
        return None

    async def release_previous_leases(self) -> int:
        self.released_previous += 1
        return 0

    async def purge_if_due(self) -> int:
        return 0


class FakeExecutor:
    """Runs a task until the test releases it or the stop event is set."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finish = asyncio.Event()
        self.max_parallel = 0
        self._parallel = 0

    def attach_publisher(self, publisher: Any) -> None:
        pass

    async def run(self, task: Any, stop: asyncio.Event, *, wait_for_broker: bool = True) -> Outcome:
        self.started.append(task.id)
        self._parallel += 1
        self.max_parallel = max(self.max_parallel, self._parallel)
        try:
            waiters = {asyncio.ensure_future(self.finish.wait()), asyncio.ensure_future(stop.wait())}
            _done, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()
            return Outcome.STOPPED if stop.is_set() else Outcome.COMPLETED
        finally:
            self._parallel -= 1


async def until(check: Callable[[], object]) -> None:
    async def holds() -> bool:
        return bool(check())

    await wait_until(holds, timeout_s=2, interval_s=0.005)


def make_worker(poll_interval_s: float = 30.0, concurrency: int = 2) -> tuple[TaskWorker, FakeScheduler, FakeExecutor]:
    scheduler, executor = FakeScheduler(), FakeExecutor()
    worker = TaskWorker(
        cast(Scheduler, scheduler),
        cast(TaskExecutor, executor),
        concurrency=concurrency,
        poll_interval_s=poll_interval_s,
    )
    return worker, scheduler, executor


async def test_wake_starts_a_new_task_without_waiting_for_the_poll() -> None:
    worker, scheduler, executor = make_worker(poll_interval_s=30.0)
    await worker.start()
    try:
        assert scheduler.released_previous == 1
        await asyncio.sleep(0.05)
        scheduler.queue.append("t1")
        worker.wake()
        await until(lambda: executor.started)
        assert executor.started == ["t1"] and worker.running == ("t1",)
    finally:
        started = time.monotonic()
        await worker.stop()
    # stop wakes the 30 s poll and the running task at once
    assert time.monotonic() - started < 2
    assert not worker.running


async def test_at_most_concurrency_tasks_run_and_a_finished_one_frees_its_slot() -> None:
    worker, scheduler, executor = make_worker(poll_interval_s=30.0, concurrency=2)
    scheduler.queue.extend(["a", "b", "c"])
    await worker.start()
    try:
        await until(lambda: len(executor.started) >= 2)
        await asyncio.sleep(0.05)
        assert executor.started == ["a", "b"] and executor.max_parallel == 2
        executor.finish.set()  # a and b end; their slots are taken at once, not at the next poll
        await until(lambda: len(executor.started) >= 3)
        assert executor.started == ["a", "b", "c"]
    finally:
        await worker.stop()


async def test_run_until_idle_runs_what_is_due_and_returns() -> None:
    worker, scheduler, executor = make_worker()
    scheduler.queue.extend(["x", "y"])
    executor.finish.set()
    assert await worker.run_until_idle() == {"x": Outcome.COMPLETED, "y": Outcome.COMPLETED}
    assert await worker.run_until_idle() == {}

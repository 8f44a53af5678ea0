"""``fleetops tasks watch TASK_ID``: a task's live progress until it ends.

It polls DescribeTask (``--interval``, 1 s) and shows devices done of all, the rate and the time left. On a
terminal that is a rich progress bar; otherwise (a pipe, a CI log) one line each time the progress changes;
with ``--json`` one DescribeTask response per line. The rate is measured from the polls themselves, over the
last :data:`RATE_WINDOW_S` seconds, so it follows a task that speeds up or slows down.

The exit status says how the task ended (docs/operators.md#exit-status): 0 completed, 4 failed, 5 cancelled
(the task's own status numbers). A node that stops answering for a while does not end the watch: the task
runs on the node, not here, so the watch says so and keeps polling. Ctrl-C ends the watch, not the task.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from fleetops.client.api import ClientSetupError
from fleetops.client.output import local_time
from fleetops.domain.tasks import FINISHED_STATUSES, TaskStatus

RATE_WINDOW_S: Final = 10.0
DEFAULT_INTERVAL_S: Final = 1.0
# the exit status of a watch, by how the task ended: its own status number for the two bad endings
EXIT_STATUS: Final = {TaskStatus.COMPLETED: 0, TaskStatus.FAILED: 4, TaskStatus.CANCELLED: 5}


class RateEstimate:
    """Devices per second over the recent polls, and the time left at that rate."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def observe(self, at_s: float, done: int) -> None:
        self._samples.append((at_s, done))
        # keep one sample older than the window, so the window is always spanned once it has been
        while len(self._samples) > 2 and self._samples[1][0] <= at_s - self._window_s:
            self._samples.popleft()

    @property
    def rate_per_s(self) -> float | None:
        """None until two polls some time apart have been seen."""
        if len(self._samples) < 2:
            return None
        (first_s, first_done), (last_s, last_done) = self._samples[0], self._samples[-1]
        if last_s <= first_s:
            return None
        return max(0.0, (last_done - first_done) / (last_s - first_s))

    def time_left_s(self, remaining: int) -> float | None:
        rate = self.rate_per_s
        if remaining <= 0:
            return 0.0
        if not rate:
            return None
        return remaining / rate


def duration_text(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Snapshot:
    """One DescribeTask, as the watch shows it."""

    status: TaskStatus
    done: int
    all_devices: int
    rate_per_s: float | None
    time_left_s: float | None
    task: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    def count_text(self) -> str:
        """``1,250 of 4,000 devices``; nothing for a waiting task; ``counting devices`` for a task that has just
        started (the engine counts the matching devices first; AllDeviceCnt is 0 until then)."""
        if self.all_devices or self.finished:
            return f"{self.done:,} of {self.all_devices:,} devices"
        return "counting devices" if self.status is TaskStatus.PROCESSING else ""

    def rate_text(self) -> str:
        return "" if self.rate_per_s is None else f"{self.rate_per_s:,.0f} devices/s"

    def left_text(self) -> str:
        if self.status is TaskStatus.WAITING:
            return f"starts {local_time(self.task.get('ScheduleTime'))}"
        if self.status is not TaskStatus.PROCESSING or not self.all_devices:
            return ""
        return f"{duration_text(self.time_left_s)} left"

    def line(self) -> str:
        """``processing: 1,250 of 4,000 devices (31 %), 2,500 devices/s, 1 s left`` (the log view)."""
        head = self.status.name.lower()
        if self.all_devices or self.finished:
            head += f": {self.count_text()} ({self.task.get('Percent', 0)} %)"
        elif self.count_text():
            head += f": {self.count_text()}"
        return ", ".join(part for part in (head, self.rate_text(), self.left_text()) if part)


@dataclass(frozen=True)
class WatchOutcome:
    status: TaskStatus
    exit_status: int
    summary: str  # one line saying how the task ended


def outcome_of(task_id: str, final: Snapshot) -> WatchOutcome:
    task = final.task
    devices = f"{final.done:,} of {final.all_devices:,} devices"
    if final.status is TaskStatus.COMPLETED:
        took = int(task.get("DoneTime", 0)) - int(task.get("ScheduleTime", 0))
        summary = f"task {task_id} completed: {devices} in {duration_text(max(0, took))}"
    elif final.status is TaskStatus.FAILED:
        summary = f"task {task_id} failed: {task.get('ErrMsg') or 'no reason given'} (RetCode {task.get('RetCode')})"
    elif final.status is TaskStatus.CANCELLED:
        summary = f"task {task_id} was cancelled ({devices})"
    else:  # an ending added later (the status list may grow): its own number, as for failed and cancelled
        summary = f"task {task_id} ended with status {final.status.value} ({final.status.name.lower()}, {devices})"
    return WatchOutcome(final.status, EXIT_STATUS.get(final.status, final.status.value), summary)


class TaskWatch:
    """Polls one task and shows its progress until it ends."""

    def __init__(
        self,
        describe: Callable[[], dict[str, Any]],
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``describe`` is one DescribeTask call (it raises ApiCallError or ClientSetupError)."""
        self._describe = describe
        self._interval_s = interval_s
        self._clock = clock
        self._sleep = sleep
        self._rate = RateEstimate()

    def poll(self) -> Snapshot:
        task = self._describe()
        now = self._clock()
        done, all_devices = int(task.get("DoneDeviceCnt", 0)), int(task.get("AllDeviceCnt", 0))
        status = TaskStatus(int(task["Status"]))
        if status is TaskStatus.PROCESSING and all_devices:  # counting the devices is not progress
            self._rate.observe(now, done)
        return Snapshot(
            status, done, all_devices, self._rate.rate_per_s, self._rate.time_left_s(all_devices - done), task
        )

    def _next(self, show_trouble: Callable[[str], None]) -> Snapshot:
        """The next poll after the interval; while the node does not answer, say so and keep trying."""
        while True:
            self._sleep(self._interval_s)
            try:
                return self.poll()
            except ClientSetupError as exc:
                show_trouble(f"{exc}; the task goes on there, retrying every {self._interval_s:g} s")

    def run_bar(self, task_id: str, console: Console) -> WatchOutcome:
        """The terminal view: a progress bar redrawn in place."""
        snapshot = self.poll()
        with Progress(
            TextColumn("[bold]{task.fields[status]}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[rate]}"),
            TextColumn("{task.fields[left]}"),
            console=console,
            transient=False,
        ) as progress:
            bar = progress.add_task(task_id, total=None, status="", count="", rate="", left="")
            self._draw(progress, bar, snapshot)
            while not snapshot.finished:
                snapshot = self._next(lambda text: progress.update(bar, left=f"[yellow]{text}"))
                self._draw(progress, bar, snapshot)
        return outcome_of(task_id, snapshot)

    @staticmethod
    def _draw(progress: Progress, bar: TaskID, snapshot: Snapshot) -> None:
        total: int | None
        if snapshot.all_devices:
            total, completed = snapshot.all_devices, snapshot.done
        elif snapshot.finished:  # it ended over no device: full if it completed, empty otherwise
            total, completed = 1, int(snapshot.status is TaskStatus.COMPLETED)
        else:  # not started, or the devices not counted yet: an indeterminate (pulsing) bar
            total, completed = None, 0
        progress.update(
            bar,
            total=total,
            completed=completed,
            status=snapshot.status.name.lower(),
            count=snapshot.count_text(),
            rate=snapshot.rate_text(),
            left=snapshot.left_text(),
        )
        progress.refresh()  # each poll is drawn when it arrives, not at the next tick of rich's refresh thread

    def run_lines(self, task_id: str, out: TextIO, err: TextIO, *, as_json: bool) -> WatchOutcome:
        """The log view: a line (or a DescribeTask JSON object) on ``out`` each time the progress changes;
        trouble reaching the node on ``err``."""
        snapshot, shown = self.poll(), None

        def write(stream: TextIO, text: str) -> None:
            stream.write(text + "\n")
            stream.flush()

        while True:
            seen = (snapshot.status, snapshot.done, snapshot.all_devices)
            if seen != shown:
                shown = seen
                write(out, json.dumps(snapshot.task) if as_json else f"{time.strftime('%H:%M:%S')} {snapshot.line()}")
            if snapshot.finished:
                return outcome_of(task_id, snapshot)
            snapshot = self._next(lambda text: write(err, text))

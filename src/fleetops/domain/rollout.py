"""Controlled rollout of a batch task (a fleetops extension, docs/extensions.md#rollout): a rate limit that may
grow as devices are processed, and abort criteria that stop a task when too many devices miss it.

The rate follows AWS IoT Jobs' exponential rollout: ``BaseDevicesPerSecond`` at first, multiplied by
``1 + IncrementPercent / 100`` after every ``IncrementEveryDevices`` processed devices, never above
``MaxDevicesPerSecond``. Without a base the task runs at the maximum rate from its first device.

The plan is a pure function of the number of processed devices (``DoneDeviceCnt``), which the task keeps in
its own row: a task resumed after a crash goes on at the rate it had reached, from the moment it resumes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from fleetops.domain.outcomes import DeviceOutcome

# Batches of a rate-limited task hold about this many seconds of devices: small enough for a smooth rate, an
# abort within one batch and a prompt stop; large enough that a transaction per batch costs little.
PACE_TICK_S: Final = 0.5


@dataclass(frozen=True, slots=True)
class Rollout:
    max_per_s: int  # MaxDevicesPerSecond
    base_per_s: int | None = None  # BaseDevicesPerSecond: the starting rate of an exponential rollout
    increment_percent: int | None = None  # IncrementPercent: rate x (1 + p/100) ...
    increment_every: int | None = None  # IncrementEveryDevices: ... after every this many processed devices

    @property
    def growing(self) -> bool:
        return self.base_per_s is not None and self.base_per_s < self.max_per_s

    def _factor(self) -> float:
        return 1 + (self.increment_percent or 0) / 100

    def rate_at(self, done: int) -> float:
        """Devices per second while device number ``done`` (0-based) is processed."""
        if not self.growing:
            return float(self.max_per_s)
        assert self.base_per_s is not None and self.increment_every is not None
        # the steps it takes to pass the maximum: a bigger power would only overflow a float
        steps_to_max = math.ceil(math.log(self.max_per_s / self.base_per_s) / math.log(self._factor()))
        steps = min(done // self.increment_every, steps_to_max)
        return min(float(self.max_per_s), self.base_per_s * self._factor() ** steps)

    def seconds_until(self, done: int) -> float:
        """When device number ``done`` may be processed, in seconds after the first: the plan's time line.

        Constant-rate stretches are summed in closed form; the stretches of a growing rate number at most
        log(max/base) / log(factor) (a few dozen) before the maximum is reached.
        """
        if not self.growing:
            return done / self.max_per_s
        assert self.increment_every is not None
        elapsed, position = 0.0, 0
        while position < done:
            rate = self.rate_at(position)
            if rate >= self.max_per_s:
                return elapsed + (done - position) / self.max_per_s
            stretch = min(self.increment_every, done - position)
            elapsed += stretch / rate
            position += stretch
        return elapsed

    def batch_limit(self, done: int, tick_s: float = PACE_TICK_S) -> int:
        """How many devices the next batch may hold: about ``tick_s`` of devices at the current rate, at least 1,
        and never across a rate increase (the next batch runs at the new rate)."""
        limit = max(1, math.floor(self.rate_at(done) * tick_s))
        if self.growing:
            assert self.increment_every is not None
            to_next_step = self.increment_every - done % self.increment_every
            limit = min(limit, to_next_step)
        return limit


class Pacer:
    """The time line of one run of a rate-limited task (the engine's, re-anchored at each start).

    ``due_s(done)`` is the wall-clock time at which device ``done`` may be processed. A run that fell behind
    (a broker outage, a slow database) does not catch up in a burst: it is re-anchored so that at most one tick
    of devices goes out early.
    """

    def __init__(self, rollout: Rollout, done: int, now_s: float) -> None:
        self.rollout = rollout
        self._anchor_s = now_s - rollout.seconds_until(done)

    def due_s(self, done: int, now_s: float) -> float:
        due = self._anchor_s + self.rollout.seconds_until(done)
        if now_s - due > PACE_TICK_S:
            self._anchor_s += now_s - due - PACE_TICK_S
            due = now_s - PACE_TICK_S
        return due


# --- abort criteria -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AbortCriterion:
    outcome: DeviceOutcome  # Offline (PublishMessage) or NotConverged (UpdateShadow)
    threshold_percent: int  # abort when MORE than this share of the processed devices has the outcome ...
    min_processed: int  # ... once at least this many devices have been processed


@dataclass(frozen=True, slots=True)
class Abort:
    """Which criterion stopped a task, and the figures that tripped it."""

    index: int  # position in AbortCriteria
    criterion: AbortCriterion
    failed: int
    processed: int

    @property
    def message(self) -> str:
        c = self.criterion
        share = 100 * self.failed / self.processed
        return (
            f"aborted by AbortCriteria[{self.index}]: {self.failed} of {self.processed} processed devices "
            f"({share:.1f} %) {c.outcome.value}, more than the {c.threshold_percent} % allowed once at least "
            f"{c.min_processed} devices are processed"
        )


# Our RetCode for a task stopped by its abort criteria (the deadline's is 1, domain.tasks.DEADLINE_RET_CODE).
ABORT_RET_CODE: Final = 2


def abort_check(
    criteria: Sequence[AbortCriterion], processed: int, counts: Mapping[DeviceOutcome, int]
) -> Abort | None:
    """The first criterion that holds, or None: more than ``threshold_percent`` % of at least ``min_processed``
    processed devices have its outcome. Integer arithmetic: no rounding decides an abort."""
    for index, criterion in enumerate(criteria):
        failed = int(counts.get(criterion.outcome, 0))
        if processed >= criterion.min_processed and failed * 100 > criterion.threshold_percent * processed:
            return Abort(index, criterion, failed, processed)
    return None

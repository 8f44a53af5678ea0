"""Which task runs next on this node, and the retention purge.

Tasks are shared by every node through the ``tasks`` table, with leases (``lease_owner``, ``lease_until``):

* a waiting task whose ScheduleTime has come is claimed by one node - status 2, started now, its device
  snapshot fixed - in one statement, which a concurrent CancelTask either precedes (the claim then finds
  status 5 and takes nothing) or follows (the cancel then finds status 2: AsyncTaskAlreadyStarted);
* a processing task whose lease has expired (its node died, or hung past the lease) is claimed the same way
  and resumes from its last committed batch; one that is past its deadline fails as soon as it is claimed;
* at start a node expires the leases still recorded under its own id, left by its previous run when it was
  killed: with a stable ``FLEETOPS_NODE_ID`` a restarted node resumes its tasks at once instead of waiting
  for the lease to run out. Two live processes sharing an id cannot both apply a batch: every write is fenced
  on the progress cursor (``store/tasks.py``).

Finished tasks older than the retention window (a month) are deleted with their device outcomes, and
CreateTask's client tokens older than a day, at most once per ``purge_interval_s``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from fleetops.domain.extensions import CLIENT_TOKEN_TTL_S
from fleetops.ports.store import TaskRecord, TaskStore

log = logging.getLogger("fleetops.engine")

DEFAULT_PURGE_INTERVAL_S = 3600.0


class Scheduler:
    def __init__(
        self,
        tasks: TaskStore,
        clock: Callable[[], float],
        *,
        node_id: str,
        lease_s: int,
        retention_s: int,
        purge_interval_s: float = DEFAULT_PURGE_INTERVAL_S,
    ) -> None:
        self._tasks = tasks
        self._clock = clock
        self.node_id = node_id
        self._lease_s = lease_s
        self._retention_s = retention_s
        self._purge_interval_s = purge_interval_s
        self._purged_at: float | None = None

    async def claim(self, running: Iterable[str] = ()) -> TaskRecord | None:
        """Lease the next due task (not one of ``running``, which this node runs already)."""
        task = await self._tasks.claim_next(self.node_id, int(self._clock()), self._lease_s, tuple(running))
        if task is not None:
            resumed = f" resuming after {task.applied_cursor!r}" if task.applied_cursor is not None else ""
            log.info("task %s (%s, product %s) claimed%s", task.id, task.type.value, task.product_id, resumed)
        return task

    async def release_previous_leases(self) -> int:
        released = await self._tasks.release_owned(self.node_id)
        if released:
            log.info("expired %d lease(s) left by a previous run of node %s", released, self.node_id)
        return released

    async def purge_if_due(self) -> int:
        now = self._clock()
        if self._purged_at is not None and now - self._purged_at < self._purge_interval_s:
            return 0
        self._purged_at = now
        purged = await self._tasks.purge(int(now) - self._retention_s, int(now) - CLIENT_TOKEN_TTL_S)
        if purged:
            log.info("purged %d finished task(s) older than %d s", purged, self._retention_s)
        return purged

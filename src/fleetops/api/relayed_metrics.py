"""What API worker processes count, relayed to the primary's ``/metrics`` (docs/deployment.md#api-worker-processes).

A worker (``fleetops serve --workers N``) answers some requests itself; ``/metrics`` is served by the primary
alone, so the worker keeps what it counts in a :class:`MetricsRelay` (its request observer and its
:class:`~fleetops.ports.telemetry.Telemetry`) and sends it to the primary in batches over the forwarding socket
(``fleetops.api.forwarding``); the primary adds each batch to its own metrics with :func:`apply_relayed`, through
prometheus_client's public API, so the series are exactly those of one process serving every request. A request
a worker forwards is counted by the primary, which answers it, and never by the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from fleetops.api.forwarding import RELAY_PATH, Forwarder, ForwardingFailed
from fleetops.api.metrics import NodeMetrics
from fleetops.domain.tasks import TaskStatus, TaskType
from fleetops.listeners import LimitedLog
from fleetops.ports.telemetry import ShadowSource

RELAY_INTERVAL_S: Final = 0.5  # how often a worker sends what it counted: /metrics lags by at most about this
MAX_HELD_REQUESTS: Final = 100_000  # observations a worker holds while the primary does not take them
LOG_INTERVAL_S: Final = 10.0

log = logging.getLogger("fleetops.api")


class MetricsRelay:
    """A worker's counts since its last batch. Cheap and never raising, as the Telemetry port asks."""

    def __init__(self, max_held: int = MAX_HELD_REQUESTS) -> None:
        self._max_held = max_held
        self._requests: dict[tuple[str, str], list[float]] = {}
        self._held = 0
        self._database_errors = 0
        self._shadow_writes: dict[str, int] = {}
        self.dropped = 0  # observations not kept because the primary took none for too long

    # --- the request observer of the worker's ApiEndpoint ---

    def observe(self, action: str, outcome: str, seconds: float) -> None:
        if self._held >= self._max_held:
            self.dropped += 1
            return
        latencies = self._requests.get((action, outcome))
        if latencies is None:
            latencies = self._requests[action, outcome] = []
        latencies.append(seconds)
        self._held += 1

    # --- Telemetry: a worker has no task engine and no broker, so only these two can happen in it ---

    def database_error(self) -> None:
        self._database_errors += 1

    def shadows_written(self, source: ShadowSource, count: int) -> None:
        if count:
            self._shadow_writes[source.value] = self._shadow_writes.get(source.value, 0) + count

    def devices_processed(self, task_type: TaskType, count: int) -> None:
        """Never called in a worker (no task engine)."""

    def task_finished(self, task_type: TaskType, status: TaskStatus, duration_s: float) -> None:
        """Never called in a worker (no task engine)."""

    def broker_error(self) -> None:
        """Never called in a worker (no broker: what publishes is forwarded to the primary)."""

    # --- batches ---

    def take(self) -> bytes | None:
        """The counts since the last batch as one JSON batch (None: nothing to send), and start again."""
        if not (self._requests or self._database_errors or self._shadow_writes):
            return None
        batch = {
            "requests": [[action, outcome, latencies] for (action, outcome), latencies in self._requests.items()],
            "database_errors": self._database_errors,
            "shadow_writes": self._shadow_writes,
        }
        self._requests, self._held, self._database_errors, self._shadow_writes = {}, 0, 0, {}
        return orjson.dumps(batch)


async def relay(metrics: MetricsRelay, forwarder: Forwarder, interval_s: float = RELAY_INTERVAL_S) -> None:
    """Send the worker's batches to the primary every ``interval_s`` until cancelled (then call :func:`send`
    once more for the last counts)."""
    limited = LimitedLog(log, LOG_INTERVAL_S)
    while True:
        await asyncio.sleep(interval_s)
        await send(metrics, forwarder, limited)


async def send(metrics: MetricsRelay, forwarder: Forwarder, limited: LimitedLog | None = None) -> None:
    """Send what was counted since the last batch. A batch the primary did not take is not sent again (it may
    have been counted already); that and observations dropped while it took none are logged once per interval."""
    limited = limited or LimitedLog(log, LOG_INTERVAL_S)
    batch = metrics.take()
    if batch is not None:
        try:
            status = (await forwarder.post(RELAY_PATH, batch)).status
        except ForwardingFailed as exc:
            limited("relay", logging.WARNING, "API worker: metrics not sent to the primary: %s", exc.reason)
        else:
            if status != 204:
                limited("relay", logging.WARNING, "API worker: the primary refused a metrics batch (HTTP %d)", status)
    if metrics.dropped:
        limited(
            "relay-dropped",
            logging.WARNING,
            "API worker: %d request observations dropped while the primary took none",
            metrics.dropped,
        )
        metrics.dropped = 0


class WorkerRequests:
    """``fleetops_api_worker_requests_total``: the API requests API workers received, by who answered them; and
    ``fleetops_api_workers``: how many serve now (``serving``, read at scrape time)."""

    def __init__(self, registry: CollectorRegistry, serving: Callable[[], int]) -> None:
        Gauge(
            "fleetops_api_workers", "API worker processes serving (--workers N: N-1 when all are up)", registry=registry
        ).set_function(serving)
        counter = Counter(
            "fleetops_api_worker_requests",
            "API requests received by the API worker processes (--workers), by who answered them: the worker "
            "(local) or the primary it forwarded them to (forwarded)",
            ["handled"],
            registry=registry,
        )
        self.local = counter.labels(handled="local")
        self.forwarded = counter.labels(handled="forwarded")


def apply_relayed(metrics: NodeMetrics, workers: WorkerRequests, body: bytes) -> None:
    """Add one worker batch to the primary's metrics; ValueError when it is not one (nothing is added then)."""
    try:
        batch: Any = orjson.loads(body)
        requests = [(str(a), str(o), [float(s) for s in latencies]) for a, o, latencies in batch["requests"]]
        database_errors = int(batch["database_errors"])
        shadow_writes = {ShadowSource(source): int(count) for source, count in batch["shadow_writes"].items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a worker's metrics batch: {exc}") from exc
    for action, outcome, latencies in requests:
        for seconds in latencies:
            metrics.api.observe(action, outcome, seconds)
        workers.local.inc(len(latencies))
    for _ in range(database_errors):
        metrics.database_error()
    for source, count in shadow_writes.items():
        metrics.shadows_written(source, count)

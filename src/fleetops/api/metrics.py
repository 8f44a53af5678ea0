"""Prometheus metrics of a node, served at ``/metrics`` (docs/deployment.md#metrics lists every one).

:class:`NodeMetrics` is the :class:`~fleetops.ports.telemetry.Telemetry` adapter: counters and histograms
updated where things happen (the engine, the use cases, the database handle), plus the API's own request
metrics. :class:`StateMetrics` is read when Prometheus scrapes: the tasks by status (one grouped count, cached
for a few seconds so that several scrapers cost one query) and the MQTT side's figures. Each node has its own
registries, so several nodes in one process (the tests) do not clash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from fleetops.domain.tasks import TaskStatus, TaskType
from fleetops.ports.telemetry import MqttStats, MqttStatsSource, ShadowSource

log = logging.getLogger("fleetops.metrics")

TASK_COUNTS_CACHE_S: Final = 5.0
TASK_COUNTS_TIMEOUT_S: Final = 2.0
# task durations run from seconds (a few thousand devices) to the 24 h deadline
TASK_DURATION_BUCKETS_S: Final = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)


class RequestObserver(Protocol):
    """What the API endpoint tells of each request: :class:`ApiMetrics`, or an API worker's relay to the primary
    (``fleetops.api.relayed_metrics``)."""

    def observe(self, action: str, outcome: str, seconds: float) -> None: ...


class ApiMetrics:
    """Requests by action and outcome, and their latency."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fleetops_api_requests",
            "API requests by action and outcome (OK or the error code)",
            ["action", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "fleetops_api_request_seconds", "API request latency by action", ["action"], registry=registry
        )

        # the labelled children, looked up once per (action, outcome): labels() costs more than inc() and
        # observe() together. Bounded: actions are the registry's names (or "-"), outcomes the error codes.
        self._counted: dict[tuple[str, str], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def observe(self, action: str, outcome: str, seconds: float) -> None:
        counter = self._counted.get((action, outcome))
        if counter is None:
            counter = self._counted[action, outcome] = self.requests.labels(action=action, outcome=outcome)
        counter.inc()
        histogram = self._timed.get(action)
        if histogram is None:
            histogram = self._timed[action] = self.latency.labels(action=action)
        histogram.observe(seconds)


class NodeMetrics:
    """:class:`~fleetops.ports.telemetry.Telemetry` on prometheus_client, one registry per node."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.api = ApiMetrics(self.registry)
        self._devices = Counter(
            "fleetops_task_devices_processed",
            "devices done by batch tasks on this node, by task type",
            ["type"],
            registry=self.registry,
        )
        self._durations = Histogram(
            "fleetops_task_duration_seconds",
            "time from start to end of the tasks this node finished, by type and outcome (completed, failed)",
            ["type", "outcome"],
            buckets=TASK_DURATION_BUCKETS_S,
            registry=self.registry,
        )
        self._shadow_writes = Counter(
            "fleetops_shadow_writes", "device shadows written, by source (api, device, task)", ["source"],
            registry=self.registry,
        )  # fmt: skip
        self._database_errors = Counter(
            "fleetops_database_errors", "database operations that failed", registry=self.registry
        )
        self._broker_errors = Counter(
            "fleetops_broker_errors", "publishes that failed because the MQTT broker could not take them",
            registry=self.registry,
        )  # fmt: skip
        # every label value exists from the start, so a rate() over a quiet series is 0, not absent
        for task_type in TaskType:
            self._devices.labels(type=task_type.value)
        for source in ShadowSource:
            self._shadow_writes.labels(source=source.value)

    def devices_processed(self, task_type: TaskType, count: int) -> None:
        if count:
            self._devices.labels(type=task_type.value).inc(count)

    def task_finished(self, task_type: TaskType, status: TaskStatus, duration_s: float) -> None:
        self._durations.labels(type=task_type.value, outcome=status.name.lower()).observe(max(0.0, duration_s))

    def shadows_written(self, source: ShadowSource, count: int) -> None:
        if count:
            self._shadow_writes.labels(source=source.value).inc(count)

    def database_error(self) -> None:
        self._database_errors.inc()

    def broker_error(self) -> None:
        self._broker_errors.inc()


TaskCounts = Callable[[], Awaitable[Mapping[TaskStatus, int]]]


class StateMetrics(Collector):
    """What is read at scrape time: tasks by status (every node's, from the shared table) and the MQTT side."""

    def __init__(
        self,
        task_counts: TaskCounts,
        mqtt: MqttStatsSource | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        cache_s: float = TASK_COUNTS_CACHE_S,
    ) -> None:
        self._task_counts = task_counts
        self._mqtt = mqtt
        self._clock = clock
        self._cache_s = cache_s
        self._counts: Mapping[TaskStatus, int] | None = None
        self._counted_at = -cache_s
        self._lock = asyncio.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    async def refresh(self) -> None:
        """Count the tasks again when the cached counts are older than ``cache_s``."""
        async with self._lock:  # concurrent scrapes share one count
            if self._clock() - self._counted_at < self._cache_s:
                return
            try:
                self._counts = await asyncio.wait_for(self._task_counts(), TASK_COUNTS_TIMEOUT_S)
            except Exception as exc:  # the database is down: no task series rather than stale ones
                log.warning("metrics: cannot count the tasks (%s)", exc)
                self._counts = None
            self._counted_at = self._clock()

    def collect(self) -> Iterator[Metric]:
        if self._counts is not None:
            tasks = GaugeMetricFamily(
                "fleetops_tasks", "tasks in the database by status (every node's, kept one month)", labels=["status"]
            )
            for status in TaskStatus:
                tasks.add_metric([status.name.lower()], self._counts.get(status, 0))
            yield tasks
        if self._mqtt is not None:
            yield from _mqtt_metrics(self._mqtt.mqtt_stats())


def _mqtt_metrics(stats: MqttStats) -> Iterator[Metric]:
    # an external broker knows its own connections; fleetops exports what it knows itself
    if stats.connections is not None:
        yield GaugeMetricFamily(
            "fleetops_mqtt_connections", "open device connections to the embedded gateway", value=stats.connections
        )
    if stats.devices_online is not None:
        yield GaugeMetricFamily(
            "fleetops_mqtt_devices_online", "devices connected and authenticated", value=stats.devices_online
        )
    yield CounterMetricFamily(
        "fleetops_mqtt_messages_published",
        "messages delivered to devices (written to a connection or queued for a persistent session)",
        value=stats.messages_published,
    )
    if stats.messages_refused is not None:
        yield CounterMetricFamily(
            "fleetops_mqtt_messages_refused",
            "device PUBLISHes dropped: a topic not the device's own, or over the size limit",
            value=stats.messages_refused,
        )
    if stats.connects_refused is not None:
        yield CounterMetricFamily(
            "fleetops_mqtt_connects_refused",
            "CONNECTs refused (bad credentials, unknown or disabled device, bad client id)",
            value=stats.connects_refused,
        )


class MetricsEndpoint:
    """``GET /metrics``: the node's event metrics and the scrape-time state, in the text format."""

    def __init__(self, node: NodeMetrics, state: StateMetrics) -> None:
        self._node = node
        self._state = state

    async def __call__(self, _request: Request) -> Response:
        await self._state.refresh()
        body = generate_latest(self._node.registry) + generate_latest(self._state.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

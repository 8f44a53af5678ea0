"""The metrics adapter and /readyz without a node: what each Telemetry event and scrape-time source becomes.

The same metrics from a live node (real devices, real tasks, a database and a broker that go away) are
tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.requests import Request

from fleetops.api.app import Readiness
from fleetops.api.metrics import MetricsEndpoint, NodeMetrics, StateMetrics
from fleetops.domain.tasks import TaskStatus, TaskType
from fleetops.ports.telemetry import MqttStats, ShadowSource


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_telemetry_events_become_counters_and_a_histogram() -> None:
    metrics = NodeMetrics()
    metrics.devices_processed(TaskType.UPDATE_SHADOW, 5000)
    metrics.devices_processed(TaskType.UPDATE_SHADOW, 1200)
    metrics.devices_processed(TaskType.PUBLISH_MESSAGE, 0)
    metrics.task_finished(TaskType.UPDATE_SHADOW, TaskStatus.COMPLETED, 42.0)
    metrics.task_finished(TaskType.PUBLISH_MESSAGE, TaskStatus.FAILED, 7200.0)
    metrics.shadows_written(ShadowSource.DEVICE, 1)
    metrics.shadows_written(ShadowSource.TASK, 6200)
    metrics.database_error()
    metrics.broker_error()
    metrics.broker_error()
    metrics.api.observe("DescribeTask", "OK", 0.003)
    found = samples(generate_latest(metrics.registry).decode())
    assert found[("fleetops_task_devices_processed_total", (("type", "UpdateShadow"),))] == 6200
    assert found[("fleetops_task_devices_processed_total", (("type", "PublishMessage"),))] == 0  # present from start
    completed = (("outcome", "completed"), ("type", "UpdateShadow"))
    assert found[("fleetops_task_duration_seconds_count", completed)] == 1
    assert found[("fleetops_task_duration_seconds_sum", completed)] == 42
    assert found[("fleetops_task_duration_seconds_bucket", (("le", "60.0"), *completed))] == 1
    assert found[("fleetops_task_duration_seconds_bucket", (("le", "15.0"), *completed))] == 0
    failed = (("outcome", "failed"), ("type", "PublishMessage"))
    assert found[("fleetops_task_duration_seconds_count", failed)] == 1
    assert found[("fleetops_shadow_writes_total", (("source", "device"),))] == 1
    assert found[("fleetops_shadow_writes_total", (("source", "task"),))] == 6200
    assert found[("fleetops_shadow_writes_total", (("source", "api"),))] == 0
    assert found[("fleetops_database_errors_total", ())] == 1
    assert found[("fleetops_broker_errors_total", ())] == 2
    assert found[("fleetops_api_requests_total", (("action", "DescribeTask"), ("outcome", "OK")))] == 1


def test_two_nodes_in_one_process_count_apart() -> None:
    first, second = NodeMetrics(), NodeMetrics()
    first.broker_error()
    assert samples(generate_latest(second.registry).decode())[("fleetops_broker_errors_total", ())] == 0


class _Counts:
    """A task count source with a clock that moves only when told."""

    def __init__(self) -> None:
        self.calls = 0
        self.now = 0.0
        self.fail = False

    async def __call__(self) -> Mapping[TaskStatus, int]:
        self.calls += 1
        if self.fail:
            raise OSError("connection refused")
        return {TaskStatus.WAITING: 2, TaskStatus.PROCESSING: 1}


class _Mqtt:
    def __init__(self, stats: MqttStats) -> None:
        self.stats = stats

    def mqtt_stats(self) -> MqttStats:
        return self.stats


async def test_tasks_by_status_are_counted_once_per_cache_period() -> None:
    counts = _Counts()
    state = StateMetrics(counts, None, clock=lambda: counts.now, cache_s=5.0)
    await state.refresh()
    await asyncio.gather(state.refresh(), state.refresh())  # concurrent scrapes within the period
    assert counts.calls == 1
    found = samples(generate_latest(state.registry).decode())
    assert found[("fleetops_tasks", (("status", "waiting"),))] == 2
    assert found[("fleetops_tasks", (("status", "processing"),))] == 1
    assert found[("fleetops_tasks", (("status", "cancelled"),))] == 0  # every status, zero included
    counts.now = 5.0
    await state.refresh()
    assert counts.calls == 2


async def test_no_task_series_while_the_database_cannot_count_them() -> None:
    counts = _Counts()
    counts.fail = True
    state = StateMetrics(counts, None, clock=lambda: counts.now)
    await state.refresh()
    assert "fleetops_tasks" not in generate_latest(state.registry).decode()


async def test_mqtt_figures_are_read_at_scrape_time_and_unknown_ones_left_out() -> None:
    embedded = _Mqtt(MqttStats(12, 10, 345, 3, 4))
    state = StateMetrics(_Counts(), embedded)
    found = samples(generate_latest(state.registry).decode())
    assert found[("fleetops_mqtt_connections", ())] == 12
    assert found[("fleetops_mqtt_devices_online", ())] == 10
    assert found[("fleetops_mqtt_messages_published_total", ())] == 345
    assert found[("fleetops_mqtt_messages_refused_total", ())] == 3
    assert found[("fleetops_mqtt_connects_refused_total", ())] == 4
    embedded.stats = MqttStats(13, 11, 350, 3, 4)  # read again at the next scrape, nothing cached
    assert samples(generate_latest(state.registry).decode())[("fleetops_mqtt_connections", ())] == 13
    external = StateMetrics(_Counts(), _Mqtt(MqttStats(None, None, 99, None, None)))
    text = generate_latest(external.registry).decode()
    assert "fleetops_mqtt_messages_published_total 99.0" in text
    assert "fleetops_mqtt_connections" not in text and "fleetops_mqtt_devices_online" not in text


async def test_the_endpoint_serves_both_registries_as_one_exposition() -> None:
    node, counts = NodeMetrics(), _Counts()
    node.broker_error()
    endpoint = MetricsEndpoint(node, StateMetrics(counts, None))
    response = await endpoint(Request({"type": "http", "method": "GET", "headers": []}))
    text = bytes(response.body).decode()
    assert response.media_type is not None and response.media_type.startswith("text/plain")
    found = samples(text)  # parses as one exposition
    assert found[("fleetops_broker_errors_total", ())] == 1 and found[("fleetops_tasks", (("status", "waiting"),))] == 2


class _Check:
    def __init__(self, name: str, problem: str | None = None, *, hang: bool = False, crash: bool = False) -> None:
        self.name = name
        self._problem = problem
        self._hang = hang
        self._crash = crash

    async def problem(self) -> str | None:
        if self._hang:
            await asyncio.sleep(60)
        if self._crash:
            raise RuntimeError("the check itself broke")
        return self._problem


async def _ready(*checks: _Check, timeout_s: float = 1.0) -> tuple[int, str]:
    response = await Readiness(checks, timeout_s=timeout_s)(Request({"type": "http", "method": "GET", "headers": []}))
    return response.status_code, bytes(response.body).decode()


async def test_readyz_is_200_when_every_dependency_answers() -> None:
    assert await _ready(_Check("database"), _Check("broker")) == (200, "ready\ndatabase: ok\nbroker: ok\n")


async def test_readyz_names_each_dependency_that_is_down_and_does_not_hang() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    status, body = await _ready(
        _Check("database", hang=True), _Check("broker", "not connected to the MQTT broker at h:1883"), timeout_s=0.2
    )
    assert loop.time() - started < 2  # both checks at once, each bounded
    assert status == 503
    assert body == "not ready\ndatabase: no answer within 0.2 s\nbroker: not connected to the MQTT broker at h:1883\n"
    status, body = await _ready(_Check("database"), _Check("broker", crash=True))
    assert (status, body) == (503, "not ready\nbroker: RuntimeError: the check itself broke\n")

"""What an operator pages on, as the rest of fleetops reports it: the telemetry port.

The engine, the use cases and the stores call :class:`Telemetry` where a thing happens (a batch of devices
done, a task ended, shadows written, a database or broker error); ``fleetops.api.metrics`` implements it on
``prometheus_client`` with one registry per node, and the composition root hands the one instance to each.
Nothing here knows Prometheus, so the domain, the engine and the backend stay free of it.

Two things are read when Prometheus scrapes instead of being counted as they happen: the MQTT side's figures
(:class:`MqttStatsSource`, implemented by the messaging services over what they already hold) and the
readiness of the node's dependencies (:class:`HealthCheck`, for ``/readyz``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable

from fleetops.domain.tasks import TaskStatus, TaskType


class ShadowSource(StrEnum):
    """Who wrote a shadow (the ``source`` label of ``fleetops_shadow_writes_total``)."""

    API = "api"  # UpdateDeviceShadow
    DEVICE = "device"  # a device's own update over MQTT
    TASK = "task"  # a batch UpdateShadow task


class Telemetry(Protocol):
    """Events worth counting; every method is cheap and never raises."""

    def devices_processed(self, task_type: TaskType, count: int) -> None:
        """A batch of a task has been committed: ``count`` more devices done."""
        ...

    def task_finished(self, task_type: TaskType, status: TaskStatus, duration_s: float) -> None:
        """A task this node ran ended (completed or failed), ``duration_s`` after it started."""
        ...

    def shadows_written(self, source: ShadowSource, count: int) -> None: ...

    def database_error(self) -> None:
        """A database operation failed (the error itself goes to the log)."""
        ...

    def broker_error(self) -> None:
        """A publish failed because the MQTT broker could not take it."""
        ...


class NoTelemetry:
    """Telemetry that counts nothing: for tools and tests that export no metrics."""

    def devices_processed(self, task_type: TaskType, count: int) -> None:
        pass

    def task_finished(self, task_type: TaskType, status: TaskStatus, duration_s: float) -> None:
        pass

    def shadows_written(self, source: ShadowSource, count: int) -> None:
        pass

    def database_error(self) -> None:
        pass

    def broker_error(self) -> None:
        pass


NO_TELEMETRY = NoTelemetry()


@dataclass(frozen=True)
class MqttStats:
    """The MQTT side's figures at one moment. None: this kind of broker cannot tell (an external one)."""

    connections: int | None  # open network connections of devices
    devices_online: int | None  # devices connected and authenticated
    messages_published: int  # messages delivered to devices since start (written, or queued for a session)
    messages_refused: int | None  # device PUBLISHes dropped since start: a topic not theirs, or oversize
    connects_refused: int | None  # CONNECTs refused since start (credentials, unknown or disabled device)


@runtime_checkable
class MqttStatsSource(Protocol):
    def mqtt_stats(self) -> MqttStats: ...


@runtime_checkable
class HealthCheck(Protocol):
    """One dependency ``/readyz`` asks about."""

    @property
    def name(self) -> str:
        """What it is, as ``/readyz`` names it (``database``, ``broker``)."""
        ...

    async def problem(self) -> str | None:
        """None when it is usable; else what is wrong, in one line. Kept short by the caller's timeout."""
        ...

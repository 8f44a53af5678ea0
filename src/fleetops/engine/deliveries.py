"""The messages of PublishMessage tasks that keep outcomes: acknowledgements and late delivery
(docs/extensions.md#outcomes, #late-delivery).

* **Sending.** A batch goes out with QoS 1 where the broker can tell the device's own PUBACK (the embedded
  gateway, ``DeviceAcks``), else as a Tencent task sends it (QoS 0). Each message's ``Delivery`` becomes the
  device's outcome: Sent, Offline (nobody connected to take it: dropped, or kept in an offline persistent
  session), Published (an external broker, which does not say).
* **Acknowledgements.** A PUBACK arrives in the broker's event loop, possibly before the batch's outcome rows
  are committed: it is noted, and a flush (every ``flush_interval_s``) moves the rows to Acknowledged, trying
  again for the rows not committed yet. A message queued in a persistent session is acknowledged when the device
  comes back and the gateway replays it.
* **Late delivery** (``DeliverOnConnect``). The broker tells of connects and subscriptions
  (:class:`DeviceEventInbox`, a ``DeviceEvents``); for each, the device's Offline outcomes in the product's
  open late-delivery tasks get their message, once: the outcome moves to Sent (then Acknowledged) in one
  conditional UPDATE, and a device's deliveries are never in flight twice. Until the task's
  MaxExecutionTimeInSeconds after its start. A device kept in a persistent session's queue is left to the
  gateway's replay (no second copy). Right after a batch commits, its Offline devices are tried once more: a
  device that connected between the send and the commit would otherwise wait for its next connect.

What a node does not see it cannot deliver: devices connected to another broker than this node's, and, on an
external broker, who is connected (docs/extensions.md#late-delivery says what Mosquitto needs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

from fleetops.domain.outcomes import DeviceOutcome
from fleetops.domain.tasks import PublishMessageSpec
from fleetops.ports.messaging import Delivery, DeviceMessages
from fleetops.ports.store import TaskOutcomes, TaskRecord, TaskStore

log = logging.getLogger("fleetops.engine")

QOS_TENCENT: Final = 0  # what a task without outcomes sends (docs/tasks.md)
OPEN_TASKS_TTL_S: Final = 1.0  # how long a product's list of late-delivery tasks is trusted
ACK_RETRY_S: Final = 60.0  # an acknowledgement whose outcome row never appears is dropped after this
QUEUED_TTL_S: Final = 86_400.0  # the gateway keeps an offline session's QoS 1 messages 24 h (docs/limits.md)
EVENT_QUEUE_MAX: Final = 100_000  # events beyond are dropped (logged): a connect storm must not exhaust memory


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    product_id: str
    device_name: str


class DeviceEventInbox:
    """:class:`~fleetops.ports.messaging.DeviceEvents` that only queues (the broker's callbacks must not block);
    :class:`TaskDeliveries` reads it. Built before the broker, so that nothing is attached later."""

    def __init__(self, max_events: int = EVENT_QUEUE_MAX) -> None:
        self.queue: asyncio.Queue[DeviceEvent] = asyncio.Queue(max_events)
        self.dropped = 0

    def _put(self, product_id: str, device_name: str) -> None:
        try:
            self.queue.put_nowait(DeviceEvent(product_id, device_name))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("device event queue full: %d events dropped (late deliveries wait)", self.dropped)

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        if session_present:  # its subscriptions are back: it can be sent to now
            self._put(product_id, device_name)

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        self._put(product_id, device_name)

    def device_disconnected(self, product_id: str, device_name: str) -> None:
        return None


@dataclass
class _Ack:
    task_id: str
    device_name: str
    at_ms: int


class TaskDeliveries:
    """Sending, acknowledgements and late delivery for the PublishMessage tasks that keep outcomes."""

    def __init__(
        self,
        tasks: TaskStore,
        outcomes: TaskOutcomes,
        messages: DeviceMessages,
        clock: Callable[[], float],
        *,
        inbox: DeviceEventInbox | None = None,
        flush_interval_s: float = 0.2,
    ) -> None:
        self._tasks = tasks
        self._outcomes = outcomes
        self._messages = messages
        self._clock = clock
        self._inbox = inbox
        self._flush_interval_s = flush_interval_s
        self._acks: list[_Ack] = []
        # (task, device) -> when queued: left to the session's replay; forgotten after the gateway's own limit
        self._queued: dict[tuple[str, str], float] = {}
        self._in_flight: set[tuple[str, str]] = set()
        self._open: dict[str, tuple[float, list[TaskRecord]]] = {}
        self._refreshing: dict[str, asyncio.Future[tuple[float, list[TaskRecord]]]] = {}
        self._services: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    # --- the service --------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._services:
            return
        self._services.append(asyncio.create_task(self._flush_loop(), name="fleetops-acks"))
        if self._inbox is not None:
            self._services.append(asyncio.create_task(self._event_loop(self._inbox), name="fleetops-late-delivery"))

    async def stop(self) -> None:
        services, self._services = self._services, []
        for service in services:
            service.cancel()
        await asyncio.gather(*services, *self._running, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._flush_interval_s)
            try:
                await self.flush()
            except Exception:  # the database may be away for a while; the acks wait
                log.exception("recording acknowledgements failed; retrying")

    async def _event_loop(self, inbox: DeviceEventInbox) -> None:
        while True:
            event = await inbox.queue.get()
            self._spawn(self.deliver_late(event.product_id, event.device_name))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # --- sending a batch ----------------------------------------------------------------------------------

    async def send(self, task: TaskRecord, names: Sequence[str]) -> list[DeviceOutcome]:
        """One batch of a tracking task; the outcome of each device. Raises BrokerUnavailable (retry it)."""
        spec = task.spec
        assert isinstance(spec, PublishMessageSpec)
        deliveries = await self._publish(task, names)
        outcomes = [self._outcome(task, name, delivery) for name, delivery in zip(names, deliveries, strict=True)]
        return outcomes

    async def _publish(self, task: TaskRecord, names: Sequence[str]) -> list[Delivery]:
        spec = task.spec
        assert isinstance(spec, PublishMessageSpec)

        def acked(index: int) -> None:
            self._acks.append(_Ack(task.id, names[index], self.now_ms()))

        send_acked = self._messages.publish_to_devices_acked
        deliveries = await send_acked(task.product_id, names, spec.topic, spec.payload, acked)
        if deliveries is None:  # the broker cannot tell the devices' acknowledgements: as a Tencent task
            deliveries = await self._messages.publish_to_devices(
                task.product_id, names, spec.topic, spec.payload, QOS_TENCENT
            )
        return deliveries

    def _outcome(self, task: TaskRecord, name: str, delivery: Delivery) -> DeviceOutcome:
        if delivery is Delivery.SENT:
            return DeviceOutcome.SENT
        if delivery is Delivery.UNKNOWN:
            return DeviceOutcome.PUBLISHED
        if delivery is Delivery.QUEUED:
            # queued behind the messages a connected device has not taken yet, or kept for an offline session
            if self._messages.is_online(task.product_id, name):
                return DeviceOutcome.SENT
            self._queued[task.id, name] = self._clock()
        return DeviceOutcome.OFFLINE

    async def after_batch(self, task: TaskRecord, offline: Sequence[str]) -> None:
        """The batch's Offline devices are committed: deliver now to those that connected meanwhile."""
        if not _late(task) or not offline:
            return
        await self._deliver_to(task, [name for name in offline if (task.id, name) not in self._queued])

    # --- acknowledgements ---------------------------------------------------------------------------------

    async def flush(self) -> None:
        """Record the acknowledgements noted so far; keep the ones whose row is not committed yet."""
        self._forget_old_queued()
        acks, self._acks = self._acks, []
        if not acks:
            return
        by_task: dict[str, list[_Ack]] = {}
        for ack in acks:
            by_task.setdefault(ack.task_id, []).append(ack)
        now_ms = self.now_ms()
        for task_id, task_acks in by_task.items():
            names = [ack.device_name for ack in task_acks]
            result = await self._outcomes.move(task_id, names, DeviceOutcome.ACKNOWLEDGED, now_ms)
            for ack in task_acks:
                self._queued.pop((task_id, ack.device_name), None)
                # its batch has not committed yet: try again (a device that did not move stays as it is)
                if ack.device_name in result.pending and now_ms - ack.at_ms < ACK_RETRY_S * 1000:
                    self._acks.append(ack)

    def _forget_old_queued(self) -> None:
        """A queued message the gateway keeps at most QUEUED_TTL_S: past that, nobody replays it."""
        cutoff = self._clock() - QUEUED_TTL_S
        while self._queued:
            key, queued_at = next(iter(self._queued.items()))  # oldest first (insertion order)
            if queued_at >= cutoff:
                return
            del self._queued[key]

    # --- late delivery ------------------------------------------------------------------------------------

    async def deliver_late(self, product_id: str, device_name: str) -> None:
        """A device connected (or subscribed): its messages of the product's late-delivery tasks, once each."""
        try:
            for task in await self._late_tasks(product_id):
                if (task.id, device_name) not in self._queued:
                    await self._deliver_to(task, [device_name])
        except Exception:
            log.exception(
                "late delivery to %s/%s failed; it is tried again at its next connect", product_id, device_name
            )

    async def _late_tasks(self, product_id: str) -> list[TaskRecord]:
        """The product's late-delivery tasks, read at most once a second: the connects of a storm share one
        read (they wait for the one in flight instead of each asking the database)."""
        now = self._clock()
        cached = self._open.get(product_id)
        if cached is None or now - cached[0] > OPEN_TASKS_TTL_S:
            refresh = self._refreshing.get(product_id)
            if refresh is None:
                refresh = self._refreshing[product_id] = asyncio.ensure_future(self._read_late_tasks(product_id, now))
                refresh.add_done_callback(lambda _done: self._refreshing.pop(product_id, None))
            cached = await asyncio.shield(refresh)
        return [t for t in cached[1] if _until_s(t) >= now]

    async def _read_late_tasks(self, product_id: str, now: float) -> tuple[float, list[TaskRecord]]:
        tasks = [t for t in await self._tasks.late_delivery_tasks(product_id, int(now)) if _late(t)]
        self._open[product_id] = (now, tasks)
        return now, tasks

    async def _deliver_to(self, task: TaskRecord, names: Sequence[str]) -> None:
        mine = [name for name in names if (task.id, name) not in self._in_flight]
        if not mine:
            return
        keys = [(task.id, name) for name in mine]
        self._in_flight.update(keys)
        try:
            current = await self._outcomes.current(task.id, mine)
            pending = [name for name in mine if current.get(name) is DeviceOutcome.OFFLINE]
            if not pending:
                return
            deliveries = await self._publish(task, pending)
            sent = [name for name, d in zip(pending, deliveries, strict=True) if d is Delivery.SENT]
            if sent:
                await self._outcomes.move(task.id, sent, DeviceOutcome.SENT, self.now_ms())
                log.debug("task %s: late delivery to %d device(s)", task.id, len(sent))
        finally:
            self._in_flight.difference_update(keys)


def _late(task: TaskRecord) -> bool:
    return task.extensions is not None and task.extensions.deliver_on_connect


def _until_s(task: TaskRecord) -> int:
    """A late delivery is made until MaxExecutionTimeInSeconds after the task's start."""
    started = task.started_at if task.started_at is not None else task.schedule_time
    return started + task.max_execution_s

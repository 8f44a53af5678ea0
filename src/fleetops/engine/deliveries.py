"""The messages of PublishMessage tasks that keep outcomes: acknowledgements and late delivery
(docs/extensions.md#outcomes, #late-delivery).

* **Sending.** A batch goes out with QoS 1 where the broker can tell the device's own PUBACK (the embedded
  gateway, ``DeviceAcks``), else as a Tencent task sends it (QoS 0). Each message's ``Delivery`` becomes the
  device's outcome: Sent, Offline (nobody connected to take it: dropped, or kept in an offline persistent
  session), Published (an external broker, which does not say). An external broker that records presence
  (Mosquitto with the plugin: ``DeviceMessages.presence_recorded``) does not say either, but the devices'
  recorded presence does: it is read for the batch (one query, ``DevicePresence.online_among``) *before* the
  batch is published, and each ``UNKNOWN`` becomes Sent (online) or Offline. Read before, a device that
  connects meanwhile is Offline (it may have got the message too) and is reached by its subscription's event
  or by the batch's retry below; read after, it would be Sent with nothing received.
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
* **Late delivery on an external broker that records presence.** The plugin tells of subscriptions (its
  connects carry no resumed session, so they trigger nothing) and the broker's answer is ``UNKNOWN``: a
  delivery triggered by a subscription whose filter takes the task's topic counts as Sent (the event itself
  says the device takes it now; its presence may not be written yet), one of a subscription to another topic
  is not made (the device's subscription to the task's topic comes with its own event). The batch's retry,
  which no event triggered, reaches only the devices recorded online. Late deliveries go out with QoS 1 (the
  broker hands them on with the QoS the device subscribed with).

What a node does not see it cannot deliver: devices connected to another broker than this node's, and, on an
external broker, who is connected, unless the broker records presence (docs/extensions.md#late-delivery).
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
from fleetops.ports.store import DevicePresence, TaskOutcomes, TaskRecord, TaskStore

log = logging.getLogger("fleetops.engine")

QOS_TENCENT: Final = 0  # what a task without outcomes sends (docs/tasks.md)
QOS_LATE_EXTERNAL: Final = 1  # a late delivery through an external broker: the device's subscription QoS decides
OPEN_TASKS_TTL_S: Final = 1.0  # how long a product's list of late-delivery tasks is trusted
ACK_RETRY_S: Final = 60.0  # an acknowledgement whose outcome row never appears is dropped after this
QUEUED_TTL_S: Final = 86_400.0  # the gateway keeps an offline session's QoS 1 messages 24 h (docs/limits.md)
EVENT_QUEUE_MAX: Final = 100_000  # events beyond are dropped (logged): a connect storm must not exhaust memory


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    product_id: str
    device_name: str
    topic_filter: str | None = None  # a subscription's filter; None: a resumed session (all it subscribed)


class DeviceEventInbox:
    """:class:`~fleetops.ports.messaging.DeviceEvents` that only queues (the broker's callbacks must not block);
    :class:`TaskDeliveries` reads it. Built before the broker, so that nothing is attached later."""

    def __init__(self, max_events: int = EVENT_QUEUE_MAX) -> None:
        self.queue: asyncio.Queue[DeviceEvent] = asyncio.Queue(max_events)
        self.dropped = 0

    def _put(self, product_id: str, device_name: str, topic_filter: str | None = None) -> None:
        try:
            self.queue.put_nowait(DeviceEvent(product_id, device_name, topic_filter))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("device event queue full: %d events dropped (late deliveries wait)", self.dropped)

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        if session_present:  # its subscriptions are back: it can be sent to now
            self._put(product_id, device_name)

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        self._put(product_id, device_name, topic_filter)

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
        presence: DevicePresence | None = None,
        flush_interval_s: float = 0.2,
    ) -> None:
        """``presence``: the devices' recorded presence, read when the broker records it (else unused)."""
        self._tasks = tasks
        self._presence = presence
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
            self._spawn(self.deliver_late(event.product_id, event.device_name, event.topic_filter))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # --- sending a batch ----------------------------------------------------------------------------------

    async def send(self, task: TaskRecord, names: Sequence[str]) -> list[DeviceOutcome]:
        """One batch of a tracking task; the outcome of each device. Raises BrokerUnavailable (retry it)."""
        online = await self._recorded_online(task, names)  # before the publish (module docstring)
        deliveries = await self._publish(task, names)
        return [self._outcome(task, name, d, online) for name, d in zip(names, deliveries, strict=True)]

    async def _recorded_online(self, task: TaskRecord, names: Sequence[str]) -> set[str] | None:
        """Which of ``names`` are recorded online, where the broker records presence; None elsewhere."""
        if self._presence is None or not self._messages.presence_recorded():
            return None
        return await self._presence.online_among(task.product_id, names)

    async def _publish(self, task: TaskRecord, names: Sequence[str], qos: int = QOS_TENCENT) -> list[Delivery]:
        """The task's message to ``names``: QoS 1 with acknowledgements where the broker tells them, else ``qos``."""
        spec = task.spec
        assert isinstance(spec, PublishMessageSpec)

        def acked(index: int) -> None:
            self._acks.append(_Ack(task.id, names[index], self.now_ms()))

        send_acked = self._messages.publish_to_devices_acked
        deliveries = await send_acked(task.product_id, names, spec.topic, spec.payload, acked)
        if deliveries is None:  # the broker cannot tell the devices' acknowledgements: as a Tencent task
            deliveries = await self._messages.publish_to_devices(task.product_id, names, spec.topic, spec.payload, qos)
        return deliveries

    def _outcome(self, task: TaskRecord, name: str, delivery: Delivery, online: set[str] | None) -> DeviceOutcome:
        if delivery is Delivery.SENT:
            return DeviceOutcome.SENT
        if delivery is Delivery.UNKNOWN:
            if online is None:  # nothing records presence: the broker took it, nobody can say more
                return DeviceOutcome.PUBLISHED
            return DeviceOutcome.SENT if name in online else DeviceOutcome.OFFLINE
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

    async def deliver_late(self, product_id: str, device_name: str, topic_filter: str | None = None) -> None:
        """A device connected (or subscribed to ``topic_filter``): its messages of the product's late-delivery
        tasks, once each."""
        event = DeviceEvent(product_id, device_name, topic_filter)
        try:
            for task in await self._late_tasks(product_id):
                if (task.id, device_name) not in self._queued:
                    await self._deliver_to(task, [device_name], event)
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

    async def _deliver_to(self, task: TaskRecord, names: Sequence[str], event: DeviceEvent | None = None) -> None:
        """The task's message to those of ``names`` still Offline; ``event``: the device event that triggered
        it (None: the batch's retry)."""
        mine = [name for name in names if (task.id, name) not in self._in_flight]
        if not mine:
            return
        keys = [(task.id, name) for name in mine]
        self._in_flight.update(keys)
        try:
            current = await self._outcomes.current(task.id, mine)
            pending = [name for name in mine if current.get(name) is DeviceOutcome.OFFLINE]
            recorded = self._presence is not None and self._messages.presence_recorded()
            if pending and recorded:
                pending = await self._reachable(task, pending, event)
            if not pending:
                return
            deliveries = await self._publish(task, pending, QOS_LATE_EXTERNAL if recorded else QOS_TENCENT)
            # UNKNOWN here is an external broker that records presence: ``pending`` are known to take it
            taken = (Delivery.SENT, Delivery.UNKNOWN) if recorded else (Delivery.SENT,)
            sent = [name for name, d in zip(pending, deliveries, strict=True) if d in taken]
            if sent:
                await self._outcomes.move(task.id, sent, DeviceOutcome.SENT, self.now_ms())
                log.debug("task %s: late delivery to %d device(s)", task.id, len(sent))
        finally:
            self._in_flight.difference_update(keys)

    async def _reachable(self, task: TaskRecord, names: list[str], event: DeviceEvent | None) -> list[str]:
        """On a broker that records presence (and does not say who took a message): the devices that take the
        task's message now. A subscription's event says so itself when its filter takes the task's topic (the
        presence write of its connect may not be committed yet); the batch's retry asks the recorded presence."""
        if event is None:
            assert self._presence is not None
            online = await self._presence.online_among(task.product_id, names)
            return [name for name in names if name in online]
        spec = task.spec
        assert isinstance(spec, PublishMessageSpec)
        if event.topic_filter is None:  # a resumed session: what it subscribed before is back
            return names
        reached = self._messages.reaches(event.product_id, event.device_name, spec.topic, event.topic_filter)
        return names if reached else []


def _late(task: TaskRecord) -> bool:
    return task.extensions is not None and task.extensions.deliver_on_connect


def _until_s(task: TaskRecord) -> int:
    """A late delivery is made until MaxExecutionTimeInSeconds after the task's start."""
    started = task.started_at if task.started_at is not None else task.schedule_time
    return started + task.max_execution_s

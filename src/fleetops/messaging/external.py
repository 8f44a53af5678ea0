"""fleetops as a client of an external MQTT broker (``--mqtt-url mqtt://user:pass@host:port``).

Devices connect to the broker: EMQX 5 (it asks fleetops' ``http_auth`` endpoints who may connect, publish and
subscribe) or Mosquitto with the fleetops plugin (docs/mosquitto.md). Each fleetops node connects with its own
MQTT 3.1.1 client (``mqtt.client``, over the gateway's codec), a clean session and the URL's credentials - or,
when the URL has none, the service identity the composition root read from the database (:class:`BrokerLogin`).
A ``fleetops serve`` node then takes the devices' messages in one of two ways, chosen at its first connection:

* **the plugin's node protocol** (docs/mosquitto.md#the-node-protocol): the node publishes its hello; if the
  plugin's welcome comes within ``hello_timeout_s`` (2 s), the node registers as a handler and the plugin
  hands it its share of the devices' shadow requests, presence changes and subscriptions
  (:mod:`fleetops.messaging.plugin_node` does them and acknowledges). Every later connection says hello again
  and registers again;
* **a shared subscription** otherwise (EMQX, a plain broker): the node subscribes to
  ``$share/fleetops/$shadow/operation/+/+`` (QoS 1), so that the broker hands each device shadow request to one
  node only. A broker that does not deliver ``$`` topics to shared subscriptions (Mosquitto 2.0.11 does not, on
  3.1.1 or 5) is detected at the first connection by a probe message; fleetops then subscribes to
  ``$shadow/operation/+/+`` without a share group and logs a warning: with such a broker only one node may run,
  or every node would answer every request.

Either way the shadow requests go to the :class:`~fleetops.ports.messaging.ShadowRequestHandler` - those of
one device in arrival order (workers are sharded by device) - and each reply is published (QoS 0). A ``fleetops
worker`` (``serve_shadow_requests=False``) only publishes: it subscribes to nothing and registers nowhere, but
says hello to learn whether the plugin is there (:attr:`ExternalBroker.presence_recorded`: the tasks' outcomes
are then told by the devices' recorded presence).

Publishing for the backend and the task engine (:class:`ExternalPublisher`) encodes PUBLISH packets itself and
writes them in chunks; QoS 1 keeps ``max_in_flight`` PUBLISHes per call awaiting their PUBACK.

The connection recovers by itself: when it drops, a supervisor makes a new one (backing off from
``reconnect_delay_s`` to ``max_reconnect_delay_s``) and subscribes (or registers) again. Meanwhile
``publish_many`` waits up to ``broker_wait_s`` for it and then raises
:class:`~fleetops.errors.BrokerUnavailable`; QoS 1 messages that were not acknowledged on the lost connection
are sent again on the new one (at least once), QoS 0 messages already written to the lost socket are not (at
most once).

Each connection is a new client with a clean session: resuming with ``clean_session=False`` would, on a 3.1.1
broker, create a persistent session that never expires and that, as a member of a share group, would swallow
QoS 0 requests whenever it is offline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final
from urllib.parse import unquote, urlsplit

from fleetops.errors import BrokerUnavailable, ConfigurationError
from fleetops.messaging.embedded import check_qos, check_topic
from fleetops.messaging.mqtt.client import ConnectRefused, MqttClient
from fleetops.messaging.mqtt.codec import SUBACK_FAILURE, encode_publish
from fleetops.messaging.node_protocol import PROTOCOL_VERSION, NodeTopics, Welcome, node_id_problem, parse_dispatched
from fleetops.messaging.plugin_node import PluginNode, Registration
from fleetops.messaging.topics import DeviceId, parse_shadow_request_topic, shadow_result_topic
from fleetops.ports.messaging import (
    BrokerBoots,
    Delivery,
    DeviceDirectory,
    DeviceEvents,
    ShadowRequestHandler,
)
from fleetops.ports.telemetry import MqttStats

log = logging.getLogger("fleetops.messaging.external")

SHADOW_FILTER: Final = "$shadow/operation/+/+"
_CHUNK_BYTES: Final = 64 * 1024


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://[user[:password]@]host[:port]`` (1883) or ``mqtts://...`` (TLS, 8883)."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid MQTT URL: {exc}") from exc
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigurationError("the MQTT URL must look like mqtt://user:password@host:port (or mqtts://)")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if tls else 1883),
            username=unquote(parts.username) if parts.username is not None else None,
            password=unquote(parts.password) if parts.password is not None else None,
            tls=tls,
        )


@dataclass(frozen=True)
class BrokerLogin:
    """The user name and password fleetops connects with when the broker URL carries none (the Mosquitto plugin's
    service identity, whose password the composition root reads from the database)."""

    username: str
    password: str = field(repr=False)


class BrokerMode(StrEnum):
    """How a serving node takes device messages from the broker (decided at its first connection)."""

    PLUGIN = "plugin"  # the Mosquitto plugin's node protocol
    SHARED_SUBSCRIPTION = "shared-subscription"  # $share/... (or a plain subscription, single node)


@dataclass
class ExternalOptions:
    broker_wait_s: float = 30.0  # how long publish_many waits for a broker that is down
    connect_timeout_s: float = 10.0
    reconnect_delay_s: float = 1.0
    max_reconnect_delay_s: float = 10.0
    keepalive_s: int = 30
    max_in_flight: int = 1000  # QoS 1 PUBLISHes awaiting a PUBACK, per publish_many call
    share_group: str = "fleetops"  # "" subscribes without a share group (a single node)
    probe_timeout_s: float = 2.0
    hello_timeout_s: float = 2.0  # how long the first connection waits for the plugin's welcome
    shadow_workers: int = 4
    shadow_queue_size: int = 10_000  # per worker; requests beyond are dropped (the device times out)
    serve_shadow_requests: bool = True  # False: publish only (a `fleetops worker` leaves shadow requests to serve)


class _Refused(Exception):
    """The broker refused the connection or the subscription (a configuration problem, not an outage)."""


class _Batch:
    """The unacknowledged QoS 1 messages of one publish_many call on the current connection."""

    def __init__(self) -> None:
        self.outstanding: dict[int, int] = {}  # packet id -> message index
        self.progress = asyncio.Event()

    def acknowledged(self, packet_id: int) -> None:
        if self.outstanding.pop(packet_id, None) is not None:
            self.progress.set()


class _Link:
    """One connection to the broker (an :class:`MqttClient`), in the shape the publisher needs."""

    def __init__(
        self,
        client_id: str,
        address: BrokerAddress,
        options: ExternalOptions,
        on_message: Callable[[_Link, str, bytes], None],
        on_lost: Callable[[_Link], None],
        login: BrokerLogin | None = None,
    ) -> None:
        self.client_id = client_id
        self.address = address
        self.options = options
        self.alive = False
        self.lost = asyncio.Event()
        self.welcome: asyncio.Future[Welcome] | None = None  # while waiting for the plugin's welcome
        self.registration: Registration | None = None  # once registered with the plugin
        self.plugin = False  # the plugin welcomed this connection: the devices' presence is recorded
        self._on_message = on_message
        self._on_lost = on_lost
        self._login = login
        self._owners: dict[int, _Batch] = {}
        self._client: MqttClient | None = None

    async def open(self) -> None:
        address = self.address
        username, password = address.username, address.password
        if username is None and password is None and self._login is not None:
            username, password = self._login.username, self._login.password
        try:
            self._client = await MqttClient.connect(
                address.host,
                address.port,
                client_id=self.client_id,
                on_message=lambda topic, payload, _qos: self._on_message(self, topic, payload),
                on_lost=self._mark_lost,
                username=username,
                password=password.encode("utf-8") if password is not None else None,
                keepalive_s=self.options.keepalive_s,
                ssl_context=ssl.create_default_context() if address.tls else None,
                timeout_s=self.options.connect_timeout_s,
            )
        except ConnectRefused as exc:
            raise _Refused(str(exc)) from exc
        if self._client.lost.is_set():
            raise ConnectionError("the connection dropped right after CONNACK")
        self.alive = True

    async def close(self) -> None:
        was_alive, self.alive = self.alive, False
        if self._client is not None:
            await self._client.close()
        if was_alive:
            self._mark_lost()

    async def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe and return the SUBACK code (0x80 = refused)."""
        if self._client is None or not self._client.alive:
            raise ConnectionError(f"no connection to subscribe to {topic_filter}")
        try:
            return await self._client.subscribe(topic_filter, qos, self.options.connect_timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no SUBACK for {topic_filter}") from None

    async def unsubscribe(self, topic_filter: str) -> None:
        if self.alive and self._client is not None:
            try:
                await self._client.unsubscribe(topic_filter, self.options.connect_timeout_s)
            except (ConnectionError, TimeoutError) as exc:
                log.debug("unsubscribing from %s: %r", topic_filter, exc)

    def next_packet_id(self) -> int:
        assert self._client is not None
        return self._client.next_packet_id()

    def track(self, packet_id: int, batch: _Batch) -> None:
        assert self._client is not None
        self._owners[packet_id] = batch
        self._client.track_puback(packet_id, self.acknowledged)

    def acknowledged(self, packet_id: int) -> None:
        batch = self._owners.pop(packet_id, None)
        if batch is not None:
            batch.acknowledged(packet_id)

    def write(self, data: bytes) -> bool:
        """Hand bytes to the socket; False if this connection is gone."""
        if not self.alive or self._client is None:
            return False
        return self._client.write(data)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is over its high-water mark (back-pressure)."""
        if self.alive and self._client is not None:
            await self._client.drain()

    def _mark_lost(self) -> None:
        self.alive = False
        if self.registration is not None:
            self.registration.close()
        if not self.lost.is_set():
            self.lost.set()
            self._on_lost(self)


class ExternalPublisher:
    """:class:`~fleetops.ports.messaging.Publisher` through the external broker."""

    def __init__(self, service: ExternalBroker) -> None:
        self._service = service
        self.published = 0  # messages the broker has taken since start (the metrics read it)

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many(((topic, payload),), qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        """Every message handed to the broker (QoS 1: acknowledged by it); each ``UNKNOWN``: the broker does
        not say whether anyone subscribes."""
        check_qos(qos)
        encoded: list[tuple[bytes, bytes]] = []
        for topic, payload in messages:
            check_topic(topic)
            encoded.append((topic.encode("utf-8"), payload))
        if not encoded:
            return []
        if qos == 0:
            await self._publish_qos0(encoded)
        else:
            await self._publish_qos1(encoded)
        self.published += len(encoded)
        return [Delivery.UNKNOWN] * len(encoded)

    def subscribed(self, topic: str) -> bool | None:
        return None  # an external broker does not tell

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None

    def presence_recorded(self) -> bool:
        """:class:`~fleetops.ports.messaging.RecordsPresence`: the plugin welcomed the current connection."""
        return self._service.presence_recorded

    async def _publish_qos0(self, messages: list[tuple[bytes, bytes]]) -> None:
        index, count = 0, len(messages)
        while index < count:
            link = await self._service.wait_link()
            start, chunk = index, bytearray()
            while index < count and len(chunk) < _CHUNK_BYTES:
                topic, payload = messages[index]
                chunk += encode_publish(topic, payload)
                index += 1
            if not link.write(bytes(chunk)):
                index = start  # the connection went before the write: this chunk goes on the next one
                continue
            await link.drain()

    async def _publish_qos1(self, messages: list[tuple[bytes, bytes]]) -> None:
        options = self._service.options
        batch = _Batch()
        to_send = deque(range(len(messages)))
        sent_on: _Link | None = None
        while to_send or batch.outstanding:
            link = await self._service.wait_link()
            if link is not sent_on:
                # Not acknowledged on the previous connection: sent again (QoS 1 is at least once).
                to_send.extendleft(sorted(batch.outstanding.values(), reverse=True))
                batch.outstanding.clear()
                sent_on = link
            chunk = bytearray()
            while to_send and len(batch.outstanding) < options.max_in_flight:
                index = to_send.popleft()
                packet_id = link.next_packet_id()
                batch.outstanding[packet_id] = index
                link.track(packet_id, batch)
                topic, payload = messages[index]
                chunk += encode_publish(topic, payload, 1, packet_id)
                if len(chunk) >= _CHUNK_BYTES:
                    link.write(bytes(chunk))
                    chunk = bytearray()
            if chunk:
                link.write(bytes(chunk))
            await link.drain()
            if batch.outstanding:
                await self._await_progress(batch, link, options.broker_wait_s)

    @staticmethod
    async def _await_progress(batch: _Batch, link: _Link, timeout_s: float) -> None:
        batch.progress.clear()
        if not batch.outstanding:
            return
        progress = asyncio.ensure_future(batch.progress.wait())
        lost = asyncio.ensure_future(link.lost.wait())
        try:
            done, _ = await asyncio.wait({progress, lost}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            progress.cancel()
            lost.cancel()
        if not done:
            raise BrokerUnavailable(f"the MQTT broker acknowledged nothing for {timeout_s:g} s")


class ExternalBroker:
    """:class:`~fleetops.ports.messaging.MessagingService` for an external broker (module docstring)."""

    def __init__(
        self,
        url: str,
        shadow_handler: ShadowRequestHandler,
        *,
        client_id: str | None = None,
        options: ExternalOptions | None = None,
        login: BrokerLogin | None = None,
        directory: DeviceDirectory | None = None,
        boots: BrokerBoots | None = None,
        events: DeviceEvents | None = None,
    ) -> None:
        """``login``: used when the URL has no user name and password. On a broker with the plugin, presence is
        recorded in ``directory``, a new broker run is recorded (and devices marked offline) in ``boots``, and
        connects, disconnects and subscriptions are told to ``events``."""
        self.address = BrokerAddress.parse(url)
        self.client_id = client_id or default_client_id()
        self.options = options or ExternalOptions()
        if self.options.serve_shadow_requests and (problem := node_id_problem(self.client_id)) is not None:
            raise ConfigurationError(
                f"the MQTT client id {self.client_id!r} (FLEETOPS_MQTT_CLIENT_ID) cannot be used: {problem}; it is "
                "also the node's topic level in the Mosquitto plugin's node protocol (docs/mosquitto.md)"
            )
        self.publisher = ExternalPublisher(self)
        self.mode: BrokerMode | None = None  # chosen at the first connection of a serving node
        self.shadow_filter: str | None = None  # the shared-subscription mode's filter
        self.boot: str | None = None  # the plugin's boot id at the last welcome
        self._plugin_absent = False  # a worker's first connection had no welcome: it does not ask again
        self._login = login
        self._shadow_handler = shadow_handler
        self._topics = NodeTopics(self.client_id)
        self._boots = boots
        self._directory = directory
        self._events = events
        self._plugin_node = PluginNode(self._submit_plugin_shadow, directory, events)  # a new one at each start
        self._link: _Link | None = None
        self._link_up = asyncio.Event()
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None
        self._queues: list[asyncio.Queue[_ShadowWork]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._probe: tuple[str, asyncio.Future[None]] | None = None

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.alive

    @property
    def registration(self) -> Registration | None:
        """The current registration with the Mosquitto plugin (plugin mode, connected)."""
        link = self._link
        return link.registration if link is not None and link.alive else None

    @property
    def presence_recorded(self) -> bool:
        """The broker has the fleetops plugin (it welcomed the last connection, also while a new one is being
        made): its serving nodes record the devices' presence in the database (docs/extensions.md#late-delivery)."""
        link = self._link
        return link is not None and link.plugin

    # --- what the metrics and /readyz read (ports/telemetry.py) ----------------------------------------------

    def mqtt_stats(self) -> MqttStats:
        """:class:`~fleetops.ports.telemetry.MqttStatsSource`: what fleetops published; the devices'
        connections are the broker's to report (its own metrics)."""
        return MqttStats(None, None, self.publisher.published, None, None)

    @property
    def name(self) -> str:
        return "broker"

    async def problem(self) -> str | None:
        """:class:`~fleetops.ports.telemetry.HealthCheck`: the connection to the broker is up."""
        if self.connected:
            return None
        # not the broker's address: /readyz answers anyone who can reach the API port (the log names it)
        return "not connected to the external MQTT broker (reconnecting)"

    async def start(self) -> None:
        if self._supervisor is not None:
            return
        self._stopping = False
        self._plugin_node = PluginNode(self._submit_plugin_shadow, self._directory, self._events)
        self._queues = [asyncio.Queue(self.options.shadow_queue_size) for _ in range(self.options.shadow_workers)]
        self._workers = [asyncio.create_task(self._shadow_worker(queue)) for queue in self._queues]
        try:
            await self._connect()
        except _Refused as exc:
            await self.stop()
            raise ConfigurationError(
                f"the MQTT broker at {self.address.host}:{self.address.port} refused fleetops: {exc}"
            ) from exc
        except (OSError, TimeoutError) as exc:
            log.warning(
                "MQTT broker %s:%d unreachable (%s); connecting in the background",
                self.address.host,
                self.address.port,
                exc or type(exc).__name__,
            )
        self._supervisor = asyncio.create_task(self._supervise())

    async def stop(self) -> None:
        self._stopping = True
        self._link_up.set()  # wakes publishers waiting for a connection: they raise BrokerUnavailable
        tasks = [task for task in (self._supervisor, *self._workers) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._supervisor, self._workers, self._queues = None, [], []
        link, self._link = self._link, None
        if link is not None:
            if link.registration is not None:
                link.registration.flush()  # what is done is acknowledged, the rest goes to another node
            await link.close()
        await self._plugin_node.stop()

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        """Not possible over MQTT: kick it with the broker's API (EMQX: DELETE /api/v5/clients/{id}); with the
        Mosquitto plugin, disabling or deleting the device closes its connection."""
        return False

    async def wait_link(self) -> _Link:
        """The live connection, waiting up to ``broker_wait_s`` for one."""
        link = self._link
        if link is not None and link.alive and not self._stopping:
            return link
        try:
            await asyncio.wait_for(self._link_up.wait(), self.options.broker_wait_s)
        except TimeoutError:
            raise BrokerUnavailable(
                f"the MQTT broker at {self.address.host}:{self.address.port} has been unreachable for "
                f"{self.options.broker_wait_s:g} s"
            ) from None
        link = self._link
        if self._stopping or link is None or not link.alive:
            raise BrokerUnavailable("the MQTT connection is shutting down")
        return link

    # --- connection --------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        link = _Link(self.client_id, self.address, self.options, self._message, self._lost, self._login)
        await link.open()
        try:
            if self.options.serve_shadow_requests:
                await self._take_device_messages(link)
            else:
                await self._find_plugin(link)
        except BaseException:
            await link.close()
            raise
        self._link = link
        self._link_up.set()
        log.info(
            "connected to the MQTT broker at %s:%d as %s%s",
            self.address.host,
            self.address.port,
            self.client_id,
            " (registered with the fleetops plugin)" if link.registration is not None else "",
        )

    async def _take_device_messages(self, link: _Link) -> None:
        """Register with the plugin, or subscribe to the shadow requests (the first connection decides which)."""
        if self.mode is not BrokerMode.SHARED_SUBSCRIPTION:
            wait_s = self.options.hello_timeout_s if self.mode is None else self.options.connect_timeout_s
            welcome = await self._hello(link, wait_s)
            if welcome is not None:
                self.mode = BrokerMode.PLUGIN
                await self._register(link, welcome)
                link.plugin = True
                return
            if self.mode is BrokerMode.PLUGIN:
                raise ConnectionError("the broker did not answer the fleetops plugin's hello (restarted without it?)")
            self.mode = BrokerMode.SHARED_SUBSCRIPTION
        if self.shadow_filter is None:
            self.shadow_filter = await self._choose_shadow_filter(link)
        if await link.subscribe(self.shadow_filter, 1) >= SUBACK_FAILURE:
            raise _Refused(f"the subscription to {self.shadow_filter} was refused")

    async def _find_plugin(self, link: _Link) -> None:
        """A worker only publishes, but its tasks' outcomes need to know whether the broker records presence:
        it says hello too (the plugin only answers with the welcome; nothing is registered) and records a new
        broker run as a serving node does, so that no device of the last run looks online. Without a welcome at
        the first connection (EMQX, a plain broker) it never asks again; a later connection without one, or
        whose run cannot be recorded, publishes as on a broker without the plugin until the next."""
        if self._plugin_absent or node_id_problem(self.client_id) is not None:
            return
        wait_s = self.options.hello_timeout_s if self.mode is None else self.options.connect_timeout_s
        welcome = await self._hello(link, wait_s)
        if welcome is None:
            self._plugin_absent = self.mode is None
            if self.mode is BrokerMode.PLUGIN:
                log.warning("the broker did not answer the fleetops plugin's hello: outcomes say Published")
            return
        self.mode = BrokerMode.PLUGIN
        if welcome.protocol != PROTOCOL_VERSION:
            log.error(
                "the broker's fleetops plugin speaks node protocol %d, this fleetops speaks %d: outcomes say "
                "Published (run the same fleetops version on the broker)",
                welcome.protocol,
                PROTOCOL_VERSION,
            )
            return
        if welcome.boot != self.boot:
            try:
                await self._record_boot(welcome.boot)
            except ConnectionError as exc:
                log.error("%s: outcomes say Published until the next connection", exc)
                return
        link.plugin = True

    async def _hello(self, link: _Link, wait_s: float) -> Welcome | None:
        """Publish the hello and wait for the plugin's welcome (sent to this client whether it subscribes or not)."""
        link.welcome = asyncio.get_running_loop().create_future()
        try:
            link.write(encode_publish(self._topics.hello.encode("utf-8"), b""))
            return await asyncio.wait_for(asyncio.shield(link.welcome), wait_s)
        except TimeoutError:
            return None
        finally:
            link.welcome = None

    async def _register(self, link: _Link, welcome: Welcome) -> None:
        if welcome.protocol != PROTOCOL_VERSION:
            raise _Refused(
                f"the broker's fleetops plugin speaks node protocol {welcome.protocol}, this fleetops speaks "
                f"{PROTOCOL_VERSION}: run the same fleetops version on the broker (fleetops mosquitto build)"
            )
        if welcome.window > self.options.shadow_queue_size:
            log.warning(
                "the plugin's window (%d) is larger than the shadow queue (%d): requests may be dropped",
                welcome.window,
                self.options.shadow_queue_size,
            )
        if welcome.boot != self.boot:
            await self._record_boot(welcome.boot)
        link.registration = Registration(self._topics, link.write)
        # the plugin may send the first messages before the SUBACK: the registration exists before the SUBSCRIBE
        if await link.subscribe(self._topics.registration, 1) >= SUBACK_FAILURE:
            raise _Refused(
                f"the fleetops plugin refused to register {self.client_id} (more than 64 nodes? see the broker log)"
            )

    async def _record_boot(self, boot: str) -> None:
        """A broker run this node has not seen: the first node to see it marks every device offline."""
        if self._boots is not None:
            try:
                marked = await self._boots.begin_boot(self._service_name, boot, int(time.time()))
            except Exception as exc:  # registering without it could undo another node's presence writes later
                raise ConnectionError(f"cannot record the broker's run in the database: {exc}") from exc
            if marked is not None:
                log.info("the broker runs as %s (new): %d devices marked offline until they connect", boot, marked)
        self.boot = boot

    @property
    def _service_name(self) -> str:
        """The broker identity the boot is recorded under: the user fleetops logs in as."""
        if self.address.username is not None:
            return self.address.username
        return self._login.username if self._login is not None else ""

    def _lost(self, link: _Link) -> None:
        if self._link is link:
            self._link_up.clear()
            if not self._stopping:
                log.warning("lost the connection to the MQTT broker at %s:%d", self.address.host, self.address.port)

    async def _supervise(self) -> None:
        delay = self.options.reconnect_delay_s
        while not self._stopping:
            link = self._link
            if link is not None and link.alive:
                await link.lost.wait()
                delay = self.options.reconnect_delay_s
                continue
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except _Refused as exc:
                log.error("the MQTT broker refused fleetops: %s", exc)
            except (OSError, TimeoutError) as exc:
                log.info("MQTT broker still unreachable: %s", exc or type(exc).__name__)
            except Exception:  # keep supervising whatever the connection raises
                log.exception("connecting to the MQTT broker failed")
            else:
                continue
            delay = min(delay * 2, self.options.max_reconnect_delay_s)

    async def _choose_shadow_filter(self, link: _Link) -> str:
        """The shared subscription if the broker delivers ``$`` topics to one, else the plain filter."""
        group = self.options.share_group
        if not group:
            return SHADOW_FILTER
        nonce = secrets.token_hex(8)
        # The product id "_probe_" is not a valid one, so the other nodes ignore the probe.
        probe_topic = f"$shadow/operation/_probe_/{nonce}"
        probe_filter = f"$share/{group}-probe-{nonce}/$shadow/operation/+/{nonce}"
        arrived: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probe = (probe_topic, arrived)
        try:
            works = False
            if await link.subscribe(probe_filter, 0) < SUBACK_FAILURE:
                link.write(encode_publish(probe_topic.encode("utf-8"), b"probe"))
                try:
                    await asyncio.wait_for(asyncio.shield(arrived), self.options.probe_timeout_s)
                    works = True
                except TimeoutError:
                    pass
            await link.unsubscribe(probe_filter)
        finally:
            self._probe = None
        if works:
            return f"$share/{group}/{SHADOW_FILTER}"
        log.warning(
            "the MQTT broker does not deliver $ topics to shared subscriptions (Mosquitto 2.0.11 does not): "
            "subscribed to %s without a share group, so only ONE fleetops node may use this broker",
            SHADOW_FILTER,
        )
        return SHADOW_FILTER

    # --- device messages ---------------------------------------------------------------------------------

    def _message(self, link: _Link, topic: str, payload: bytes) -> None:
        if topic.startswith(self._topics.prefix):
            self._plugin_message(link, topic, payload)
            return
        probe = self._probe
        if probe is not None and topic == probe[0]:
            if not probe[1].done():
                probe[1].set_result(None)
            return
        device = parse_shadow_request_topic(topic)
        if device is not None and self.mode is BrokerMode.SHARED_SUBSCRIPTION:
            self._queue_shadow(_ShadowWork(device, payload, link.write, None))

    def _plugin_message(self, link: _Link, topic: str, payload: bytes) -> None:
        if topic == self._topics.welcome:
            welcome = Welcome.parse(payload)
            if welcome is None:
                log.warning("ignored a malformed welcome from the broker: %r", payload[:200])
            elif link.welcome is not None and not link.welcome.done():
                link.welcome.set_result(welcome)
            return
        registration = link.registration
        if registration is None:
            return  # not registered on this connection
        message = parse_dispatched(self._topics.prefix, topic, payload)
        if message is None:
            log.warning("ignored a message on %s: not a device message of the node protocol", topic[:200])
            return
        self._plugin_node.handle(message, registration)

    def _submit_plugin_shadow(
        self, device: DeviceId, payload: bytes, write: Callable[[bytes], bool], done: Callable[[], None]
    ) -> None:
        self._queue_shadow(_ShadowWork(device, payload, write, done))

    def _queue_shadow(self, work: _ShadowWork) -> None:
        if not self._queues:
            return
        queue = self._queues[hash(work.device.client_id) % len(self._queues)]
        try:
            queue.put_nowait(work)
        except asyncio.QueueFull:
            log.warning("shadow request queue full: dropped a request of %s", work.device.client_id)
            if work.done is not None:
                work.done()  # the device times out and retries; holding its seq would stall every acknowledgement

    async def _shadow_worker(self, queue: asyncio.Queue[_ShadowWork]) -> None:
        while True:
            work = await queue.get()
            device = work.device
            try:
                reply = await self._shadow_handler.handle_shadow_request(
                    device.product_id, device.device_name, work.payload
                )
            except Exception:
                log.exception("shadow request of %s failed", device.client_id)
                reply = None
            if reply is not None:
                # on the connection the request came on: if that one is gone, so is (with the plugin) the
                # registration, and the request is done again by the node that has it now
                topic = shadow_result_topic(device.product_id, device.device_name)
                if not work.write(encode_publish(topic.encode("utf-8"), reply)):
                    log.info("no MQTT connection: dropped the shadow reply to %s", device.client_id)
            if work.done is not None:
                work.done()  # not reached when stopping cancels the request: it stays unacknowledged


@dataclass(frozen=True, slots=True)
class _ShadowWork:
    """A device shadow request for a worker: the connection it came on, and (plugin) what to call once done."""

    device: DeviceId
    payload: bytes
    write: Callable[[bytes], bool]  # the connection it came on
    done: Callable[[], None] | None


def default_client_id(node_id: str = "") -> str:
    """``fleetops-<node id>-<random>``, or ``fleetops-<host>-<pid>-<random>`` without a node id: unique per
    process (a second connection with the same client id would take the first one over), and one topic level of
    at most 128 bytes (the node protocol's ``<id>``)."""
    name = node_id or f"{socket.gethostname()}-{os.getpid()}"
    safe = "".join(char if char.isalnum() or char in "-_." else "-" for char in name)[:64]
    return f"fleetops-{safe}-{secrets.token_hex(3)}"

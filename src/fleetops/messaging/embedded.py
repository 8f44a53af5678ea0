"""The embedded broker service: ``fleetops serve`` without ``--mqtt-url``.

An MQTT 3.1.1 broker (amqtt, see ``amqtt_broker``) on 127.0.0.1:1883 by default, with device authentication
and the ACL of the IoT Hub device protocol. fleetops publishes in-process, without a loopback client::

    service = EmbeddedBroker(directory, shadow_handler, host="127.0.0.1", port=1883)
    await service.start()          # ConfigurationError if the port is taken
    await service.publisher.publish_many([("ABCDE12345/lamp01/control", b"on")], qos=1)
    await service.disconnect_device("ABCDE12345", "lamp01")
    await service.stop()
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence

from amqtt.errors import BrokerError

from fleetops.errors import BrokerUnavailable, ConfigurationError
from fleetops.messaging.amqtt_broker import BrokerOptions, FleetopsBroker
from fleetops.messaging.topics import is_valid_topic_name
from fleetops.ports.messaging import DeviceDirectory, ShadowRequestHandler

log = logging.getLogger("fleetops.messaging.embedded")

_YIELD_EVERY = 1000  # messages between event-loop yields in publish_many


def check_qos(qos: int) -> None:
    if qos not in (0, 1):
        raise ValueError(f"QoS must be 0 or 1, got {qos!r}")


def check_topic(topic: str) -> None:
    if not is_valid_topic_name(topic):
        raise ValueError(f"not a valid topic name to publish to: {topic!r}")


class EmbeddedPublisher:
    """:class:`~fleetops.ports.messaging.Publisher` of the embedded broker: routes in-process."""

    def __init__(self, service: EmbeddedBroker) -> None:
        self._service = service

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many(((topic, payload),), qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> None:
        """Deliver to every connected subscriber (written to its socket) or persistent session (queued).

        Topics nobody subscribes to are skipped: with no subscriber MQTT routing drops a message, and
        persistent sessions count as subscribers. QoS 1: each PUBLISH is written before this returns; the
        device's PUBACK is awaited in the background (a failed delivery to a persistent session is queued
        for its next connection).
        """
        check_qos(qos)
        broker = self._service.running_broker()
        for index, (topic, payload) in enumerate(messages):
            check_topic(topic)
            await broker.route(topic, payload, qos)
            if index % _YIELD_EVERY == _YIELD_EVERY - 1:
                await asyncio.sleep(0)

    def subscribed(self, topic: str) -> bool | None:
        broker = self._service.broker
        return broker.subscribed(topic) if broker is not None else False

    def online(self, product_id: str, device_name: str) -> bool | None:
        broker = self._service.broker
        return broker.online(product_id + device_name) if broker is not None else False

    def offline_room(self, product_id: str, device_name: str, topic: str) -> int | None:
        """:class:`~fleetops.ports.messaging.OfflineQueues`: room for a QoS 1 message kept for the device."""
        broker = self._service.broker
        return broker.offline_room(product_id + device_name, topic) if broker is not None else None


class EmbeddedBroker:
    """:class:`~fleetops.ports.messaging.MessagingService` running the broker in this process."""

    def __init__(
        self,
        directory: DeviceDirectory,
        shadow_handler: ShadowRequestHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        clock: Callable[[], float] = time.time,
        options: BrokerOptions | None = None,
    ) -> None:
        """``port`` 0 picks a free port (read it from :attr:`port` after :meth:`start`)."""
        self.host = host
        self._port = port
        self._directory = directory
        self._shadow_handler = shadow_handler
        self._clock = clock
        self._options = options or BrokerOptions()
        self.broker: FleetopsBroker | None = None
        self.publisher = EmbeddedPublisher(self)

    @property
    def port(self) -> int:
        """The listening port (the bound one once started)."""
        return self.broker.bound_port if self.broker is not None else self._port

    def running_broker(self) -> FleetopsBroker:
        if self.broker is None:
            raise BrokerUnavailable("the embedded MQTT broker is not running")
        return self.broker

    async def start(self) -> None:
        if self.broker is not None:
            return
        _check_port_free(self.host, self._port)
        _quiet_third_party_loggers()
        bind_host = f"[{self.host}]" if ":" in self.host else self.host
        broker = FleetopsBroker(
            host=bind_host,
            port=self._port,
            directory=self._directory,
            shadow_handler=self._shadow_handler,
            clock=self._clock,
            options=self._options,
        )
        try:
            await broker.start()
        except BrokerError as exc:
            raise ConfigurationError(f"cannot start the MQTT broker on {self.host}:{self._port}: {exc}") from exc
        self.broker = broker
        log.info("MQTT broker listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        broker, self.broker = self.broker, None
        if broker is None:
            return
        await broker.close_all_connections()
        await broker.shutdown()

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        if self.broker is None:
            return False
        return await self.broker.disconnect_client(product_id + device_name)


def _quiet_third_party_loggers() -> None:
    """amqtt logs every connection at INFO and its state machines (transitions) every state change; at the
    level of ``fleetops serve`` that is several lines per device connect. Raised to WARNING unless the
    operator configured those loggers."""
    for name in ("amqtt", "transitions"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


def _check_port_free(host: str, port: int) -> None:
    """A readable error for a taken port, before amqtt logs a traceback for it."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigurationError(
                        f"cannot listen on {host}:{port}: the address is already in use (another broker?); "
                        "choose another port (--mqtt-port, FLEETOPS_MQTT_PORT) or use it (--mqtt-url)"
                    ) from exc
                raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc

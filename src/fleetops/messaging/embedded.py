"""The embedded broker service: ``fleetops serve`` without ``--mqtt-url``.

fleetops' own MQTT 3.1.1 device gateway (``mqtt.gateway``) on 127.0.0.1:1883 by default, optionally with a TLS
listener beside it, with device authentication and the ACL of the IoT Hub device protocol. fleetops publishes
in-process, without a loopback client::

    service = EmbeddedBroker(directory, shadow_handler, host="127.0.0.1", port=1883)
    await service.start()          # ConfigurationError if the port is taken
    statuses = await service.publisher.publish_many([("ABCDE12345/lamp01/control", b"on")], qos=1)
    await service.disconnect_device("ABCDE12345", "lamp01")
    await service.stop()
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetops.errors import BrokerUnavailable, ConfigurationError
from fleetops.listeners import server_tls_context
from fleetops.messaging.mqtt.gateway import BrokerOptions, Gateway
from fleetops.messaging.topics import is_valid_topic_name
from fleetops.ports.messaging import Delivery, DeviceDirectory, DeviceEvents, ShadowRequestHandler
from fleetops.ports.telemetry import MqttStats

__all__ = ["BrokerOptions", "EmbeddedBroker", "EmbeddedPublisher", "TlsListener"]

log = logging.getLogger("fleetops.messaging.embedded")


def check_qos(qos: int) -> None:
    if qos not in (0, 1):
        raise ValueError(f"QoS must be 0 or 1, got {qos!r}")


def check_topic(topic: str) -> None:
    if not is_valid_topic_name(topic):
        raise ValueError(f"not a valid topic name to publish to: {topic!r}")


@dataclass(frozen=True)
class TlsListener:
    """A second listener with TLS (devices' convention: port 8883); server authentication only."""

    port: int
    cert_file: Path  # PEM, the server certificate (and its chain)
    key_file: Path  # PEM, its private key

    def context(self) -> ssl.SSLContext:
        return server_tls_context(
            self.cert_file,
            self.key_file,
            what="MQTT TLS",
            settings_hint="FLEETOPS_MQTT_TLS_CERT_FILE and FLEETOPS_MQTT_TLS_KEY_FILE",
        )


class EmbeddedPublisher:
    """:class:`~fleetops.ports.messaging.Publisher` of the embedded gateway: routes in-process."""

    def __init__(self, service: EmbeddedBroker) -> None:
        self._service = service

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many(((topic, payload),), qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        """Deliver to every connected subscriber (written to its socket) or persistent session (queued).

        Topics nobody subscribes to are skipped (``DROPPED``): with no subscriber MQTT routing drops a message,
        and persistent sessions count as subscribers. QoS 1: each PUBLISH is written before this returns; the
        device's PUBACK is awaited in the background (a failed delivery to a persistent session is queued for
        its next connection). At most ``max_qos1_in_flight`` deliveries await a PUBACK: beyond, this waits.
        """
        check_qos(qos)
        return await self._service.running_gateway().publish_many(messages, qos, check_topic=check_topic)

    async def publish_many_acked(
        self, messages: Sequence[tuple[str, bytes]], on_puback: Callable[[int], None]
    ) -> list[Delivery]:
        """:class:`~fleetops.ports.messaging.DeviceAcks`: QoS 1, ``on_puback(index)`` per device PUBACK."""
        return await self._service.running_gateway().publish_many(
            messages, 1, on_puback=on_puback, check_topic=check_topic
        )

    def subscribed(self, topic: str) -> bool | None:
        gateway = self._service.broker
        return gateway.subscribed(topic) if gateway is not None else False

    def online(self, product_id: str, device_name: str) -> bool | None:
        gateway = self._service.broker
        return gateway.online(product_id + device_name) if gateway is not None else False

    def offline_room(self, product_id: str, device_name: str, topic: str) -> int | None:
        """:class:`~fleetops.ports.messaging.OfflineQueues`: room for a QoS 1 message kept for the device."""
        gateway = self._service.broker
        return gateway.offline_room(product_id + device_name, topic) if gateway is not None else None


class EmbeddedBroker:
    """:class:`~fleetops.ports.messaging.MessagingService` running the gateway in this process."""

    def __init__(
        self,
        directory: DeviceDirectory,
        shadow_handler: ShadowRequestHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        tls: TlsListener | None = None,
        clock: Callable[[], float] = time.time,
        options: BrokerOptions | None = None,
        events: DeviceEvents | None = None,
    ) -> None:
        """``port`` 0 picks a free port (read it from :attr:`port` after :meth:`start`); ``tls`` adds a TLS
        listener; ``events`` is told of connects, subscriptions and disconnects."""
        self.host = host
        self._port = port
        self._tls = tls
        self._directory = directory
        self._shadow_handler = shadow_handler
        self._clock = clock
        self._options = options or BrokerOptions()
        self._events = events
        self.broker: Gateway | None = None
        self.publisher = EmbeddedPublisher(self)

    @property
    def port(self) -> int:
        """The plain listening port (the bound one once started)."""
        return self.broker.listeners[0].port if self.broker is not None else self._port

    @property
    def tls_port(self) -> int | None:
        """The TLS listening port (the bound one once started), or None without TLS."""
        if self._tls is None:
            return None
        if self.broker is not None and len(self.broker.listeners) > 1:
            return self.broker.listeners[1].port
        return self._tls.port

    def running_gateway(self) -> Gateway:
        if self.broker is None:
            raise BrokerUnavailable("the embedded MQTT broker is not running")
        return self.broker

    async def start(self) -> None:
        if self.broker is not None:
            return
        options = self._options
        context = self._tls.context() if self._tls is not None else None  # before binding anything
        gateway = Gateway(
            self._directory, self._shadow_handler, clock=self._clock, options=options, events=self._events
        )
        sockets = _bind(self.host, self._port, options.listen_backlog)
        gateway.add_listener("plain", sockets)
        if self._tls is not None:
            try:
                tls_sockets = _bind(self.host, self._tls.port, options.listen_backlog)
            except ConfigurationError:
                for sock in sockets:
                    sock.close()
                raise
            gateway.add_listener("TLS", tls_sockets, context)
        await gateway.start()
        self.broker = gateway
        log.info(
            "MQTT gateway listening on %s:%d%s",
            self.host,
            self.port,
            f" and TLS {self.tls_port}" if self._tls is not None else "",
        )

    async def stop(self) -> None:
        gateway, self.broker = self.broker, None
        if gateway is not None:
            await gateway.stop()

    async def disconnect_device(self, product_id: str, device_name: str) -> bool:
        if self.broker is None:
            return False
        return await self.broker.disconnect_client(product_id + device_name)

    # --- what the metrics and /readyz read (ports/telemetry.py) ----------------------------------------------

    def mqtt_stats(self) -> MqttStats:
        """:class:`~fleetops.ports.telemetry.MqttStatsSource`: the gateway's connections and counters."""
        gateway = self.broker
        if gateway is None:
            return MqttStats(0, 0, 0, 0, 0)
        counters = gateway.counters
        return MqttStats(
            connections=len(gateway.connections),
            devices_online=gateway.devices_online(),
            messages_published=counters.delivered,
            messages_refused=counters.refused_publishes,
            connects_refused=counters.refused_connects,
        )

    @property
    def name(self) -> str:
        return "broker"

    async def problem(self) -> str | None:
        """:class:`~fleetops.ports.telemetry.HealthCheck`: the gateway is serving."""
        if self.broker is None:
            return "the embedded MQTT gateway is not running"
        return None


def _bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (one if ``port`` is 0), with readable errors."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _name, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigurationError(
                        f"cannot listen on {host}:{port}: the address is already in use (another broker?); "
                        "choose another port (--mqtt-port, FLEETOPS_MQTT_PORT) or use it (--mqtt-url)"
                    ) from exc
                raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            sock.listen(backlog)
            sock.setblocking(False)
            if port == 0:
                break  # one ephemeral port; several addresses would each get another
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets

"""The app factory: the one place (with cli.py) that builds concrete adapters and wires them together."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from fleetops.api.actions import all_actions
from fleetops.api.app import ApiConfig, ApiEndpoint, create_app
from fleetops.api.ratelimit import RateLimiter
from fleetops.api.registry import Registry
from fleetops.backend.container import Backend
from fleetops.backend.devices import DeviceService
from fleetops.backend.messages import MessageService
from fleetops.backend.products import ProductService
from fleetops.backend.shadows import ShadowService
from fleetops.backend.tasks import TaskService
from fleetops.engine.worker import TaskWorker
from fleetops.errors import ConfigurationError
from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker, TlsListener
from fleetops.messaging.external import BrokerAddress, ExternalBroker, ExternalOptions
from fleetops.messaging.http_auth import mqtt_auth_router
from fleetops.ports.messaging import MessagingService
from fleetops.settings import Settings
from fleetops.store.accounts import AccountStore
from fleetops.store.database import Database, open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.tasks import TaskStore

log = logging.getLogger("fleetops")


def _tls_listener(settings: Settings) -> TlsListener | None:
    """The embedded broker's TLS listener, if ``mqtt_tls_port`` asks for one."""
    if not settings.mqtt_tls_port:
        return None
    if not settings.mqtt_tls_cert_file or not settings.mqtt_tls_key_file:
        raise ConfigurationError(
            "the MQTT TLS listener (--mqtt-tls-port, FLEETOPS_MQTT_TLS_PORT) needs a certificate and its key: "
            "set FLEETOPS_MQTT_TLS_CERT_FILE and FLEETOPS_MQTT_TLS_KEY_FILE"
        )
    return TlsListener(settings.mqtt_tls_port, Path(settings.mqtt_tls_cert_file), Path(settings.mqtt_tls_key_file))


@dataclass
class Node:
    """One fleetops process: database, backend, API and (when started) messaging and the task engine."""

    settings: Settings
    db: Database
    accounts: AccountStore
    backend: Backend
    clock: Callable[[], float] = time.time
    # the task engine and the MQTT side; both are services started and stopped with the node (messaging first,
    # so a task resumed at start finds the publisher)
    engine: TaskWorker | None = None
    messaging: MessagingService | None = None
    devices: DeviceStore | None = None
    _services: list[Any] = field(default_factory=list)

    @classmethod
    async def open(
        cls, settings: Settings, clock: Callable[[], float] = time.time, *, serve_shadow_requests: bool = True
    ) -> Node:
        """``serve_shadow_requests=False``: a worker node, which runs tasks but leaves device shadow requests on
        the external broker to the ``serve`` nodes."""
        db = open_database(settings.effective_database_url)
        await upgrade(db)
        device_store = DeviceStore(db)
        engine = TaskWorker.create(db, settings, clock)
        device_service = DeviceService(device_store, clock, max_devices_per_product=settings.max_devices_per_product)
        backend = Backend(
            products=ProductService(ProductStore(db), clock),
            devices=device_service,
            # the publisher (delta pushes) is attached once the MQTT side exists: ShadowService.attach_publisher
            shadows=ShadowService(
                ShadowStore(db), device_store, clock, delta_publish_timeout_s=settings.delta_publish_timeout_s
            ),
            tasks=TaskService(
                TaskStore(db),
                ProductStore(db),
                clock,
                max_open_tasks=settings.max_pending_tasks,
                retention_s=settings.task_retention_s,
                on_created=engine.wake,
            ),
            messages=MessageService(device_service, publish_timeout_s=settings.delta_publish_timeout_s),
        )
        messaging: MessagingService
        if settings.mqtt_url:
            messaging = ExternalBroker(
                settings.mqtt_url,
                backend.shadows,
                client_id=settings.mqtt_client_id or None,
                options=ExternalOptions(
                    broker_wait_s=settings.broker_wait_s, serve_shadow_requests=serve_shadow_requests
                ),
            )
        else:
            messaging = EmbeddedBroker(
                device_store,
                backend.shadows,
                host=settings.mqtt_host,
                port=settings.mqtt_port,
                tls=_tls_listener(settings),
                options=BrokerOptions(
                    max_connections=settings.mqtt_max_connections, connect_timeout_s=settings.mqtt_connect_timeout_s
                ),
            )
        backend.shadows.attach_publisher(messaging.publisher)
        backend.messages.attach_publisher(messaging.publisher)
        backend.devices.attach_sessions(messaging)
        engine.attach_publisher(messaging.publisher)
        accounts = AccountStore(db)
        node = cls(
            settings=settings,
            db=db,
            accounts=accounts,
            backend=backend,
            clock=clock,
            engine=engine,
            messaging=messaging,
            devices=device_store,
        )
        node._services.extend([messaging, engine])
        return node

    def _mqtt_auth_routes(self) -> list[BaseRoute]:
        """EMQX 5 HTTP authentication / authorization endpoints, served when an external broker is used."""
        if not self.settings.mqtt_url or self.devices is None:
            return []
        address = BrokerAddress.parse(self.settings.mqtt_url)
        if not address.password:
            log.warning("the external broker URL has no password: the /mqtt/auth endpoints are off (see docs/mqtt.md)")
            return []
        router = mqtt_auth_router(
            self.devices,
            internal_username=address.username or "",
            internal_password=address.password,
            clock=self.clock,
        )
        return [Mount("/mqtt", app=router)]

    def app(self, *, manage_services: bool = True) -> Starlette:
        """The ASGI app; with ``manage_services`` its lifespan starts and stops messaging and the engine."""
        endpoint = ApiEndpoint(
            registry=Registry(all_actions()),
            accounts=self.accounts,
            backend=self.backend,
            limiter=RateLimiter(self.settings.rate_limit_per_s, self.clock),
            config=ApiConfig(max_body_bytes=self.settings.max_body_bytes, clock_skew_s=self.settings.clock_skew_s),
            clock=self.clock,
        )
        lifespan = self._lifespan if manage_services else None
        return create_app(endpoint, extra_routes=self._mqtt_auth_routes(), lifespan=lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        for service in self._services:
            await service.start()

    async def stop(self) -> None:
        for service in reversed(self._services):
            await service.stop()

    async def close(self) -> None:
        await self.db.dispose()

"""The composition root: the one place that builds fleetops' adapters from Settings and wires them together.

Reading this module top to bottom shows what a node is made of. For a CreateTask call::

    HTTP POST /  ->  api.app.ApiEndpoint  (signature, decoding into api.actions.tasks.CreateTaskRequest)
                 ->  api.actions.tasks.create_task  ->  backend.tasks.TaskService.create  (domain.tasks rules)
                 ->  store.tasks.TaskStore.insert_within_limit                            (the waiting task)
    engine.worker.TaskWorker (woken)  ->  engine.scheduler.Scheduler.claim  ->  engine.executor.TaskExecutor
                 ->  store.batches.DeviceBatches.merge_desired                (one transaction per batch)
                 ->  messaging.device_messages.DeviceMessenger.push_deltas    (the device protocol's delta)
                 ->  the broker's Publisher (embedded gateway, or the client of an external broker)

Every adapter is built once, here, with values taken from Settings; nothing below this module reads Settings,
and nothing is attached after construction. The only cycle (the broker hands device shadow requests to the
backend, the backend publishes through the broker) does not exist: a device's own shadow requests need no
publisher (``backend.device_shadows``), so the broker is built first and the cloud-side use cases after it.

API workers (``fleetops serve --workers N``, ``fleetops.workers``): each worker process opens a node of
``Role.API``, its stores and use cases with ``messaging.absent.NoBroker`` in the broker's place and no engine; it
serves ``Node.worker_app`` (``api.forwarding.WorkerFront``), and the primary serves ``Node.forwarded_app`` to its
workers on a Unix socket.

Telemetry: one ``api.metrics.NodeMetrics`` per node, built first and handed to the database handle (its
errors), the engine (batches, task ends) and the use cases (shadow writes, broker errors) as the
``ports.telemetry.Telemetry`` port; ``api.metrics.StateMetrics`` reads the task table and the MQTT side when
Prometheus scrapes; ``/readyz`` asks the database and the MQTT side (``ports.telemetry.HealthCheck``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import partial
from pathlib import Path
from typing import Protocol

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount

from fleetops.api.actions import all_actions
from fleetops.api.app import ApiApp, ApiConfig, ApiEndpoint, Readiness, create_app
from fleetops.api.forwarding import RELAY_PATH, UP_PATH, ForwardedFront, Forwarder, WorkerFront, worker_up
from fleetops.api.metrics import MetricsEndpoint, NodeMetrics, RequestObserver, StateMetrics
from fleetops.api.primary_rate import RATE_PATH, RateWindowsInMemory, RateWindowsOfPrimary
from fleetops.api.ratelimit import LocalRateLimiter, RateLimiter, SharedRateLimiter
from fleetops.api.registry import Registry
from fleetops.api.relayed_metrics import MetricsRelay, WorkerRequests, apply_relayed
from fleetops.backend.container import Backend
from fleetops.backend.device_shadows import DeviceShadowService
from fleetops.backend.devices import DeviceService
from fleetops.backend.keys import KeyService
from fleetops.backend.messages import MessageService
from fleetops.backend.products import ProductNames, ProductService
from fleetops.backend.shadows import ShadowService
from fleetops.backend.signatures import SignatureGuard
from fleetops.backend.tasks import TaskService
from fleetops.console import console_routes
from fleetops.engine.deliveries import DeviceEventInbox, TaskDeliveries
from fleetops.engine.executor import ExecutorConfig, TaskExecutor
from fleetops.engine.scheduler import Scheduler
from fleetops.engine.worker import TaskWorker, default_node_id
from fleetops.errors import ConfigurationError
from fleetops.messaging.absent import NoBroker
from fleetops.messaging.device_messages import DeviceMessenger
from fleetops.messaging.embedded import BrokerOptions, EmbeddedBroker, TlsListener
from fleetops.messaging.external import BrokerAddress, BrokerLogin, ExternalBroker, ExternalOptions, default_client_id
from fleetops.messaging.http_auth import mqtt_auth_router
from fleetops.messaging.shadow_protocol import DeviceShadowProtocol
from fleetops.ports.messaging import (
    DeviceEvents,
    DeviceMessages,
    DeviceSessions,
    MessagingService,
    ShadowRequestHandler,
)
from fleetops.ports.store import RateWindows
from fleetops.ports.telemetry import NO_TELEMETRY, HealthCheck, MqttStatsSource, Telemetry
from fleetops.settings import Settings
from fleetops.store.accounts import AccountStore
from fleetops.store.batches import DeviceBatches
from fleetops.store.broker_boots import BrokerBootStore
from fleetops.store.broker_credentials import BrokerCredentialStore
from fleetops.store.database import Database, DatabaseHealth, open_database, open_migrated_database
from fleetops.store.devices import DeviceStore
from fleetops.store.outcomes import TaskOutcomeStore
from fleetops.store.products import ProductStore
from fleetops.store.rate_windows import RateWindowStore
from fleetops.store.shadows import ShadowStore
from fleetops.store.signatures import SqlSignatureLedger
from fleetops.store.tasks import TaskStore

log = logging.getLogger("fleetops")


MessagingFactory = Callable[[ShadowRequestHandler], MessagingService]


class ApiWorkerPool(Protocol):
    """What the forwarding socket tells the primary's API workers (fleetops.workers.ApiWorkers)."""

    @property
    def serving(self) -> int: ...

    def up(self, index: int, pid: int) -> None: ...


class Role(StrEnum):
    SERVE = "serve"  # HTTP API, MQTT side (serving device shadow requests) and the task engine
    WORKER = "worker"  # the task engine only; publishes on the external broker, leaves shadow requests to serve
    # an API worker process of `serve --workers N`: the read actions on its own database handle, no engine and no
    # MQTT side (NoBroker in the broker's place); everything else goes to its primary (api.forwarding)
    API = "api"


@dataclass(frozen=True)
class Stores:
    """The database and every store on it (what the CLI commands that work without a server need)."""

    db: Database
    accounts: AccountStore
    products: ProductStore
    devices: DeviceStore
    shadows: ShadowStore
    tasks: TaskStore
    batches: DeviceBatches
    outcomes: TaskOutcomeStore
    broker_credentials: BrokerCredentialStore
    broker_boots: BrokerBootStore
    signatures: SqlSignatureLedger
    rate_windows: RateWindowStore

    async def close(self) -> None:
        await self.db.dispose()


async def open_stores(settings: Settings, telemetry: Telemetry = NO_TELEMETRY, *, migrate: bool = True) -> Stores:
    """Open the configured database, migrate it to the newest schema (unless not ``migrate``: an API worker, whose
    primary has), and build the stores on it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.effective_database_url
    db = await open_migrated_database(url, telemetry=telemetry) if migrate else open_database(url, telemetry=telemetry)
    return Stores(
        db=db,
        accounts=AccountStore(db),
        products=ProductStore(db),
        devices=DeviceStore(db),
        shadows=ShadowStore(db),
        tasks=TaskStore(db),
        batches=DeviceBatches(db),
        outcomes=TaskOutcomeStore(db),
        broker_credentials=BrokerCredentialStore(db),
        broker_boots=BrokerBootStore(db),
        signatures=SqlSignatureLedger(db),
        rate_windows=RateWindowStore(db),
    )


async def broker_login(settings: Settings, stores: Stores, clock: Callable[[], float]) -> BrokerLogin | None:
    """The service identity, when ``mqtt_url`` names no user and password: its password is read from the
    database, or created there by the first node to ask, so that every node (and the Mosquitto plugin, which
    reads the same row) agrees without a password being copied by hand (docs/mosquitto.md#the-service-identity).
    """
    if not settings.mqtt_url:
        return None
    address = BrokerAddress.parse(settings.mqtt_url)
    if address.username is not None or address.password is not None:
        return None
    user = settings.mqtt_service_user
    return BrokerLogin(user, await stores.broker_credentials.get_or_create(user, int(clock())))


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


def _messaging(
    settings: Settings,
    stores: Stores,
    shadow_handler: ShadowRequestHandler,
    role: Role,
    login: BrokerLogin | None,
    events: DeviceEvents | None,
) -> MessagingService:
    if settings.mqtt_url:
        options = ExternalOptions(broker_wait_s=settings.broker_wait_s, serve_shadow_requests=role is Role.SERVE)
        return ExternalBroker(
            settings.mqtt_url,
            shadow_handler,
            client_id=settings.mqtt_client_id or default_client_id(settings.node_id),
            options=options,
            login=login,
            directory=stores.devices,
            boots=stores.broker_boots,
            events=events,
        )
    return EmbeddedBroker(
        stores.devices,
        shadow_handler,
        host=settings.mqtt_host,
        port=settings.mqtt_port,
        tls=_tls_listener(settings),
        options=BrokerOptions(
            max_connections=settings.mqtt_max_connections, connect_timeout_s=settings.mqtt_connect_timeout_s
        ),
        events=events,
    )


def node_id(settings: Settings) -> str:
    return settings.node_id or default_node_id()


def build_engine(
    settings: Settings,
    tasks: TaskStore,
    batches: DeviceBatches,
    outcomes: TaskOutcomeStore,
    messages: DeviceMessages,
    clock: Callable[[], float],
    deliveries: TaskDeliveries | None = None,
    telemetry: Telemetry = NO_TELEMETRY,
) -> TaskWorker:
    """The task engine of a node: a scheduler and an executor on the shared task table (docs/tasks.md).

    ``deliveries`` sends the messages of tasks that keep outcomes (and makes late deliveries); without one
    (a test's engine) it is built here, without device events."""
    owner = node_id(settings)
    if deliveries is None:
        deliveries = TaskDeliveries(tasks, outcomes, messages, clock)
    return TaskWorker(
        Scheduler(tasks, clock, node_id=owner, lease_s=settings.task_lease_s, retention_s=settings.task_retention_s),
        TaskExecutor(
            tasks,
            batches,
            messages,
            ExecutorConfig(
                node_id=owner,
                batch_size=settings.task_batch_size,
                lease_s=settings.task_lease_s,
                broker_retry_s=settings.task_poll_interval_s,
            ),
            clock,
            outcomes,
            deliveries,
            telemetry,
        ),
        concurrency=settings.task_concurrency,
        poll_interval_s=settings.task_poll_interval_s,
    )


@dataclass(frozen=True)
class DeviceEventsToBoth:
    """The broker's device events told to the late deliveries and to an application's own listener."""

    first: DeviceEvents
    second: DeviceEvents

    def device_connected(self, product_id: str, device_name: str, session_present: bool) -> None:
        self.first.device_connected(product_id, device_name, session_present)
        self.second.device_connected(product_id, device_name, session_present)

    def device_subscribed(self, product_id: str, device_name: str, topic_filter: str, granted_qos: int) -> None:
        self.first.device_subscribed(product_id, device_name, topic_filter, granted_qos)
        self.second.device_subscribed(product_id, device_name, topic_filter, granted_qos)

    def device_disconnected(self, product_id: str, device_name: str) -> None:
        self.first.device_disconnected(product_id, device_name)
        self.second.device_disconnected(product_id, device_name)


@dataclass
class Node:
    """One fleetops process: the stores, the MQTT side, the task engine, the use cases and the API."""

    settings: Settings
    stores: Stores
    messaging: MessagingService
    engine: TaskWorker | None  # None in an API worker (Role.API)
    backend: Backend
    clock: Callable[[], float]
    shadow_handler: ShadowRequestHandler
    deliveries: TaskDeliveries | None  # None in an API worker
    metrics: NodeMetrics  # what happens (counted by the engine, the use cases, the database handle)
    state_metrics: StateMetrics  # what is (read at scrape time: tasks by status, the MQTT side)
    # an API worker's counts, sent to its primary's /metrics instead (api.relayed_metrics); None elsewhere
    relay: MetricsRelay | None = None
    # SQLite with API workers: the rate limit's counters, held by the primary for its workers (api.primary_rate)
    rate_windows: RateWindowsInMemory = field(default_factory=RateWindowsInMemory)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        clock: Callable[[], float] = time.time,
        *,
        role: Role = Role.SERVE,
        messaging_factory: MessagingFactory | None = None,
        device_events: DeviceEvents | None = None,
    ) -> Node:
        """``messaging_factory`` builds the MQTT side instead of the broker Settings name (a test double, or an
        application embedding fleetops); it receives the handler of device shadow requests. ``device_events`` is
        told of devices' connects, subscriptions and disconnects by the embedded gateway, or by the Mosquitto
        plugin through this node (the devices the plugin hands to it). ``role`` API builds an API worker's node:
        its stores and use cases, no MQTT side and no engine (docs/deployment.md#api-worker-processes)."""
        metrics = NodeMetrics()
        relay = MetricsRelay() if role is Role.API else None
        telemetry: Telemetry = metrics if relay is None else relay
        stores = await open_stores(settings, telemetry, migrate=role is not Role.API)
        shadow_handler = DeviceShadowProtocol(DeviceShadowService(stores.shadows, stores.devices, telemetry), clock)
        # the broker tells of devices' connects and subscriptions (late delivery); the inbox only queues them,
        # so it can be built before the broker and read by what is built after it
        inbox = DeviceEventInbox()
        messaging: MessagingService
        messages: DeviceMessages
        sessions: DeviceSessions
        engine: TaskWorker | None = None
        deliveries: TaskDeliveries | None = None
        if role is Role.API:
            messaging = messages = sessions = NoBroker("an API worker process")
        else:
            if messaging_factory is not None:
                messaging = messaging_factory(shadow_handler)
            else:
                try:
                    login = await broker_login(settings, stores, clock)
                    events = inbox if device_events is None else DeviceEventsToBoth(inbox, device_events)
                    messaging = _messaging(settings, stores, shadow_handler, role, login, events)
                except BaseException:
                    await stores.close()
                    raise
            messages, sessions = DeviceMessenger(messaging.publisher), messaging
            # on Mosquitto with the plugin, a message's outcome is told by the devices' recorded presence
            deliveries = TaskDeliveries(
                stores.tasks, stores.outcomes, messages, clock, inbox=inbox, presence=stores.devices
            )
            engine = build_engine(
                settings, stores.tasks, stores.batches, stores.outcomes, messages, clock, deliveries, metrics
            )
        state_metrics = StateMetrics(
            stores.tasks.count_by_status, messaging if isinstance(messaging, MqttStatsSource) else None
        )
        product_names = ProductNames(stores.products)
        devices = DeviceService(
            stores.devices,
            clock,
            sessions=sessions,
            product_names=product_names,
            max_devices_per_product=settings.max_devices_per_product,
        )
        backend = Backend(
            keys=KeyService(stores.accounts),
            products=ProductService(stores.products, clock, product_names),
            devices=devices,
            shadows=ShadowService(
                stores.shadows,
                messages,
                clock,
                product_names=product_names,
                delta_publish_timeout_s=settings.delta_publish_timeout_s,
                telemetry=telemetry,
            ),
            tasks=TaskService(
                stores.tasks,
                stores.products,
                clock,
                max_open_tasks=settings.max_pending_tasks,
                retention_s=settings.task_retention_s,
                batches=stores.batches,
                outcomes=stores.outcomes,
                on_created=None if engine is None else engine.wake,
            ),
            messages=MessageService(
                devices, messages, publish_timeout_s=settings.delta_publish_timeout_s, telemetry=telemetry
            ),
            signatures=SignatureGuard(stores.signatures, clock, bind_tc3=settings.signature_binding),
        )
        return cls(
            settings,
            stores,
            messaging,
            engine,
            backend,
            clock,
            shadow_handler,
            deliveries,
            metrics,
            state_metrics,
            relay,
        )

    # --- the HTTP side ------------------------------------------------------------------------------------

    def _mqtt_auth_routes(self) -> list[BaseRoute]:
        """EMQX 5 HTTP authentication / authorization endpoints, served when an external broker is used."""
        if not self.settings.mqtt_url:
            return []
        address = BrokerAddress.parse(self.settings.mqtt_url)
        if not address.password:
            # the Mosquitto plugin's deployments (no credentials in the URL) do not use them: no warning
            log.info("the MQTT URL has no password: the EMQX endpoints /mqtt/auth and /mqtt/acl are off (docs/mqtt.md)")
            return []
        if not self.settings.mqtt_hooks_secret:
            log.warning(
                "the EMQX hooks /mqtt/auth and /mqtt/acl are off: set FLEETOPS_MQTT_HOOKS_SECRET and send it from "
                "EMQX as an Authorization: Bearer header (docs/mqtt.md#emqx-5)"
            )
            return []
        router = mqtt_auth_router(
            self.stores.devices,
            internal_username=address.username or "",
            internal_password=address.password,
            shared_secret=self.settings.mqtt_hooks_secret,
            clock=self.clock,
        )
        return [Mount("/mqtt", app=router)]

    def _api_config(self) -> ApiConfig:
        return ApiConfig(max_body_bytes=self.settings.max_body_bytes, clock_skew_s=self.settings.clock_skew_s)

    def _endpoint(self, registry: Registry, observer: RequestObserver, limiter: RateLimiter) -> ApiEndpoint:
        return ApiEndpoint(
            registry=registry,
            backend=self.backend,
            limiter=limiter,
            config=self._api_config(),
            metrics=observer,
            clock=self.clock,
        )

    def app(self, *, manage_services: bool = True) -> ApiApp:
        """The ASGI app; with ``manage_services`` its lifespan starts and stops messaging and the engine."""
        endpoint = self._endpoint(Registry(all_actions()), self.metrics.api, self._rate_limiter(self.rate_windows))
        lifespan = self._lifespan if manage_services else None
        return create_app(
            endpoint,
            metrics=MetricsEndpoint(self.metrics, self.state_metrics).__call__,
            readiness=Readiness(self._health_checks()),
            extra_routes=[*self._mqtt_auth_routes(), *console_routes()],
            lifespan=lifespan,
        )

    def forwarded_app(self, app: ApiApp, workers: ApiWorkerPool) -> ForwardedFront:
        """``app`` as the primary serves it to its API ``workers`` on the forwarding socket (api.forwarding), with
        their metrics batches added to this node's, and ``fleetops_api_worker_requests_total`` and
        ``fleetops_api_workers``."""
        counted = WorkerRequests(self.metrics.registry, lambda: workers.serving)
        internal: dict[str, Callable[[bytes], bytes | None]] = {
            RELAY_PATH: partial(apply_relayed, self.metrics, counted),
            UP_PATH: worker_up(workers.up),
            RATE_PATH: self.rate_windows.answer,
        }
        return ForwardedFront(app, internal=internal, forwarded=counted.forwarded.inc)

    def worker_app(self, forwarder: Forwarder) -> WorkerFront:
        """An API worker's ASGI app (Role.API): the read actions answered here, the rest sent to ``forwarder``."""
        assert self.relay is not None, "an API worker's node is opened with Role.API"
        registry = Registry(all_actions())
        return WorkerFront(
            self._endpoint(registry, self.relay, self._rate_limiter(RateWindowsOfPrimary(forwarder))),
            forwarder,
            registry=registry,
            config=self._api_config(),
            observer=self.relay,
        )

    def _rate_limiter(self, node_windows: RateWindows) -> RateLimiter:
        """PostgreSQL: the limit holds for every node on the database. SQLite serves one node: counted here when
        it is one process; with API workers, in ``node_windows`` (the primary's counters, held by it or asked of
        it: api.primary_rate) (docs/limits.md#the-api-rate-limit)."""
        if not self.stores.db.is_sqlite:
            return SharedRateLimiter(self.settings.rate_limit_per_s, self.clock, self.stores.rate_windows)
        if self.settings.workers <= 1:
            return LocalRateLimiter(self.settings.rate_limit_per_s, self.clock)
        return SharedRateLimiter(self.settings.rate_limit_per_s, self.clock, node_windows)

    def _health_checks(self) -> list[HealthCheck]:
        """What ``/readyz`` asks: the database, and the broker when the MQTT side can tell."""
        checks: list[HealthCheck] = [DatabaseHealth(self.stores.db)]
        if isinstance(self.messaging, HealthCheck):
            checks.append(self.messaging)
        return checks

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    # --- lifecycle: messaging first, so a task resumed at start finds the broker ----------------------------

    async def start(self) -> None:
        """Nothing to start in an API worker: the primary runs the MQTT side, the engine and the ledger's pruning."""
        if self.engine is None or self.deliveries is None:
            return
        await self.messaging.start()
        await self.deliveries.start()
        await self.engine.start()
        await self.backend.signatures.start()

    async def stop(self) -> None:
        if self.engine is None or self.deliveries is None:
            return
        await self.backend.signatures.stop()
        await self.engine.stop()
        await self.deliveries.stop()
        await self.messaging.stop()

    async def close(self) -> None:
        await self.stores.close()

"""The app factory: the one place (with cli.py) that builds concrete adapters and wires them together."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette

from fleetops.api.actions import all_actions
from fleetops.api.app import ApiConfig, ApiEndpoint, create_app
from fleetops.api.ratelimit import RateLimiter
from fleetops.api.registry import Registry
from fleetops.backend.container import Backend
from fleetops.backend.products import ProductService
from fleetops.settings import Settings
from fleetops.store.accounts import AccountStore
from fleetops.store.database import Database, open_database
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore

log = logging.getLogger("fleetops")


@dataclass
class Node:
    """One fleetops process: database, backend, API and (when started) messaging and the task engine."""

    settings: Settings
    db: Database
    accounts: AccountStore
    backend: Backend
    clock: Callable[[], float] = time.time
    _services: list[Any] = field(default_factory=list)

    @classmethod
    async def open(cls, settings: Settings, clock: Callable[[], float] = time.time) -> Node:
        db = open_database(settings.effective_database_url)
        await upgrade(db)
        backend = Backend(products=ProductService(ProductStore(db), clock))
        return cls(settings=settings, db=db, accounts=AccountStore(db), backend=backend, clock=clock)

    def app(self) -> Starlette:
        endpoint = ApiEndpoint(
            registry=Registry(all_actions()),
            accounts=self.accounts,
            backend=self.backend,
            limiter=RateLimiter(self.settings.rate_limit_per_s, self.clock),
            config=ApiConfig(max_body_bytes=self.settings.max_body_bytes, clock_skew_s=self.settings.clock_skew_s),
            clock=self.clock,
        )
        return create_app(endpoint, lifespan=self._lifespan)

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

"""Coalescing store calls of the gateway: the credential lookups of CONNECTs and the presence writes.

One call runs at a time; what is asked meanwhile waits and goes into the next call, up to ``max_batch`` items.
A lone CONNECT is looked up at once (no added delay); 10,000 devices reconnecting together cost a few dozen
queries instead of 10,000 (docs/mqtt.md#connects-in-batches).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Generic, TypeVar

from fleetops.ports.messaging import DeviceCredentials, DeviceDirectory, PresenceChange

log = logging.getLogger("fleetops.messaging.batching")

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs ``run(items)`` for everything submitted, one call at a time, in submission order."""

    def __init__(self, run: Callable[[list[Item]], Awaitable[Sequence[Result]]], *, max_batch: int, name: str) -> None:
        """``run`` returns one result per item, in order; its exception becomes every item's."""
        self._run = run
        self._max_batch = max_batch
        self._name = name
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._runner: asyncio.Task[None] | None = None

    def submit(self, item: Item) -> asyncio.Future[Result]:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.get_running_loop().create_task(self._drain_queue(), name=self._name)
        return future

    async def wait_idle(self) -> None:
        """Until everything submitted so far has been run."""
        while self._runner is not None and not self._runner.done():
            await asyncio.shield(self._runner)

    async def _drain_queue(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max_batch], self._waiting[self._max_batch :]
            try:
                results = await self._run([item for item, _ in batch])
            except Exception as exc:  # every waiter learns it; the next batch still runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


class CredentialLookup:
    """``device_credentials`` over :meth:`DeviceDirectory.credentials_many`, coalescing concurrent CONNECTs."""

    def __init__(self, directory: DeviceDirectory, *, max_batch: int = 5000) -> None:
        self._directory = directory
        self._coalescer: Coalescer[tuple[str, str], DeviceCredentials | None] = Coalescer(
            self._lookup, max_batch=max_batch, name="fleetops-credentials"
        )

    async def device_credentials(self, product_id: str, device_name: str) -> DeviceCredentials | None:
        return await self._coalescer.submit((product_id, device_name))

    async def _lookup(self, wanted: list[tuple[str, str]]) -> list[DeviceCredentials | None]:
        found: Mapping[tuple[str, str], DeviceCredentials] = await self._directory.credentials_many(wanted)
        return [found.get(key) for key in wanted]


class PresenceWriter:
    """Online/offline changes written in batches (:meth:`DeviceDirectory.record_presence`).

    A connect waits for its write (a device holding CONNACK shows online in DescribeDevice); a disconnect is
    not waited for. A crash loses at most the batch being written and those waiting (docs/mqtt.md#presence).
    """

    def __init__(self, directory: DeviceDirectory, clock: Callable[[], float], *, max_batch: int = 5000) -> None:
        self._directory = directory
        self._clock = clock
        self._coalescer: Coalescer[PresenceChange, None] = Coalescer(
            self._write, max_batch=max_batch, name="fleetops-presence"
        )
        self._failures_logged_at = 0.0

    def record(self, product_id: str, device_name: str, online: bool, client_ip: str | None) -> asyncio.Future[None]:
        change = PresenceChange(product_id, device_name, online, client_ip, int(self._clock()))
        future = self._coalescer.submit(change)
        future.add_done_callback(self._failed)
        return future

    async def flush(self) -> None:
        """Until every change recorded so far is written (or has failed and been logged)."""
        await self._coalescer.wait_idle()

    async def _write(self, changes: list[PresenceChange]) -> list[None]:
        await self._directory.record_presence(changes)
        return [None] * len(changes)

    def _failed(self, future: asyncio.Future[None]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        now = time.monotonic()
        if now - self._failures_logged_at >= 10:  # one line per batch would flood the log while the database is down
            self._failures_logged_at = now
            log.error("recording devices online/offline failed: %s", future.exception())

"""The broker service password (``broker_credentials``) on both databases: every node gets the same one."""

from __future__ import annotations

import asyncio

from fleetops.store.broker_credentials import BrokerCredentialStore
from fleetops.store.database import open_database
from fleetops.store.migrate import upgrade


async def test_one_password_per_name_created_once_and_rotated(database_url: str) -> None:
    db = open_database(database_url)
    try:
        await upgrade(db)
        store = BrokerCredentialStore(db)
        assert await store.secret("fleetops") is None
        # two nodes starting at once on the same database agree on one password
        first, second = await asyncio.gather(store.get_or_create("fleetops", 1), store.get_or_create("fleetops", 1))
        assert first == second == await store.get_or_create("fleetops", 2)
        assert len(first) == 64 and int(first, 16) >= 0
        rotated = await store.rotate("fleetops", 3)
        assert rotated != first and await store.secret("fleetops") == rotated
        assert await store.rotate("other", 3) == await store.secret("other")  # rotate creates a missing row
    finally:
        await db.dispose()

"""Database.read (store/database.py): point reads on their own path (SQLite: in the event loop; PostgreSQL: an
autocommit pool without a ping) see every commit at once, and survive the server closing their connection."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy.engine import make_url

from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from tests.support import PG_HOST, PG_PORT


def test_a_point_read_sees_each_write_as_soon_as_it_is_committed(database_url: str) -> None:
    async def run() -> None:
        db = open_database(database_url)
        try:
            accounts = AccountStore(db)
            key = await accounts.create_key(await accounts.create_account("reads", 0), 0)
            for enabled in (False, True, False):
                await accounts.set_key_enabled(key.secret_id, enabled)
                read = await accounts.get_key(key.secret_id)
                assert read is not None and read.enabled is enabled
            assert await accounts.get_key("AKIDmissing") is None
        finally:
            await db.dispose()

    asyncio.run(run())


@pytest.mark.postgres
def test_a_read_whose_connection_the_server_closed_runs_again_on_a_new_one(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("the pool without a ping is PostgreSQL's")
    name = make_url(database_url).database

    async def run() -> None:
        db = open_database(database_url)
        try:
            accounts = AccountStore(db)
            key = await accounts.create_key(await accounts.create_account("reads", 0), 0)
            assert await accounts.get_key(key.secret_id) == key  # the read pool now holds a connection
            admin = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
            with psycopg.connect(admin, autocommit=True) as conn:
                closed = conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (name,)
                ).fetchone()
            assert closed is not None and closed[0] >= 1
            assert await accounts.get_key(key.secret_id) == key
        finally:
            await db.dispose()

    asyncio.run(run())

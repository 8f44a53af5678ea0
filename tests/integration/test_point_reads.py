"""Database.read (store/database.py): point reads on their own path (SQLite: in the event loop; PostgreSQL: an
autocommit pool without a ping) see every commit at once, and survive the server closing their connection."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from fleetops.store.tables import accounts as accounts_table
from tests.support import close_server_connections


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

    async def run() -> None:
        db = open_database(database_url)
        try:
            accounts = AccountStore(db)
            key = await accounts.create_key(await accounts.create_account("reads", 0), 0)
            assert await accounts.get_key(key.secret_id) == key  # the read pool now holds a connection
            assert close_server_connections(database_url) >= 1
            assert await accounts.get_key(key.secret_id) == key
        finally:
            await db.dispose()

    asyncio.run(run())


@pytest.mark.postgres
def test_a_single_statement_write_whose_connection_the_server_closed_is_not_sent_again(database_url: str) -> None:
    """Database.write_one on PostgreSQL: a broken connection may have committed the statement, so the error is
    the caller's (store/shadows.py answers the group with it), never a blind second run."""
    if not database_url.startswith("postgresql"):
        pytest.skip("the autocommit pool without a ping is PostgreSQL's")

    async def run() -> None:
        db = open_database(database_url)
        try:
            accounts = AccountStore(db)
            account = await accounts.create_account("writes", 0)
            rename = (
                sa.update(accounts_table)
                .where(accounts_table.c.id == sa.bindparam("pk"))
                .values(name=sa.bindparam("new_name"))
            )
            assert await db.write_one(rename, {"pk": account, "new_name": "one"}) == 1  # the pool holds it now
            assert close_server_connections(database_url) >= 1
            with pytest.raises(DBAPIError) as broken:
                await db.write_one(rename, {"pk": account, "new_name": "two"})
            assert broken.value.connection_invalidated
            assert await db.write_one(rename, {"pk": account, "new_name": "three"}) == 1  # on a new connection
        finally:
            await db.dispose()

    asyncio.run(run())

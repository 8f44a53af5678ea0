"""The Alembic chain creates exactly the schema of store/tables.py, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from fleetops.store.database import open_migrated_database
from fleetops.store.migrate import current_revision
from fleetops.store.tables import metadata


async def test_the_migrated_schema_is_tables_py(database_url: str) -> None:
    db = await open_migrated_database(database_url)
    try:

        def differences(sync_conn: Connection) -> list[Any]:
            context = MigrationContext.configure(
                sync_conn, opts={"compare_type": True, "compare_server_default": False}
            )
            return list(compare_metadata(context, metadata))

        async with db.connect() as conn:
            diff = await conn.run_sync(differences)
        assert diff == [], f"the migrations and store/tables.py disagree: {diff}"
        assert await current_revision(db) is not None
    finally:
        await db.dispose()

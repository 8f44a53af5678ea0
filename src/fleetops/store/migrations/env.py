"""Alembic environment: always runs on a connection handed in by fleetops.store.migrate."""

from alembic import context

from fleetops.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

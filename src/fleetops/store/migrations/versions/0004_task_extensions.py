"""Task extensions: per-device outcomes (a row per batch, a row per later change), the device's outcome watch,
client tokens, StopTask's request.

Revision ID: 0004_task_extensions
Revises: 0003_broker_boots
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004_task_extensions"
down_revision = "0003_broker_boots"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    # nullable, or with a server default: no table rewrite on PostgreSQL, a plain ADD COLUMN on SQLite
    op.add_column("tasks", sa.Column("extensions", Json, nullable=True))
    op.add_column("tasks", sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("devices", sa.Column("watch_task", sa.String(24), nullable=True))
    op.create_table(
        "task_batches",
        sa.Column("task_id", sa.String(24), primary_key=True),
        sa.Column("through_name", sa.String(48), primary_key=True),
        sa.Column("written_ms", sa.BigInteger, nullable=False),
        sa.Column("devices", sa.Text, nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        # written once per batch on the task's hot path and read whole: no compression pass on the way in
        op.execute("ALTER TABLE task_batches ALTER COLUMN devices SET STORAGE EXTERNAL")
    op.create_table(
        "task_devices",
        sa.Column("task_id", sa.String(24), primary_key=True),
        sa.Column("device_name", sa.String(48), primary_key=True),
        sa.Column("base", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("batch", sa.String(48), nullable=False),
        sa.Column("written_ms", sa.BigInteger, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "task_client_tokens",
        sa.Column("account_id", sa.Integer, primary_key=True),
        sa.Column("client_token", sa.String(64), primary_key=True),
        sa.Column("task_id", sa.String(24), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("task_client_tokens")
    op.drop_table("task_devices")
    op.drop_table("task_batches")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("watch_task")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("stop_requested")
        batch.drop_column("extensions")

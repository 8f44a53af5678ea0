"""The API rate limit's shared counter: one row per (SecretId, Action), reused from window to window.

Revision ID: 0006_rate_windows
Revises: 0005_signature_ledger
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_rate_windows"
down_revision = "0005_signature_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_windows",
        sa.Column("secret_id", sa.String(64), primary_key=True),
        sa.Column("action", sa.String(64), primary_key=True),
        sa.Column("window_s", sa.BigInteger, nullable=False),
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.Column("granted", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rate_windows")

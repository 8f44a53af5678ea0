"""The signature ledger: what each API signature was first presented with (docs/protocol.md#replay).

* ``signature_ledger(key, action, version, region, client, expires_at)``: a TC3 signature (or a v1 SecretId and
  Nonce), the Action, Version and Region it was first seen with and the client address that presented it, until
  its timestamp leaves the clock-skew window.

Revision ID: 0005_signature_ledger
Revises: 0004_task_extensions
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_signature_ledger"
down_revision = "0004_task_extensions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "signature_ledger",
        sa.Column("key", sa.String(192), primary_key=True),
        sa.Column("action", sa.String(80), nullable=False),
        sa.Column("version", sa.String(80), nullable=False),
        sa.Column("region", sa.String(80), nullable=False),
        sa.Column("client", sa.String(80), nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_signature_ledger_expires_at", "signature_ledger", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_signature_ledger_expires_at", table_name="signature_ledger")
    op.drop_table("signature_ledger")

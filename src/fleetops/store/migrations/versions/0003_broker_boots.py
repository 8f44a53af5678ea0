"""The broker's current run (``broker_boots``), for devices' online state on Mosquitto with the plugin.

* ``broker_boots(name, boot, recorded_at)``: the boot id of the plugin's welcome, per service identity; the
  node that records a new one marks every device offline in the same transaction (docs/mosquitto.md).

Revision ID: 0003_broker_boots
Revises: 0002_device_change_notify
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_broker_boots"
down_revision = "0002_device_change_notify"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "broker_boots",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("boot", sa.String(64), nullable=False),
        sa.Column("recorded_at", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("broker_boots")

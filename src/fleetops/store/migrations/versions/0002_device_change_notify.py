"""Broker credentials, and NOTIFY on device changes for the Mosquitto plugin (docs/mosquitto.md).

* ``broker_credentials(name, secret, created_at)``: the password of the broker's service identity, so that every
  node started with the same database URL finds it.
* PostgreSQL only: triggers that ``NOTIFY fleetops_broker`` with ``device <ProductId><DeviceName>`` when a
  device's ``enabled`` or ``psk`` changes or the device is deleted, and with ``credential <name>`` when a
  broker credential changes. Shadow writes never fire them (batch tasks update millions of rows): the update
  trigger names its columns and compares old and new values. On SQLite (no broker plugin) only the table is
  created.

Revision ID: 0002_device_change_notify
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_device_change_notify"
down_revision = "0001"
branch_labels = None
depends_on = None

CHANNEL = "fleetops_broker"

POSTGRESQL_UP = [
    f"""
    CREATE FUNCTION fleetops_notify_device_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('{CHANNEL}', 'device ' || p.product_id || OLD.name)
        FROM products p WHERE p.id = OLD.product_pk;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER devices_notify_credentials AFTER UPDATE OF enabled, psk ON devices FOR EACH ROW
    WHEN (OLD.enabled IS DISTINCT FROM NEW.enabled OR OLD.psk IS DISTINCT FROM NEW.psk)
    EXECUTE FUNCTION fleetops_notify_device_change()
    """,
    """
    CREATE TRIGGER devices_notify_delete AFTER DELETE ON devices FOR EACH ROW
    EXECUTE FUNCTION fleetops_notify_device_change()
    """,
    f"""
    CREATE FUNCTION fleetops_notify_broker_credential() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('{CHANNEL}', 'credential ' || OLD.name);
        ELSE
            PERFORM pg_notify('{CHANNEL}', 'credential ' || NEW.name);
        END IF;
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER broker_credentials_notify AFTER INSERT OR UPDATE OR DELETE ON broker_credentials
    FOR EACH ROW EXECUTE FUNCTION fleetops_notify_broker_credential()
    """,
]

POSTGRESQL_DOWN = [
    "DROP TRIGGER IF EXISTS broker_credentials_notify ON broker_credentials",
    "DROP FUNCTION IF EXISTS fleetops_notify_broker_credential()",
    "DROP TRIGGER IF EXISTS devices_notify_delete ON devices",
    "DROP TRIGGER IF EXISTS devices_notify_credentials ON devices",
    "DROP FUNCTION IF EXISTS fleetops_notify_device_change()",
]


def upgrade() -> None:
    op.create_table(
        "broker_credentials",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRESQL_UP:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in POSTGRESQL_DOWN:
            op.execute(statement)
    op.drop_table("broker_credentials")

"""The one schema, as SQLAlchemy Core tables. Alembic migrations (store/migrations) create exactly this.

JSON columns are JSONB on PostgreSQL and JSON text on SQLite, so the task executor can merge desired state
inside the database on both (``json_patch`` / jsonb operators, store/task_execution.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

metadata = sa.MetaData()

Json = sa.JSON().with_variant(JSONB(), "postgresql")

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("secret_id", sa.String(64), primary_key=True),
    sa.Column("secret_key", sa.String(128), nullable=False),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("product_id", sa.String(10), nullable=False, unique=True),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("properties", Json, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("account_id", "name", name="uq_products_account_name"),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("product_pk", sa.Integer, sa.ForeignKey("products.id"), nullable=False),
    sa.Column("name", sa.String(48), nullable=False),
    sa.Column("psk", sa.String(128), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("tags", Json, nullable=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("online", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("login_time", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_offline_time", sa.BigInteger, nullable=True),
    sa.Column("first_online_time", sa.BigInteger, nullable=True),
    sa.Column("client_ip", sa.String(64), nullable=True),
    # the shadow, one row per device (docs/device-protocol.md#document-model)
    sa.Column("shadow_reported", Json, nullable=False),
    sa.Column("shadow_desired", Json, nullable=True),
    sa.Column("shadow_meta_reported", Json, nullable=False),
    sa.Column("shadow_meta_desired", Json, nullable=False),
    sa.Column("shadow_version", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("shadow_ts_ms", sa.BigInteger, nullable=False, server_default="0"),
    # the outcome-tracking UpdateShadow task whose convergence this device's shadow writes decide (the newest
    # that wrote it; docs/extensions.md#outcomes): store/shadows.py and store/outcomes.py
    sa.Column("watch_task", sa.String(24), nullable=True),
    sa.UniqueConstraint("product_pk", "name", name="uq_devices_product_name"),
)

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(24), primary_key=True),
    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
    sa.Column("product_pk", sa.Integer, nullable=False),
    sa.Column("product_id", sa.String(10), nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("name_filter", sa.Text, nullable=False),
    sa.Column("spec", Json, nullable=False),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
    sa.Column("schedule_time", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.BigInteger, nullable=True),
    sa.Column("done_time", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("max_execution_s", sa.Integer, nullable=False),
    sa.Column("ret_code", sa.Integer, nullable=False, server_default="0"),
    sa.Column("err_msg", sa.Text, nullable=False, server_default=""),
    sa.Column("all_device_cnt", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("done_device_cnt", sa.BigInteger, nullable=False, server_default="0"),
    # execution state: the devices snapshot and how far each step got (engine/executor.py)
    sa.Column("snapshot_device_id", sa.BigInteger, nullable=True),
    sa.Column("applied_cursor", sa.String(48), nullable=True),
    sa.Column("pushed_cursor", sa.String(48), nullable=True),
    sa.Column("lease_owner", sa.String(128), nullable=True),
    sa.Column("lease_until", sa.BigInteger, nullable=True),
    # fleetops extensions (docs/extensions.md): what the task asked for beyond Tencent (NULL: nothing), and a
    # StopTask waiting for the engine to end the task after the batch in flight
    sa.Column("extensions", Json, nullable=True),
    sa.Column("stop_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_tasks_account_created", "account_id", "created_at"),
    sa.Index("ix_tasks_status_schedule", "status", "schedule_time"),
)

# The per-device outcomes of a task that keeps them (docs/extensions.md#outcomes, store/outcomes.py): one row per
# batch, in the batch's transaction (the devices it reached, each one's version and outcome then, the counts),
# and one row per device whose outcome changed after its batch. No foreign keys: the purge deletes both with
# the task.
task_batches = sa.Table(
    "task_batches",
    metadata,
    sa.Column("task_id", sa.String(24), primary_key=True),
    sa.Column("through_name", sa.String(48), primary_key=True),  # the batch's last device name
    sa.Column("written_ms", sa.BigInteger, nullable=False),  # when it wrote or sent (the window's start)
    # JSON text, not jsonb: written once and read whole ({"n": names, "v": versions, "o": outcomes})
    sa.Column("devices", sa.Text, nullable=False),
    sa.Column("counts", sa.Text, nullable=False),  # {outcome: devices}
)
task_devices = sa.Table(
    "task_devices",
    metadata,
    sa.Column("task_id", sa.String(24), primary_key=True),
    sa.Column("device_name", sa.String(48), primary_key=True),
    sa.Column("base", sa.String(16), nullable=False),  # its batch's outcome (domain.outcomes.DeviceOutcome)
    sa.Column("outcome", sa.String(16), nullable=False),  # the outcome now
    sa.Column("batch", sa.String(48), nullable=False),  # the through_name of its batch
    sa.Column("written_ms", sa.BigInteger, nullable=False),  # its batch's
    sa.Column("at_ms", sa.BigInteger, nullable=False),  # when the outcome changed
)

# ClientToken of CreateTask: the same token from the same account within 24 hours is the same task.
task_client_tokens = sa.Table(
    "task_client_tokens",
    metadata,
    sa.Column("account_id", sa.Integer, primary_key=True),
    sa.Column("client_token", sa.String(64), primary_key=True),
    sa.Column("task_id", sa.String(24), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),  # domain.extensions.request_fingerprint
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# Passwords of broker identities: the Mosquitto plugin reads the one named by its service_user option (default
# "fleetops"), and every fleetops node sharing the database reads the same row (docs/mosquitto.md).
broker_credentials = sa.Table(
    "broker_credentials",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
)

# The run of the broker the devices' online state belongs to: the boot id of the Mosquitto plugin's welcome,
# per service identity. The node that records a new boot marks every device offline in the same transaction
# (a restarted broker lost every connection; docs/mosquitto.md#presence-and-broker-restarts).
broker_boots = sa.Table(
    "broker_boots",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("boot", sa.String(64), nullable=False),
    sa.Column("recorded_at", sa.BigInteger, nullable=False),
)

# What each API signature was first presented with (ports/signatures.py): a TC3 signature bound to the Action,
# Version and Region it was first seen with and the client address that presented it, and a v1 request's
# (SecretId, Nonce), until the request's timestamp leaves the clock-skew window (``expires_at``); expired rows are
# deleted in the background.
signature_ledger = sa.Table(
    "signature_ledger",
    metadata,
    sa.Column("key", sa.String(192), primary_key=True),
    sa.Column("action", sa.String(80), nullable=False),
    sa.Column("version", sa.String(80), nullable=False),
    sa.Column("region", sa.String(80), nullable=False),
    sa.Column("client", sa.String(80), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_signature_ledger_expires_at", "expires_at"),
)

# The API rate limit's counter, shared by every node: one row per (SecretId, Action), reused from window to window
# (a new second starts the count again), so nothing needs purging. ``granted`` is what the last reservation got
# (RETURNING sees only the new row); api/ratelimit.py leases slices of ``used`` (docs/limits.md#the-api-rate-limit).
rate_windows = sa.Table(
    "rate_windows",
    metadata,
    sa.Column("secret_id", sa.String(64), primary_key=True),
    sa.Column("action", sa.String(64), primary_key=True),
    sa.Column("window_s", sa.BigInteger, nullable=False),
    sa.Column("used", sa.BigInteger, nullable=False),
    sa.Column("granted", sa.BigInteger, nullable=False),
)

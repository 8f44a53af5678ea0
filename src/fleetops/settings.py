"""One settings object, built once by the CLI and passed down.

Every field can be set by a ``FLEETOPS_<FIELD>`` environment variable (the CLI options override them). Nothing
reads the environment at import time.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fleetops.errors import ConfigurationError

ENV_PREFIX = "FLEETOPS_"


@dataclass(frozen=True)
class Settings:
    """Runtime configuration. Field docs double as the operator reference in docs/configuration.md."""

    host: str = field(default="127.0.0.1", metadata={"doc": "HTTP API listen address"})
    port: int = field(default=8080, metadata={"doc": "HTTP API listen port"})
    data_dir: Path = field(default=Path("fleetops-data"), metadata={"doc": "directory for SQLite and credentials"})
    database_url: str = field(
        default="",
        metadata={"doc": "SQLAlchemy URL; empty = SQLite in data_dir (postgresql://... for PostgreSQL)"},
    )
    tls_cert_file: str = field(
        default="", metadata={"doc": "PEM certificate (chain) of the HTTP API; with tls_key_file the API serves HTTPS"}
    )
    tls_key_file: str = field(default="", metadata={"doc": "PEM private key of tls_cert_file"})
    http_max_connections: int = field(
        default=1000,
        metadata={
            "doc": "open connections on the API port; when full, the one waiting longest for its request is "
            "closed (keep below the file limit)"
        },
    )
    http_request_timeout_s: float = field(
        default=10.0,
        metadata={"doc": "a request (TLS handshake, headers and body) must arrive whole within this time"},
    )
    workers: int = field(
        default=1,
        metadata={
            "doc": "processes serving the API port (1..32): the node itself, and workers-1 API workers that answer "
            "the read actions and forward everything else to it (docs/deployment.md#api-worker-processes)"
        },
    )
    mqtt_host: str = field(default="127.0.0.1", metadata={"doc": "embedded MQTT broker listen address"})
    mqtt_port: int = field(default=1883, metadata={"doc": "embedded MQTT broker listen port"})
    mqtt_tls_port: int = field(
        default=0, metadata={"doc": "embedded MQTT broker TLS listen port (devices use 8883); 0 = no TLS listener"}
    )
    mqtt_tls_cert_file: str = field(
        default="", metadata={"doc": "PEM certificate (chain) of the TLS listener; needed with mqtt_tls_port"}
    )
    mqtt_tls_key_file: str = field(default="", metadata={"doc": "PEM private key of the TLS listener"})
    mqtt_max_connections: int = field(
        default=10_000,
        metadata={"doc": "connections per embedded MQTT listener (keep well below the process's file limit)"},
    )
    mqtt_connect_timeout_s: float = field(
        default=10.0, metadata={"doc": "embedded MQTT broker: time from TCP accept to a completed CONNECT"}
    )
    mqtt_url: str = field(
        default="", metadata={"doc": "external broker (mqtt://user:pass@host:port); empty = embedded broker"}
    )
    mqtt_hooks_secret: str = field(
        default="",
        metadata={
            "doc": "shared secret EMQX sends to /mqtt/auth and /mqtt/acl (Authorization: Bearer ...); "
            "empty = the hooks are off"
        },
    )
    mqtt_client_id: str = field(
        default="",
        metadata={
            "doc": "client id of this node on an external broker, unique per node (default fleetops-NODE_ID-random)"
        },
    )
    mqtt_service_user: str = field(
        default="fleetops",
        metadata={
            "doc": "user name fleetops logs in with when mqtt_url has none: the Mosquitto plugin's service_user, "
            "its password kept in the database (broker_credentials)"
        },
    )
    rate_limit_per_s: int = field(
        default=100, metadata={"doc": "requests per second per SecretId per action, for all the nodes together"}
    )
    max_body_bytes: int = field(
        default=10 * 1024 * 1024,
        metadata={"doc": "largest TC3 POST body read; the documented 10 MB limit applies above it"},
    )
    clock_skew_s: int = field(default=300, metadata={"doc": "allowed request timestamp skew"})
    signature_binding: bool = field(
        default=True,
        metadata={
            "doc": "refuse a TC3 signature presented from another client address with another action, version or "
            "region than it was first seen with (docs/protocol.md#replay); off, only v1 Nonces are checked"
        },
    )
    trusted_proxies: str = field(
        default="",
        metadata={
            "doc": "comma-separated addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto are "
            "believed (the client address the signature binding and the hook limits use); empty, none is"
        },
    )
    max_pending_tasks: int = field(
        default=10, metadata={"doc": "tasks waiting or processing per account (CreateTask limit)"}
    )
    max_devices_per_product: int = field(
        default=1_000_000,
        metadata={"doc": "devices per product (CreateDevice limit, vendor quota 1,000,000)"},
    )
    delta_publish_timeout_s: float = field(
        default=2.0,
        metadata={"doc": "how long UpdateDeviceShadow waits for the broker to take its delta push"},
    )
    task_retention_s: int = field(default=30 * 86400, metadata={"doc": "how long finished tasks are kept"})
    task_batch_size: int = field(default=5000, metadata={"doc": "devices per executor batch (one transaction)"})
    task_poll_interval_s: float = field(default=0.5, metadata={"doc": "scheduler poll interval"})
    task_lease_s: int = field(default=30, metadata={"doc": "a node's lease on a running task"})
    broker_wait_s: float = field(default=30.0, metadata={"doc": "how long a publish waits for a down broker"})
    node_id: str = field(default="", metadata={"doc": "this node's name in task leases (default host:pid)"})
    task_concurrency: int = field(default=4, metadata={"doc": "tasks one node runs at the same time"})
    event_loop: str = field(
        default="auto",
        metadata={
            "doc": "event loop of serve and worker: auto (uvloop when it can be imported, else asyncio's own), "
            "uvloop or asyncio"
        },
    )
    log_level: str = field(default="INFO", metadata={"doc": "log level"})

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleetops.db').resolve()}"

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with the non-None overrides applied (CLI options)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return _coerce(replace(self, **given))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = raw
        return _coerce(cls(**values))


def _coerce(settings: Settings) -> Settings:
    """Convert string values (from the environment) to each field's type, with a clear error."""
    converted: dict[str, Any] = {}
    for f in fields(settings):
        value = getattr(settings, f.name)
        default = f.default
        try:
            if isinstance(default, bool):
                converted[f.name] = value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
            elif isinstance(default, int):
                converted[f.name] = int(value)
            elif isinstance(default, float):
                converted[f.name] = float(value)
            elif isinstance(default, Path):
                converted[f.name] = Path(value)
            else:
                converted[f.name] = str(value)
        except ValueError as exc:
            raise ConfigurationError(
                f"setting {f.name} ({ENV_PREFIX}{f.name.upper()}) must be a {type(default).__name__}, got {value!r}"
            ) from exc
    return Settings(**converted)


def render_reference() -> str:
    """docs/configuration.md, generated from the field docs (``python -m fleetops.settings``)."""
    lines = [
        "# Configuration (generated)",
        "",
        "Generated from `fleetops.settings.Settings` by `make docs`; do not edit by hand. Every setting is an",
        "environment variable; `fleetops serve` options override them.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for f in fields(Settings):
        default = "" if f.default in ("", None) else f"`{f.default}`"
        lines.append(f"| `{ENV_PREFIX}{f.name.upper()}` | {default} | {f.metadata.get('doc', '')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render_reference(), end="")

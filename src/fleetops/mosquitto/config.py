"""``fleetops mosquitto config``: a complete ``mosquitto.conf`` for Mosquitto 2.0 with the fleetops plugin.

The configuration is rendered from values the CLI takes from the node's own settings (the database URL, the
data directory, the service user, the TLS files), so that a ``fleetops serve`` started with the same settings
and ``--mqtt-url mqtt://127.0.0.1:<port>`` works against that Mosquitto with no further step: the plugin
reads the service identity's password from the same database as the node
(docs/mosquitto.md#configuration-in-one-command).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from fleetops.errors import ConfigurationError

# Mosquitto's defaults, written out: the plugin's window (500 messages to a node) must stay below their sum,
# or Mosquitto drops what it cannot queue for a node (docs/mosquitto.md#configuring-mosquitto).
MAX_INFLIGHT_MESSAGES = 20
MAX_QUEUED_MESSAGES = 1000
# A broker that crashes (SIGKILL, power loss) loses the persistent sessions' changes since the last save; a
# clean stop (SIGTERM) saves everything.
AUTOSAVE_INTERVAL_S = 60
# The embedded broker's rules: a persistent session is dropped after 24 h offline, a packet over 256 KB closes
# the connection (docs/mqtt.md#cloud-to-device, docs/limits.md).
PERSISTENT_CLIENT_EXPIRATION = "1d"
MAX_PACKET_BYTES = 256 * 1024


def libpq_url(database_url: str) -> str:
    """fleetops' database URL as the plugin's libpq URI; a one-line :class:`ConfigurationError` for anything but
    PostgreSQL (the plugin reads the database itself, through libpq)."""
    try:
        parsed = make_url(database_url)
    except ArgumentError as exc:
        raise ConfigurationError(f"the database URL {database_url!r} cannot be parsed: {exc}") from exc
    if parsed.get_backend_name() != "postgresql":
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigurationError(
            f"the Mosquitto plugin needs PostgreSQL, and the database is {shown}: set --database or "
            "FLEETOPS_DATABASE_URL to postgresql://user:password@host:5432/name (the same for the nodes)"
        )
    # postgresql+asyncpg:// and friends are SQLAlchemy's; libpq wants postgresql://
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class TlsFiles:
    """The TLS listener: server authentication only, as on the embedded broker (docs/mqtt.md#tls)."""

    port: int
    cert_file: Path  # PEM, the server certificate (and its chain)
    key_file: Path  # PEM, its private key


@dataclass(frozen=True)
class MosquittoConfig:
    port: int
    bind_address: str
    plugin: Path
    database_url: str  # a libpq URI (libpq_url)
    service_user: str
    state_dir: Path  # persistence and the log
    run_as: str  # the user Mosquitto switches to when started as root
    tls: TlsFiles | None = None

    def render(self) -> str:
        _check_line_values(
            self.bind_address,
            str(self.plugin),
            self.database_url,
            self.service_user,
            str(self.state_dir),
            self.run_as,
            *((str(self.tls.cert_file), str(self.tls.key_file)) if self.tls else ()),
        )
        bind = "" if self.bind_address in ("", "0.0.0.0", "::") else f" {self.bind_address}"
        lines = [
            "# Mosquitto 2.0 with the fleetops plugin, written by `fleetops mosquitto config`",
            "# (docs/mosquitto.md). It holds the database URL: keep it readable by root and the broker only.",
            "",
            "# the plugin runs from the broker's tick, which Mosquitto 2.0 only calls with global settings",
            "per_listener_settings false",
            "allow_anonymous false",
            f"user {self.run_as}",
            "",
            "# devices (and the fleetops nodes)",
            f"listener {self.port}{bind}",
        ]
        if self.tls is not None:
            lines += [
                "",
                "# devices over TLS",
                f"listener {self.tls.port}{bind}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "tls_version tlsv1.2",
            ]
        lines += [
            "",
            "# QoS 1 devices with persistent sessions (CleanSession=0): kept across restarts, dropped after a day",
            "persistence true",
            f"persistence_location {self.state_dir}/",
            f"autosave_interval {AUTOSAVE_INTERVAL_S}",
            f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}",
            f"max_inflight_messages {MAX_INFLIGHT_MESSAGES}",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            f"max_packet_size {MAX_PACKET_BYTES}",
            "set_tcp_nodelay true",
            "",
            f"log_dest file {self.state_dir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            "# device authentication, the device ACL and the dispatch of device messages to the fleetops nodes",
            f"plugin {self.plugin}",
            f"plugin_opt_database_url {self.database_url}",
            f"plugin_opt_service_user {self.service_user}",
        ]
        if not _is_ip_address(self.database_url):
            lines.insert(
                len(lines) - 2,
                "# the database host is a name: libpq resolves it on the broker's only thread; an address is safer",
            )
        return "\n".join(lines) + "\n"


def _is_ip_address(libpq: str) -> bool:
    host = make_url(libpq).host
    if not host:
        return True  # a Unix socket
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_line_values(*values: str) -> None:
    """Every value is written on one line of the configuration: a line break or a control character would end
    it early or add a line of its own."""
    for value in values:
        if not value or any(ord(char) < 0x20 or ord(char) == 0x7F for char in value) or value != value.strip():
            raise ConfigurationError(
                f"{value!r} cannot be written into mosquitto.conf (empty, surrounding blanks or control characters)"
            )

"""The mosquitto.conf that `fleetops mosquitto config` renders (a test in tests/integration runs Mosquitto on it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetops.errors import ConfigurationError
from fleetops.mosquitto.config import MosquittoConfig, TlsFiles, libpq_url


def test_database_urls_become_libpq_uris() -> None:
    assert libpq_url("postgresql://fleetops:s%40cret@10.0.0.5:5432/fleetops") == (
        "postgresql://fleetops:s%40cret@10.0.0.5:5432/fleetops"
    )
    assert libpq_url("postgresql+asyncpg://u:p@db/x") == "postgresql://u:p@db/x"


@pytest.mark.parametrize("url", ["sqlite:///fleetops-data/fleetops.db", "mysql://u@db/x"])
def test_only_postgresql_will_do(url: str) -> None:
    with pytest.raises(ConfigurationError, match="the Mosquitto plugin needs PostgreSQL"):
        libpq_url(url)


def config(**changes: object) -> MosquittoConfig:
    values: dict[str, object] = {
        "port": 1883,
        "bind_address": "127.0.0.1",
        "plugin": Path("/opt/fleetops/fleetops_plugin.so"),
        "database_url": "postgresql://fleetops:pw@10.0.0.5:5432/fleetops",
        "service_user": "fleetops",
        "state_dir": Path("/var/lib/fleetops/mosquitto"),
        "run_as": "mosquitto",
    }
    values.update(changes)
    return MosquittoConfig(**values)  # type: ignore[arg-type]


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_plugin_and_its_options() -> None:
    lines = directives(config().render())
    assert lines[:4] == [
        "per_listener_settings false",
        "allow_anonymous false",
        "user mosquitto",
        "listener 1883 127.0.0.1",
    ]
    assert lines[-3:] == [
        "plugin /opt/fleetops/fleetops_plugin.so",
        "plugin_opt_database_url postgresql://fleetops:pw@10.0.0.5:5432/fleetops",
        "plugin_opt_service_user fleetops",
    ]
    assert "persistence true" in lines and "persistence_location /var/lib/fleetops/mosquitto/" in lines
    assert "persistent_client_expiration 1d" in lines
    assert "log_dest file /var/lib/fleetops/mosquitto/mosquitto.log" in lines
    assert not any(line.startswith(("certfile", "keyfile")) for line in lines)


def test_every_address_and_tls() -> None:
    tls = TlsFiles(8883, Path("/etc/fleetops/server.pem"), Path("/etc/fleetops/server.key"))
    lines = directives(config(bind_address="0.0.0.0", tls=tls).render())
    start = lines.index("listener 1883")
    assert lines[start : start + 5] == [
        "listener 1883",
        "listener 8883",
        "certfile /etc/fleetops/server.pem",
        "keyfile /etc/fleetops/server.key",
        "tls_version tlsv1.2",
    ]


def test_a_database_host_name_gets_a_warning_comment() -> None:
    assert "libpq resolves it" not in config().render()
    assert "libpq resolves it" in config(database_url="postgresql://u@db.internal/x").render()


@pytest.mark.parametrize(
    "changes",
    [
        {"service_user": "fleetops\nallow_anonymous true"},
        {"plugin": Path("/tmp/x.so\r")},
        {"run_as": ""},
        {"state_dir": Path("/var/lib/x\0y")},
    ],
)
def test_nothing_can_add_a_line_of_its_own(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError, match=r"cannot be written into mosquitto\.conf"):
        config(**changes).render()

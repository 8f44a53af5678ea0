"""`fleetops mosquitto config` as an operator runs it: it builds the plugin, prints a configuration that
`mosquitto -c` runs as it is, and a `fleetops serve` started with the same settings and only
`--mqtt-url mqtt://127.0.0.1:PORT` serves the devices through it, plain and over TLS (a device that does not
trust the CA is refused). Setup mistakes are one line and exit status 2."""

from __future__ import annotations

import json
import os
import pwd
import ssl
from pathlib import Path

import pytest

from fleetops.ports.messaging import DeviceCredentials
from tests.brokers import ConfiguredMosquitto, clean_environment, mosquitto_config, register_devices
from tests.mqtt_support import PahoDevice
from tests.serve_process import ServeProcess
from tests.support import free_port, make_test_pki, postgres_database

pytestmark = pytest.mark.postgres


async def shadow_get(device: PahoDevice, credentials: DeviceCredentials, token: str) -> dict[str, object]:
    pid, dn = credentials.product_id, credentials.device_name
    assert await device.subscribe(f"$shadow/operation/result/{pid}/{dn}", 0) == 0
    device.publish(f"$shadow/operation/{pid}/{dn}", json.dumps({"type": "get", "clientToken": token}).encode(), 1)
    reply = json.loads((await device.receive(10)).payload)
    assert isinstance(reply, dict)
    return reply


async def test_the_printed_configuration_runs_and_a_node_needs_nothing_more(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path)
    data_dir = tmp_path / "data"
    tls_port = free_port()
    tls = ("--tls-port", str(tls_port), "--tls-cert", str(pki["server.pem"]), "--tls-key", str(pki["server.key"]))
    with postgres_database() as url:
        broker = ConfiguredMosquitto(data_dir, url, tls)
        printed = mosquitto_config(data_dir, url, broker.port, *tls)
        assert printed.returncode == 0, printed.stderr
        assert "built the plugin" in printed.stderr
        plugin = data_dir / "mosquitto" / "fleetops_plugin.so"
        assert f"plugin {plugin}\n" in printed.stdout
        assert f"plugin_opt_database_url {url}\n" in printed.stdout
        again = mosquitto_config(data_dir, url, broker.port, *tls)
        assert again.returncode == 0 and again.stdout == printed.stdout
        assert "built the plugin" not in again.stderr  # built already, from the same sources

        broker.config_text = printed.stdout  # mosquitto -c on exactly what was printed
        broker.config_file.write_text(printed.stdout)
        broker.start()
        node = ServeProcess(
            data_dir,
            clean_environment(
                FLEETOPS_DATA_DIR=str(data_dir),
                FLEETOPS_DATABASE_URL=url,
                FLEETOPS_PORT=str(free_port()),
                FLEETOPS_MQTT_URL=f"mqtt://127.0.0.1:{broker.port}",
            ),
        )
        devices: list[PahoDevice] = []
        try:
            node.start()
            broker.wait_for_log("handles device messages (1 nodes)")
            plain, secure, stranger = await register_devices(url, 3)

            over_tcp = PahoDevice(plain)
            devices.append(over_tcp)
            assert await over_tcp.connect(broker.port) == 0
            assert (await shadow_get(over_tcp, plain, "tcp"))["clientToken"] == "tcp"

            over_tls = PahoDevice(secure, tls_ca=pki["ca.pem"])
            devices.append(over_tls)
            assert await over_tls.connect(tls_port) == 0
            reply = await shadow_get(over_tls, secure, "tls")
            assert (reply["clientToken"], reply["result"]) == ("tls", 0)

            untrusting = PahoDevice(stranger, tls_ca=pki["other.pem"])
            devices.append(untrusting)
            with pytest.raises(ssl.SSLCertVerificationError):
                await untrusting.connect(tls_port)
        finally:
            for device in devices:
                device.close()
            node.kill()
            broker.stop()


def test_a_sqlite_database_is_refused_in_one_line(tmp_path: Path) -> None:
    result = mosquitto_config(tmp_path, f"sqlite:///{tmp_path / 'fleetops.db'}", 1883)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "the Mosquitto plugin needs PostgreSQL" in result.stderr and "FLEETOPS_DATABASE_URL" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--tls-port", "8883"), "a TLS listener needs --tls-cert"),
        (("--tls-port", "8883", "--tls-cert", "/nonexistent.pem", "--tls-key", "/x"), "not a readable file"),
        (("--tls-port", "1883"), "is the plain port too"),
        (("--plugin", "/nonexistent/fleetops_plugin.so"), "no such file"),
        (("--run-as", "no-such-user-of-fleetops"), "no such user on this machine"),
    ],
)
def test_bad_options_are_one_line(tmp_path: Path, options: tuple[str, ...], message: str) -> None:
    result = mosquitto_config(tmp_path, "postgresql://postgres@127.0.0.1:5432/unused", 1883, *options)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_the_broker_can_run_as_another_user(tmp_path: Path, built_plugin: Path) -> None:
    """Started as root, Mosquitto switches to ``--run-as`` before it writes its state: the state directory is
    handed to that user (only root can; otherwise Mosquitto does not switch users and nothing is changed)."""
    with postgres_database() as url:
        result = mosquitto_config(tmp_path, url, 1883, "--run-as", "nobody", "--plugin", str(built_plugin))
    assert result.returncode == 0, result.stderr
    assert "\nuser nobody\n" in result.stdout
    state = tmp_path / "mosquitto"
    if os.geteuid() == 0:
        assert state.stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert f"{state} now belongs to nobody" in result.stderr
    else:
        assert state.stat().st_uid == os.geteuid() and "now belongs to" not in result.stderr

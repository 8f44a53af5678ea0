"""`fleetops serve` as a new user runs it: first start prints and saves a key pair, the official SDK works with
it, SIGTERM and SIGINT shut the server down cleanly, and a restart keeps the data and creates no second key."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tencentcloud.iotcloud.v20180614 import models

from tests.serve_process import ServeProcess
from tests.support import free_port


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[ServeProcess]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {
        **os.environ,
        "FLEETOPS_DATA_DIR": str(data_dir),
        "FLEETOPS_PORT": str(free_port()),
        "FLEETOPS_MQTT_PORT": str(free_port()),
    }
    process = ServeProcess(data_dir, env)
    try:
        yield process
    finally:
        process.kill()


def _client(port: int, secret_id: str, secret_key: str) -> object:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    hp = HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="http")
    return iotcloud_client.IotcloudClient(
        credential.Credential(secret_id, secret_key), "ap-guangzhou", ClientProfile(httpProfile=hp)
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_first_start_then_clean_shutdown_then_restart(serve: ServeProcess, stop_signal: signal.Signals) -> None:
    serve.start()
    creds_path = serve.data_dir / "credentials.json"
    assert stat.S_IMODE(creds_path.stat().st_mode) == 0o600
    saved = json.loads(creds_path.read_text())
    log = (serve.data_dir / "serve.log").read_text()
    printed = re.search(r"SecretId:\s+(\S+)\s+SecretKey:\s+(\S+)", log)
    assert printed is not None and printed.groups() == (saved["SecretId"], saved["SecretKey"])
    assert (serve.data_dir / "fleetops.db").exists()  # SQLite in the data dir by default

    client = _client(serve.port, saved["SecretId"], saved["SecretKey"])
    req = models.CreateProductRequest()
    req.ProductName = "lamps"
    product_id = client.CreateProduct(req).ProductId  # type: ignore[attr-defined]

    assert serve.process is not None
    process = serve.process
    process.send_signal(stop_signal)
    assert process.wait(20) == 0
    serve.process = None

    serve.start()
    assert json.loads(creds_path.read_text()) == saved  # no second key on restart
    assert (serve.data_dir / "serve.log").read_text().count("SecretKey:") == 1
    listing = models.DescribeProductsRequest()
    listing.Offset, listing.Limit = 0, 10
    page = client.DescribeProducts(listing)  # type: ignore[attr-defined]
    assert [p.ProductId for p in page.Products] == [product_id]


def test_an_unreadable_tls_certificate_is_one_line_and_exit_2(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    env = {**os.environ, "FLEETOPS_DATA_DIR": str(tmp_path / "data"), "FLEETOPS_PORT": "0"}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fleetops"), "serve", "--tls-cert", str(missing), "--tls-key", str(missing)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if "Error" in ln or "cannot" in ln]
    assert len(lines) == 1 and f"cannot load the HTTPS certificate {missing}" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_an_unknown_event_loop_is_one_line_and_exit_2(tmp_path: Path, command: str) -> None:
    env = {
        **os.environ,
        "FLEETOPS_DATA_DIR": str(tmp_path / "data"),
        "FLEETOPS_EVENT_LOOP": "trio",
        "FLEETOPS_MQTT_URL": "mqtt://127.0.0.1:1",  # the worker's own start-up check, were it ever reached
    }
    done = subprocess.run(
        [str(Path(sys.executable).parent / "fleetops"), command], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "FLEETOPS_EVENT_LOOP" in lines[0] and "auto, asyncio, uvloop" in lines[0] and "'trio'" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything started


def test_a_taken_http_port_is_one_line_and_exit_2_before_anything_starts(tmp_path: Path) -> None:
    # a listening socket of our own holds the port for the whole test: no race with other processes
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "FLEETOPS_DATA_DIR": str(tmp_path / "data"),
            "FLEETOPS_PORT": str(port),
            "FLEETOPS_MQTT_PORT": "0",  # were it ever reached, the broker would take a free port
        }
        result = subprocess.run(
            [str(Path(sys.executable).parent / "fleetops"), "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"cannot listen on 127.0.0.1:{port} for the HTTP API: the address is already in use" in lines[0]
    assert "--port" in lines[0]
    # nothing claimed to have started, and nothing was created: the port is checked before the database
    assert "startup complete" not in lines[0].lower() and "Traceback" not in lines[0]
    assert not (tmp_path / "data" / "fleetops.db").exists()

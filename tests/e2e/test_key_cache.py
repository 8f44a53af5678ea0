"""`fleetops keys disable` stops a key on every node within 0.5 s, although nodes keep resolved keys in memory
(backend/keys.py): two `fleetops serve` processes on one database, the official SDK, the real command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.iotcloud.v20180614 import models

from tests.serve_process import ServeProcess
from tests.support import free_port, postgres_database, sqlite_database

FLEETOPS = str(Path(sys.executable).parent / "fleetops")


@contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield sqlite_database(tmp_path / "fleetops.db")
    else:
        with postgres_database() as url:
            yield url


def _client(port: int, secret_id: str, secret_key: str) -> Any:
    from tencentcloud.common import credential
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile
    from tencentcloud.iotcloud.v20180614 import iotcloud_client

    profile = ClientProfile(httpProfile=HttpProfile(endpoint=f"127.0.0.1:{port}", protocol="http"), language="en-US")
    return iotcloud_client.IotcloudClient(credential.Credential(secret_id, secret_key), "ap-guangzhou", profile)


def _refused(client: Any) -> bool:
    try:
        request = models.DescribeProductsRequest()
        request.Offset, request.Limit = 0, 10
        client.DescribeProducts(request)
    except TencentCloudSDKException as exc:
        assert exc.get_code() == "AuthFailure.SecretIdNotFound", exc
        return True
    return False


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_keys_disable_takes_effect_on_every_node_within_half_a_second(kind: str, tmp_path: Path) -> None:
    with database(kind, tmp_path) as url:
        nodes = []
        try:
            for name in ("a", "b"):
                data_dir = tmp_path / name
                data_dir.mkdir()
                env = {
                    **os.environ,
                    "FLEETOPS_DATA_DIR": str(data_dir),
                    "FLEETOPS_DATABASE_URL": url,
                    "FLEETOPS_PORT": str(free_port()),
                    "FLEETOPS_MQTT_PORT": str(free_port()),
                }
                node = ServeProcess(data_dir, env)
                node.start()  # one after the other: the first creates the default key
                nodes.append(node)
            saved = json.loads((tmp_path / "a" / "credentials.json").read_text())
            clients = [_client(node.port, saved["SecretId"], saved["SecretKey"]) for node in nodes]
            for _ in range(3):  # both nodes now hold the key in memory
                assert not any(_refused(client) for client in clients)
            subprocess.run(
                [FLEETOPS, "keys", "disable", saved["SecretId"], "--database", url],
                env={**os.environ, "FLEETOPS_DATA_DIR": str(tmp_path / "a")},
                check=True,
                capture_output=True,
            )
            disabled_at = time.monotonic()
            for client in clients:
                while not _refused(client):
                    assert time.monotonic() - disabled_at < 0.5, "a disabled key still worked after 0.5 s"
                    time.sleep(0.02)  # under the rate limit
            assert all(_refused(client) for client in clients)
        finally:
            for node in nodes:
                node.kill()

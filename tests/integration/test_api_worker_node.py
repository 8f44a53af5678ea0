"""An API worker's node (``Role.API``: no engine, no broker) answers every action it keeps exactly as the whole
node does, on SQLite and PostgreSQL, and hands everything else on (docs/deployment.md#api-worker-processes)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from fleetops.api.forwarding import LOCAL_ACTIONS, Forwarder
from fleetops.node import Node, Role
from fleetops.settings import Settings
from tests.asgi_client import Answered, call
from tests.raw_client import tc3_headers
from tests.support import QuietMessaging, update_shadow_order


def signed(key: tuple[str, str], action: str, params: dict[str, Any], now: int) -> tuple[list[tuple[str, str]], bytes]:
    body = json.dumps(params).encode()
    headers = tc3_headers(host="h", secret_id=key[0], secret_key=key[1], action=action, body=body, timestamp=now)
    return list(headers.items()), body


async def ask(app: Any, key: tuple[str, str], action: str, params: dict[str, Any], now: int) -> dict[str, Any]:
    headers, body = signed(key, action, params, now)
    return (await call(app, headers, body)).envelope()


def without_request_id(answered: Answered) -> dict[str, Any]:
    response = answered.envelope()
    response.pop("RequestId")
    return response


async def test_a_worker_answers_each_read_action_as_the_node_and_forwards_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    now = int(time.time())
    settings = Settings(data_dir=tmp_path, database_url=database_url, workers=2)
    # one clock for both, so that the answers' own timestamps agree
    node = await Node.open(settings, lambda: float(now), messaging_factory=lambda _handler: QuietMessaging())
    worker = await Node.open(settings, lambda: float(now), role=Role.API)
    try:
        account = await node.stores.accounts.create_account("acct", now)
        api_key = await node.stores.accounts.create_key(account, now)
        key = (api_key.secret_id, api_key.secret_key)
        whole = node.app(manage_services=False)
        assert worker.relay is not None
        # no primary behind this worker: anything it forwarded would be ServiceUnavailable
        front = worker.worker_app(Forwarder(str(tmp_path / "no-primary.sock")))

        product = (await ask(whole, key, "CreateProduct", {"ProductName": "lamps"}, now))["ProductId"]
        for name in ("lamp-1", "lamp-2"):
            await ask(whole, key, "CreateDevice", {"ProductId": product, "DeviceName": name}, now)
        state = {"ProductId": product, "DeviceName": "lamp-1", "State": '{"desired":{"on":true}}', "ShadowVersion": 0}
        await ask(whole, key, "UpdateDeviceShadow", state, now)
        order = update_shadow_order(product, "^lamp-", '{"color":"red"}', TrackOutcomes=True)
        task = (await ask(whole, key, "CreateTask", order, now))["TaskId"]

        reads: Sequence[tuple[str, dict[str, Any]]] = [
            ("DescribeProduct", {"ProductId": product}),
            ("DescribeProduct", {"ProductId": "lamps"}),  # the ProductName hint
            ("DescribeProducts", {"Offset": 0, "Limit": 10}),
            ("DescribeDevice", {"ProductID": product, "DeviceName": "lamp-1"}),
            ("DescribeDevice", {"ProductID": product, "DeviceName": "nope"}),
            ("DescribeDevices", {"ProductId": product, "Offset": 0, "Limit": 10}),
            ("DescribeDeviceShadow", {"ProductId": product, "DeviceName": "lamp-1"}),
            ("DescribeDeviceShadow", {"ProductId": product, "DeviceName": "lamp-9"}),
            ("DescribeTask", {"Id": task, "IncludeOutcomeCounts": True}),
            ("DescribeTask", {"Id": "nope"}),
            ("DescribeTasks", {"Offset": 0, "Limit": 10}),
            ("DescribeTaskDevices", {"Id": task, "Offset": 0, "Limit": 10}),
            ("PreviewTask", {**order, "DeviceNameFilter": "^lamp-1"}),
            ("DescribeTask", {"Id": task, "Bogus": 1}),  # the decoding's errors too
        ]
        assert {action for action, _ in reads} == LOCAL_ACTIONS
        errors = 0
        for action, params in reads:
            headers, body = signed(key, action, params, now)
            by_node = without_request_id(await call(whole, headers, body))
            by_worker = without_request_id(await call(front, headers, body))
            assert by_worker == by_node, action
            errors += "Error" in by_worker
        assert errors == 5

        # a write, and a v1-signed read, go to the primary (none here): never done by the worker
        headers, body = signed(key, "UpdateDeviceShadow", state, now)
        assert (await call(front, headers, body)).envelope()["Error"]["Code"] == "ServiceUnavailable"
        v1 = await call(front, [("host", "h")], method="GET", query=b"Action=DescribeTask&Id=" + task.encode())
        assert v1.envelope()["Error"]["Code"] == "ServiceUnavailable"
        described = await ask(whole, key, "DescribeDeviceShadow", {"ProductId": product, "DeviceName": "lamp-1"}, now)
        assert json.loads(described["Data"])["payload"]["version"] == 1

        # what the worker counted, for the primary's /metrics
        batch = orjson.loads(worker.relay.take() or b"")
        counted = {(action, outcome): len(latencies) for action, outcome, latencies in batch["requests"]}
        assert sum(counted.values()) == len(reads) + 2
        assert counted[("DescribeTask", "OK")] == 1
        assert counted[("UpdateDeviceShadow", "ServiceUnavailable")] == 1
    finally:
        await worker.close()
        await node.close()

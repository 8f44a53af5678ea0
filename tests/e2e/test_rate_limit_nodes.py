"""The API rate limit holds for the whole deployment: two `fleetops serve` processes on one PostgreSQL database,
called through the official SDK, serve at most the limit per SecretId and action in one second between them
(docs/limits.md#the-api-rate-limit)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.iotcloud.v20180614 import models

from tests.serve_process import ServeProcess, serve_nodes
from tests.support import LiveServer, postgres_database, sdk_client

pytestmark = pytest.mark.postgres

LIMIT = 5


class Endpoint:
    """What sdk_client reads of a LiveServer: the endpoint and the key."""

    def __init__(self, endpoint: str, secret_id: str, secret_key: str) -> None:
        self.endpoint, self.secret_id, self.secret_key = endpoint, secret_id, secret_key


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[str, list[ServeProcess]]]:
    with postgres_database() as url:
        # each node its own embedded broker: the API is what counts
        with serve_nodes(tmp_path, url, FLEETOPS_RATE_LIMIT_PER_S=str(LIMIT), FLEETOPS_LOG_LEVEL="WARNING") as nodes:
            yield url, nodes


def new_key(url: str) -> tuple[str, str]:
    from fleetops.store.accounts import AccountStore
    from fleetops.store.database import open_database

    async def create() -> tuple[str, str]:
        db = open_database(url)
        try:
            accounts = AccountStore(db)
            key = await accounts.create_key(await accounts.create_account("second", int(time.time())), 0)
            return key.secret_id, key.secret_key
        finally:
            await db.dispose()

    return asyncio.run(create())


def outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except TencentCloudSDKException as exc:
        if exc.get_code() == "RequestLimitExceeded":
            assert exc.get_message() == (
                f"More than {LIMIT} DescribeProducts requests per second for this SecretId. Slow down and retry."
            )
        return str(exc.get_code())
    return "OK"


def describe_products(client: Any) -> Callable[[], Any]:
    req = models.DescribeProductsRequest()
    req.Offset, req.Limit = 0, 10
    return lambda: client.DescribeProducts(req)


def describe_product(client: Any) -> Callable[[], Any]:
    req = models.DescribeProductRequest()
    req.ProductId = "NOPE000000"
    return lambda: client.DescribeProduct(req)


def at_next_second() -> None:
    time.sleep(1 - time.time() % 1 + 0.01)


def in_one_window(calls: list[Callable[[], Any]]) -> list[str] | None:
    """The outcomes of the calls, made one after the other from the start of a second; None if the last answer
    came in the next second (a slow machine), so that the round says nothing of one window."""
    at_next_second()
    window = int(time.time())
    outcomes = [outcome(call) for call in calls]
    return outcomes if int(time.time()) == window else None


def test_two_nodes_serve_at_most_the_limit_per_key_and_action_in_all(
    two_nodes: tuple[str, list[ServeProcess]],
) -> None:
    url, nodes = two_nodes
    saved = json.loads((nodes[0].data_dir / "credentials.json").read_text())
    clients = [
        sdk_client(cast(LiveServer, Endpoint(f"127.0.0.1:{node.port}", saved["SecretId"], saved["SecretKey"])))
        for node in nodes
    ]
    other_sid, other_skey = new_key(url)
    other_key = sdk_client(cast(LiveServer, Endpoint(f"127.0.0.1:{nodes[1].port}", other_sid, other_skey)))

    limited = [describe_products(clients[i % 2]) for i in range(16)]  # to the two nodes in turn
    unaffected = [describe_product(clients[0]), describe_product(clients[1]), describe_products(other_key)]
    for _attempt in range(5):
        outcomes = in_one_window(limited + unaffected)
        if outcomes is not None:
            break
    else:
        pytest.fail("no round of 19 calls fitted in one second")
    by_node = [outcomes[0:16:2], outcomes[1:16:2]]
    assert outcomes[:16].count("OK") == LIMIT, outcomes  # all of it, and no more, between the two nodes
    assert set(outcomes[:16]) == {"OK", "RequestLimitExceeded"}
    assert all("OK" in served for served in by_node), by_node  # neither node is starved
    # another action of the key, and the same action with another key, are not limited by that
    assert outcomes[16:] == ["ResourceNotFound.ProductNotExist", "ResourceNotFound.ProductNotExist", "OK"]

    # the next window serves again, on both nodes
    for _attempt in range(5):
        again = in_one_window([describe_products(clients[1]), describe_products(clients[0])] * 4)
        if again is not None:
            break
    else:
        pytest.fail("no round of 8 calls fitted in one second")
    assert again.count("OK") == LIMIT and "OK" in again[0::2] and "OK" in again[1::2], again

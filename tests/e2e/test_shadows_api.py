"""Issue: device shadows through the official SDK (DescribeDeviceShadow, UpdateDeviceShadow), the delta
push after a cloud write, and the device's own MQTT get/update sharing the same shadow; on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.errors import BrokerUnavailable
from fleetops.ports.messaging import Delivery
from tests.support import LiveServer, QuietMessaging, sdk_client, sdk_error_code, server_on


class RecordingPublisher:
    """A stand-in for the broker: records what the backend publishes, or fails like a broker that is down."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], int]] = []
        self.down = False
        self._lock = threading.Lock()

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await self.publish_many([(topic, payload)], qos)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]], qos: int) -> list[Delivery]:
        if self.down:
            raise BrokerUnavailable("broker is down")
        with self._lock:
            self.messages.extend((topic, orjson.loads(payload), qos) for topic, payload in messages)
        return [Delivery.UNKNOWN] * len(messages)

    def subscribed(self, topic: str) -> bool | None:
        return None

    def online(self, product_id: str, device_name: str) -> bool | None:
        return None

    def take(self) -> list[tuple[str, dict[str, Any], int]]:
        with self._lock:
            taken, self.messages = self.messages, []
        return taken


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live server per database for the whole module (tests use products of their own)."""
    broker = QuietMessaging(RecordingPublisher())  # nothing listens, the delta pushes are recorded
    with server_on(request.param, tmp_path_factory.mktemp("shadows-api"), messaging_factory=lambda _: broker) as live:
        live.extra["broker"] = broker
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


@pytest.fixture
def publisher(server: LiveServer) -> Iterator[RecordingPublisher]:
    recording: RecordingPublisher = server.extra["broker"].publisher
    recording.take()
    try:
        yield recording
    finally:
        recording.down = False


def new_device(client: Any, name: str = "lamp") -> str:
    req = models.CreateProductRequest()
    req.ProductName = "p" + secrets.token_hex(6)
    pid = str(client.CreateProduct(req).ProductId)
    dev = models.CreateDeviceRequest()
    dev.ProductId, dev.DeviceName = pid, name
    client.CreateDevice(dev)
    return pid


def describe(client: Any, pid: str, name: str = "lamp") -> dict[str, Any]:
    req = models.DescribeDeviceShadowRequest()
    req.ProductId, req.DeviceName = pid, name
    data = client.DescribeDeviceShadow(req).Data
    assert isinstance(data, str)  # the vendor returns the document serialized into a string
    parsed: dict[str, Any] = json.loads(data)
    return parsed


def update(
    client: Any, pid: str, state: Any, version: int = 0, name: str = "lamp", prefix: str | None = None
) -> dict[str, Any]:
    req = models.UpdateDeviceShadowRequest()
    req.ProductId, req.DeviceName, req.ShadowVersion = pid, name, version
    req.State = state if isinstance(state, str) else json.dumps(state)
    if prefix is not None:
        req.Prefix = prefix
    parsed: dict[str, Any] = json.loads(client.UpdateDeviceShadow(req).Data)
    return parsed


def device_request(server: LiveServer, pid: str, message: dict[str, Any], name: str = "lamp") -> dict[str, Any]:
    """What the device gets back on $shadow/operation/result/{pid}/{dn} for one request."""
    reply = server.run(server.node.shadow_handler.handle_shadow_request(pid, name, orjson.dumps(message)), timeout_s=30)
    assert reply is not None
    parsed: dict[str, Any] = orjson.loads(reply)
    return parsed


def test_new_device_has_an_empty_shadow_at_version_zero(client: Any) -> None:
    pid = new_device(client)
    data = describe(client, pid)
    assert data["type"] == "get" and data["result"] == 0
    assert data["payload"]["state"] == {"reported": {}}
    assert data["payload"]["version"] == 0
    assert data["payload"]["metadata"] == {"reported": {}}


def test_update_merges_desired_checks_the_version_and_pushes_the_delta(
    client: Any, publisher: RecordingPublisher
) -> None:
    pid = new_device(client)
    data = update(client, pid, {"desired": {"color": "red", "level": {"a": 1}}}, version=0)
    assert (data["type"], data["result"]) == ("update", 0)
    assert data["payload"]["state"] == {"desired": {"color": "red", "level": {"a": 1}}}
    assert data["payload"]["version"] == 1
    stamp = data["payload"]["timestamp"]
    assert stamp > 10**12  # milliseconds
    assert data["payload"]["metadata"] == {
        "desired": {"color": {"timestamp": stamp}, "level": {"a": {"timestamp": stamp}}}
    }

    [(topic, push, qos)] = publisher.take()
    assert topic == f"$shadow/operation/result/{pid}/lamp" and qos == 0
    assert push["type"] == "delta" and "clientToken" not in push
    assert push["payload"]["state"] == {"color": "red", "level": {"a": 1}}  # flat, not wrapped in desired
    assert push["payload"]["version"] == 1

    code = sdk_error_code(lambda: update(client, pid, {"desired": {"color": "blue"}}, version=5))
    assert code == "FailedOperation.UpdateVersionNotMatch"
    assert describe(client, pid)["payload"]["version"] == 1
    assert publisher.take() == []

    # null removes a key; the right version is accepted; a nested object merges
    data = update(client, pid, {"desired": {"color": None, "level": {"b": 2}}}, version=1)
    assert data["payload"]["version"] == 2
    shown = describe(client, pid)["payload"]
    assert shown["state"]["desired"] == {"level": {"a": 1, "b": 2}}
    assert shown["state"]["delta"] == {"level": {"a": 1, "b": 2}}
    assert set(shown["metadata"]["desired"]) == {"level"}
    [(_, push, _)] = publisher.take()
    assert push["payload"]["state"] == {"level": {"b": 2}}

    # only deletions: the version moves, nothing is pushed
    assert update(client, pid, {"desired": {"level": None}})["payload"]["version"] == 3
    assert publisher.take() == []
    # "desired": null removes the whole section
    update(client, pid, {"desired": None})
    assert describe(client, pid)["payload"]["state"] == {"reported": {}}

    # the $template prefix only changes the push topic
    update(client, pid, {"desired": {"mode": 1}}, prefix="$template")
    [(topic, _, _)] = publisher.take()
    assert topic == f"$template/operation/result/{pid}/lamp"


def test_update_succeeds_when_the_broker_is_down(client: Any, publisher: RecordingPublisher) -> None:
    pid = new_device(client)
    publisher.down = True
    data = update(client, pid, {"desired": {"power": "on"}})
    assert data["payload"]["version"] == 1
    assert describe(client, pid)["payload"]["state"]["delta"] == {"power": "on"}


def test_update_errors(client: Any) -> None:
    pid = new_device(client)

    def code(state: Any, **kwargs: Any) -> str:
        return sdk_error_code(lambda: update(client, pid, state, **kwargs))

    assert code("{not json") == "InvalidParameterValue.InvalidJSON"
    assert code("[1, 2]") == "InvalidParameterValue.InvalidJSON"
    assert code({"reported": {"a": 1}}) == "InvalidParameterValue.JSONHasInvalidNode"
    assert code({"desired": {"a": 1}, "delta": {}}) == "InvalidParameterValue.JSONHasInvalidNode"
    assert code({"desired": {"a": [1, None]}}) == "InvalidParameterValue.JSONHasInvalidNode"
    assert code({"desired": {"big": "x" * 8200}}) == "InvalidParameterValue.JSONSizeExceedLimit"
    seven_levels = {"desired": {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}}  # the state object is level 1
    assert code(seven_levels) == "InvalidParameterValue.JSONLevelExceedLimit"
    assert code({"desired": {"a": 1}}, prefix="$sys") == "InvalidParameterValue.PrefixInvalid"
    assert describe(client, pid)["payload"]["version"] == 0  # nothing was written
    # at the limits: 6 levels (state object = level 1) and a State near 8192 bytes are accepted
    assert update(client, pid, {"desired": {"a": {"b": {"c": {"d": {"e": 1}}}}}})["payload"]["version"] == 1
    assert update(client, pid, {"desired": {"a": None, "big": "x" * 8000}})["payload"]["version"] == 2

    missing = "ResourceNotFound.ProductOrDeviceNotExist"
    assert sdk_error_code(lambda: update(client, pid, {"desired": {}}, name="ghost")) == missing
    assert sdk_error_code(lambda: update(client, "NOPE000000", {"desired": {}})) == missing
    assert sdk_error_code(lambda: describe(client, pid, "ghost")) == missing
    assert sdk_error_code(lambda: describe(client, "NOPE000000")) == missing
    assert sdk_error_code(lambda: describe(client, pid, "bad name")) == "InvalidParameterValue"


def test_another_account_cannot_read_or_write_the_shadow(server: LiveServer, client: Any) -> None:
    pid = new_device(client)
    update(client, pid, {"desired": {"secret": 1}})
    secret_id, secret_key = server.new_account()
    other = sdk_client(server, secret_id=secret_id, secret_key=secret_key)
    missing = "ResourceNotFound.ProductOrDeviceNotExist"
    assert sdk_error_code(lambda: describe(other, pid)) == missing
    assert sdk_error_code(lambda: update(other, pid, {"desired": {"secret": 2}})) == missing
    shown = describe(client, pid)["payload"]
    assert (shown["version"], shown["state"]["desired"]) == (1, {"secret": 1})


def test_device_and_cloud_share_one_shadow(server: LiveServer, client: Any) -> None:
    pid = new_device(client)
    # never modified: the device sees {"reported":{}} at version 0
    got = device_request(server, pid, {"type": "get", "clientToken": "t-0"})
    assert got["clientToken"] == "t-0" and got["result"] == 0
    assert got["payload"]["state"] == {"reported": {}} and got["payload"]["version"] == 0

    reply = device_request(
        server, pid, {"type": "update", "state": {"reported": {"power": "off"}}, "clientToken": "t-1"}
    )
    assert (reply["type"], reply["result"], reply["clientToken"]) == ("update", 0, "t-1")
    assert reply["payload"] == {
        "state": {"reported": {"power": "off"}},
        "timestamp": reply["timestamp"],
        "version": 1,
    }
    update(client, pid, {"desired": {"power": "on"}}, version=1)
    got = device_request(server, pid, {"type": "get", "clientToken": 7})
    assert got["clientToken"] == "7"  # a numeric token comes back as text
    assert got["payload"]["state"] == {
        "reported": {"power": "off"},
        "desired": {"power": "on"},
        "delta": {"power": "on"},
    }
    # a stale version is refused with the whole current document
    stale = device_request(server, pid, {"type": "update", "state": {"reported": {"power": "on"}}, "version": 1})
    assert stale["result"] == 5005 and stale["payload"]["version"] == 2
    # the acknowledgement: report and clear desired in one message
    ack = device_request(
        server,
        pid,
        {"type": "update", "state": {"reported": {"power": "on"}, "desired": None}, "version": 2},
    )
    assert ack["result"] == 0 and ack["payload"]["version"] == 3
    assert describe(client, pid)["payload"]["state"] == {"reported": {"power": "on"}}

    assert device_request(server, pid, {"type": "delete"})["result"] == 5101
    bad = server.run(server.node.shadow_handler.handle_shadow_request(pid, "lamp", b"not json"))
    assert bad is not None and orjson.loads(bad)["result"] == 5004
    gone = device_request(server, pid, {"type": "get", "clientToken": "x"}, name="ghost")
    assert gone["result"] == 5001 and gone["clientToken"] == "x"


def test_concurrent_api_and_device_writes_lose_nothing(server: LiveServer, client: Any) -> None:
    pid = new_device(client)
    api_writes, device_writes = 10, 10

    def api(i: int) -> None:
        update(client, pid, {"desired": {f"api{i}": i}})

    async def device() -> None:
        async def one(i: int) -> None:
            reply = await server.node.shadow_handler.handle_shadow_request(
                pid, "lamp", orjson.dumps({"type": "update", "state": {"reported": {f"dev{i}": i}}})
            )
            assert reply is not None and orjson.loads(reply)["result"] == 0

        await asyncio.gather(*(one(i) for i in range(device_writes)))

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(api, i) for i in range(api_writes)]
        server.run(device())
        for f in futures:
            f.result()
    shown = describe(client, pid)["payload"]
    assert shown["version"] == api_writes + device_writes
    assert set(shown["state"]["desired"]) == {f"api{i}" for i in range(api_writes)}
    assert set(shown["state"]["reported"]) == {f"dev{i}" for i in range(device_writes)}

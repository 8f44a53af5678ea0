"""Issue "Batch tasks": CreateTask, DescribeTask, DescribeTasks and CancelTask through the official SDK, with
real paho-mqtt devices connected to the node's MQTT broker.

The devices connect to the node's own embedded broker; the delivery of both task types also to devices on
Mosquitto with the fleetops plugin. (The engine's behaviour on PostgreSQL is covered by
tests/integration/test_task_engine.py.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.backend.registration import register_devices
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.ports.messaging import DeviceCredentials
from tests.brokers import BROKERS, EMBEDDED, DeviceSide, node_with_broker
from tests.mqtt_support import PahoDevice, Received
from tests.support import LiveServer, embedded_broker, new_product, sdk_client, sdk_error_code, start_server

WAITING, PROCESSING, COMPLETED, FAILED, CANCELLED = 1, 2, 3, 4, 5


# small batches, so that a task over a few thousand devices takes many transactions
NODE_SETTINGS = {"task_batch_size": 20, "task_poll_interval_s": 0.1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp("tasks-api")
    live = start_server(data / "data", f"sqlite:///{data / 'fleetops.db'}", **NODE_SETTINGS)  # type: ignore[arg-type]
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module", params=BROKERS)
def side(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeviceSide]:
    """The module's embedded server, or a node on Mosquitto with the plugin."""
    if request.param == EMBEDDED:
        embedded: EmbeddedBroker = request.getfixturevalue("mqtt")
        yield DeviceSide(EMBEDDED, request.getfixturevalue("server"), embedded.port)
        return
    plugin: Path = request.getfixturevalue("built_plugin")
    data = tmp_path_factory.mktemp("tasks-plugin")
    with node_with_broker(request.param, data, plugin, **NODE_SETTINGS) as device_side:
        yield device_side


@pytest.fixture(scope="module")
def mqtt(server: LiveServer) -> EmbeddedBroker:
    broker: EmbeddedBroker = embedded_broker(server)
    return broker


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


def create_devices(client: Any, pid: str, names: list[str]) -> dict[str, str]:
    psks = {}
    for name in names:
        req = models.CreateDeviceRequest()
        req.ProductId, req.DeviceName = pid, name
        psks[name] = str(client.CreateDevice(req).DevicePsk)
    return psks


def register_many(server: LiveServer, pid: str, names: list[str]) -> None:
    """Thousands of devices straight through the store (the API would take minutes)."""

    async def register() -> None:
        key = await server.node.stores.accounts.get_key(server.secret_id)
        assert key is not None
        store = server.node.stores.devices
        await register_devices(store, key.account_id, pid, names, now_s=int(time.time()), max_devices=10**6)

    server.run(register())


async def connect(port: int, pid: str, psks: dict[str, str], *topics: str) -> dict[str, PahoDevice]:
    """Connect each device and subscribe it to ``topics`` (``{pid}``, ``{dn}`` filled in)."""
    devices = {}
    for name, psk in psks.items():
        device = PahoDevice(DeviceCredentials(pid, name, psk, True))
        assert await device.connect(port) == 0
        for topic in topics:
            assert await device.subscribe(topic.format(pid=pid, dn=name)) == 0
        devices[name] = device
    return devices


async def drain(device: PahoDevice, settle_s: float = 0.3) -> list[Received]:
    """Every message that arrives until none has for ``settle_s``."""
    got = []
    while True:
        try:
            got.append(await device.receive(settle_s))
        except TimeoutError:
            return got


def create_task(
    client: Any,
    pid: str,
    task_type: str,
    name_filter: str,
    tasks: dict[str, Any],
    *,
    schedule: int = 0,
    max_execution_s: int | None = None,
) -> str:
    req = models.CreateTaskRequest()
    params: dict[str, Any] = {
        "TaskType": task_type,
        "ProductId": pid,
        "DeviceNameFilter": name_filter,
        "ScheduleTimeInSeconds": schedule,
        "Tasks": tasks,
    }
    if max_execution_s is not None:
        params["MaxExecutionTimeInSeconds"] = max_execution_s
    req.from_json_string(json.dumps(params))
    return str(client.CreateTask(req).TaskId)


def update_shadow(desired: dict[str, Any]) -> dict[str, Any]:
    return {"UpdateShadowTask": {"Desired": json.dumps(desired)}}


def publish(topic: str, payload: str) -> dict[str, Any]:
    return {"PublishMessageTask": {"Topic": topic, "Payload": payload}}


def describe(client: Any, task_id: str) -> Any:
    req = models.DescribeTaskRequest()
    req.Id = task_id
    return client.DescribeTask(req)


async def wait_status(client: Any, task_id: str, *statuses: int, timeout_s: float = 15) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        task = describe(client, task_id)
        if task.Status in statuses:
            return task
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still in status {task.Status}")
        await asyncio.sleep(0.05)


def shadow_version(client: Any, pid: str, name: str) -> int:
    req = models.DescribeDeviceShadowRequest()
    req.ProductId, req.DeviceName = pid, name
    return int(json.loads(client.DescribeDeviceShadow(req).Data)["payload"]["version"])


# --- the seed's example ------------------------------------------------------------------------------------


def test_the_documented_get_request_completes(server: LiveServer) -> None:
    client = sdk_client(server, "TC3-GET")  # Tasks.UpdateShadowTask.Desired={"color":"red"} in the query
    pid = new_product(client)
    create_devices(client, pid, ["lamp1", "lamp2"])
    started = int(time.time())
    task_id = create_task(client, pid, "UpdateShadow", "", update_shadow({"color": "red"}))

    task = asyncio.run(wait_status(client, task_id, COMPLETED))

    assert (task.Type, task.Id, task.ProductId) == ("UpdateShadow", task_id, pid)
    assert (task.AllDeviceCnt, task.DoneDeviceCnt, task.Percent, task.RetCode, task.ErrMsg) == (
        2,
        2,
        100,
        0,
        "",
    )
    assert started <= task.CreateTime <= task.ScheduleTime <= task.UpdateTime <= task.DoneTime <= time.time()
    req = models.DescribeDeviceShadowRequest()
    req.ProductId, req.DeviceName = pid, "lamp2"
    data = json.loads(client.DescribeDeviceShadow(req).Data)
    assert data["payload"]["state"]["desired"] == {"color": "red"} and data["payload"]["version"] == 1


# --- devices -----------------------------------------------------------------------------------------------


async def test_every_matching_device_gets_exactly_one_delta_or_message(side: DeviceSide) -> None:
    client = sdk_client(side.server)
    pid = new_product(client)
    psks = create_devices(client, pid, ["lamp-1", "lamp-2", "lamp-3", "door-1", "door-2", "lamp-offline"])
    online = {name: psk for name, psk in psks.items() if name != "lamp-offline"}
    devices = await connect(side.port, pid, online, "$shadow/operation/result/{pid}/{dn}", "{pid}/{dn}/control")
    try:
        shadow_task = create_task(client, pid, "UpdateShadow", "^lamp", update_shadow({"power": "on", "lvl": 3}))
        message_task = create_task(client, pid, "PublishMessage", "door", publish("control", "close"))
        done = await wait_status(client, shadow_task, COMPLETED)
        assert (done.AllDeviceCnt, done.DoneDeviceCnt) == (4, 4)  # lamp-offline too: its shadow is written
        assert (await wait_status(client, message_task, COMPLETED)).DoneDeviceCnt == 2

        for name, device in devices.items():
            got = await drain(device)
            if name.startswith("lamp"):
                assert len(got) == 1, (name, got)
                assert got[0].topic == f"$shadow/operation/result/{pid}/{name}" and got[0].qos == 0
                delta = orjson.loads(got[0].payload)
                assert delta["type"] == "delta" and "clientToken" not in delta
                assert delta["payload"]["state"] == {"power": "on", "lvl": 3}
                assert delta["payload"]["version"] == 1
                assert set(delta["payload"]["metadata"]) == {"power", "lvl"}
            else:
                assert [(m.topic, m.payload) for m in got] == [(f"{pid}/{name}/control", b"close")]
        assert shadow_version(client, pid, "lamp-offline") == 1
        assert shadow_version(client, pid, "door-1") == 0
    finally:
        for device in devices.values():
            device.close()


async def test_a_scheduled_task_waits_and_a_cancelled_one_touches_nothing(client: Any, mqtt: EmbeddedBroker) -> None:
    pid = new_product(client)
    psks = create_devices(client, pid, ["lamp", "door"])
    devices = await connect(mqtt.port, pid, psks, "{pid}/{dn}/control")
    try:
        start = int(time.time()) + 2
        scheduled = create_task(client, pid, "PublishMessage", "lamp", publish("control", "on"), schedule=start)
        cancelled = create_task(client, pid, "UpdateShadow", "door", update_shadow({"x": 1}), schedule=start)
        cancel = models.CancelTaskRequest()
        cancel.Id = cancelled
        client.CancelTask(cancel)
        assert describe(client, cancelled).Status == CANCELLED
        assert sdk_error_code(lambda: client.CancelTask(cancel)) == "FailedOperation.AsyncTaskAlreadyStarted"
        assert describe(client, scheduled).Status == WAITING
        assert await devices["lamp"].nothing_received(start - time.time() - 0.3)

        got = await devices["lamp"].receive(5)
        assert time.time() >= start and got.payload == b"on"
        task = await wait_status(client, scheduled, COMPLETED)
        assert task.ScheduleTime == start and task.UpdateTime - start <= 1  # started within a second
        cancel.Id = scheduled
        assert sdk_error_code(lambda: client.CancelTask(cancel)) == "FailedOperation.AsyncTaskAlreadyStarted"

        assert await devices["door"].nothing_received(0.5)
        assert shadow_version(client, pid, "door") == 0
        assert describe(client, cancelled).Status == CANCELLED
    finally:
        for device in devices.values():
            device.close()


# --- limits and errors -------------------------------------------------------------------------------------


async def test_the_deadline_fails_a_task_that_cannot_finish_in_time(server: LiveServer, client: Any) -> None:
    pid = new_product(client)
    register_many(server, pid, [f"dev{i:05d}" for i in range(30_000)])  # 1,500 batches of 20
    task_id = create_task(client, pid, "UpdateShadow", "", update_shadow({"v": 1}), max_execution_s=1)

    task = await wait_status(client, task_id, FAILED, COMPLETED)

    assert task.Status == FAILED and task.RetCode == 1
    assert 0 < task.DoneDeviceCnt < task.AllDeviceCnt == 30_000
    assert task.ErrMsg == f"deadline of 1 s passed after {task.DoneDeviceCnt} of 30000 devices"
    assert task.Percent == 100 * task.DoneDeviceCnt // 30_000
    assert task.DoneTime - task.ScheduleTime in (2, 3)
    assert shadow_version(client, pid, "dev29999") == 0 and shadow_version(client, pid, "dev00000") == 1


def test_the_pending_cap(server: LiveServer) -> None:
    secret_id, secret_key = server.new_account()
    client = sdk_client(server, secret_id=secret_id, secret_key=secret_key)
    pid = new_product(client)
    later = int(time.time()) + 3600
    ids = [create_task(client, pid, "PublishMessage", "", publish("c", "x"), schedule=later) for _ in range(10)]

    req = models.CreateTaskRequest()
    req.from_json_string(
        json.dumps(
            {
                "TaskType": "PublishMessage",
                "ProductId": pid,
                "DeviceNameFilter": "",
                "ScheduleTimeInSeconds": later,
                "Tasks": publish("c", "x"),
            }
        )
    )
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    with pytest.raises(TencentCloudSDKException) as refused:
        client.CreateTask(req)
    assert refused.value.get_code() == "LimitExceeded.PengingOrProcessingTasksExceedLimit"
    assert "at most 10" in refused.value.get_message()

    cancel = models.CancelTaskRequest()
    cancel.Id = ids[0]
    client.CancelTask(cancel)
    ids.append(str(client.CreateTask(req).TaskId))

    listing = models.DescribeTasksRequest()
    listing.Offset, listing.Limit = 0, 250
    page = client.DescribeTasks(listing)
    assert page.TotalCount == 11
    assert [t.Id for t in page.Tasks] == ids[::-1]  # newest first
    assert {t.Status for t in page.Tasks} == {WAITING, CANCELLED}
    listing.Offset, listing.Limit = 10, 5
    assert [t.Id for t in client.DescribeTasks(listing).Tasks] == [ids[0]]
    for task_id in ids[1:]:
        cancel.Id = task_id
        client.CancelTask(cancel)


def test_errors_name_the_problem(client: Any) -> None:
    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    pid = new_product(client)

    def failure(call: Any) -> tuple[str, str]:
        try:
            call()
        except TencentCloudSDKException as exc:
            return str(exc.get_code()), str(exc.get_message())
        raise AssertionError("the call succeeded")

    def create(**change: Any) -> Any:
        params = {
            "TaskType": "UpdateShadow",
            "ProductId": pid,
            "DeviceNameFilter": "",
            "ScheduleTimeInSeconds": 0,
            "Tasks": update_shadow({"a": 1}),
        } | change
        req = models.CreateTaskRequest()
        req.from_json_string(json.dumps(params))
        return lambda: client.CreateTask(req)

    code, message = failure(create(DeviceNameFilter="lamp(?=1)"))
    assert code == "InvalidParameterValue" and "DeviceNameFilter" in message and "RE2" in message
    assert failure(create(TaskType="Reboot"))[0] == "InvalidParameterValue"
    assert failure(create(ScheduleTimeInSeconds=int(time.time()) - 100))[0] == "InvalidParameterValue"
    assert failure(create(MaxExecutionTimeInSeconds=86401))[0] == "InvalidParameterValue"
    code, message = failure(create(Tasks=None))
    assert code == "MissingParameter" and "Tasks" in message
    code, message = failure(create(Tasks=update_shadow({"desired": {"a": 1}})))
    assert code == "InvalidParameterValue" and "the desired state itself" in message
    assert failure(create(Tasks=publish("control", "x")))[0] == "InvalidParameterValue"
    code, message = failure(create(Tasks=update_shadow({"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}})))
    assert code == "InvalidParameterValue" and "levels" in message
    assert failure(create(ProductId="NOPE000000"))[0] == "ResourceNotFound.ProductNotExist"

    req = models.DescribeTaskRequest()
    req.Id = "0" * 24
    assert sdk_error_code(lambda: client.DescribeTask(req)) == "ResourceNotFound.TaskNotExist"
    listing = models.DescribeTasksRequest()
    for limit in (0, 251):
        listing.Offset, listing.Limit = 0, limit
        assert sdk_error_code(lambda: client.DescribeTasks(listing)) == "InvalidParameterValue"


async def test_a_catastrophic_filter_runs_in_linear_time_while_the_api_answers(server: LiveServer, client: Any) -> None:
    pid = new_product(client)
    # (a+)+$ makes a backtracking engine take exponential time on these names (Python's re: hours)
    names = [f"{'a' * 43}{i:05d}" for i in range(5000)] + [f"{i:05d}{'a' * 43}" for i in range(5000)]
    register_many(server, pid, names)
    started = time.monotonic()
    task_id = create_task(client, pid, "PublishMessage", "(a+)+$", publish("control", "x"))
    slowest = 0.0
    while describe(client, task_id).Status != COMPLETED:
        assert time.monotonic() - started < 15
        call = time.monotonic()
        listing = models.DescribeTasksRequest()
        listing.Offset, listing.Limit = 0, 10
        client.DescribeTasks(listing)
        slowest = max(slowest, time.monotonic() - call)
        await asyncio.sleep(0.01)
    task = describe(client, task_id)
    assert (task.AllDeviceCnt, task.DoneDeviceCnt) == (5000, 5000)
    assert slowest < 0.5, f"an API call took {slowest:.2f} s while the task ran"

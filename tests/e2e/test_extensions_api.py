"""The task extensions through the official SDK (its generic ``CommonClient.call_json``, as docs/extensions.md
shows) with real paho-mqtt devices on the node's embedded gateway, on SQLite and on PostgreSQL.

The operator's journey of the issue: preview a filter, run an UpdateShadow whose converged count rises as the
devices report; a PublishMessage task with a slow ramp and an abort threshold, whose outcomes move from Offline
to Sent as devices connect, that stops itself when too many devices miss it, and whose create is retried with
the same ClientToken without a duplicate. Then each extension on its own, the two-account isolation of every
new action, and the Tencent SDK models, which still parse every answer of the extended actions.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from tencentcloud.iotcloud.v20180614 import models

from fleetops.backend.registration import register_devices
from fleetops.messaging.embedded import EmbeddedBroker
from fleetops.ports.messaging import DeviceCredentials
from tests.e2e.test_tasks_api import create_devices
from tests.mqtt_support import PahoDevice, Received
from tests.support import LiveServer, common_client, embedded_broker, new_product, sdk_client, sdk_error, server_on

PROCESSING, COMPLETED, FAILED, CANCELLED = 2, 3, 4, 5


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp(f"extensions-{request.param}")
    with server_on(request.param, data, task_batch_size=5, task_poll_interval_s=0.1) as live:
        yield live


@pytest.fixture(scope="module")
def mqtt(server: LiveServer) -> EmbeddedBroker:
    broker: EmbeddedBroker = embedded_broker(server)
    return broker


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    return sdk_client(server)


@pytest.fixture(scope="module")
def common(server: LiveServer) -> Any:
    return common_client(server)


def call(common: Any, action: str, params: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = common.call_json(action, params)["Response"]
    return answer


def error_of(common: Any, action: str, params: dict[str, Any]) -> tuple[str, str]:
    """(code, message) of an extension call that must fail."""
    return sdk_error(lambda: common.call_json(action, params))


async def device(mqtt: EmbeddedBroker, pid: str, name: str, psk: str, *topics: tuple[str, int]) -> PahoDevice:
    paho = PahoDevice(DeviceCredentials(pid, name, psk, True))
    assert await paho.connect(mqtt.port) == 0
    for topic, qos in topics:
        assert await paho.subscribe(topic.format(pid=pid, dn=name), qos) in (0, 1)
    return paho


def task_params(pid: str, name_filter: str, tasks: dict[str, Any], **extensions: Any) -> dict[str, Any]:
    return {
        "TaskType": "UpdateShadow" if "UpdateShadowTask" in tasks else "PublishMessage",
        "ProductId": pid,
        "DeviceNameFilter": name_filter,
        "ScheduleTimeInSeconds": 0,
        "Tasks": tasks,
        **extensions,
    }


def shadow_task(desired: dict[str, Any]) -> dict[str, Any]:
    return {"UpdateShadowTask": {"Desired": json.dumps(desired)}}


def message_task(topic: str, payload: str) -> dict[str, Any]:
    return {"PublishMessageTask": {"Topic": topic, "Payload": payload}}


def counts(common: Any, task_id: str) -> dict[str, int]:
    answer = call(common, "DescribeTask", {"Id": task_id, "IncludeOutcomeCounts": True})
    return {c["Outcome"]: c["DeviceCnt"] for c in answer["OutcomeCounts"]}


def outcomes(common: Any, task_id: str, **params: Any) -> dict[str, str]:
    answer = call(common, "DescribeTaskDevices", {"Id": task_id, "Offset": 0, "Limit": 250, **params})
    return {d["DeviceName"]: d["Outcome"] for d in answer["TaskDevices"]}


async def eventually(check: Any, timeout_s: float = 20) -> Any:
    """Poll ``check()`` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"still not the case after {timeout_s} s: {check}")
        await asyncio.sleep(0.05)


def status(common: Any, task_id: str) -> dict[str, Any]:
    return call(common, "DescribeTask", {"Id": task_id})


def report_applied(paho: PahoDevice, pid: str, name: str, delta: Received) -> None:
    """What a device does with a delta: apply it, report it, clear desired (the protocol's acknowledgement)."""
    state = json.loads(delta.payload)["payload"]["state"]
    update = {"type": "update", "state": {"reported": state, "desired": None}, "clientToken": f"{name}-1"}
    paho.publish(f"$shadow/operation/{pid}/{name}", json.dumps(update).encode())


# --- the operator's journey --------------------------------------------------------------------------------


async def test_the_operators_journey(client: Any, common: Any, mqtt: EmbeddedBroker) -> None:
    pid = new_product(client)
    names = [f"gate-{i:02d}" for i in range(40)]
    psks = create_devices(client, pid, names)
    devices: list[PahoDevice] = []
    try:
        # 1. preview a filter: the count now and the first names; nothing is created
        preview = call(common, "PreviewTask", task_params(pid, "^gate-0", shadow_task({"fw": "2.0"})))
        assert preview["MatchedDeviceCnt"] == 10
        assert preview["DeviceNames"] == names[:10]
        listing = models.DescribeTasksRequest()
        listing.Offset, listing.Limit = 0, 10
        tasks_before = client.DescribeTasks(listing).TotalCount

        # 2. an UpdateShadow whose converged count rises as the devices report
        shadowed = {
            n: await device(mqtt, pid, n, psks[n], ("$shadow/operation/result/{pid}/{dn}", 0)) for n in names[:4]
        }
        devices.extend(shadowed.values())
        update = task_params(pid, "^gate-0", shadow_task({"fw": "2.0"}), ConvergenceWindowInSeconds=600)
        shadow_id = call(common, "CreateTask", update)["TaskId"]
        await eventually(lambda: status(common, shadow_id)["Status"] == COMPLETED)
        assert counts(common, shadow_id) == {"Written": 10, "Converged": 0, "Superseded": 0, "NotConverged": 0}
        for reported, (name, paho) in enumerate(shadowed.items(), start=1):
            report_applied(paho, pid, name, await paho.receive())
            await eventually(lambda n=reported: counts(common, shadow_id)["Converged"] == n)
        assert outcomes(common, shadow_id, Outcome="Converged") == dict.fromkeys(shadowed, "Converged")

        # 3. a PublishMessage with a slow ramp and an abort threshold; 15 of its 40 devices are connected
        online = names[:10] + names[20:25]
        for name in online:
            devices.append(await device(mqtt, pid, name, psks[name], ("{pid}/{dn}/control", 1)))
        rollout = {
            "MaxDevicesPerSecond": 8,
            "BaseDevicesPerSecond": 2,
            "IncrementPercent": 100,
            "IncrementEveryDevices": 10,
        }
        publish = task_params(
            pid,
            "^gate-",
            message_task("control", "open"),
            ClientToken="journey-1",
            Rollout=rollout,
            AbortCriteria=[{"Outcome": "Offline", "ThresholdPercent": 50, "MinProcessedDevices": 30}],
            DeliverOnConnect=True,
        )
        publish_id = call(common, "CreateTask", publish)["TaskId"]
        assert call(common, "CreateTask", publish)["TaskId"] == publish_id  # a retry creates nothing

        # gate-10 is offline when its turn comes; it connects later and gets the message then, once
        await eventually(lambda: outcomes(common, publish_id).get("gate-10") == "Offline")
        late = await device(mqtt, pid, "gate-10", psks["gate-10"], ("{pid}/{dn}/control", 1))
        devices.append(late)
        got = await late.receive()
        assert (got.topic, got.payload, got.qos) == (f"{pid}/gate-10/control", b"open", 1)
        await eventually(lambda: outcomes(common, publish_id).get("gate-10") == "Acknowledged")

        # the task stops itself once more than half of at least 30 processed devices missed it: 2/s for the
        # first 10 devices (one a batch), 4/s for the next 10 (two), then 8/s (four); at 30 processed, 15 were
        # offline (50 %), at 34, 19 (55.9 %)
        stopped = await eventually(lambda: (s := status(common, publish_id))["Status"] != PROCESSING and s)
        assert stopped["Status"] == FAILED and stopped["RetCode"] == 2
        assert stopped["DoneDeviceCnt"] == 34 and stopped["AllDeviceCnt"] == 40
        assert stopped["ErrMsg"].startswith("aborted by AbortCriteria[0]: 19 of 34 processed devices (55.9 %) Offline")
        final = counts(common, publish_id)
        assert final["Sent"] + final["Acknowledged"] == 16 and final["Offline"] == 18  # gate-10 was reached later
        assert sum(final.values()) == 34
        assert "gate-34" not in outcomes(common, publish_id)  # never reached
        for paho in devices[4:19]:  # every connected device got the message exactly once
            first = await paho.receive()
            assert first.payload == b"open" and await paho.nothing_received(0.3)

        # the create retried with the same token: still the first task, nothing new
        assert call(common, "CreateTask", publish)["TaskId"] == publish_id
        assert client.DescribeTasks(listing).TotalCount == tasks_before + 2
        code, message = error_of(common, "CreateTask", {**publish, "DeliverOnConnect": False})
        assert code == "InvalidParameterValue" and "ClientToken `journey-1` was used" in message
    finally:
        for paho in devices:
            paho.close()


# --- each extension ----------------------------------------------------------------------------------------


async def test_late_delivery_respects_the_subscription_qos_and_the_deadline(
    client: Any, common: Any, mqtt: EmbeddedBroker
) -> None:
    pid = new_product(client)
    psks = create_devices(client, pid, ["late-a", "late-b", "late-c", "late-d"])
    devices: list[PahoDevice] = []
    try:
        params = task_params(
            pid, "^late-", message_task("cmd", "go"), DeliverOnConnect=True, MaxExecutionTimeInSeconds=4
        )
        task_id = call(common, "CreateTask", params)["TaskId"]
        await eventually(lambda: status(common, task_id)["Status"] == COMPLETED)
        assert set(outcomes(common, task_id).values()) == {"Offline"}

        a = await device(mqtt, pid, "late-a", psks["late-a"], ("{pid}/{dn}/cmd", 1))
        b = await device(mqtt, pid, "late-b", psks["late-b"], ("{pid}/{dn}/cmd", 0))
        devices += [a, b]
        assert ((await a.receive()).qos, (await b.receive()).qos) == (1, 0)
        await eventually(
            lambda: (
                outcomes(common, task_id)
                == {"late-a": "Acknowledged", "late-b": "Sent", "late-c": "Offline", "late-d": "Offline"}
            )
        )

        a.close()  # back again: once is once
        again = await device(mqtt, pid, "late-a", psks["late-a"], ("{pid}/{dn}/cmd", 1))
        devices.append(again)
        assert await again.nothing_received(0.5)

        # a device that subscribes to another topic first, then to the task's: delivered on the second
        c = await device(mqtt, pid, "late-c", psks["late-c"], ("{pid}/{dn}/other", 1))
        devices.append(c)
        assert await c.nothing_received(0.3)
        assert await c.subscribe(f"{pid}/late-c/cmd", 1) == 1
        assert (await c.receive()).payload == b"go"

        started = status(common, task_id)["ScheduleTime"]
        # MaxExecutionTimeInSeconds after the start (within a second of ScheduleTime) has passed
        await asyncio.sleep(max(0.0, started + 4 + 2.2 - time.time()))
        d = await device(mqtt, pid, "late-d", psks["late-d"], ("{pid}/{dn}/cmd", 1))
        devices.append(d)
        assert await d.nothing_received(0.5)
        assert outcomes(common, task_id)["late-d"] == "Offline"
    finally:
        for paho in devices:
            paho.close()


async def test_stop_ends_a_running_task_and_its_outcomes_say_who_was_reached(
    server: LiveServer, client: Any, common: Any
) -> None:
    pid = new_product(client)
    register(server, pid, [f"unit-{i:03d}" for i in range(200)])
    params = task_params(pid, "", shadow_task({"mode": "eco"}), TrackOutcomes=True, Rollout={"MaxDevicesPerSecond": 40})
    task_id = call(common, "CreateTask", params)["TaskId"]
    await eventually(lambda: status(common, task_id)["DoneDeviceCnt"] >= 40)
    code, _ = error_of(common, "CancelTask", {"Id": task_id})  # Tencent's rule stays
    assert code == "FailedOperation.AsyncTaskAlreadyStarted"
    assert call(common, "StopTask", {"Id": task_id})["Status"] == PROCESSING

    ended = await eventually(lambda: (s := status(common, task_id))["Status"] == CANCELLED and s)
    done = ended["DoneDeviceCnt"]
    assert 40 <= done < 200 and ended["ErrMsg"] == f"stopped by StopTask after {done} of 200 devices"
    answer = call(common, "DescribeTaskDevices", {"Id": task_id, "Offset": 0, "Limit": 250})
    assert answer["TotalCount"] == done
    assert [d["DeviceName"] for d in answer["TaskDevices"]] == [f"unit-{i:03d}" for i in range(done)]
    assert {d["WrittenVersion"] for d in answer["TaskDevices"]} == {1}
    shadow = models.DescribeDeviceShadowRequest()
    shadow.ProductId, shadow.DeviceName = pid, f"unit-{done:03d}"  # the first device not reached
    assert json.loads(client.DescribeDeviceShadow(shadow).Data)["payload"]["version"] == 0
    code, message = error_of(common, "StopTask", {"Id": task_id})
    assert code == "FailedOperation" and "ended already (status 5" in message
    waiting = call(common, "CreateTask", {**params, "ScheduleTimeInSeconds": int(time.time()) + 3600})["TaskId"]
    assert call(common, "StopTask", {"Id": waiting})["Status"] == CANCELLED


def register(server: LiveServer, pid: str, names: list[str]) -> None:
    async def go() -> None:
        key = await server.node.stores.accounts.get_key(server.secret_id)
        assert key is not None
        await register_devices(
            server.node.stores.devices, key.account_id, pid, names, now_s=int(time.time()), max_devices=10**6
        )

    server.run(go())


@pytest.mark.parametrize(
    ("params", "code", "text"),
    [
        ({"Rollout": {"MaxDevicesPerSecond": 0}}, "InvalidParameterValue", "Rollout.MaxDevicesPerSecond"),
        (
            {
                "Rollout": {
                    "MaxDevicesPerSecond": 5,
                    "BaseDevicesPerSecond": 9,
                    "IncrementPercent": 10,
                    "IncrementEveryDevices": 5,
                }
            },
            "InvalidParameterValue",
            "must not exceed",
        ),
        ({"Rollout": {"Max": 5}}, "UnknownParameter", "Rollout.Max"),
        (
            {"AbortCriteria": [{"Outcome": "Offline", "ThresholdPercent": 101, "MinProcessedDevices": 1}]},
            "InvalidParameterValue",
            "AbortCriteria.0.ThresholdPercent",
        ),
        (
            {"AbortCriteria": [{"Outcome": "Sent", "ThresholdPercent": 1, "MinProcessedDevices": 1}]},
            "InvalidParameterValue",
            "must be Offline for a PublishMessage task",
        ),
        ({"ConvergenceWindowInSeconds": 60}, "InvalidParameterValue", "UpdateShadow tasks only"),
        ({"ClientToken": "with space"}, "InvalidParameterValue", "ClientToken"),
        ({"TrackOutcomes": "yes"}, "InvalidParameter", "TrackOutcomes"),
    ],
)
def test_bad_extension_parameters_get_the_documented_codes(
    client: Any, common: Any, params: dict[str, Any], code: str, text: str
) -> None:
    pid = new_product(client)
    full = task_params(pid, "", message_task("c", "x"), **params)
    for action in ("CreateTask", "PreviewTask"):  # the same answer from both
        got_code, message = error_of(common, action, full)
        assert got_code == code and text in message, (action, message)


def test_describe_task_devices_pages_and_filters(server: LiveServer, client: Any, common: Any) -> None:
    pid = new_product(client)
    register(server, pid, [f"s-{i:02d}" for i in range(30)])
    task_id = call(common, "CreateTask", task_params(pid, "", message_task("c", "x"), TrackOutcomes=True))["TaskId"]
    asyncio.run(eventually(lambda: status(common, task_id)["Status"] == COMPLETED))
    page = call(common, "DescribeTaskDevices", {"Id": task_id, "Offset": 25, "Limit": 10, "Outcome": "Offline"})
    assert page["TotalCount"] == 30 and [d["DeviceName"] for d in page["TaskDevices"]] == [
        f"s-{i}" for i in range(25, 30)
    ]
    assert {d["WrittenVersion"] for d in page["TaskDevices"]} == {None}
    assert (
        call(common, "DescribeTaskDevices", {"Id": task_id, "Offset": 0, "Limit": 10, "Outcome": "Sent"})["TotalCount"]
        == 0
    )
    code, message = error_of(
        common, "DescribeTaskDevices", {"Id": task_id, "Offset": 0, "Limit": 10, "Outcome": "Converged"}
    )
    assert code == "InvalidParameterValue" and "not one of a PublishMessage task's outcomes" in message
    plain = call(common, "CreateTask", task_params(pid, "", message_task("c", "x")))["TaskId"]
    code, message = error_of(common, "DescribeTaskDevices", {"Id": plain, "Offset": 0, "Limit": 10})
    assert code == "InvalidParameterValue" and "keeps no per-device outcomes" in message
    assert call(common, "DescribeTask", {"Id": plain, "IncludeOutcomeCounts": True})["OutcomeCounts"] == []


def test_every_new_action_sees_only_its_own_account(server: LiveServer, client: Any, common: Any) -> None:
    pid = new_product(client)
    register(server, pid, ["iso-1", "iso-2"])
    params = task_params(pid, "", message_task("c", "x"), TrackOutcomes=True, ClientToken="shared-token")
    task_id = call(common, "CreateTask", params)["TaskId"]
    secret_id, secret_key = server.new_account()
    other = common_client(server, secret_id, secret_key)

    assert error_of(other, "PreviewTask", params)[0] == "ResourceNotFound.ProductNotExist"
    assert error_of(other, "CreateTask", params)[0] == "ResourceNotFound.ProductNotExist"  # the token is per account
    extras: list[tuple[str, dict[str, Any]]] = [
        ("StopTask", {}),
        ("DescribeTaskDevices", {"Offset": 0, "Limit": 10}),
        ("DescribeTask", {"IncludeOutcomeCounts": True}),
    ]
    for action, extra in extras:
        code, message = error_of(other, action, {"Id": task_id, **extra})
        assert code == "ResourceNotFound.TaskNotExist", (action, message)
    # the other account's own product with the same token: its own task
    other_pid = new_product(sdk_client(server, secret_id=secret_id, secret_key=secret_key))
    mine = call(other, "CreateTask", {**params, "ProductId": other_pid})["TaskId"]
    assert mine != task_id
    assert status(common, task_id)["Status"] in (PROCESSING, COMPLETED)  # untouched by the other account


def test_the_tencent_models_still_parse_the_extended_actions(client: Any, common: Any) -> None:
    pid = new_product(client)
    params = task_params(pid, "", message_task("c", "x"), TrackOutcomes=True, Rollout={"MaxDevicesPerSecond": 10})
    task_id = call(common, "CreateTask", params)["TaskId"]
    req = models.DescribeTaskRequest()
    req.Id = task_id
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model warns about members it does not know: there must be none
        answer = client.DescribeTask(req)
        page = models.DescribeTasksRequest()
        page.Offset, page.Limit = 0, 5
        listed = client.DescribeTasks(page)
    assert answer.Id == task_id and answer.Type == "PublishMessage"
    assert task_id in [t.Id for t in listed.Tasks]
    extended = call(common, "DescribeTask", {"Id": task_id, "IncludeOutcomeCounts": True})
    assert set(extended) - {f.lstrip("_") for f in vars(answer)} == {
        "OutcomeCounts",
        "StopRequested",
        "CurrentDevicesPerSecond",
    }

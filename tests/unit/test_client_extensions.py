"""``fleetops tasks create | preview`` with the extension options: what CreateTask is sent."""

from __future__ import annotations

import pytest

from fleetops.client.tasks import OptionError, TaskOrder, create_task_params, device_rows, task_lines

NOW = 1_700_000_000
EXTENSIONS = {
    "ClientToken",
    "TrackOutcomes",
    "Rollout",
    "AbortCriteria",
    "ConvergenceWindowInSeconds",
    "DeliverOnConnect",
}


def test_no_extension_option_is_a_tencent_create_task() -> None:
    params = create_task_params(TaskOrder("ABCDE12345", "", topic="c", payload="x"), NOW)
    assert not set(params) & EXTENSIONS


def test_each_option_becomes_its_parameter() -> None:
    order = TaskOrder(
        "ABCDE12345",
        "^gate-",
        topic="control",
        payload="open",
        client_token="t-1",
        track_outcomes=True,
        max_rate=100,
        start_rate=5,
        grow_percent=50,
        grow_every=200,
        abort="20%:100",
        deliver_on_connect=True,
    )
    params = create_task_params(order, NOW)
    assert params["ClientToken"] == "t-1" and params["TrackOutcomes"] is True and params["DeliverOnConnect"] is True
    assert params["Rollout"] == {
        "MaxDevicesPerSecond": 100,
        "BaseDevicesPerSecond": 5,
        "IncrementPercent": 50,
        "IncrementEveryDevices": 200,
    }
    assert params["AbortCriteria"] == [{"Outcome": "Offline", "ThresholdPercent": 20, "MinProcessedDevices": 100}]
    shadow = create_task_params(
        TaskOrder("ABCDE12345", "", desired="{}", abort="5:10", convergence_window="10m", max_rate=7), NOW
    )
    assert shadow["AbortCriteria"][0]["Outcome"] == "NotConverged"
    assert shadow["ConvergenceWindowInSeconds"] == 600 and shadow["Rollout"] == {"MaxDevicesPerSecond": 7}


@pytest.mark.parametrize(
    ("order", "option"),
    [
        (TaskOrder("P", "", desired="{}", abort="lots"), "--abort"),
        (TaskOrder("P", "", desired="{}", grow_percent=10), "--max-rate"),
        (TaskOrder("P", "", desired="{}", convergence_window="soon"), "--convergence-window"),
    ],
)
def test_option_forms_that_mean_nothing(order: TaskOrder, option: str) -> None:
    with pytest.raises(OptionError) as refused:
        create_task_params(order, NOW)
    assert refused.value.option == option


def test_describe_shows_the_extension_members_and_devices_rows() -> None:
    task = {
        "Id": "t", "Type": "PublishMessage", "ProductId": "P", "Status": 2, "DoneDeviceCnt": 3, "AllDeviceCnt": 9,
        "Percent": 33, "RetCode": 0, "ErrMsg": "", "StopRequested": True, "CurrentDevicesPerSecond": 4.0,
        "OutcomeCounts": [{"Outcome": "Sent", "DeviceCnt": 2}, {"Outcome": "Offline", "DeviceCnt": 1}],
    }  # fmt: skip
    lines = task_lines(task)
    assert "outcomes   Sent 2, Offline 1" in lines
    assert "rollout    4.0 devices/s now" in lines
    assert "stopping   after the batch in flight (StopTask)" in lines
    rows = device_rows([{"DeviceName": "d1", "Outcome": "Sent", "WrittenVersion": None, "UpdateTime": NOW}])
    assert rows[0].split() == ["DEVICE", "OUTCOME", "VERSION", "UPDATED"] and rows[1].split()[:2] == ["d1", "Sent"]

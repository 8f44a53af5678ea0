"""The extension names are fleetops' own: no iotcloud version (2018-06-14 or 2021-04-08) uses them, so a newer
SDK cannot give them another meaning. Checked against the official SDK's models and client of both versions.

``DeviceNames`` (PreviewTask's answer) is the one exception, fixed by the console's contract: the vendor uses it
only as a request parameter (a list of device names), which is what it holds here too.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from fleetops.api.actions import extensions, tasks
from fleetops.api.schema import Param, parameters

VERSIONS = ("v20180614", "v20210408")
ALLOWED_VENDOR_NAMES = {"DeviceNames"}


def _vendor_names(version: str) -> set[str]:
    """Every class (action request/response, structure) and attribute name of one SDK version."""
    spec = importlib.util.find_spec(f"tencentcloud.iotcloud.{version}.models")
    assert spec is not None and spec.origin is not None
    names: set[str] = set()
    for path in (Path(spec.origin), Path(spec.origin).with_name("iotcloud_client.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                names.add(node.name)
                names.add(node.name.removesuffix("Request").removesuffix("Response"))
            elif isinstance(node, ast.FunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and node.attr[1:2].isupper():
                names.add(node.attr[1:])  # self._DeviceName = None
    return names


def _wire_names(params: tuple[Param, ...]) -> set[str]:
    found: set[str] = set()
    for p in params:
        found.add(p.name)
        found |= _wire_names(p.fields)
        if p.item is not None:
            found |= _wire_names(p.item.fields)
    return found


def _extension_names() -> set[str]:
    create = parameters(tasks.CreateTaskRequest)
    vendor_create = {"TaskType", "ProductId", "DeviceNameFilter", "ScheduleTimeInSeconds", "Tasks",
                     "MaxExecutionTimeInSeconds", "UpdateShadowTask", "PublishMessageTask", "Desired", "Topic",
                     "Payload"}  # fmt: skip
    names = _wire_names(create) - vendor_create
    names |= _wire_names(parameters(tasks.DescribeTaskRequest)) - {"Id"}
    names |= {action.name for action in extensions.ACTIONS}
    # the members the extensions add to answers
    names |= {"OutcomeCounts", "StopRequested", "CurrentDevicesPerSecond", "MatchedDeviceCnt", "DeviceNames",
              "TaskDevices", "WrittenVersion"}  # fmt: skip
    return names


def test_the_extension_names_are_the_documented_ones() -> None:
    assert _extension_names() == {
        "ClientToken", "TrackOutcomes", "ConvergenceWindowInSeconds", "Rollout", "MaxDevicesPerSecond",
        "BaseDevicesPerSecond", "IncrementPercent", "IncrementEveryDevices", "AbortCriteria", "Outcome",
        "ThresholdPercent", "MinProcessedDevices", "DeliverOnConnect", "IncludeOutcomeCounts", "PreviewTask",
        "StopTask", "DescribeTaskDevices", "OutcomeCounts", "StopRequested", "CurrentDevicesPerSecond",
        "MatchedDeviceCnt", "DeviceNames", "TaskDevices", "WrittenVersion",
    }  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
def test_no_iotcloud_version_uses_an_extension_name(version: str) -> None:
    vendor = _vendor_names(version)
    assert {"DeviceName", "ProductId", "DescribeDevice", "PublishMessage"} <= vendor  # the scan sees the SDK
    assert (_extension_names() & vendor) == ALLOWED_VENDOR_NAMES & vendor

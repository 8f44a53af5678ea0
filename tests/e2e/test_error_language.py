"""The official SDK's default profile asks for zh-CN: every error message of every action comes back in Chinese,
the common errors and the business errors alike, and ``ClientProfile(language="en-US")`` gets English.

Each action's typical failures are provoked through the SDK (``client.call``, the SDK's generic call with the
same signing, so that unknown actions and parameters can be sent too). The unit test
tests/unit/test_error_language.py checks every raise site; this one checks what reaches the wire.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from tencentcloud.common import credential
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.iotcloud.v20180614 import iotcloud_client

from tests.support import LiveServer, server_on

CJK = re.compile(r"[\u4e00-\u9fff]")
# English prose, once quoted values (`...`, '...', {...}) are taken out: identifiers never contain these words
ENGLISH = re.compile(r"\b(the|is|are|must|not|does|of|and|to|an|this|has|have|with|only|at most|got)\b", re.I)
QUOTED = re.compile(r"`[^`]*`|'[^']*'|\{[^}]*\}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with server_on("sqlite", tmp_path_factory.mktemp("error-language")) as live:
        yield live


def _client(server: LiveServer, profile: ClientProfile, secret_key: str | None = None) -> Any:
    profile.httpProfile = HttpProfile(endpoint=server.endpoint, protocol="http")
    cred = credential.Credential(server.secret_id, secret_key or server.secret_key)
    return iotcloud_client.IotcloudClient(cred, "ap-guangzhou", profile)


def _error(client: Any, action: str, params: dict[str, Any]) -> tuple[str, str]:
    try:
        client.call(action, params)
    except TencentCloudSDKException as exc:
        return str(exc.get_code()), str(exc.get_message())
    raise AssertionError(f"{action} {params} succeeded; an error was expected")


def _ok(client: Any, action: str, params: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = json.loads(client.call(action, params))["Response"]
    return response


@pytest.fixture(scope="module")
def cases(server: LiveServer) -> list[tuple[str, dict[str, Any], str]]:
    """(action, parameters, expected code): the typical failures of every action and the common errors."""
    setup = _client(server, ClientProfile(language="en-US"))
    name = "lg" + str(int(time.time() * 1000))[-6:]  # short enough to pass as a ProductId (10 characters)
    pid = _ok(setup, "CreateProduct", {"ProductName": name})["ProductId"]
    empty = _ok(setup, "CreateProduct", {"ProductName": name + "e"})["ProductId"]
    _ok(setup, "CreateDevice", {"ProductId": pid, "DeviceName": "dev1"})
    _ok(setup, "CreateDevice", {"ProductId": pid, "DeviceName": "off1"})
    _ok(setup, "UpdateDevicesEnableState", {"ProductID": pid, "DeviceNames": ["off1"], "Status": 0})
    later = int(time.time()) + 3600
    shadow_task = {"UpdateShadowTask": {"Desired": '{"color":"red"}'}}
    waiting = _ok(
        setup,
        "CreateTask",
        {"TaskType": "UpdateShadow", "ProductId": pid, "DeviceNameFilter": "", "ScheduleTimeInSeconds": later}
        | {"Tasks": shadow_task},
    )["TaskId"]
    _ok(setup, "CancelTask", {"Id": waiting})
    task = {"TaskType": "UpdateShadow", "ProductId": pid, "DeviceNameFilter": "^dev", "ScheduleTimeInSeconds": 0}
    dev1 = {"ProductId": pid, "DeviceName": "dev1"}
    shadow = dev1 | {"ShadowVersion": 0}
    publish = dev1 | {"Topic": f"{pid}/dev1/data", "Payload": "hi"}
    page = {"Offset": 0, "Limit": 10}
    nowhere = "NOSUCHPROD"
    missing_task = "0" * 24
    in_values = "InvalidParameterValue"
    no_product, no_device = "ResourceNotFound.ProductNotExist", "ResourceNotFound.DeviceNotExist"
    return [
        # common errors: the protocol layer
        ("NoSuchAction", {}, "InvalidAction"),
        ("DescribeProducts", page | {"Colour": 1}, "UnknownParameter"),
        ("DescribeProducts", {"Offset": 0}, "MissingParameter"),
        ("DescribeProducts", {"Offset": "zero", "Limit": 10}, "InvalidParameter"),
        ("DescribeProducts", {"Offset": 0, "Limit": 5}, in_values),
        # products
        ("CreateProduct", {"ProductName": name}, "InvalidParameterValue.ProductAlreadyExist"),
        ("CreateProduct", {"ProductName": name + "r", "ProductProperties": {"Region": "sh"}}, in_values),
        ("CreateProduct", {"ProductName": name + "t", "ProductProperties": {"ProductType": 2}},
         "InvalidParameterValue.ProductTypeNotSupport"),
        ("DescribeProduct", {"ProductId": nowhere}, no_product),
        ("DescribeProduct", {"ProductId": name}, no_product),  # a ProductName: the hint
        ("DeleteProduct", {"ProductId": pid}, "UnauthorizedOperation.DevicesExistUnderProduct"),
        # devices
        ("CreateDevice", dev1, "InvalidParameterValue.DeviceAlreadyExist"),
        ("CreateDevice", dev1 | {"DeviceName": "dev2", "DefinedPsk": "not base64!"},
         "InvalidParameterValue.DefinedPskNotBase64"),
        ("CreateDevice", dev1 | {"ProductId": nowhere}, no_product),
        ("DescribeDevice", {"ProductID": pid, "DeviceName": "ghost"}, no_device),
        ("DescribeDevices", page | {"ProductId": nowhere}, no_product),
        ("DeleteDevice", dev1 | {"DeviceName": "ghost"}, no_device),
        ("UpdateDevicesEnableState", {"ProductID": pid, "DeviceNames": [], "Status": 1}, in_values),
        ("UpdateDevicesEnableState", {"ProductID": pid, "DeviceNames": ["a", "b"], "Status": 1}, no_device),
        # shadows
        ("DescribeDeviceShadow", dev1 | {"DeviceName": "ghost"}, "ResourceNotFound.ProductOrDeviceNotExist"),
        ("UpdateDeviceShadow", shadow | {"State": "{"}, "InvalidParameterValue.InvalidJSON"),
        ("UpdateDeviceShadow", shadow | {"State": '{"color":1}'}, "InvalidParameterValue.JSONHasInvalidNode"),
        ("UpdateDeviceShadow", shadow | {"State": '{"desired":{"a":1}}', "ShadowVersion": 7},
         "FailedOperation.UpdateVersionNotMatch"),
        ("UpdateDeviceShadow", shadow | {"State": '{"desired":{}}', "Prefix": "$x"},
         "InvalidParameterValue.PrefixInvalid"),
        # tasks
        ("CreateTask", task | {"Tasks": {}}, in_values),
        ("CreateTask", task | {"Tasks": {"UpdateShadowTask": {"Desired": "{"}}}, in_values),
        ("CreateTask", task | {"Tasks": {"UpdateShadowTask": {"Desired": '{"desired":{"a":1}}'}}}, in_values),
        ("CreateTask", task | {"DeviceNameFilter": "(a", "Tasks": shadow_task}, in_values),
        ("CreateTask", task | {"ScheduleTimeInSeconds": 1_000_000, "Tasks": shadow_task}, in_values),
        ("CreateTask", task | {"ProductId": nowhere, "Tasks": shadow_task}, no_product),
        ("CreateTask", task | {"TaskType": "PublishMessage",
                               "Tasks": {"PublishMessageTask": {"Topic": "a/b", "Payload": "x"}}}, in_values),
        ("DescribeTask", {"Id": missing_task}, "ResourceNotFound.TaskNotExist"),
        ("DescribeTasks", {"Offset": 0, "Limit": 0}, in_values),
        ("CancelTask", {"Id": missing_task}, "ResourceNotFound.TaskNotExist"),
        ("CancelTask", {"Id": waiting}, "FailedOperation.AsyncTaskAlreadyStarted"),
        # messages
        ("PublishMessage", publish | {"Topic": "x/dev1/data"}, "FailedOperation.InvalidTopicName"),
        ("PublishMessage", publish | {"PayloadEncoding": "hex"}, in_values),
        ("PublishMessage", publish, "FailedOperation.DeviceOffline"),
        ("PublishMessage", publish | {"DeviceName": "off1", "Topic": f"{pid}/off1/data"},
         "FailedOperation.DeviceAlreadyDisabled"),
        ("PublishMessage", publish | {"ProductId": empty, "Topic": f"{empty}/dev1/data"}, no_device),
    ]  # fmt: skip


def _english_left(message: str) -> list[str]:
    return ENGLISH.findall(QUOTED.sub("", message))


def test_the_sdk_default_profile_gets_every_message_in_chinese(
    server: LiveServer, cases: list[tuple[str, dict[str, Any], str]]
) -> None:
    client = _client(server, ClientProfile())  # the SDK's default: zh-CN
    assert client.profile.language == "zh-CN"
    wrong = []
    for action, params, expected_code in cases:
        code, message = _error(client, action, params)
        assert code == expected_code, (action, params, code, message)
        if not CJK.search(message) or _english_left(message):
            wrong.append(f"{action} {code}: {message}")
    assert not wrong, "English in zh-CN replies:\n" + "\n".join(wrong)


def test_en_us_gets_every_message_in_english(server: LiveServer, cases: list[tuple[str, dict[str, Any], str]]) -> None:
    client = _client(server, ClientProfile(language="en-US"))
    for action, params, expected_code in cases:
        code, message = _error(client, action, params)
        assert code == expected_code and not CJK.search(message), (action, code, message)


def test_authentication_errors_follow_the_language_too(server: LiveServer) -> None:
    zh = _client(server, ClientProfile(), secret_key="x" * 32)
    code, message = _error(zh, "DescribeProducts", {"Offset": 0, "Limit": 10})
    assert code == "AuthFailure.SignatureFailure" and CJK.search(message) and not _english_left(message)


def test_a_product_name_given_as_product_id_gets_its_product_id_in_both_languages(server: LiveServer) -> None:
    en = _client(server, ClientProfile(language="en-US"))
    name = "lamps" + str(int(time.time() * 1000))[-4:]  # 9 characters: passes as a ProductId (at most 10)
    pid = _ok(en, "CreateProduct", {"ProductName": name})["ProductId"]
    _, english = _error(en, "DescribeDevices", {"ProductId": name, "Offset": 0, "Limit": 10})
    assert english == (
        f"The product `{name}` does not exist in this account. `{name}` is a ProductName; its ProductId is `{pid}`."
    )
    _, chinese = _error(_client(server, ClientProfile()), "DescribeProduct", {"ProductId": name})
    assert f"`{name}` 是产品名称（ProductName），其 ProductId 为 `{pid}`" in chinese
    # the shadow actions and CreateTask say it too
    _, shadow = _error(en, "DescribeDeviceShadow", {"ProductId": name, "DeviceName": "d"})
    assert f"its ProductId is `{pid}`" in shadow
    task = {"TaskType": "UpdateShadow", "ProductId": name, "DeviceNameFilter": "", "ScheduleTimeInSeconds": 0}
    _, created = _error(en, "CreateTask", task | {"Tasks": {"UpdateShadowTask": {"Desired": '{"a":1}'}}})
    assert f"its ProductId is `{pid}`" in created
    # no hint when the name is unknown
    _, plain = _error(en, "DescribeProduct", {"ProductId": "NOSUCHPROD"})
    assert plain == "The product `NOSUCHPROD` does not exist in this account."
    # a name too long to be a ProductId is stopped by the length check, which says what a ProductId is
    code, long_name = _error(en, "DescribeDevice", {"ProductID": "living-room-lamps", "DeviceName": "d"})
    assert code == "InvalidParameterValue"
    assert long_name.endswith("A ProductId is the 10-character id CreateProduct returned (e.g. `ABCDE12345`), "
                              "not the ProductName; DescribeProducts (fleetops products list) shows both.")  # fmt: skip
    _, long_zh = _error(_client(server, ClientProfile()), "DescribeProduct", {"ProductId": "living-room-lamps"})
    assert "不是产品名称（ProductName）" in long_zh

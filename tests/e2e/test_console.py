"""The web console in a real headless Chromium against a live fleetops node (docs/console.md).

Every step goes through what an operator sees (labels, roles, text); what the console changed is then read
back through the official SDK. Each test makes its own product on the module's server.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from playwright.sync_api import expect
from tencentcloud.iotcloud.v20180614 import models

from tests.e2e.conftest import save_artifact
from tests.e2e.console_page import Console
from tests.raw_client import tc3_post
from tests.support import LiveServer, new_product, sdk_client

CREDENTIALS_KEY = "fleetops.console.credentials"


def register(server: LiveServer, product_id: str, names: list[str]) -> None:
    """Devices straight into the store (the bulk registration path), for the account of the server's key."""
    from fleetops.backend.registration import register_devices

    async def create() -> None:
        stores = server.node.stores
        key = await stores.accounts.get_key(server.secret_id)
        assert key is not None
        await register_devices(
            stores.devices, key.account_id, product_id, names, now_s=int(time.time()), max_devices=10**6
        )

    server.run(create())


def api_error(server: LiveServer, action: str, params: dict[str, Any], **keys: str) -> dict[str, str]:
    """What the API itself answers (Code, Message) to a call, signed outside the browser."""
    answer = tc3_post(
        server.url,
        server.endpoint,
        keys.get("secret_id", server.secret_id),
        keys.get("secret_key", server.secret_key),
        action,
        params,
    )
    error: dict[str, str] = answer["Error"]
    return error


def shadow_desired(server: LiveServer, product_id: str, device_name: str) -> tuple[int, Any]:
    req = models.DescribeDeviceShadowRequest()
    req.ProductId, req.DeviceName = product_id, device_name
    payload = json.loads(sdk_client(server).DescribeDeviceShadow(req).Data)["payload"]
    return payload["version"], payload["state"].get("desired")


def describe_task(server: LiveServer, task_id: str) -> Any:
    req = models.DescribeTaskRequest()
    req.Id = task_id
    return sdk_client(server).DescribeTask(req)


def test_sign_in_keeps_the_key_in_session_storage_only(browser_context: Any, console_server: LiveServer) -> None:
    product_id = new_product(sdk_client(console_server))
    console = Console(browser_context, console_server)
    page = console.signed_in()
    expect(page.get_by_role("cell", name=product_id)).to_be_visible()
    stored = page.evaluate(f"JSON.parse(sessionStorage.getItem('{CREDENTIALS_KEY}'))")
    assert stored == {"secretId": console_server.secret_id, "secretKey": console_server.secret_key}
    assert page.evaluate("localStorage.length") == 0
    assert browser_context.cookies() == []
    # a reload keeps the tab signed in; signing out forgets the key
    page.reload()
    expect(page.get_by_role("heading", name="Products")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate(f"sessionStorage.getItem('{CREDENTIALS_KEY}')") is None
    console.assert_unlabelled_controls()
    console.assert_no_errors()
    console.assert_same_origin_only()


def test_a_wrong_key_is_refused_with_the_apis_own_error(browser_context: Any, console_server: LiveServer) -> None:
    key = console_server.secret_key
    wrong_key = ("y" if key.startswith("x") else "x") + key[1:]  # never the right key by chance
    expected = api_error(console_server, "DescribeProducts", {"Offset": 0, "Limit": 10}, secret_key=wrong_key)
    assert expected["Code"] == "AuthFailure.SignatureFailure"
    console = Console(browser_context, console_server)
    page = console.open()
    console.sign_in(secret_key=wrong_key)
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text(expected["Code"])
    expect(alert).to_contain_text(expected["Message"])
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    # an unknown SecretId: the API's own message again
    unknown = api_error(console_server, "DescribeProducts", {"Offset": 0, "Limit": 10}, secret_id="AKIDnobody")
    console.sign_in(secret_id="AKIDnobody")
    expect(alert).to_contain_text(unknown["Code"])
    expect(alert).to_contain_text(unknown["Message"])
    # and the right pair gets in
    console.sign_in()
    expect(page.get_by_role("heading", name="Products")).to_be_visible()
    console.assert_no_errors()


def test_a_clock_far_from_the_servers_shows_signature_expire(browser_context: Any, console_server: LiveServer) -> None:
    console = Console(browser_context, console_server)
    console.page.clock.set_fixed_time(time.time() - 3600)  # Date.now() an hour behind; timers keep running
    page = console.open()
    console.sign_in()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("AuthFailure.SignatureExpire")
    # the API's own message, with how far off the clock is
    expect(alert).to_contain_text(re.compile(r"differs from the server time \d+ by 360\d seconds"))
    console.assert_no_errors()


def test_find_a_device_and_edit_its_desired_state(browser_context: Any, console_server: LiveServer) -> None:
    client = sdk_client(console_server)
    product_id = new_product(client)
    register(console_server, product_id, [f"lamp-{i:03}" for i in range(1, 31)] + ["fan-1"])
    console = Console(browser_context, console_server)
    page = console.signed_in(f"#/products/{product_id}")
    expect(page.get_by_role("heading", name=f"Devices of {product_id}")).to_be_visible()
    expect(page.get_by_text("1–20 of 31")).to_be_visible()  # paged by 20
    page.get_by_label("Device name contains").fill("lamp-02")
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_text("1–10 of 10")).to_be_visible()
    expect(page.get_by_role("link", name="fan-1")).to_have_count(0)
    row = page.get_by_role("row", name="lamp-021")
    expect(row).to_contain_text("offline")
    expect(row).to_contain_text("never")
    expect(row).to_contain_text("enabled")
    console.assert_unlabelled_controls()
    row.get_by_role("link", name="lamp-021").click()

    expect(page.locator(".shadow-version")).to_have_text("0")
    editor = page.get_by_label("Desired state")
    editor.fill('{"color": "blue", "level": 3}')
    page.get_by_role("button", name="Save desired (version 0)").click()
    expect(page.get_by_role("status")).to_have_text("Saved: the shadow is at version 1.")
    assert shadow_desired(console_server, product_id, "lamp-021") == (1, {"color": "blue", "level": 3})
    expect(page.get_by_label("delta", exact=True)).to_contain_text('"level": 3')

    # deleting a key in the editor removes it from the shadow (sent as null in the merge patch)
    editor.fill('{"color": "green"}')
    page.get_by_role("button", name="Save desired (version 1)").click()
    expect(page.get_by_role("status")).to_have_text("Saved: the shadow is at version 2.")
    assert shadow_desired(console_server, product_id, "lamp-021") == (2, {"color": "green"})

    # someone else writes first: the version check refuses the console's edit and the document is reloaded
    req = models.UpdateDeviceShadowRequest()
    req.ProductId, req.DeviceName = product_id, "lamp-021"
    req.State, req.ShadowVersion = json.dumps({"desired": {"mode": "eco"}}), 2
    client.UpdateDeviceShadow(req)
    editor.fill('{"color": "red"}')
    page.get_by_role("button", name="Save desired (version 2)").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("FailedOperation.UpdateVersionNotMatch")
    expect(alert).to_contain_text("reloaded")
    expect(page.locator(".shadow-version")).to_have_text("3")
    expect(page.get_by_label("desired", exact=True)).to_contain_text('"mode": "eco"')
    expect(editor).to_have_value(json.dumps({"color": "green", "mode": "eco"}, indent=2))
    assert shadow_desired(console_server, product_id, "lamp-021") == (3, {"color": "green", "mode": "eco"})
    console.assert_no_errors()


def test_a_task_over_1000_devices_fills_its_bar(
    browser_context: Any, console_server: LiveServer, tmp_path: Path
) -> None:
    product_id = new_product(sdk_client(console_server))
    register(console_server, product_id, [f"unit-{i:04}" for i in range(1, 1001)] + ["spare-1", "spare-2"])
    console = Console(browser_context, console_server)
    page = console.signed_in("#/tasks/new")
    start_at_s = time.time() + 6  # long enough to see it wait, short enough for the test
    console.fill_new_task(product_id, "^unit-", desired='{"firmware": "2.0"}', start_at_s=start_at_s)
    console.assert_unlabelled_controls()

    # the preview says what the server says: the count, or that this server has no PreviewTask
    params = {
        "TaskType": "UpdateShadow",
        "ProductId": product_id,
        "DeviceNameFilter": "^unit-",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": '{"firmware": "2.0"}'}},
    }
    preview = tc3_post(
        console_server.url, console_server.endpoint, console_server.secret_id, console_server.secret_key,
        "PreviewTask", params,
    )  # fmt: skip
    area = page.get_by_role("region", name="Matching devices")
    if preview.get("Error", {}).get("Code") == "InvalidAction":
        expect(area).to_contain_text("Preview not available on this server")
    else:
        assert preview["MatchedDeviceCnt"] == 1000
        expect(area.locator(".matched-count")).to_have_text("1000")

    page.get_by_role("button", name="Create task").click()
    flash = page.get_by_role("status").filter(has_text="created")
    expect(flash).to_be_visible()
    task_id = flash.inner_text().split()[1]
    row = console.task_row(task_id)
    expect(row).to_contain_text("waiting")
    expect(row).to_contain_text("^unit-")
    expect(row.get_by_role("progressbar")).to_have_attribute("value", "0")
    page.evaluate("window.notReloaded = true")

    expect(row.get_by_role("progressbar")).to_have_attribute("value", "100", timeout=30_000)
    expect(row).to_contain_text("completed")
    expect(row).to_contain_text("1000 / 1000 devices, 100 %")
    assert page.evaluate("window.notReloaded") is True  # the bar moved by polling, not by reloading the page
    answer = describe_task(console_server, task_id)
    assert (answer.Status, answer.Percent, answer.AllDeviceCnt, answer.DoneDeviceCnt) == (3, 100, 1000, 1000)
    assert answer.ScheduleTime == int(start_at_s)

    screenshot = tmp_path / "console-tasks.png"
    page.screenshot(path=str(screenshot), full_page=True)
    save_artifact(screenshot)

    row.get_by_role("link", name=task_id).click()
    expect(page.get_by_role("heading", name=f"Task {task_id}")).to_be_visible()
    for field, text in {
        "Status": "completed",
        "AllDeviceCnt": "1000",
        "DoneDeviceCnt": "1000",
        "Percent": "100",
    }.items():
        expect(page.locator(f'dd[data-field="{field}"]')).to_contain_text(text)
    expect(page.locator('dd[data-field="ScheduleTime"]')).to_contain_text(str(int(start_at_s)))
    console.assert_no_errors()
    console.assert_same_origin_only()


def test_cancel_a_scheduled_task(browser_context: Any, console_server: LiveServer) -> None:
    client = sdk_client(console_server)
    product_id = new_product(client)
    register(console_server, product_id, ["gate-1", "gate-2"])
    console = Console(browser_context, console_server)
    page = console.signed_in("#/tasks/new")
    console.fill_new_task(product_id, "^gate-", topic_payload=("control", "open"), start_at_s=time.time() + 3600)
    page.get_by_role("button", name="Create task").click()
    flash = page.get_by_role("status").filter(has_text="created")
    task_id = flash.inner_text().split()[1]
    row = console.task_row(task_id)
    expect(row).to_contain_text("PublishMessage")
    expect(row).to_contain_text("waiting")
    row.get_by_role("button", name=f"Cancel task {task_id}").click()
    expect(row).to_contain_text("cancelled")
    expect(row.get_by_role("button", name=f"Cancel task {task_id}")).to_have_count(0)
    assert describe_task(console_server, task_id).Status == 5

    # two operators: the task is cancelled elsewhere while this page still offers Cancel; the API's error shows
    req = models.CreateTaskRequest()
    req.TaskType, req.ProductId, req.DeviceNameFilter = "UpdateShadow", product_id, "^gate-"
    req.ScheduleTimeInSeconds = int(time.time()) + 3600
    req.Tasks = models.Task()
    req.Tasks.UpdateShadowTask = models.BatchUpdateShadow()
    req.Tasks.UpdateShadowTask.Desired = '{"open": true}'
    other = client.CreateTask(req).TaskId
    page.evaluate(f"location.hash = '#/tasks/{other}'")
    cancel = page.get_by_role("button", name=f"Cancel task {other}")
    expect(cancel).to_be_visible()
    # hold the page's DescribeTask polls so that the page cannot learn of the other cancel before the click
    page.route(
        "**/",
        lambda route: route.abort() if route.request.headers.get("x-tc-action") == "DescribeTask" else route.fallback(),
    )
    cancel_req = models.CancelTaskRequest()
    cancel_req.Id = other
    client.CancelTask(cancel_req)
    cancel.click()
    expected = api_error(console_server, "CancelTask", {"Id": other})
    alert = page.get_by_role("alert").filter(has_text="FailedOperation.AsyncTaskAlreadyStarted")
    expect(alert).to_contain_text(expected["Message"])
    page.unroute("**/")
    page.get_by_role("link", name="Tasks").first.click()
    expect(console.task_row(other)).to_contain_text("cancelled")
    console.assert_no_errors(allowed=["Failed to load resource", "Network error"])


def test_preview_shows_the_matched_count_and_first_names(browser_context: Any, console_server: LiveServer) -> None:
    """The rendering of a PreviewTask answer (the documented shape). Until the server has PreviewTask, its answer
    is injected by intercepting that one call in the browser; every other call goes to the real server."""
    product_id = new_product(sdk_client(console_server))
    console = Console(browser_context, console_server)
    page = console.signed_in("#/tasks/new")
    sent: list[dict[str, Any]] = []
    names = [f"unit-{i:04}" for i in range(1, 11)]

    def answer_preview(route: Any) -> None:
        if route.request.headers.get("x-tc-action") != "PreviewTask":
            route.fallback()
            return
        sent.append(json.loads(route.request.post_data))
        body = {"Response": {"MatchedDeviceCnt": 1000, "DeviceNames": names, "RequestId": "r-1"}}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    page.route("**/", answer_preview)
    console.fill_new_task(product_id, "^unit-", desired='{"a": 1}')
    area = page.get_by_role("region", name="Matching devices")
    expect(area.locator(".matched-count")).to_have_text("1000")
    expect(area).to_contain_text("unit-0001")
    expect(area).to_contain_text("unit-0010")
    # PreviewTask gets exactly CreateTask's parameters
    assert sent[-1] == {
        "TaskType": "UpdateShadow",
        "ProductId": product_id,
        "DeviceNameFilter": "^unit-",
        "ScheduleTimeInSeconds": 0,
        "Tasks": {"UpdateShadowTask": {"Desired": '{"a": 1}'}},
    }
    console.assert_no_errors()


def test_validation_and_network_errors_are_shown(browser_context: Any, console_server: LiveServer) -> None:
    product_id = new_product(sdk_client(console_server))
    console = Console(browser_context, console_server)
    page = console.signed_in("#/tasks/new")
    console.fill_new_task(product_id, "(unclosed", desired='{"a": 1}')
    expected = api_error(
        console_server,
        "CreateTask",
        {
            "TaskType": "UpdateShadow",
            "ProductId": product_id,
            "DeviceNameFilter": "(unclosed",
            "ScheduleTimeInSeconds": 0,
            "Tasks": {"UpdateShadowTask": {"Desired": '{"a": 1}'}},
        },
    )
    page.get_by_role("button", name="Create task").click()
    alert = page.get_by_role("alert").last
    expect(alert).to_contain_text(expected["Code"])
    expect(alert).to_contain_text(expected["Message"])

    page.route("**/", lambda route: route.abort("connectionrefused"))
    page.get_by_role("button", name="Create task").click()
    expect(page.get_by_role("alert").last).to_contain_text("Network error: cannot reach the fleetops API")
    console.assert_no_errors(allowed=["Failed to load resource", "net::ERR_CONNECTION_REFUSED"])


def test_works_in_a_narrow_window(browser_context: Any, console_server: LiveServer) -> None:
    product_id = new_product(sdk_client(console_server))
    register(console_server, product_id, ["narrow-1"])
    console = Console(browser_context, console_server)
    console.page.set_viewport_size({"width": 360, "height": 740})
    page = console.signed_in()
    console.assert_fits_width()
    for fragment, heading in [
        (f"#/products/{product_id}", f"Devices of {product_id}"),
        (f"#/products/{product_id}/devices/narrow-1", "narrow-1"),
        ("#/tasks", "Tasks"),
        ("#/tasks/new", "New task"),
    ]:
        page.evaluate("fragment => { location.hash = fragment }", fragment)
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        console.assert_fits_width()
        console.assert_unlabelled_controls()
    # keyboard only: Tab reaches the sign-out button and Enter presses it
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Sign out":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    console.assert_no_errors()

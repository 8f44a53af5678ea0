"""The console's browser-side code run in Chromium: the TC3 signer against the documented vectors
(docs/protocol.md#test-vectors) and the Python signer, and the pure helpers of the views (shadow merge patch,
polling back-off, task parameters)."""

from __future__ import annotations

import json
from typing import Any

from fleetops.api.signing import tc3_authorization
from tests.support import LiveServer

SECRET_ID = "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE"
SECRET_KEY = "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE"
# the CreateTask body of the vectors, exactly as the SDK's json.dumps wrote it
BODY = (
    '{"TaskType": "UpdateShadow", "ProductId": "ABCDE12345", "DeviceNameFilter": "^dev", '
    '"ScheduleTimeInSeconds": 0, "Tasks": {"UpdateShadowTask": {"Desired": "{\\"color\\":\\"red\\"}"}}}'
)
V1_CANONICAL = (
    "POST\n/\n\ncontent-type:application/json\nhost:127.0.0.1:8080\n\ncontent-type;host\n"
    "c23508d573cebc6fd95a4438dd04b119525a91b32bf7b4287eb6e8f68238fdd0"
)
V1_STRING_TO_SIGN = (
    "TC3-HMAC-SHA256\n1700000000\n2023-11-14/iotcloud/tc3_request\n"
    "0298da307b6a096dca6b2676fecc5fc275f04dcf0635b62d021da48792050176"
)
V1_AUTHORIZATION = (
    "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2023-11-14/iotcloud/tc3_request, "
    "SignedHeaders=content-type;host, Signature=cbb8ef2a30ef4d8d77ff80badf995ff7e202e56495a01afe8be099f0fed1bbfe"
)
V2_SIGNATURE = "5e6979af4c9acf574f3be01ae5ce01f39da2c76115faf7cf120dc5efa6a2958e"
# the vendor's documentation example (service cvm, the key printed with its asterisks)
DOC_BODY = '{"Limit": 1, "Filters": [{"Values": ["\\u672a\\u547d\\u540d"], "Name": "instance-name"}]}'
DOC_SIGNATURE = "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"


def module_page(browser_context: Any, server: LiveServer) -> tuple[Any, str]:
    """A tab on the console (same origin, same CSP) and the URL prefix of its modules."""
    page = browser_context.new_page()
    page.goto(f"{server.url}console/")
    app_url: str = page.locator("script[type=module]").get_attribute("src")
    return page, f"{server.url}console/{app_url.rsplit('/', 1)[0]}"


SIGN = """async ([url, input]) => (await import(url)).tc3Sign(input)"""


def test_the_browser_signer_reproduces_the_spec_vectors(browser_context: Any, console_server: LiveServer) -> None:
    page, modules = module_page(browser_context, console_server)
    signer = f"{modules}/signer.js"
    common = {"secretId": SECRET_ID, "secretKey": SECRET_KEY, "contentType": "application/json", "body": BODY}
    v1 = page.evaluate(SIGN, [signer, {**common, "host": "127.0.0.1:8080", "timestampS": 1700000000}])
    assert v1["canonicalRequest"] == V1_CANONICAL
    assert v1["stringToSign"] == V1_STRING_TO_SIGN
    assert v1["authorization"] == V1_AUTHORIZATION
    v2 = page.evaluate(SIGN, [signer, {**common, "host": "iotcloud.tencentcloudapi.com", "timestampS": 1700000000}])
    assert v2["stringToSign"].endswith("5365317ea4135e979e82d48a5ecbc4b3e52c28050ee93d67ed51498b71eafd59")
    assert v2["signature"] == V2_SIGNATURE
    doc = page.evaluate(
        SIGN,
        [
            signer,
            {
                "secretId": SECRET_ID,
                "secretKey": "Gu5t9xGARNpq86cd98joQYCN3*******",
                "host": "cvm.tencentcloudapi.com",
                "contentType": "application/json; charset=utf-8",
                "timestampS": 1551113065,
                "body": DOC_BODY,
                "service": "cvm",
            },
        ],
    )
    assert doc["signature"] == DOC_SIGNATURE


def test_the_browser_signer_agrees_with_the_python_signer(browser_context: Any, console_server: LiveServer) -> None:
    page, modules = module_page(browser_context, console_server)
    cases = [
        ("127.0.0.1:8080", 1700000000, "{}"),
        ("10.0.0.7", 946684799, json.dumps({"State": json.dumps({"desired": {"名前": "ランプ", "e": "😀"}})})),
        ("fleet.example:443", 4102444800, json.dumps({"Payload": 'a\nb\tc \\ "q" \u0000 end'}, ensure_ascii=False)),
        ("h", 1796000000, "x" * 70000),
    ]
    for host, timestamp, body in cases:
        browser = page.evaluate(
            SIGN,
            [
                f"{modules}/signer.js",
                {
                    "secretId": "AKIDcase",
                    "secretKey": "k3y/with+odd=chars",
                    "host": host,
                    "contentType": "application/json",
                    "timestampS": timestamp,
                    "body": body,
                },
            ],
        )
        python = tc3_authorization(
            secret_id="AKIDcase",
            secret_key="k3y/with+odd=chars",
            method="POST",
            host=host,
            content_type="application/json",
            timestamp=timestamp,
            body=body.encode("utf-8"),
        )
        assert browser["authorization"] == python, (host, timestamp)


def test_the_views_pure_helpers(browser_context: Any, console_server: LiveServer) -> None:
    page, modules = module_page(browser_context, console_server)
    patch = page.evaluate(
        """async (url) => {
            const { desiredPatch } = await import(url);
            return [
                desiredPatch(null, {a: 1}),
                desiredPatch({a: 1, b: {c: 1, d: 2}, e: [1, 2]}, {a: 1, b: {c: 1}, e: [1, 2, 3], f: "x"}),
                desiredPatch({a: {b: 1}}, {a: 5}),
                desiredPatch({a: 1}, {a: 1}),
            ];
        }""",
        f"{modules}/shadow.js",
    )
    assert patch == [{"a": 1}, {"b": {"d": None}, "e": [1, 2, 3], "f": "x"}, {"a": 5}, {}]
    delays = page.evaluate(
        """async (url) => {
            const { nextDelayMs } = await import(url);
            let waitMs = 0;
            const backoff = [];
            for (let i = 0; i < 8; i++) {
                waitMs = nextDelayMs({ previousMs: waitMs, hidden: true, failures: 0 });
                backoff.push(waitMs);
            }
            return {
                visible: nextDelayMs({ previousMs: 0, hidden: false, failures: 0 }),
                backAfterHidden: nextDelayMs({ previousMs: 32000, hidden: false, failures: 0 }),
                failing: nextDelayMs({ previousMs: 1000, hidden: false, failures: 2 }),
                backoff,
            };
        }""",
        f"{modules}/poll.js",
    )
    assert delays == {
        "visible": 1000,
        "backAfterHidden": 1000,
        "failing": 2000,
        "backoff": [2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000],
    }
    params = page.evaluate(
        """async (url) => {
            const { taskParams } = await import(url);
            const form = { productId: "P", taskType: "PublishMessage", filter: "^a", desired: "", topic: "t",
                           payload: "p", when: "at", startAt: "2030-01-02T03:04:05", maxExecutionTimeS: " 60 " };
            const extended = { ...form, trackOutcomes: true, maxRate: "10", abortPercent: "20", abortMinDevices: "50",
                               deliverOnConnect: true, windowS: "60" };
            return [taskParams(form), taskParams({ ...form, maxExecutionTimeS: "1.5" }).MaxExecutionTimeInSeconds,
                    taskParams({ ...form, startAt: "" }).message, taskParams({ ...form, productId: "" }).message,
                    taskParams(extended)];
        }""",
        f"{modules}/task_form.js",
    )
    assert params == [
        {
            "TaskType": "PublishMessage",
            "ProductId": "P",
            "DeviceNameFilter": "^a",
            "ScheduleTimeInSeconds": 1893553445,  # the contexts run in UTC
            "Tasks": {"PublishMessageTask": {"Topic": "t", "Payload": "p"}},
            "MaxExecutionTimeInSeconds": 60,
        },
        "1.5",  # not an integer: sent as typed, for the API to refuse with its own message
        "Choose the start time, or start now.",
        "Choose a product.",
        {  # the extensions asked for (docs/extensions.md); a window only for UpdateShadow, so not sent here
            "TaskType": "PublishMessage",
            "ProductId": "P",
            "DeviceNameFilter": "^a",
            "ScheduleTimeInSeconds": 1893553445,
            "Tasks": {"PublishMessageTask": {"Topic": "t", "Payload": "p"}},
            "MaxExecutionTimeInSeconds": 60,
            "TrackOutcomes": True,
            "Rollout": {"MaxDevicesPerSecond": 10},
            "AbortCriteria": [{"Outcome": "Offline", "ThresholdPercent": 20, "MinProcessedDevices": 50}],
            "DeliverOnConnect": True,
        },
    ]

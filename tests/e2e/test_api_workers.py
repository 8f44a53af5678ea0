"""`fleetops serve --workers N` (docs/deployment.md#api-worker-processes): real processes on SQLite and PostgreSQL,
called through the official SDK, with a paho device on the node's embedded broker.

A test decides which process takes a connection by pausing the others (SIGSTOP) while the connection is made:
only a running process accepts from the shared socket, and the connection stays with it (keep-alive). Which
process answered is then checked in the log: a worker's lines carry ``[api-worker N]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from fleetops.ports.messaging import DeviceCredentials
from tests.mqtt_support import PahoDevice
from tests.raw_client import tc3_headers
from tests.sdk_capture import resend, sdk_capture
from tests.serve_process import ServeProcess, serve_nodes
from tests.support import LiveServer, common_client, postgres_database, sqlite_database, update_shadow_order

T = TypeVar("T")

LIMIT = 20  # FLEETOPS_RATE_LIMIT_PER_S of the module's nodes
UNKNOWN_SECRET_ID = "AKID" + "0" * 32
CLIENT, ATTACKER = "198.51.100.20", "203.0.113.7"  # documentation addresses, forwarded by the "proxy" (us)


@dataclass
class Node:
    """A `fleetops serve --workers 2` process and its key."""

    serve: ServeProcess
    secret_id: str
    secret_key: str

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.serve.port}"

    @property
    def primary(self) -> int:
        assert self.serve.process is not None
        return self.serve.process.pid

    def workers(self) -> list[int]:
        return worker_pids(self.primary)

    def client(self, key: tuple[str, str] | None = None) -> Any:
        """The SDK's CommonClient (the node's key, or ``key``) on a connection of its own (made at its first call)."""
        secret_id, secret_key = key or (self.secret_id, self.secret_key)
        return common_client(cast(LiveServer, Endpoint(self.endpoint, secret_id, secret_key)))

    def log(self) -> str:
        return (self.serve.data_dir / "serve.log").read_text()

    def answered_by_worker(self, request_id: str) -> bool:
        """Whether a worker logged the request (else the primary did; forwarded requests are the primary's)."""
        line = next(line for line in self.log().splitlines() if f"request_id={request_id}" in line)
        return "[api-worker " in line

    def pinned(self, *, to_worker: bool, key: tuple[str, str] | None = None) -> Any:
        """A client whose connection one of the worker (``to_worker``) or the primary took. It is taken with a
        request of an unknown SecretId, which a worker answers without the primary (a worker asks the primary
        for its rate limit's slices: one asked of a stopped primary would make it count alone for 10 s)."""
        from tencentcloud.common import credential

        client = self.client(key)
        known, client.credential = client.credential, credential.Credential(UNKNOWN_SECRET_ID, "x")
        try:
            request_id = while_paused(
                [self.primary] if to_worker else self.workers(),
                lambda: refused_request_id(client, "DescribeProducts", {"Offset": 0, "Limit": 10}),
            )
        finally:
            client.credential = known
        assert self.answered_by_worker(request_id) is to_worker
        return client

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        found = {}
        text = requests.get(f"http://{self.endpoint}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return found

    def metric(self, name: str, **labels: str) -> float:
        return self.scrape().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for_workers(self, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.metric("fleetops_api_workers") != count:
            assert time.monotonic() < deadline, f"{count} API workers did not come up: {self.log()[-3000:]}"
            time.sleep(0.1)


def worker_pids(primary: int) -> list[int]:
    pids = []
    for child in psutil.Process(primary).children():
        try:
            if "api-worker" in child.cmdline():
                pids.append(child.pid)
        except psutil.Error:
            pass
    return pids


def while_paused(pids: Sequence[int], work: Callable[[], T], within_s: float = 2.0) -> T:
    """``work`` (in a thread) while ``pids`` are stopped, so that a connection it opens is taken by another
    process. They are resumed after ``within_s`` even if ``work`` has not finished (it may wait for a database
    lock one of them held when it stopped); the connection is taken by then."""
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(work())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        thread.start()
        thread.join(within_s)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    thread.join(60)
    if failed:
        raise failed[0]
    return done[0]


def call(client: Any, action: str, params: dict[str, Any]) -> dict[str, Any]:
    response: dict[str, Any] = json.loads(client.call(action, params))["Response"]
    return response


def refused_request_id(client: Any, action: str, params: dict[str, Any]) -> str:
    try:
        call(client, action, params)
    except TencentCloudSDKException as exc:
        return str(exc.get_request_id())
    raise AssertionError("the call succeeded but an error was expected")


def code_of(client: Any, action: str, params: dict[str, Any]) -> str:
    try:
        call(client, action, params)
    except TencentCloudSDKException as exc:
        return str(exc.get_code())
    return "OK"


@contextmanager
def started(tmp_path: Path, url: str, *, workers: int = 2, settings: dict[str, str] | None = None) -> Iterator[Node]:
    """`fleetops serve --workers N` (more FLEETOPS_* ``settings``), once its N-1 API workers serve."""
    with serve_nodes(tmp_path, url, count=1, FLEETOPS_WORKERS=str(workers), **(settings or {})) as (serve,):
        saved = json.loads((serve.data_dir / "credentials.json").read_text())
        node = Node(serve, saved["SecretId"], saved["SecretKey"])
        node.wait_for_workers(workers - 1)
        yield node


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("api-workers")
    settings = {
        "FLEETOPS_RATE_LIMIT_PER_S": str(LIMIT),
        "FLEETOPS_TRUSTED_PROXIES": "127.0.0.1",  # the tests stand for the proxy that forwards the client address
        "FLEETOPS_TASK_POLL_INTERVAL_S": "0.1",
    }
    if request.param == "sqlite":
        with started(tmp, sqlite_database(tmp / "fleetops.db"), settings=settings) as on_sqlite:
            yield on_sqlite
        return
    with postgres_database() as url, started(tmp, url, settings=settings) as on_postgresql:
        yield on_postgresql


def without_request_id(response: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in response.items() if key != "RequestId"}


def shadow_payload(response: dict[str, Any]) -> Any:
    return json.loads(response["Data"])["payload"]


async def test_every_kind_of_request_through_a_worker_answers_as_through_the_primary(node: Node) -> None:
    via_worker, via_primary = node.pinned(to_worker=True), node.pinned(to_worker=False)
    forwarded_before = node.metric("fleetops_api_worker_requests_total", handled="forwarded")
    # writes, forwarded by the worker to the primary
    product = call(via_worker, "CreateProduct", {"ProductName": "w" + secrets.token_hex(5)})["ProductId"]
    psk = call(via_worker, "CreateDevice", {"ProductId": product, "DeviceName": "lamp"})["DevicePsk"]
    call(via_worker, "CreateDevice", {"ProductId": product, "DeviceName": "fan"})
    device = PahoDevice(DeviceCredentials(product, "lamp", psk, True))
    try:
        assert await device.connect(int(node.serve.env["FLEETOPS_MQTT_PORT"])) == 0
        assert await device.subscribe(f"$shadow/operation/result/{product}/lamp") == 0
        assert await device.subscribe(f"{product}/lamp/control") == 0

        state = {"ProductId": product, "DeviceName": "lamp", "State": '{"desired":{"on":true}}', "ShadowVersion": 0}
        call(via_worker, "UpdateDeviceShadow", state)
        delta = json.loads((await device.receive()).payload)
        assert (delta["type"], delta["payload"]["state"]) == ("delta", {"on": True})

        message = {"ProductId": product, "DeviceName": "lamp", "Topic": f"{product}/lamp/control", "Payload": "hi"}
        call(via_worker, "PublishMessage", message)
        received = await device.receive()
        assert (received.topic, received.payload) == (f"{product}/lamp/control", b"hi")

        order = update_shadow_order(product, "^lamp$", '{"color":"red"}')
        task = call(via_worker, "CreateTask", order)["TaskId"]
        deadline = time.monotonic() + 30
        while call(via_worker, "DescribeTask", {"Id": task})["Status"] != 3:
            assert time.monotonic() < deadline, "the task did not complete"
            await asyncio.sleep(0.1)
        delta = json.loads((await device.receive()).payload)
        assert delta["payload"]["state"] == {"color": "red"}
    finally:
        device.close()

    # reads: answered by the worker itself, the same as the primary's answers
    reads: list[tuple[str, dict[str, Any]]] = [
        ("DescribeProduct", {"ProductId": product}),
        ("DescribeProducts", {"Offset": 0, "Limit": 10}),
        ("DescribeDevice", {"ProductID": product, "DeviceName": "lamp"}),
        ("DescribeDevices", {"ProductId": product, "Offset": 0, "Limit": 10}),
        ("DescribeTask", {"Id": task, "IncludeOutcomeCounts": True}),
        ("DescribeTasks", {"Offset": 0, "Limit": 10}),
        ("PreviewTask", {**order, "DeviceNameFilter": "^(lamp|fan)$"}),
    ]
    for action, params in reads:
        by_worker, by_primary = call(via_worker, action, params), call(via_primary, action, params)
        assert node.answered_by_worker(by_worker["RequestId"]), action
        assert without_request_id(by_worker) == without_request_id(by_primary), action
    shadow = {"ProductId": product, "DeviceName": "lamp"}
    assert shadow_payload(call(via_worker, "DescribeDeviceShadow", shadow)) == shadow_payload(
        call(via_primary, "DescribeDeviceShadow", shadow)
    )
    # errors, answered or forwarded, are the primary's too
    for action, params in [
        ("DescribeTask", {"Id": "nope"}),  # answered by the worker
        ("DeleteProduct", {"ProductId": product}),  # devices left: forwarded
        ("NoSuchAction", {}),
    ]:
        assert code_of(via_worker, action, params) == code_of(via_primary, action, params) != "OK"
    forwarded = node.metric("fleetops_api_worker_requests_total", handled="forwarded") - forwarded_before
    assert forwarded == 8  # the six writes, and two of the errors
    # a v1-signed request is always forwarded (the worker does not parse it): taken by the worker here, answered
    # by the primary once it runs again
    v1 = v1_client(node)
    answer = while_paused([node.primary], lambda: call(v1, "DescribeProduct", {"ProductId": product}), within_s=0.5)
    assert answer["ProductName"].startswith("w")
    assert node.metric("fleetops_api_worker_requests_total", handled="forwarded") - forwarded_before == 9


def v1_client(node: Node) -> Any:
    """The SDK's CommonClient signing with HmacSHA256 (signature v1)."""
    from tencentcloud.common import credential
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    profile = ClientProfile(
        httpProfile=HttpProfile(endpoint=node.endpoint, protocol="http"), signMethod="HmacSHA256", language="en-US"
    )
    cred = credential.Credential(node.secret_id, node.secret_key)
    return CommonClient("iotcloud", "2018-06-14", cred, "ap-guangzhou", profile=profile)


def test_many_connections_at_once_read_what_was_written(node: Node, tmp_path: Path) -> None:
    """Threads of their own, each with its key (the rate limit is per key), product, device and connection,
    write a shadow and read it back as fast as the limit lets them, wherever their connections land."""
    keys = new_keys(node, 10)
    local_before = node.metric("fleetops_api_worker_requests_total", handled="local")
    failures: list[str] = []

    def client_loop(secret_id: str, secret_key: str) -> None:
        client = node.client((secret_id, secret_key))
        product = call(client, "CreateProduct", {"ProductName": "m" + secrets.token_hex(5)})["ProductId"]
        call(client, "CreateDevice", {"ProductId": product, "DeviceName": "d"})
        for version in range(8):
            started = time.monotonic()
            desired = f'{{"desired":{{"n":{version}}}}}'
            call(
                client,
                "UpdateDeviceShadow",
                {"ProductId": product, "DeviceName": "d", "State": desired, "ShadowVersion": version},
            )
            payload = shadow_payload(call(client, "DescribeDeviceShadow", {"ProductId": product, "DeviceName": "d"}))
            if (payload["version"], payload["state"]["desired"]) != (version + 1, {"n": version}):
                failures.append(f"{product}: wrote version {version + 1}, read {payload}")
            if call(client, "DescribeDevice", {"ProductID": product, "DeviceName": "d"})["DeviceName"] != "d":
                failures.append(f"{product}: DescribeDevice")
            time.sleep(max(0.0, 0.07 - (time.monotonic() - started)))  # under LIMIT per second per action

    threads = [threading.Thread(target=client_loop, args=key) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert failures == []
    time.sleep(1.2)  # the workers' metrics batches (every 0.5 s)
    # the kernel gave the worker some of the connections, and it answered their reads
    assert node.metric("fleetops_api_worker_requests_total", handled="local") - local_before > 0


@dataclass
class Endpoint:
    endpoint: str
    secret_id: str
    secret_key: str


def new_keys(node: Node, count: int = 1) -> list[tuple[str, str]]:
    """Keys of new accounts, straight in the node's database."""
    from fleetops.store.accounts import AccountStore
    from fleetops.store.database import open_database

    async def create() -> list[tuple[str, str]]:
        db = open_database(node.serve.env["FLEETOPS_DATABASE_URL"])
        try:
            accounts = AccountStore(db)
            keys = []
            for _ in range(count):
                key = await accounts.create_key(await accounts.create_account("a" + secrets.token_hex(4), 0), 0)
                keys.append((key.secret_id, key.secret_key))
            return keys
        finally:
            await db.dispose()

    return asyncio.run(create())


class RawConnection:
    """A keep-alive connection sending one signed request again and again."""

    def __init__(self, port: int, request: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.request = request
        self.buffer = b""

    def ask(self, request: bytes | None = None) -> dict[str, Any]:
        self.sock.sendall(request or self.request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
        while len(rest) < length:
            rest += self.sock.recv(65536)
        self.buffer = rest[length:]
        response: dict[str, Any] = json.loads(rest[:length])["Response"]
        return response

    def close(self) -> None:
        self.sock.close()


def test_the_rate_limit_holds_for_the_node_across_its_processes(node: Node) -> None:
    body = b'{"Offset": 0, "Limit": 10}'
    headers = tc3_headers(
        host=node.endpoint, secret_id=node.secret_id, secret_key=node.secret_key, action="DescribeProducts", body=body
    )
    request, expired = (
        (
            "POST / HTTP/1.1\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in signed.items())
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for signed in (headers, {**headers, "X-TC-Timestamp": "1000000000"})
    )
    connections: list[RawConnection] = []
    try:
        # six connections taken by the worker, six by the primary, each with a request answered there alone
        for to_worker in (True, False):

            def open_six() -> list[tuple[RawConnection, str]]:
                opened = [RawConnection(node.serve.port, request) for _ in range(6)]
                return [(conn, conn.ask(expired)["RequestId"]) for conn in opened]

            for conn, request_id in while_paused([node.primary] if to_worker else node.workers(), open_six):
                assert node.answered_by_worker(request_id) is to_worker
                connections.append(conn)
        outcomes: list[str] = []
        lock = threading.Lock()

        def hammer(conn: RawConnection) -> None:
            for _ in range(5):
                response = conn.ask()
                with lock:
                    outcomes.append(response.get("Error", {}).get("Code", "OK"))

        for _attempt in range(5):
            time.sleep(1 - time.time() % 1 + 0.02)  # at the start of a second
            window = int(time.time())
            outcomes.clear()
            threads = [threading.Thread(target=hammer, args=(conn,)) for conn in connections]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            if int(time.time()) == window:
                break
        else:
            pytest.fail("no round of 60 requests fitted in one second")
        assert len(outcomes) == 60
        assert set(outcomes) == {"OK", "RequestLimitExceeded"}
        assert outcomes.count("OK") == LIMIT  # all of it, and no more, between the two processes
    finally:
        for conn in connections:
            conn.close()


def test_a_signature_replayed_from_another_client_through_a_worker_is_refused(node: Node) -> None:
    client = node.client()
    product = call(client, "CreateProduct", {"ProductName": "r" + secrets.token_hex(5)})["ProductId"]
    call(client, "CreateDevice", {"ProductId": product, "DeviceName": "lamp"})
    params = {"ProductId": product, "DeviceName": "lamp"}
    with sdk_capture() as capture:
        shadow = capture.send("DescribeDeviceShadow", params, secret_id=node.secret_id, secret_key=node.secret_key)
    spoofed = "http 1 " + CLIENT  # what a worker tells the primary: a client's own is never believed
    to_primary, to_worker = requests.Session(), requests.Session()
    # the client's first use, on the primary; then a replay on a connection the worker took
    first = while_paused(node.workers(), lambda: resend(shadow, node.endpoint, to_primary, x_forwarded_for=CLIENT))
    assert "Data" in first and not node.answered_by_worker(first["RequestId"])
    replayed = while_paused(
        [node.primary],
        lambda: resend(shadow, node.endpoint, to_worker, x_tc_action="DescribeDevice", x_forwarded_for=ATTACKER),
    )
    assert replayed["Error"]["Code"] == "AuthFailure.SignatureFailure"
    assert node.answered_by_worker(replayed["RequestId"])  # the worker's own ledger check
    # forwarded actions: the primary checks them with the address the worker saw, never one a client names
    for session in (to_worker, to_primary):
        for extra in ({}, {"x_fleetops_forwarded_client": spoofed}):
            refused = resend(
                shadow,
                node.endpoint,
                session,
                x_tc_action="DeleteDevice",
                x_tc_language="en-US",
                x_forwarded_for=ATTACKER,
                **extra,
            )
            assert refused["Error"]["Code"] == "AuthFailure.SignatureFailure", extra
            assert "already used for DescribeDeviceShadow" in refused["Error"]["Message"]
    # the exact request again from elsewhere (a retry), and another action from the first client, through the worker
    assert "Data" in resend(shadow, node.endpoint, to_worker, x_forwarded_for=ATTACKER)
    deleted = resend(shadow, node.endpoint, to_worker, x_tc_action="DeleteDevice", x_forwarded_for=CLIENT)
    assert "Error" not in deleted
    assert call(client, "DescribeDevices", {"ProductId": product, "Offset": 0, "Limit": 10})["Devices"] == []


def test_metrics_count_the_requests_the_workers_answered(node: Node) -> None:
    time.sleep(1.2)  # the counts of what the worker answered for the tests before are in
    before = node.scrape()

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return node.scrape().get(key, 0.0) - before.get(key, 0.0)

    # each pinned with a DescribeProducts of an unknown SecretId; a key of their own (the rate limit is per key)
    [key] = new_keys(node)
    via_worker, via_primary = node.pinned(to_worker=True, key=key), node.pinned(to_worker=False, key=key)
    for _ in range(4):
        call(via_worker, "DescribeProducts", {"Offset": 0, "Limit": 10})
    call(via_primary, "DescribeProducts", {"Offset": 0, "Limit": 10})
    for _ in range(3):
        call(via_worker, "CreateProduct", {"ProductName": "c" + secrets.token_hex(5)})
    time.sleep(1.2)  # a worker sends its counts every 0.5 s
    assert delta("fleetops_api_requests_total", action="DescribeProducts", outcome="OK") == 5
    assert delta("fleetops_api_requests_total", action="DescribeProducts", outcome="AuthFailure.SecretIdNotFound") == 2
    assert delta("fleetops_api_request_seconds_count", action="DescribeProducts") == 7
    assert delta("fleetops_api_requests_total", action="CreateProduct", outcome="OK") == 3
    assert delta("fleetops_api_worker_requests_total", handled="local") == 5
    assert delta("fleetops_api_worker_requests_total", handled="forwarded") == 3


def test_a_killed_worker_is_started_again_and_the_node_keeps_answering(node: Node) -> None:
    [old] = node.workers()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 30
    answered = 0
    while node.workers() in ([], [old]) or node.metric("fleetops_api_workers") != 1:
        assert time.monotonic() < deadline, node.log()[-3000:]
        call(node.client(), "DescribeProducts", {"Offset": 0, "Limit": 10})  # a new connection each time
        answered += 1
        time.sleep(0.1)
    assert answered > 0
    assert re.search(rf"API worker 1 \(pid {old}\) was killed by SIGKILL; starting it again", node.log())
    assert node.pinned(to_worker=True) is not None  # the new worker answers


def test_workers_stop_without_their_primary_and_with_it(node: Node) -> None:
    """The module's last test: it ends the node."""
    [worker] = node.workers()
    [stale] = (node.serve.data_dir / "run").glob("api-*.sock")
    assert stale.name == f"api-{node.primary}.sock"
    # the primary killed outright: its worker sees it gone and stops; its socket stays behind
    assert node.serve.process is not None
    node.serve.process.kill()
    node.serve.process.wait(10)
    wait_gone([worker])
    assert stale.exists()

    # started again on the same data directory: the stale socket goes; SIGTERM stops the worker, then the primary
    node.serve.start()
    node.wait_for_workers(1)
    workers = node.workers()
    assert not stale.exists()
    assert node.serve.process is not None
    node.serve.process.send_signal(signal.SIGTERM)
    assert node.serve.process.wait(30) == 0
    wait_gone(workers, timeout_s=1)  # reaped by the primary before it exited: no orphan
    assert list((node.serve.data_dir / "run").glob("*.sock")) == []
    log = node.log()
    assert "Traceback" not in log
    assert log.count("SecretKey:") == 1  # printed once, by the first primary only


def wait_gone(pids: Sequence[int], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    for pid in pids:
        while True:
            try:
                gone = psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                gone = True
            if gone:
                break
            assert time.monotonic() < deadline, f"API worker {pid} still runs"
            time.sleep(0.05)

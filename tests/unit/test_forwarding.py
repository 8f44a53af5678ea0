"""An API worker's front (api/forwarding.py) against a stand-in primary on a Unix socket: what it answers itself,
what it forwards and how (byte for byte, the client address in its own header), and what it answers when the
primary does not (docs/deployment.md#api-worker-processes)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from fleetops.api.actions import all_actions
from fleetops.api.app import ApiConfig, ApiEndpoint
from fleetops.api.forwarding import (
    FORWARDED_CLIENT,
    LOCAL_ACTIONS,
    RELAY_PATH,
    UP_PATH,
    ForwardedFront,
    Forwarder,
    WorkerFront,
    answered_here,
    worker_up,
)
from fleetops.api.metrics import NodeMetrics
from fleetops.api.ratelimit import LocalRateLimiter
from fleetops.api.registry import Registry
from fleetops.api.relayed_metrics import MetricsRelay, WorkerRequests, apply_relayed
from fleetops.backend.container import Backend
from fleetops.errors import ConfigurationError
from fleetops.messaging.absent import BrokerAbsent, NoBroker
from fleetops.ports.telemetry import ShadowSource
from fleetops.settings import Settings
from fleetops.workers import SharedListener, worker_count, worker_environment
from tests.asgi_client import call

TC3 = [("authorization", "TC3-HMAC-SHA256 Credential=AKIDx/2026-01-01/iotcloud/tc3_request, ..."), ("host", "h")]

OK_ANSWER = (
    b"HTTP/1.1 200 OK\r\ndate: Thu, 01 Jan 2026 00:00:00 GMT\r\nserver: uvicorn\r\ncontent-type: application/json\r\n"
    b"X-Custom: Kept As Sent\r\ncontent-length: 15\r\n\r\n"
    b'{"Response":{}}'
)


@dataclass
class Primary:
    """A stand-in for the primary's forwarding socket: records each request whole, answers what it is told."""

    path: Path
    answer: bytes = OK_ANSWER
    # answer | hang | close (read the request, then close) | once (answer a connection's first request only)
    behaviour: str = "answer"
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self.requests.append(head + await reader.readexactly(length))
                if self.behaviour == "hang":
                    await asyncio.sleep(3600)
                if self.behaviour == "close" or (self.behaviour == "once" and served):
                    break
                writer.write(self.answer)
                await writer.drain()
                served += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def primary(tmp_path: Path, **options: Any) -> AsyncIterator[Primary]:
    stand_in = Primary(tmp_path / "p.sock", **options)
    server = await asyncio.start_unix_server(stand_in.handle, path=str(stand_in.path))
    try:
        yield stand_in
    finally:
        server.close()


@dataclass
class Recorder:
    """A request observer (the worker's metrics relay) that keeps what it is told."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def observe(self, action: str, outcome: str, seconds: float) -> None:
        self.seen.append((action, outcome))


class LocalEndpoint:
    """Stands for the worker's own ApiEndpoint where only the routing is under test."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"local"})


def front(
    path: Path, endpoint: Any = None, *, max_body_bytes: int = 1000, timeout_s: float = 5
) -> tuple[WorkerFront, Recorder]:
    recorder = Recorder()
    config = ApiConfig(max_body_bytes=max_body_bytes)
    if endpoint is None:  # the real endpoint: what it answers before dispatch needs no backend
        endpoint = ApiEndpoint(
            Registry(all_actions()), cast(Backend, None), LocalRateLimiter(100, lambda: 0.0), config, recorder
        )
    worker = WorkerFront(
        cast(ApiEndpoint, endpoint),
        Forwarder(str(path), timeout_s=timeout_s),
        registry=Registry(all_actions()),
        config=config,
        observer=recorder,
    )
    return worker, recorder


def test_a_worker_answers_the_read_actions_of_tc3_requests_only() -> None:
    for action in LOCAL_ACTIONS:
        assert answered_here([(b"authorization", b"TC3 ..."), (b"x-tc-action", action.encode())])
    assert not answered_here([(b"x-tc-action", b"DescribeTask")])  # v1 (no Authorization): forwarded
    assert not answered_here([(b"authorization", b"TC3 ..."), (b"x-tc-action", b"UpdateDeviceShadow")])
    assert not answered_here([(b"authorization", b"TC3 ..."), (b"x-tc-action", b"describetask")])
    # the endpoint reads the last X-TC-Action: so does the worker
    assert not answered_here(
        [(b"authorization", b"x"), (b"x-tc-action", b"DescribeTask"), (b"x-tc-action", b"DeleteDevice")]
    )
    assert answered_here(
        [(b"authorization", b"x"), (b"x-tc-action", b"DeleteDevice"), (b"x-tc-action", b"DescribeTask")]
    )


def test_the_local_actions_are_registered_read_actions() -> None:
    names = set(Registry(all_actions()).names())
    assert names >= LOCAL_ACTIONS
    assert all(name.startswith(("Describe", "Preview")) for name in LOCAL_ACTIONS)


async def test_a_local_action_never_reaches_the_primary(tmp_path: Path) -> None:
    async with primary(tmp_path) as stand_in:
        endpoint = LocalEndpoint()
        worker, _ = front(stand_in.path, endpoint)
        answered = await call(worker, [*TC3, ("x-tc-action", "DescribeTask")], b"{}")
        assert (answered.status, answered.body, endpoint.calls, stand_in.requests) == (200, b"local", 1, [])


async def test_everything_else_is_forwarded_whole_and_the_answer_relayed(tmp_path: Path) -> None:
    async with primary(tmp_path) as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        headers = [
            *TC3,
            ("x-tc-action", "UpdateDeviceShadow"),
            ("X-Odd-Case", "Value  with  spaces"),
            ("connection", "keep-alive"),
            ("x-fleetops-forwarded-client", "http 1 198.51.100.1"),  # a client's own: replaced
        ]
        answered = await call(worker, headers, b'{"State":"x"}', query=b"a=1&b=%20", client=("192.0.2.9", 5555))
        assert answered.status == 200
        assert answered.body == b'{"Response":{}}'
        # the hop-by-hop headers and date/server (the worker's uvicorn sets its own) are not relayed
        assert answered.headers == [
            (b"content-type", b"application/json"),
            (b"X-Custom", b"Kept As Sent"),
            (b"content-length", b"15"),
        ]
        [sent] = stand_in.requests
        head, _, body = sent.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        assert lines[0] == b"POST /?a=1&b=%20 HTTP/1.1"
        assert lines[1:] == [
            b"authorization: " + TC3[0][1].encode(),
            b"host: h",
            b"x-tc-action: UpdateDeviceShadow",
            b"x-odd-case: Value  with  spaces",
            FORWARDED_CLIENT + b": http 5555 192.0.2.9",
            b"content-length: 13",
        ]
        assert body == b'{"State":"x"}'


async def test_connections_to_the_primary_are_kept_and_reused(tmp_path: Path) -> None:
    async with primary(tmp_path) as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        for _ in range(3):
            assert (await call(worker, [("host", "h")], method="GET", path="/healthz")).status == 200
        assert (len(stand_in.requests), stand_in.connections) == (3, 1)


async def test_a_chunked_answer_and_interim_ones_are_relayed_as_one_body(tmp_path: Path) -> None:
    answer = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n"
        b"4\r\nnot \r\n5;ext=1\r\nfound\r\n0\r\n\r\n"
    )
    async with primary(tmp_path, answer=answer) as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        answered = await call(worker, [("host", "h"), ("expect", "100-continue")], b"x", path="/nowhere")
        assert (answered.status, answered.body) == (404, b"not found")
        assert answered.headers == [(b"content-type", b"text/plain"), (b"content-length", b"9")]


async def test_a_head_answer_has_no_body_to_wait_for(tmp_path: Path) -> None:
    answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"
    async with primary(tmp_path, answer=answer) as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        answered = await call(worker, [("host", "h")], method="HEAD", path="/healthz")
        assert (answered.status, answered.body, answered.header(b"content-length")) == (200, b"", b"2")


async def test_a_get_to_the_api_is_forwarded_without_its_body(tmp_path: Path) -> None:
    async with primary(tmp_path) as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint(), max_body_bytes=10)
        await call(worker, [("host", "h")], b"x" * 5000, method="GET", query=b"Action=DescribeTask")
        [sent] = stand_in.requests
        assert sent.endswith(b"content-length: 0\r\n\r\n")


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversize_api_body_is_answered_by_the_worker_as_the_primary_would(
    tmp_path: Path, chunked: bool
) -> None:
    async with primary(tmp_path) as stand_in:
        worker, recorder = front(stand_in.path, max_body_bytes=100)
        body = b"x" * 150
        answered = await call(
            worker, [*TC3, ("x-tc-action", "CreateTask")], body, chunks=[body[:60], body[60:]] if chunked else None
        )
        assert answered.envelope()["Error"]["Code"] == "RequestSizeLimitExceeded"
        assert stand_in.requests == []
        assert recorder.seen == [("-", "RequestSizeLimitExceeded")]
        # a v1 request (no Authorization) has the endpoint's v1 limit, 1 MB, not max_body_bytes
        v1 = await call(worker, [("content-type", "application/x-www-form-urlencoded")], b"Action=CreateTask")
        assert v1.status == 200 and len(stand_in.requests) == 1


async def test_an_oversize_body_elsewhere_is_413_and_a_client_gone_mid_body_is_the_endpoints_outcome(
    tmp_path: Path,
) -> None:
    async with primary(tmp_path) as stand_in:
        worker, recorder = front(stand_in.path, max_body_bytes=10)
        big = b"y" * (1024 * 1024 + 1)  # over both limits (TC3 10 bytes here, v1 1 MB)
        assert (await call(worker, [("host", "h")], big, path="/mqtt/auth")).status == 413
        await call(worker, [*TC3, ("x-tc-action", "CreateTask")], chunks=[b"ab", b"cd"], disconnect_after=1)
        assert recorder.seen == [("-", "ClientDisconnected")]
        assert stand_in.requests == []


async def test_a_primary_that_does_not_answer_is_service_unavailable_and_a_write_is_sent_once(
    tmp_path: Path,
) -> None:
    async with primary(tmp_path, behaviour="hang") as stand_in:
        worker, recorder = front(stand_in.path, LocalEndpoint(), timeout_s=0.3)
        answered = await call(worker, [*TC3, ("x-tc-action", "PublishMessage"), ("x-tc-language", "zh-CN")], b"{}")
        error = answered.envelope()["Error"]
        assert error["Code"] == "ServiceUnavailable"
        assert "0.3 秒内没有应答" in error["Message"]
        assert recorder.seen == [("PublishMessage", "ServiceUnavailable")]
        assert len(stand_in.requests) == 1
    async with primary(tmp_path, behaviour="close") as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        answered = await call(worker, [*TC3, ("x-tc-action", "CreateTask"), ("x-tc-language", "en-US")], b"{}")
        assert "the connection to the primary process broke" in answered.envelope()["Error"]["Message"]
        assert len(stand_in.requests) == 1  # never sent again


async def test_only_a_get_is_sent_again_when_a_kept_connection_breaks(tmp_path: Path) -> None:
    async with primary(tmp_path, behaviour="once") as stand_in:
        worker, _ = front(stand_in.path, LocalEndpoint())
        assert (await call(worker, [("host", "h")], method="GET", path="/healthz")).status == 200
        # the kept connection takes the next request and breaks: a GET goes again on a new connection
        assert (await call(worker, [("host", "h")], method="GET", path="/healthz")).status == 200
        assert (len(stand_in.requests), stand_in.connections) == (3, 2)
        # a write on the kept connection of that retry: sent once, whatever happened to it
        answered = await call(worker, [*TC3, ("x-tc-action", "DeleteDevice")], b"{}")
        assert answered.envelope()["Error"]["Code"] == "ServiceUnavailable"
        assert (len(stand_in.requests), stand_in.connections) == (4, 2)


async def test_no_primary_at_all(tmp_path: Path) -> None:
    worker, _ = front(tmp_path / "gone.sock", LocalEndpoint())
    answered = await call(worker, [*TC3, ("x-tc-action", "CreateProduct")], b"{}")
    assert answered.envelope()["Error"]["Code"] == "ServiceUnavailable"
    assert "cannot reach the primary process" in answered.envelope()["Error"]["Message"]
    assert (await call(worker, [("host", "h")], method="GET", path="/readyz")).status == 503


# --- the primary's side ---------------------------------------------------------------------------------


class Seen:
    def __init__(self) -> None:
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scopes.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def forwarded_front(app: Any) -> tuple[ForwardedFront, NodeMetrics, list[tuple[int, int]], Callable[[], float]]:
    metrics = NodeMetrics()
    counted = WorkerRequests(metrics.registry, lambda: 1)
    told: list[tuple[int, int]] = []
    internal: dict[str, Callable[[bytes], bytes | None]] = {
        RELAY_PATH: lambda body: apply_relayed(metrics, counted, body),
        UP_PATH: worker_up(lambda index, pid: told.append((index, pid))),
    }
    front_ = ForwardedFront(app, internal=internal, forwarded=counted.forwarded.inc)

    def sample(name: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(name, labels) or 0.0

    return front_, metrics, told, lambda: sample("fleetops_api_worker_requests_total", handled="forwarded")


async def test_the_primary_takes_the_client_from_the_workers_header_and_removes_it() -> None:
    seen = Seen()
    front_, _, _, forwarded = forwarded_front(seen)
    await call(front_, [("host", "h"), ("x-fleetops-forwarded-client", "https 4321 198.51.100.7")], client=None)
    await call(front_, [("host", "h")], client=None, path="/metrics")
    first, second = seen.scopes
    assert (first["client"], first["scheme"], first["headers"][-1]) == (
        ("198.51.100.7", 4321),
        "https",
        (b"content-length", b"0"),
    )
    assert all(name != FORWARDED_CLIENT for name, _ in first["headers"])
    assert second["client"] is None  # no header: an unknown client, never the same as another
    assert forwarded() == 1  # API requests only


async def test_the_workers_metrics_batches_add_to_the_primarys_metrics() -> None:
    relay = MetricsRelay()
    relay.observe("DescribeTask", "OK", 0.002)
    relay.observe("DescribeTask", "OK", 0.004)
    relay.observe("-", "InvalidAction", 0.001)
    relay.database_error()
    relay.shadows_written(ShadowSource.API, 2)
    batch = relay.take()
    assert batch is not None and relay.take() is None
    front_, metrics, told, _ = forwarded_front(Seen())
    assert (await call(front_, [("host", "h")], batch, path=RELAY_PATH, client=None)).status == 204
    assert (await call(front_, [], orjson.dumps({"index": 3, "pid": 99}), path=UP_PATH, client=None)).status == 204
    assert (await call(front_, [], b"[1, 2]", path=RELAY_PATH, client=None)).status == 400
    value = metrics.registry.get_sample_value
    assert value("fleetops_api_requests_total", {"action": "DescribeTask", "outcome": "OK"}) == 2
    assert value("fleetops_api_request_seconds_sum", {"action": "DescribeTask"}) == pytest.approx(0.006)
    assert value("fleetops_api_requests_total", {"action": "-", "outcome": "InvalidAction"}) == 1
    assert value("fleetops_database_errors_total", {}) == 1
    assert value("fleetops_shadow_writes_total", {"source": "api"}) == 2
    assert value("fleetops_api_worker_requests_total", {"handled": "local"}) == 3
    assert value("fleetops_api_workers", {}) == 1
    assert told == [(3, 99)]


def test_a_relay_holds_a_bounded_number_of_observations() -> None:
    relay = MetricsRelay(max_held=2)
    for _ in range(5):
        relay.observe("DescribeTask", "OK", 0.001)
    assert relay.dropped == 3
    assert len(orjson.loads(relay.take() or b"")["requests"][0][2]) == 2


# --- the processes ------------------------------------------------------------------------------------


def test_each_process_takes_one_connection_per_turn_from_the_shared_socket() -> None:
    plain = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    plain.bind(("127.0.0.1", 0))
    plain.listen(16)
    listener = SharedListener.adopt(plain)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    try:
        taken: list[socket.socket | None] = []
        for _ in range(6):
            try:
                taken.append(listener.accept()[0])
            except BlockingIOError:
                taken.append(None)
        assert [sock is not None for sock in taken] == [True, False, True, False, True, False]
        assert listener.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY by it
        for sock in taken:
            if sock is not None:
                sock.close()
    finally:
        for client in clients:
            client.close()
        listener.close()


def test_the_worker_count_is_checked_with_a_way_out() -> None:
    assert worker_count(Settings(workers=4)) == 4
    for wrong in (0, 33, -1):
        with pytest.raises(ConfigurationError, match=r"FLEETOPS_WORKERS\) must be between 1 and 32, got"):
            worker_count(Settings(workers=wrong))


def test_a_worker_gets_the_primarys_settings_through_its_environment(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, port=1234, signature_binding=False, http_request_timeout_s=2.5, trusted_proxies="10.0.0.1"
    ).with_overrides(workers="3")
    assert Settings.from_env(worker_environment(settings)) == settings


async def test_a_process_without_a_broker_refuses_every_broker_call() -> None:
    broker = NoBroker("a test")
    calls: list[Callable[[], Any]] = [
        lambda: broker.publisher,
        broker.start,
        broker.stop,
        lambda: broker.disconnect_device("P", "d"),
        lambda: broker.push_delta("$shadow", "P", "d", 1, {}, 0),
        lambda: broker.push_deltas("P", [("d", 1)], {}, 0),
        lambda: broker.publish_to_devices("P", ["d"], "data", b"x", 0),
        lambda: broker.publish_to_devices_acked("P", ["d"], "data", b"x", lambda _i: None),
        lambda: broker.is_online("P", "d"),
        broker.presence_recorded,
        lambda: broker.reaches("P", "d", "data", "P/d/data"),
        lambda: broker.publish("P/d/data", b"x", 0),
        lambda: broker.delivery_view("P", "d", "P/d/data"),
    ]
    for make in calls:
        with pytest.raises(BrokerAbsent, match="has no broker"):
            result = make()
            if asyncio.iscoroutine(result):
                await result

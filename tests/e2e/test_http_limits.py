"""The API listener against slow and many clients, and HTTPS: a request that does not arrive whole in time is
closed, a full listener evicts the connection waiting longest (tests/unit/test_listeners.py: never one with a
request in progress) and refuses with 503 when none is waiting, oversize
headers are refused, and the official SDK works over HTTPS with a CA the test makes while a client that does not
trust that CA is refused."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetops.errors import ConfigurationError
from fleetops.server import http_limits
from fleetops.settings import Settings
from tests.support import LiveServer, make_test_pki, new_product, sdk_client, sdk_error, server_on

TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with server_on(
        "sqlite", tmp_path_factory.mktemp("limits"), http_request_timeout_s=TIMEOUT_S, http_max_connections=20
    ) as live:
        yield live


def _connect(server: LiveServer, first_bytes: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.settings.port), timeout=10)
    if first_bytes:
        sock.sendall(first_bytes)
    return sock


def _await_open(server: LiveServer, count: int) -> None:
    """Until the server has accepted ``count`` connections (the table is read from another thread: a poll)."""
    deadline = time.monotonic() + 10
    while server.connections.open_connections < count:
        assert time.monotonic() < deadline, f"only {server.connections.open_connections} connections accepted"
        time.sleep(0.01)


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def _closed_within(sock: socket.socket, bound_s: float) -> tuple[bytes, float]:
    started = time.monotonic()
    received = _read_until_closed(sock)
    elapsed = time.monotonic() - started
    assert elapsed < bound_s, f"the connection stayed open {elapsed:.1f} s"
    return received, elapsed


def test_headers_trickled_slowly_are_closed_at_the_deadline(server: LiveServer) -> None:
    sock = _connect(server, b"POST / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    with sock:
        for _ in range(3):  # a slow-loris client: a header line now and then, never the end of the headers
            time.sleep(TIMEOUT_S / 4)
            sock.sendall(b"X-A: b\r\n")
        received, _ = _closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert time.monotonic() - started >= TIMEOUT_S * 0.9


def test_a_body_that_does_not_arrive_is_closed_at_the_deadline(server: LiveServer) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    with _connect(server, head) as sock:
        received, _ = _closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 408 ")


def test_a_keep_alive_connection_gets_a_new_deadline_per_request(server: LiveServer) -> None:
    with requests.Session() as session:
        for _ in range(3):  # together longer than one deadline: each request has its own
            assert session.get(f"http://{server.endpoint}/healthz", timeout=5).text == "ok"
            time.sleep(TIMEOUT_S * 0.6)


def test_oversize_headers_get_431(server: LiveServer) -> None:
    with _connect(server, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n") as sock:
        received, _ = _closed_within(sock, 5)
    assert received.startswith(b"HTTP/1.1 431 ")


def test_a_full_listener_evicts_the_oldest_half_open_connection(server: LiveServer) -> None:
    client = sdk_client(server)
    half_open = [_connect(server, b"POST / HTTP/1.1\r\n") for _ in range(20)]
    try:
        _await_open(server, 20)
        evicted_before = server.connections.evicted
        # the listener is full of connections that owe a request: each new one evicts the oldest
        for _ in range(3):
            assert client.call_json("DescribeProducts", {"Offset": 0, "Limit": 10})["Response"]["TotalCount"] >= 0
        half_open[0].settimeout(5)
        assert _read_until_closed(half_open[0]) == b""  # evicted: closed without a response
        assert server.connections.evicted > evicted_before
    finally:
        for sock in half_open:
            sock.close()


class _Busy:
    """A table entry whose request is in progress: never evicted."""

    def evict(self) -> None:
        raise AssertionError("a connection with a request in progress was evicted")


def test_a_listener_full_of_requests_in_progress_refuses_with_503(server: LiveServer) -> None:
    deadline = time.monotonic() + 10
    while server.connections.open_connections:  # the other tests' connections closed (the deadline is 0.5 s)
        assert time.monotonic() < deadline, f"{server.connections.open_connections} connections stay open"
        time.sleep(0.01)
    table = server.connections
    busy = [_Busy() for _ in range(table.max_connections)]

    async def fill() -> None:  # on the server's loop: each one a request in progress
        for entry in busy:
            table.add(entry)
            table.busy(entry)

    async def empty() -> None:
        for entry in busy:
            table.closed(entry)

    refused_before = table.refused
    server.run(fill())
    try:
        with _connect(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
            received, _ = _closed_within(sock, 5)
    finally:
        server.run(empty())
    assert received.startswith(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"), received
    assert table.refused == refused_before + 1
    assert requests.get(f"http://{server.endpoint}/healthz", timeout=5).text == "ok"  # room again


# --- HTTPS -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[LiveServer]:
    with server_on(
        "sqlite",
        tmp_path_factory.mktemp("https"),
        tls_cert_file=str(pki["server.pem"]),
        tls_key_file=str(pki["server.key"]),
        http_request_timeout_s=TIMEOUT_S,
        http_max_connections=20,
    ) as live:
        yield live


@pytest.mark.parametrize("mode", ["TC3-POST", "TC3-GET", "HmacSHA256"])
def test_the_sdk_works_over_https_with_the_ca_trusted(tls_server: LiveServer, pki: dict[str, Path], mode: str) -> None:
    client = sdk_client(tls_server, mode, ca_file=str(pki["ca.pem"]))
    product = new_product(client)
    got = client.call_json("DescribeProduct", {"ProductId": product})["Response"]
    assert got["ProductId"] == product


def test_a_client_not_trusting_the_ca_is_refused(tls_server: LiveServer, pki: dict[str, Path]) -> None:
    code, message = sdk_error(lambda: sdk_client(tls_server).call_json("DescribeProducts", {"Offset": 0, "Limit": 10}))
    assert code == "ClientNetworkError" and "CERTIFICATE_VERIFY_FAILED" in message
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(tls_server.url, verify=str(pki["other.pem"]), timeout=10)
    # and plain HTTP on the HTTPS port is no request at all
    with _connect(tls_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n") as sock:
        assert not _read_until_closed(sock).startswith(b"HTTP/1.1 200")


def test_a_tls_handshake_that_never_comes_is_closed_and_evictable(tls_server: LiveServer, pki: dict[str, Path]) -> None:
    # a TCP connection that never says ClientHello counts against the cap and the deadline from its first byte
    with _connect(tls_server) as sock:
        _closed_within(sock, 5)
    half_open = [_connect(tls_server) for _ in range(25)]
    try:
        _await_open(tls_server, 20)
        context = ssl.create_default_context(cafile=str(pki["ca.pem"]))
        with socket.create_connection(("127.0.0.1", tls_server.settings.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert _read_until_closed(tls).startswith(b"HTTP/1.1 200")
    finally:
        for sock in half_open:
            sock.close()


def test_tls_settings_mistakes_are_one_line_configuration_errors(tmp_path: Path, pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigurationError, match="needs both a certificate and its key"):
        http_limits(Settings(tls_cert_file=str(pki["server.pem"])))
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigurationError, match=f"cannot load the HTTPS certificate {missing}") as refused:
        http_limits(Settings(tls_cert_file=str(missing), tls_key_file=str(pki["server.key"])))
    assert "\n" not in str(refused.value) and "--tls-cert" in str(refused.value)
    wrong_key: Any = pki["other.key"]
    with pytest.raises(ConfigurationError, match="cannot load"):
        http_limits(Settings(tls_cert_file=str(pki["server.pem"]), tls_key_file=str(wrong_key)))


_REQUEST_PARTS = st.sampled_from(
    [
        b"GET / HTTP/1.1\r\n",
        b"POST / HTTP/1.1\r\n",
        b"CONNECT / HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.0\r\n",
        b"Host: x\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999999999999\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Connection: upgrade\r\nUpgrade: websocket\r\n",
        b"Expect: 100-continue\r\n",
        b"\r\n",
        b"zz\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\r\n",
        b"\x00\xff\x16\x03\x01",
        b" ",
        b":\r\n",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=st.lists(st.one_of(_REQUEST_PARTS, st.binary(max_size=64)), max_size=12).map(b"".join))
def test_junk_streams_never_break_the_listener(
    server: LiveServer, caplog: pytest.LogCaptureFixture, stream: bytes
) -> None:
    """Whatever bytes a client sends, the connection ends (answered, refused or timed out) and the listener keeps
    serving; nothing is logged with a traceback."""
    with caplog.at_level(logging.INFO):
        with _connect(server, stream) as sock:
            sock.shutdown(socket.SHUT_WR)
            _closed_within(sock, 5)
        assert requests.get(f"http://{server.endpoint}/healthz", timeout=5).text == "ok"
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records if r.exc_info]

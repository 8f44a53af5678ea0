"""fleetops as a client of an external broker (Mosquitto here), and the EMQX 5 HTTP auth endpoints.

Tests marked ``mosquitto`` use the shared Mosquitto at 127.0.0.1:1883 (random product ids keep parallel runs
apart) or start a private one on a free port (restart and password tests).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.routing import Mount, Router

from fleetops.errors import BrokerUnavailable, ConfigurationError
from fleetops.messaging.device_auth import make_username, sign_password
from fleetops.messaging.external import (
    SHADOW_FILTER,
    BrokerAddress,
    BrokerMode,
    ExternalBroker,
    ExternalOptions,
    ExternalPublisher,
)
from fleetops.messaging.http_auth import (
    FAILURE_WINDOW_S,
    MAX_BODY_BYTES,
    MAX_FAILURES,
    MAX_TRACKED_ADDRESSES,
    FailureLimiter,
    mqtt_auth_router,
)
from fleetops.messaging.mqtt.client import MqttClient
from fleetops.messaging.mqtt.codec import encode_publish
from tests.mqtt_support import (
    EchoShadowHandler,
    MemoryDirectory,
    MosquittoProcess,
    PahoDevice,
    free_port,
    paho_devices,
    random_product_id,
)
from tests.support import MOSQUITTO_HOST, MOSQUITTO_PORT, FakeClock, require_service

SHARED_MOSQUITTO = "mqtt://127.0.0.1:1883"


def fast_options(**overrides: Any) -> ExternalOptions:
    """Short waits, and no share-group probe unless a test asks for one."""
    defaults: dict[str, Any] = {
        "broker_wait_s": 2.0,
        "connect_timeout_s": 2.0,
        "reconnect_delay_s": 0.1,
        "max_reconnect_delay_s": 0.2,
        "share_group": "",
        "probe_timeout_s": 0.3,
        "hello_timeout_s": 0.3,  # no fleetops plugin on these brokers: the hello goes unanswered
    }
    return ExternalOptions(**(defaults | overrides))


@pytest.fixture
def needs_mosquitto_binary() -> None:
    if not MosquittoProcess.available():
        pytest.skip("the mosquitto binary is not installed")


@pytest.fixture
async def private_mosquitto(tmp_path: Path, needs_mosquitto_binary: None) -> AsyncIterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


# --- URL -------------------------------------------------------------------------------------------------


def test_broker_urls() -> None:
    assert BrokerAddress.parse("mqtt://fleetops:s%40cret@broker.local:11883") == BrokerAddress(
        "broker.local", 11883, "fleetops", "s@cret", tls=False
    )
    assert BrokerAddress.parse("mqtt://127.0.0.1") == BrokerAddress("127.0.0.1", 1883, None, None, tls=False)
    assert BrokerAddress.parse("mqtts://u:p@h").port == 8883
    assert "s@cret" not in repr(BrokerAddress.parse("mqtt://u:s%40cret@h"))
    for bad in ("http://h:1883", "mqtt://", "mqtt://h:notaport", "h:1883"):
        with pytest.raises(ConfigurationError):
            BrokerAddress.parse(bad)


# --- against the shared Mosquitto ------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_shadow_requests_round_trip_through_mosquitto() -> None:
    """Mosquitto 2.0 does not deliver $ topics to shared subscriptions: the probe notices and falls back."""
    pid = random_product_id()
    directory, handler = MemoryDirectory(), EchoShadowHandler()
    credentials = directory.add(pid, "lamp01")
    handler.known.add((pid, "lamp01"))
    service = ExternalBroker(SHARED_MOSQUITTO, handler, options=fast_options(share_group="fleetops"))
    await service.start()
    try:
        assert service.mode is BrokerMode.SHARED_SUBSCRIPTION  # no welcome: not the plugin's node protocol
        assert not service.presence_recorded and not service.publisher.presence_recorded()
        assert service.shadow_filter in (SHADOW_FILTER, f"$share/fleetops/{SHADOW_FILTER}")
        with paho_devices() as devices:
            device = PahoDevice(credentials)
            devices.append(device)
            assert await device.connect(1883) == 0
            assert await device.subscribe(f"$shadow/operation/result/{pid}/lamp01", 0) == 0
            for n in range(3):  # one device's requests are answered in order
                device.publish(f"$shadow/operation/{pid}/lamp01", orjson.dumps({"type": "get", "n": n}), 1)
            replies = [orjson.loads((await device.receive()).payload) for _ in range(3)]
            assert replies == [{"echo": {"type": "get", "n": n}} for n in range(3)]
    finally:
        await service.stop()


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [0, 1])
async def test_publishes_reach_a_device_on_mosquitto(qos: int) -> None:
    pid = random_product_id()
    directory = MemoryDirectory()
    service = ExternalBroker(SHARED_MOSQUITTO, EchoShadowHandler(), options=fast_options())
    await service.start()
    try:
        with paho_devices() as devices:
            device = PahoDevice(directory.add(pid, "lamp01"))
            devices.append(device)
            assert await device.connect(1883) == 0
            assert await device.subscribe(f"{pid}/lamp01/control", 1) == 1
            messages = [(f"{pid}/lamp01/control", f"m{n}".encode()) for n in range(200)]
            await service.publisher.publish_many(messages, qos)
            received = [await device.receive() for _ in range(200)]
            assert [(m.topic, m.payload, m.qos) for m in received] == [(t, p, qos) for t, p in messages]
            assert service.publisher.subscribed(f"{pid}/lamp01/control") is None  # the broker does not say
            assert service.publisher.online(pid, "lamp01") is None
    finally:
        await service.stop()


@pytest.mark.mosquitto
async def test_a_worker_without_the_plugin_asks_once_and_records_no_presence() -> None:
    service = ExternalBroker(SHARED_MOSQUITTO, EchoShadowHandler(), options=fast_options(serve_shadow_requests=False))
    await service.start()
    try:
        assert service.mode is None and not service.presence_recorded  # the hello went unanswered
        assert not service.publisher.presence_recorded()  # its tasks' outcomes say Published
    finally:
        await service.stop()


# --- outages -----------------------------------------------------------------------------------------------


@pytest.mark.mosquitto
async def test_the_connection_recovers_after_a_broker_restart(private_mosquitto: MosquittoProcess) -> None:
    pid = random_product_id()
    directory, handler = MemoryDirectory(), EchoShadowHandler()
    credentials = directory.add(pid, "lamp01")
    handler.known.add((pid, "lamp01"))
    control, result = f"{pid}/lamp01/control", f"$shadow/operation/result/{pid}/lamp01"
    options = fast_options(broker_wait_s=0.5)
    service = ExternalBroker(f"mqtt://127.0.0.1:{private_mosquitto.port}", handler, options=options)
    await service.start()
    try:
        with paho_devices() as devices:
            # a persistent session: Mosquitto keeps its subscriptions and QoS 1 messages across the restart
            device = PahoDevice(credentials, clean_session=False, reconnect=True, resubscribe=((control, 1),))
            devices.append(device)
            assert await device.connect(private_mosquitto.port) == 0
            assert await device.wait(device.subacks) == [1]
            assert await device.subscribe(result, 0) == 0
            await service.publisher.publish(control, b"before", 1)
            assert (await device.receive()).payload == b"before"

            await private_mosquitto.stop()  # by PID
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):  # a short wait ends in an error, not in a silent drop
                await service.publisher.publish(control, b"refused", 1)
            assert 0.4 <= time.monotonic() - started < 3
            options.broker_wait_s = 15
            waiting = asyncio.create_task(service.publisher.publish_many([(control, b"during")], 1))
            await asyncio.sleep(0.5)
            assert not waiting.done()  # it waits for the broker
            assert not service.connected

            await private_mosquitto.start()  # the same port
            await asyncio.wait_for(waiting, 10)  # acknowledged by the restarted broker
            assert service.connected
            await service.publisher.publish(control, b"after", 1)
            assert [(await device.receive(10)).payload for _ in range(2)] == [b"during", b"after"]
            # the shadow subscription is back too
            device.publish(f"$shadow/operation/{pid}/lamp01", b'{"type":"get"}', 1)
            assert orjson.loads((await device.receive()).payload) == {"echo": {"type": "get"}}
    finally:
        await service.stop()


@pytest.mark.mosquitto
async def test_a_client_that_only_sends_keeps_its_connection() -> None:
    """A batch task publishes QoS 0 for minutes and the broker sends nothing back: the client must still ping
    (and hear PINGRESP) instead of taking the broker's silence for a dead connection."""
    require_service("Mosquitto", MOSQUITTO_HOST, MOSQUITTO_PORT)
    client = await MqttClient.connect(
        MOSQUITTO_HOST,
        MOSQUITTO_PORT,
        client_id=f"fleetops-only-sends-{random_product_id()}",
        on_message=lambda topic, payload, qos: None,
        keepalive_s=1,
    )
    try:
        topic = f"{random_product_id()}/nobody/control".encode()
        deadline = time.monotonic() + 2.5  # beyond 1.5 x the keep-alive
        while time.monotonic() < deadline:
            assert client.write(encode_publish(topic, b"x"))
            await asyncio.sleep(0.05)
        assert client.alive
    finally:
        await client.close()


async def test_an_unreachable_broker_makes_publishes_wait_then_raise() -> None:
    port = free_port()  # nothing listens there
    service = ExternalBroker(f"mqtt://127.0.0.1:{port}", EchoShadowHandler(), options=fast_options(broker_wait_s=0.3))
    await service.start()  # retries in the background instead of failing the whole node
    try:
        assert not service.connected
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable, match=rf"127\.0\.0\.1:{port}"):
            await service.publisher.publish_many([("a/b", b"x")], 0)
        assert 0.25 <= time.monotonic() - started < 2
        service.options.broker_wait_s = 30
        waiting = asyncio.create_task(service.publisher.publish("a/b", b"x", 1))
        await asyncio.sleep(0.1)
    finally:
        await service.stop()
    with pytest.raises(BrokerUnavailable):  # stopping wakes the waiting publisher
        await asyncio.wait_for(waiting, 1)


@pytest.mark.mosquitto
async def test_refused_credentials_are_a_configuration_error(tmp_path: Path, needs_mosquitto_binary: None) -> None:
    broker = MosquittoProcess(tmp_path, users={"fleetops": "right"})
    await broker.start()
    try:
        wrong = ExternalBroker(f"mqtt://fleetops:wrong@127.0.0.1:{broker.port}", EchoShadowHandler())
        with pytest.raises(ConfigurationError, match="refused"):
            await wrong.start()
        right = ExternalBroker(
            f"mqtt://fleetops:right@127.0.0.1:{broker.port}", EchoShadowHandler(), options=fast_options()
        )
        await right.start()
        assert right.connected
        await right.stop()
        assert not right.connected
    finally:
        await broker.stop()


# --- EMQX 5 HTTP authentication and authorization ------------------------------------------------------


async def post(
    app: Any,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/json",
    client: tuple[str, int] = ("127.0.0.1", 50000),
    **headers: str,
) -> Any:
    """One POST through the ASGI app (from ``client``); returns (status, JSON body)."""
    raw_headers = [(b"content-type", content_type.encode())]
    raw_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": client,
        "server": ("fleetops", 80),
    }
    requests = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return requests.pop(0) if requests else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent[0], b"".join(message.get("body", b"") for message in sent[1:])
    is_json = (b"content-type", b"application/json") in start.get("headers", [])
    return start["status"], orjson.loads(body) if is_json else body


@pytest.fixture
def emqx_app() -> tuple[Router, MemoryDirectory, str]:
    directory = MemoryDirectory()
    pid = random_product_id()
    directory.add(pid, "lamp01")
    directory.add(pid, "off", enabled=False)
    router = mqtt_auth_router(
        directory, internal_username="fleetops", internal_password="internal-secret", shared_secret=HOOKS_SECRET
    )
    return Router(routes=[Mount("/mqtt", app=router)]), directory, pid


HOOKS_SECRET = "emqx-hooks-secret"


async def hook(app: Any, path: str, body: bytes, **kw: Any) -> Any:
    """A POST as EMQX sends it: with the shared secret."""
    return await post(app, path, body, authorization=f"Bearer {HOOKS_SECRET}", **kw)


def _device_login(directory: MemoryDirectory, pid: str, name: str) -> dict[str, str]:
    client_id = pid + name
    username = make_username(client_id, int(time.time()) + 600)
    psk = directory.devices[(pid, name)].psk
    return {
        "clientid": client_id,
        "username": username,
        "password": sign_password(username, psk),
        "peerhost": "::1",
    }


async def test_http_auth_allows_devices_with_valid_signatures(
    emqx_app: tuple[Router, MemoryDirectory, str],
) -> None:
    app, directory, pid = emqx_app
    login = _device_login(directory, pid, "lamp01")
    assert await hook(app, "/mqtt/auth", orjson.dumps(login)) == (
        200,
        {"result": "allow", "is_superuser": False},
    )
    form = "&".join(f"{key}={value}" for key, value in login.items()).replace(";", "%3B").encode()
    assert await hook(app, "/mqtt/auth", form, content_type="application/x-www-form-urlencoded") == (
        200,
        {"result": "allow", "is_superuser": False},
    )
    for bad in (
        login | {"password": "0" * 64 + ";hmacsha256"},
        login | {"clientid": pid + "lamp02"},
        _device_login(directory, pid, "off"),  # disabled
        {"clientid": login["clientid"]},
    ):
        assert await hook(app, "/mqtt/auth", orjson.dumps(bad)) == (200, {"result": "deny"})
    assert await hook(app, "/mqtt/auth", b"not json") == (200, {"result": "deny"})


async def test_http_auth_knows_the_internal_user(emqx_app: tuple[Router, MemoryDirectory, str]) -> None:
    app, _, _ = emqx_app
    internal = {"clientid": "fleetops-node-1", "username": "fleetops", "password": "internal-secret"}
    assert await hook(app, "/mqtt/auth", orjson.dumps(internal)) == (
        200,
        {"result": "allow", "is_superuser": True},
    )
    wrong = internal | {"password": "guess"}
    assert await hook(app, "/mqtt/auth", orjson.dumps(wrong)) == (200, {"result": "deny"})
    acl = {
        "clientid": "fleetops-node-1",
        "username": "fleetops",
        "topic": "$share/fleetops/#",
        "action": "subscribe",
    }
    assert await hook(app, "/mqtt/acl", orjson.dumps(acl)) == (200, {"result": "allow"})


@pytest.mark.parametrize(
    ("name", "topic", "action", "result"),
    [
        ("lamp01", "{pid}/lamp01/control", "subscribe", "allow"),
        ("lamp01", "{pid}/lamp01/control", "publish", "deny"),
        ("lamp01", "{pid}/lamp01/event", "publish", "allow"),
        ("lamp01", "$shadow/operation/{pid}/lamp01", "publish", "allow"),
        ("lamp01", "$shadow/operation/{pid}/lamp02", "publish", "deny"),
        ("lamp01", "$shadow/operation/result/{pid}/lamp01", "subscribe", "allow"),
        ("lamp01", "$rrpc/rxd/{pid}/lamp01/+", "subscribe", "allow"),
        ("lamp01", "{pid}/lamp02/control", "subscribe", "deny"),
        ("lamp01", "{pid}/#", "subscribe", "deny"),
        ("lamp01", "{pid}/lamp01/data", "all", "deny"),
    ],
)
async def test_http_acl(
    emqx_app: tuple[Router, MemoryDirectory, str], name: str, topic: str, action: str, result: str
) -> None:
    app, _, pid = emqx_app
    body = {"clientid": pid + name, "username": "ignored", "topic": topic.format(pid=pid), "action": action}
    assert await hook(app, "/mqtt/acl", orjson.dumps(body)) == (200, {"result": result})


async def test_http_auth_needs_the_shared_secret() -> None:
    directory = MemoryDirectory()
    router = mqtt_auth_router(
        directory, internal_username="fleetops", internal_password="pw", shared_secret="emqx-token"
    )
    body = orjson.dumps({"clientid": "n1", "username": "fleetops", "password": "pw"})
    assert await post(router, "/auth", body) == (401, {"result": "deny"})
    assert await post(router, "/auth", body, authorization="Bearer nope") == (401, {"result": "deny"})
    assert await post(router, "/auth", body, authorization="Basic emqx-token") == (401, {"result": "deny"})
    assert await post(router, "/auth", body, authorization="Bearer emqx-token") == (
        200,
        {"result": "allow", "is_superuser": True},
    )
    with pytest.raises(ValueError, match="must not be empty"):
        mqtt_auth_router(directory, internal_username="fleetops", internal_password="", shared_secret="x")
    with pytest.raises(ValueError, match="shared secret must not be empty"):
        mqtt_auth_router(directory, internal_username="fleetops", internal_password="pw", shared_secret="")


async def test_http_acl_does_not_take_the_internal_user_name_on_trust() -> None:
    """Without the secret, claiming fleetops' own user name gets nothing; with it, EMQX's word is trusted."""
    router = mqtt_auth_router(
        MemoryDirectory(), internal_username="fleetops", internal_password="pw", shared_secret="emqx-token"
    )
    claim = orjson.dumps({"clientid": "x", "username": "fleetops", "topic": "#", "action": "subscribe"})
    assert await post(router, "/acl", claim) == (401, {"result": "deny"})
    assert await post(router, "/acl", claim, authorization="Bearer emqx-token") == (200, {"result": "allow"})


async def test_http_hooks_rate_limit_failures_per_address() -> None:
    clock = FakeClock()
    router = mqtt_auth_router(
        MemoryDirectory(), internal_username="fleetops", internal_password="pw", shared_secret="emqx-token", clock=clock
    )
    body = orjson.dumps({"clientid": "n1", "username": "fleetops", "password": "pw"})
    for _ in range(MAX_FAILURES):
        assert (await post(router, "/auth", body, authorization="Bearer guess"))[0] == 401
    # over the limit: refused without the secret being compared, even the right one, from that address only
    assert await post(router, "/auth", body, authorization="Bearer emqx-token") == (429, {"result": "deny"})
    assert (await post(router, "/acl", body, authorization="Bearer emqx-token"))[0] == 429
    assert (await post(router, "/auth", body, authorization="Bearer emqx-token", client=("10.0.0.2", 1)))[0] == 200
    clock.advance(FAILURE_WINDOW_S)
    assert (await post(router, "/auth", body, authorization="Bearer emqx-token"))[0] == 200


def test_failures_are_counted_for_a_bounded_number_of_addresses() -> None:
    clock = FakeClock()
    limiter = FailureLimiter(2, 60, clock)
    addresses = [f"2001:db8::{n:x}" for n in range(MAX_TRACKED_ADDRESSES + 100)]  # a spray from many addresses
    for address in addresses:
        limiter.failed(address)
        limiter.failed(address)
    assert limiter.blocked(addresses[0])  # counted
    assert not limiter.blocked(addresses[-1])  # past the bound: not counted, so memory stays bounded
    clock.advance(60)
    assert not limiter.blocked(addresses[0])  # a new window forgets everything


async def test_http_hooks_refuse_an_oversize_body() -> None:
    router = mqtt_auth_router(
        MemoryDirectory(), internal_username="fleetops", internal_password="pw", shared_secret="emqx-token"
    )
    body = orjson.dumps({"clientid": "n1", "username": "fleetops", "password": "pw", "pad": "x" * MAX_BODY_BYTES})
    assert await post(router, "/auth", body, authorization="Bearer emqx-token") == (413, {"result": "deny"})


# --- QoS 1 re-sending, with a scripted connection -------------------------------------------------------


def _publishes(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(packet id, payload) of each QoS 1 PUBLISH in ``data``."""
    offset = 0
    while offset < len(data):
        assert data[offset] == 0x32
        length, shift, offset = 0, 0, offset + 1
        while True:
            byte = data[offset]
            offset += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        end = offset + length
        topic_length = int.from_bytes(data[offset : offset + 2], "big")
        packet_id_at = offset + 2 + topic_length
        yield int.from_bytes(data[packet_id_at : packet_id_at + 2], "big"), data[packet_id_at + 2 : end]
        offset = end


class _ScriptedLink:
    """Acknowledges the first ``acks`` PUBLISHes it gets, then drops (``None``: never drops)."""

    def __init__(self, acks: int | None) -> None:
        self.alive = True
        self.lost = asyncio.Event()
        self.acknowledged: list[bytes] = []
        self._acks = acks
        self._ids = itertools.count(1)
        self._owners: dict[int, Any] = {}

    def next_packet_id(self) -> int:
        return next(self._ids)

    def track(self, packet_id: int, batch: Any) -> None:
        self._owners[packet_id] = batch

    def write(self, data: bytes) -> bool:
        if not self.alive:
            return False
        for packet_id, payload in _publishes(data):
            if self._acks is not None and len(self.acknowledged) >= self._acks:
                self.alive = False
                self.lost.set()
                return True
            self.acknowledged.append(payload)
            asyncio.get_running_loop().call_soon(self._owners.pop(packet_id).acknowledged, packet_id)
        return True

    async def drain(self) -> None:
        await asyncio.sleep(0)


class _ScriptedService:
    def __init__(self, *links: _ScriptedLink) -> None:
        self.links = list(links)
        self.options = ExternalOptions(max_in_flight=10, broker_wait_s=1)

    async def wait_link(self) -> _ScriptedLink:
        while not self.links[0].alive:
            self.links.pop(0)
        return self.links[0]


async def test_qos1_messages_unacknowledged_on_a_lost_connection_are_sent_again() -> None:
    first, second = _ScriptedLink(acks=25), _ScriptedLink(acks=None)
    publisher = ExternalPublisher(_ScriptedService(first, second))  # type: ignore[arg-type]
    payloads = [f"m{n}".encode() for n in range(100)]
    await asyncio.wait_for(publisher.publish_many([("a/b", payload) for payload in payloads], 1), 5)
    assert first.acknowledged == payloads[:25]
    assert sorted(first.acknowledged + second.acknowledged) == sorted(payloads)  # none lost, none twice
    assert second.acknowledged[:5] == payloads[25:30]  # the in-flight window of the lost connection goes first


@pytest.mark.parametrize("secret", ["", "node-hooks-secret"])
async def test_the_node_serves_the_hooks_only_with_a_secret(
    sqlite_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, secret: str
) -> None:
    from fleetops.node import Node
    from fleetops.settings import Settings

    settings = Settings(
        data_dir=tmp_path, database_url=sqlite_url, mqtt_url="mqtt://fleetops:pw@127.0.0.1:1", mqtt_hooks_secret=secret
    )
    node = await Node.open(settings)
    try:
        with caplog.at_level("WARNING", logger="fleetops"):
            app = node.app(manage_services=False)
        body = orjson.dumps({"clientid": "n1", "username": "fleetops", "password": "pw"})
        status, _ = await post(app, "/mqtt/auth", body, authorization=f"Bearer {secret}")
        if not secret:
            assert status == 404  # no hooks at all, and a start-up warning saying how to turn them on
            assert any("FLEETOPS_MQTT_HOOKS_SECRET" in r.getMessage() for r in caplog.records)
        else:
            assert status == 200
            assert (await post(app, "/mqtt/auth", body))[0] == 401
    finally:
        await node.close()

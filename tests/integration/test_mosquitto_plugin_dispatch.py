"""Device messages handed to exactly one fleetops node by the plugin: shadow requests, presence and subscription
events, acknowledgements, a node killed or hung mid-stream, the pending queue and its bounds. Paho clients act
as the nodes (the service identity) and as the devices; one node runs in its own process to be SIGKILLed."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.mosquitto_plugin_support import (
    Dispatched,
    PluginBroker,
    PluginBuilds,
    PluginDatabase,
    ServiceNode,
    plugin_database,
    running,
    session_builds,
    wait_for,
)
from tests.mqtt_support import PahoDevice, paho_devices

pytestmark = pytest.mark.postgres

REQUESTS = 1000


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> PluginBuilds:
    return session_builds(tmp_path_factory)


@pytest.fixture
def clients() -> Iterator[list[PahoDevice]]:
    with paho_devices() as started:
        yield started


async def node(
    port: int, clients: list[PahoDevice], data: PluginDatabase, node_id: str, **options: object
) -> ServiceNode:
    """A registered handler."""
    handler = ServiceNode(node_id, data.service_secret, **options)  # type: ignore[arg-type]
    clients.append(handler)
    assert await handler.connect(port) == 0
    assert await handler.register() == 1
    return handler


async def devices(port: int, clients: list[PahoDevice], data: PluginDatabase, count: int) -> list[PahoDevice]:
    connected = []
    for index in range(count):
        device = PahoDevice(await data.add_device(f"dev{index:03}"))
        clients.append(device)
        assert await device.connect(port) == 0
        connected.append(device)
    return connected


def shadow_request(device: PahoDevice, n: int) -> None:
    device.publish(
        f"$shadow/operation/{device.client_id[:10]}/{device.client_id[10:]}", f"{device.client_id[10:]}:{n}".encode(), 1
    )


def requests_of(messages: list[Dispatched]) -> list[tuple[str, int]]:
    """(device name, request number) of the shadow requests, in the order the node got them."""
    out = []
    for message in messages:
        if message.kind == "shadow":
            name, n = message.payload.decode().split(":")
            assert name == message.device_name
            out.append((name, int(n)))
    return out


def assert_in_order_per_device(received: list[tuple[str, int]]) -> None:
    last: dict[str, int] = {}
    for name, n in received:
        assert n > last.get(name, -1), f"{name}: request {n} after {last[name]}"
        last[name] = n


# --- hello -----------------------------------------------------------------------------------------------


async def test_a_node_learns_that_the_plugin_is_there(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        handler = ServiceNode("node-1", data.service_secret)
        other = ServiceNode("node-2", data.service_secret)
        clients += [handler, other]
        assert await handler.connect(broker.port) == 0
        assert await other.connect(broker.port) == 0
        assert await handler.subscribe("$fleetops/node/node-1/welcome", 1) == 1  # not a registration
        welcome = await handler.hello()
        assert welcome["protocol"] == 1 and welcome["window"] == 500
        assert len(welcome["boot"]) == 16 and int(welcome["boot"], 16) >= 0
        # only a node's own hello is answered, and nothing under $fleetops/ is routed
        assert await other.subscribe("$fleetops/#", 1) == 1
        handler.publish("$fleetops/hello/node-2", b"", 1)
        handler.publish("$fleetops/node/node-2/shadow/1/ABCDE12345/forged", b"forged", 1)
        assert await other.nothing_received(0.3)
        assert "handles device messages" not in broker.log()
        longest = ServiceNode("n" * 128, data.service_secret)  # the longest node id a topic level may be
        clients.append(longest)
        assert await longest.connect(broker.port) == 0
        assert (await longest.hello())["protocol"] == 1
        assert await longest.register() == 1
        too_long = ServiceNode("n" * 129, data.service_secret)
        clients.append(too_long)
        assert await too_long.connect(broker.port) == 0
        assert await too_long.register() == 0x80


# --- exactly one node per request -------------------------------------------------------------------------


@pytest.mark.parametrize("handler_count", [2, 3])
async def test_each_request_reaches_exactly_one_node_in_order(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice], handler_count: int
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        handlers = [await node(broker.port, clients, data, f"node-{i}", auto_ack=True) for i in range(handler_count)]
        senders = await devices(broker.port, clients, data, 20)
        for n in range(REQUESTS // len(senders)):
            for device in senders:
                shadow_request(device, n)
        await wait_for(lambda: sum(len(h.of_kind("shadow")) for h in handlers) >= REQUESTS, timeout_s=20)
        await asyncio.sleep(0.2)  # a duplicate would arrive by now
        received = [requests_of(h.dispatched) for h in handlers]
    everything = [request for per_node in received for request in per_node]
    assert sorted(everything) == sorted((d.client_id[10:], n) for d in senders for n in range(REQUESTS // 20))
    assert all(received), "every node got a share"
    for per_node in received:
        assert_in_order_per_device(per_node)
    # while the set of nodes is stable, all requests of a device go to one node
    owners = {
        name: {i for i, per_node in enumerate(received) if any(r[0] == name for r in per_node)}
        for name, _ in everything
    }
    assert all(len(owner) == 1 for owner in owners.values())


async def test_a_killed_node_s_unacknowledged_requests_reach_another_node(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        survivors = [await node(broker.port, clients, data, f"node-{name}", auto_ack=True) for name in "bc"]
        killed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.integration.mosquitto_node_process",
            str(broker.port),
            "node-a",
            data.service_secret,
            "40",
            stdout=asyncio.subprocess.PIPE,
        )
        assert killed.stdout is not None
        lines: list[str] = []

        async def read() -> None:
            assert killed.stdout is not None
            while line := await killed.stdout.readline():
                lines.append(line.decode().strip())

        reader = asyncio.create_task(read())
        try:
            await wait_for(lambda: "ready" in lines)
            senders = await devices(broker.port, clients, data, 25)
            per_device = REQUESTS // len(senders)

            async def stream() -> None:
                for n in range(per_device):
                    for device in senders:
                        shadow_request(device, n)
                    await asyncio.sleep(0.005)

            streaming = asyncio.create_task(stream())
            # kill it mid-stream, once it has acknowledged some and holds more unacknowledged
            await wait_for(lambda: any(line.startswith("acked") for line in lines) and len(lines) > 120, timeout_s=20)
            assert not streaming.done()
            killed.send_signal(signal.SIGKILL)
            await killed.wait()
            await streaming
            await reader
            acked_seq = int(next(line for line in lines if line.startswith("acked")).split()[1])
            got = [line.split(" ", 4) for line in lines if line.startswith("got ")]
            a_acked = [
                (name, int(n))
                for _, seq, kind, name, payload in got
                if kind == "shadow" and int(seq) <= acked_seq
                for n in [payload.split(":")[1]]
            ]
            a_unacked = [
                (name, int(payload.split(":")[1]))
                for _, seq, kind, name, payload in got
                if kind == "shadow" and int(seq) > acked_seq
            ]
            expected = {(d.client_id[10:], n) for d in senders for n in range(per_device)}
            await wait_for(
                lambda: sum(len(s.of_kind("shadow")) for s in survivors) + len(a_acked) >= len(expected), timeout_s=20
            )
            await asyncio.sleep(0.2)
            at_survivors = [requests_of(s.dispatched) for s in survivors]
            await broker.wait_for_log("node node-a no longer handles device messages (disconnected)")
        finally:
            if killed.returncode is None:
                killed.kill()
                await killed.wait()
            reader.cancel()
    assert a_unacked, "the node was killed with unacknowledged requests"
    survivors_got = [request for per_node in at_survivors for request in per_node]
    assert len(survivors_got) == len(set(survivors_got)), "a survivor got a request twice"
    assert not set(survivors_got) & set(a_acked), "an acknowledged request was handed out again"
    assert set(survivors_got) | set(a_acked) == expected
    assert set(a_unacked) <= set(survivors_got)
    for per_node in at_survivors:
        assert_in_order_per_device(per_node)
    for name in {name for name, _ in a_acked}:  # a device's requests continue in order at its new node
        first_elsewhere = min(n for other, n in survivors_got if other == name)
        assert max(n for other, n in a_acked if other == name) < first_elsewhere


async def test_a_hung_node_is_replaced_after_one_and_a_half_keepalives(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        hung = await node(broker.port, clients, data, "node-hung", keepalive_s=1)
        senders = await devices(broker.port, clients, data, 10)
        hung.client.loop_stop()  # the socket stays open, nothing is read or sent any more
        started = time.monotonic()
        live = await node(broker.port, clients, data, "node-live", auto_ack=True)
        for device in senders:
            for n in range(5):
                shadow_request(device, n)
        await wait_for(lambda: len(live.of_kind("shadow")) == 50, timeout_s=10)
        assert time.monotonic() - started >= 1.0  # some waited for the hung node's keep-alive to run out
        assert "node node-hung no longer handles device messages (disconnected)" in broker.log()
    assert sorted(requests_of(live.dispatched)) == sorted((d.client_id[10:], n) for d in senders for n in range(5))


# --- registration, acknowledgements, pending queue --------------------------------------------------------


async def test_unsubscribing_hands_a_node_s_messages_to_the_others(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        leaving = await node(broker.port, clients, data, "node-leaving")  # never acknowledges
        staying = await node(broker.port, clients, data, "node-staying", auto_ack=True)
        senders = await devices(broker.port, clients, data, 12)
        for device in senders:
            shadow_request(device, 0)
        await wait_for(lambda: len(leaving.of_kind("shadow")) + len(staying.of_kind("shadow")) == 12)
        held = requests_of(leaving.dispatched)
        assert held, "the leaving node had some"
        # a node cannot acknowledge for another: this is not applied
        staying.client.publish("$fleetops/ack/node-leaving", b"18446744073709551615", 1)
        leaving.client.unsubscribe("$fleetops/node/node-leaving/#")
        await wait_for(lambda: set(held) <= set(requests_of(staying.dispatched)))
        for device in senders:
            shadow_request(device, 1)
        everything = {(d.client_id[10:], n) for d in senders for n in (0, 1)}
        await wait_for(lambda: set(requests_of(staying.dispatched)) == everything)
        assert [r for r in requests_of(leaving.dispatched) if r[1] == 1] == []


async def test_without_a_node_messages_wait_and_arrive_in_order(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        (device,) = await devices(broker.port, clients, data, 1)
        for n in range(3):
            shadow_request(device, n)
        await asyncio.sleep(0.2)
        late = await node(broker.port, clients, data, "node-late", auto_ack=True)
        await wait_for(lambda: len(late.dispatched) == 4)
        assert [m.kind for m in late.dispatched] == ["presence", "shadow", "shadow", "shadow"]
        assert requests_of(late.dispatched) == [("dev000", 0), ("dev000", 1), ("dev000", 2)]
        assert [m.seq for m in late.dispatched] == sorted(m.seq for m in late.dispatched)


async def test_pending_messages_expire(builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]) -> None:
    async with plugin_database() as data:
        broker = PluginBroker(tmp_path, builds.plugin, data.url, options={"pending_max_age_s": "1"})
        async with running(broker):
            (device,) = await devices(broker.port, clients, data, 1)
            shadow_request(device, 0)
            await broker.wait_for_log("that waited over 1000 ms for a node", timeout_s=4)
            late = await node(broker.port, clients, data, "node-late", auto_ack=True)
            shadow_request(device, 1)
            await wait_for(lambda: len(late.dispatched) == 1)
            assert requests_of(late.dispatched) == [("dev000", 1)]


async def test_queues_are_bounded_and_drop_the_oldest(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data:
        options = {"queue_max_messages": "5", "window": "2"}
        async with running(PluginBroker(tmp_path, builds.plugin, data.url, options=options)) as broker:
            (device,) = await devices(broker.port, clients, data, 1)
            slow = await node(broker.port, clients, data, "node-slow")  # never acknowledges
            for n in range(10):
                shadow_request(device, n)
            await wait_for(lambda: len(slow.dispatched) == 2)
            await asyncio.sleep(0.2)
            assert len(slow.dispatched) == 2  # the window: two unacknowledged at most
            slow.close()
            fresh = await node(broker.port, clients, data, "node-fresh", auto_ack=True)
            await wait_for(lambda: len(requests_of(fresh.dispatched)) == 5)
            assert requests_of(fresh.dispatched) == [("dev000", n) for n in range(5, 10)]
            await broker.wait_for_log("dropped ", timeout_s=3)
            assert "queue full: at most 5 messages" in broker.log()


# --- presence and subscriptions --------------------------------------------------------------------------


async def test_presence_follows_the_current_connection(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        watcher = await node(broker.port, clients, data, "node-1", auto_ack=True)
        credentials = await data.add_device("lamp")
        first = PahoDevice(credentials)
        clients.append(first)
        assert await first.connect(broker.port) == 0
        await wait_for(lambda: len(watcher.of_kind("presence")) == 1)
        online = watcher.of_kind("presence")[0].json()
        assert online["online"] is True and online["address"] == "127.0.0.1" and online["clean_session"] is True
        assert abs(online["time_ms"] - time.time() * 1000) < 5000
        # a refused CONNECT with the same client id changes nothing
        intruder = PahoDevice(credentials, password="0" * 64 + ";hmacsha256")
        clients.append(intruder)
        assert await intruder.connect(broker.port) == 5
        # a take-over: the new connection is online; the old one closing does not make the device offline
        second = PahoDevice(credentials)
        clients.append(second)
        assert await second.connect(broker.port) == 0
        assert await first.wait_disconnected()
        await wait_for(lambda: len(watcher.of_kind("presence")) == 2)
        await asyncio.sleep(0.3)
        assert [m.json()["online"] for m in watcher.of_kind("presence")] == [True, True]
        second.close()
        await wait_for(lambda: len(watcher.of_kind("presence")) == 3)
        assert [m.json()["online"] for m in watcher.of_kind("presence")] == [True, True, False]
        assert {(m.product_id, m.device_name) for m in watcher.dispatched} == {(data.product_id, "lamp")}


async def test_allowed_subscriptions_are_reported(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        watcher = await node(broker.port, clients, data, "node-1", auto_ack=True)
        (device,) = await devices(broker.port, clients, data, 1)
        pid = data.product_id
        assert await device.subscribe(f"{pid}/dev000/control", 1) == 1
        assert await device.subscribe(f"{pid}/dev001/control", 1) == 0x80  # refused: not reported
        assert await device.subscribe(f"$rrpc/rxd/{pid}/dev000/+", 0) == 0
        await wait_for(lambda: len(watcher.of_kind("subscribed")) == 2)
        reported = [m.json() for m in watcher.of_kind("subscribed")]
        assert [(r["filter"], r["qos"]) for r in reported] == [
            (f"{pid}/dev000/control", 1),
            (f"$rrpc/rxd/{pid}/dev000/+", 0),
        ]
        assert all(m.device_name == "dev000" for m in watcher.of_kind("subscribed"))


async def test_devices_cannot_retain_messages(builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]) -> None:
    """The device protocol stores nothing: a retained PUBLISH of a device is delivered but not kept."""
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        (device,) = await devices(broker.port, clients, data, 1)
        topic = f"{data.product_id}/dev000/data"
        device.client.publish(topic, b"kept?", 1, retain=True)
        await asyncio.sleep(0.2)
        later = ServiceNode("node-1", data.service_secret)
        clients.append(later)
        assert await later.connect(broker.port) == 0
        assert await later.subscribe(topic, 1) == 1
        assert await later.nothing_received(0.3)

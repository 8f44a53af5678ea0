"""fleetops' own client (``ExternalBroker``) as a node of the Mosquitto plugin: it finds the plugin, registers,
answers the shadow requests it is handed and acknowledges them (a window of 4 would stall otherwise), records
presence with the broker's times in the real store, tells the device-events listener, never registers as a
worker (which only learns that presence is recorded), and after a broker restart marks the devices offline once
for all nodes. Real Mosquitto with the plugin, PostgreSQL, paho devices."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest

from fleetops.messaging.external import BrokerLogin, BrokerMode, ExternalBroker, ExternalOptions
from fleetops.ports.store import DeviceRecord
from fleetops.store.broker_boots import BrokerBootStore
from fleetops.store.devices import DeviceStore
from tests.integration.mosquitto_plugin_support import (
    SERVICE_USER,
    PluginBroker,
    PluginBuilds,
    PluginDatabase,
    plugin_database,
    running,
    session_builds,
    wait_for,
)
from tests.mqtt_support import EchoShadowHandler, PahoDevice, RecordingEvents, paho_devices

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> PluginBuilds:
    return session_builds(tmp_path_factory)


@pytest.fixture
def clients() -> Iterator[list[PahoDevice]]:
    with paho_devices() as started:
        yield started


@asynccontextmanager
async def plugin_node(
    broker: PluginBroker,
    data: PluginDatabase,
    node_id: str,
    *,
    handler: EchoShadowHandler | None = None,
    events: RecordingEvents | None = None,
    serve: bool = True,
) -> AsyncIterator[ExternalBroker]:
    """``ExternalBroker`` logged in as the service identity, on the real store; stopped afterwards."""
    service = ExternalBroker(
        f"mqtt://127.0.0.1:{broker.port}",
        handler or EchoShadowHandler(),
        client_id=node_id,
        options=ExternalOptions(serve_shadow_requests=serve, reconnect_delay_s=0.1, max_reconnect_delay_s=0.5),
        login=BrokerLogin(SERVICE_USER, data.service_secret),
        directory=DeviceStore(data.db),
        boots=BrokerBootStore(data.db),
        events=events,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def record(data: PluginDatabase, name: str) -> DeviceRecord:
    return await DeviceStore(data.db).get(data.account_id, data.product_id, name)


async def eventually(check: object, timeout_s: float = 5.0) -> None:
    """Until the coroutine function ``check`` returns True."""
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


async def test_a_serving_node_registers_answers_acknowledges_and_records_presence(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data:
        # a window of 4: without acknowledgements the plugin would stop after 4 messages
        broker = PluginBroker(tmp_path, builds.plugin, data.url, options={"window": "4"})
        async with running(broker):
            events, handler = RecordingEvents(), EchoShadowHandler()
            async with plugin_node(broker, data, "node-1", handler=handler, events=events) as service:
                assert service.mode is BrokerMode.PLUGIN and service.registration is not None
                assert service.boot is not None and len(service.boot) == 16
                await broker.wait_for_log("node node-1 handles device messages (1 nodes)")
                credentials = await data.add_device("lamp")
                handler.known.add((data.product_id, "lamp"))
                device = PahoDevice(credentials)
                clients.append(device)
                connected_s = int(time.time())
                assert await device.connect(broker.port) == 0
                result_topic = f"$shadow/operation/result/{data.product_id}/lamp"
                assert await device.subscribe(result_topic, 0) == 0

                async def online() -> bool:
                    return (await record(data, "lamp")).online

                await eventually(online)
                stored = await record(data, "lamp")
                assert stored.client_ip == "127.0.0.1" and abs(stored.login_time - connected_s) <= 2
                assert stored.first_online_time == stored.login_time

                tokens = [f"t-{n}" for n in range(40)]
                for token in tokens:
                    device.publish(
                        f"$shadow/operation/{data.product_id}/lamp",
                        orjson.dumps({"type": "get", "clientToken": token}),
                        1,
                    )
                replies = [await device.receive() for _ in tokens]
                assert all(reply.topic == result_topic for reply in replies)
                assert [orjson.loads(reply.payload)["echo"]["clientToken"] for reply in replies] == tokens
                assert await device.nothing_received(0.3)  # each answered once
                registration = service.registration
                assert registration is not None
                await wait_for(lambda: registration.acknowledged is not None)

                device.close()

                async def offline() -> bool:
                    return not (await record(data, "lamp")).online

                await eventually(offline)
                gone = await record(data, "lamp")
                assert gone.last_offline_time is not None and gone.last_offline_time >= stored.login_time
                await wait_for(lambda: ("disconnected", "lamp") in events.calls)
                assert events.calls == [
                    ("connected", "lamp", False),
                    ("subscribed", "lamp", result_topic, 0),
                    ("disconnected", "lamp"),
                ]


async def test_a_worker_publishes_and_never_registers(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice]
) -> None:
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        async with plugin_node(broker, data, "worker-1", serve=False) as worker:
            # it said hello: it knows the plugin records presence (its tasks' outcomes use it), and the run
            assert worker.mode is BrokerMode.PLUGIN and worker.registration is None
            assert worker.presence_recorded and worker.publisher.presence_recorded()
            assert worker.boot is not None and len(worker.boot) == 16
            device = PahoDevice(await data.add_device("lamp"))
            clients.append(device)
            assert await device.connect(broker.port) == 0
            assert await device.subscribe(f"{data.product_id}/lamp/control", 1) == 1
            await worker.publisher.publish(f"{data.product_id}/lamp/control", b"from the worker", 1)
            assert (await device.receive()).payload == b"from the worker"
        assert "worker-1 handles device messages" not in broker.log()
        assert "New client connected from 127.0.0.1" in broker.log() and "as worker-1" in broker.log()


async def test_a_broker_restart_marks_the_devices_offline_once_for_all_nodes(
    builds: PluginBuilds, tmp_path: Path, clients: list[PahoDevice], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "fleetops.messaging.external")
    async with plugin_database() as data, running(PluginBroker(tmp_path, builds.plugin, data.url)) as broker:
        async with plugin_node(broker, data, "node-1") as first, plugin_node(broker, data, "node-2") as second:
            back = PahoDevice(await data.add_device("comes-back"), reconnect=True)
            away = PahoDevice(await data.add_device("stays-away"))
            clients += [back, away]
            assert await back.connect(broker.port) == 0
            assert await away.connect(broker.port) == 0

            async def both_online() -> bool:
                return (await record(data, "comes-back")).online and (await record(data, "stays-away")).online

            await eventually(both_online)
            old_boot = first.boot
            assert old_boot is not None and second.boot == old_boot
            assert await BrokerBootStore(data.db).current(SERVICE_USER) == old_boot
            caplog.clear()

            await broker.stop(signal.SIGKILL)  # a crash: no disconnect is reported for anyone
            await broker.start()  # the same port, a new run

            async def only_one_online() -> bool:
                # stays-away first: once it is offline the marking has committed, so an online comes-back (which
                # was marked offline too: last_offline_time) is its connection to the new run
                away_row = await record(data, "stays-away")
                back_row = await record(data, "comes-back")
                return not away_row.online and back_row.online and back_row.last_offline_time is not None

            await eventually(only_one_online, timeout_s=15)
            await wait_for(lambda: first.registration is not None and second.registration is not None, timeout_s=5)
            assert first.boot == second.boot != old_boot
            assert await BrokerBootStore(data.db).current(SERVICE_USER) == first.boot
            # one node recorded the new run (and marked the devices offline); the other found it recorded
            news = [r.getMessage() for r in caplog.records if "(new)" in r.getMessage()]
            assert len(news) == 1, news
            assert "2 devices marked offline" in news[0]
            await asyncio.sleep(0.5)
            # the second node's registration undid nothing
            assert await only_one_online(), (
                await record(data, "comes-back"),
                await record(data, "stays-away"),
                [r.getMessage() for r in caplog.records],
                broker.log()[-3000:],
            )

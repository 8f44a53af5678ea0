from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fleetops.event_loop import LoopFactory
from tests.support import (
    LiveServer,
    drop_templates,
    node_loop_factory,
    postgres_database,
    sqlite_database,
    start_server,
    template_dir,
)

# The SDK honours HTTP(S)_PROXY for http:// endpoints; test traffic must stay on loopback.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> Mapping[str, LoopFactory]:
    """Every async test runs on the event loop `fleetops serve` runs on: FLEETOPS_EVENT_LOOP, by default uvloop
    when it is installed (``FLEETOPS_EVENT_LOOP=asyncio pytest ...`` runs them on asyncio's)."""
    return {"loop": node_loop_factory()}


@pytest.fixture(scope="session", autouse=True)
def _migrated_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One migrated database per session and kind; each test gets a copy (tests/support.py)."""
    template_dir.append(tmp_path_factory.mktemp("templates"))
    yield template_dir[0]
    drop_templates()
    template_dir.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, _migrated_templates: Path) -> Iterator[str]:
    """Each store and API test runs on both databases: a SQLite file and a PostgreSQL database of its own, each
    a copy of the session's migrated template."""
    if request.param == "sqlite":
        yield sqlite_database(tmp_path / "fleetops.db")
    else:
        with postgres_database() as url:
            yield url


@pytest.fixture
def sqlite_url(tmp_path: Path, _migrated_templates: Path) -> str:
    return sqlite_database(tmp_path / "fleetops.db")


@pytest.fixture
def live_server(tmp_path: Path, database_url: str) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", database_url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sqlite_server(tmp_path: Path, sqlite_url: str) -> Iterator[LiveServer]:
    server = start_server(tmp_path / "data", sqlite_url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def built_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Mosquitto plugin built once per session from this tree (skipped without mosquitto or its build
    packages on a developer machine, a failure in CI)."""
    from tests.integration.mosquitto_plugin_support import session_builds

    return session_builds(tmp_path_factory).plugin

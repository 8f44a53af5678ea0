"""Issue: bulk device registration (``fleetops devices create``), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetops.backend.registration import RegistrationError, register_devices
from fleetops.cli import main
from fleetops.ports.store import NewDevice
from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from fleetops.store.devices import DeviceStore
from fleetops.store.migrate import upgrade
from fleetops.store.products import ProductStore

PID = "REGP000001"
BIG = 1_000_000


async def _prepare(url: str) -> int:
    db = open_database(url)
    try:
        await upgrade(db)
        account = await AccountStore(db).create_account("fleet", 0)
        await ProductStore(db).insert(account, PID, "lamps", {}, 0, 10)
        return account
    finally:
        await db.dispose()


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[tuple[DeviceStore, int]]:
    account = await _prepare(database_url)
    db = open_database(database_url)
    try:
        yield DeviceStore(db), account
    finally:
        await db.dispose()


async def test_registers_in_batches_and_writes_the_psks(store: tuple[DeviceStore, int]) -> None:
    devices, account = store
    names = [f"lamp-{i}" for i in range(2500)]
    out = io.StringIO()
    progress: list[int] = []
    report = await register_devices(
        devices,
        account,
        PID,
        names,
        now_s=9,
        max_devices=BIG,
        batch_size=1000,
        psk_out=out,
        on_progress=progress.append,
    )
    assert (report.created, report.skipped_existing) == (2500, 0)
    assert progress == [1000, 1000, 500]
    assert await devices.count(account, PID) == 2500
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[0] == ["name", "psk"]
    assert [r[0] for r in rows[1:]] == names
    assert len({r[1] for r in rows[1:]}) == 2500  # a fresh key each
    for name, psk in (rows[1], rows[-1]):
        got = await devices.get(account, PID, name)
        assert (got.psk, got.created_at) == (psk, 9)


async def test_refuses_before_writing_anything(store: tuple[DeviceStore, int]) -> None:
    devices, account = store
    await devices.insert(account, PID, NewDevice("lamp-2", "x"), 1, BIG)
    with pytest.raises(RegistrationError, match="more than once"):
        await register_devices(devices, account, PID, ["a", "b", "a"], now_s=1, max_devices=BIG)
    with pytest.raises(RegistrationError, match="do not match"):
        await register_devices(devices, account, PID, ["a", "b c"], now_s=1, max_devices=BIG)
    with pytest.raises(RegistrationError, match="already has 1 of these"):
        await register_devices(devices, account, PID, ["lamp-1", "lamp-2", "lamp-3"], now_s=1, max_devices=BIG)
    with pytest.raises(RegistrationError, match="limit of 3"):
        await register_devices(devices, account, PID, ["x1", "x2", "x3"], now_s=1, max_devices=3)
    assert await devices.count(account, PID) == 1

    report = await register_devices(
        devices, account, PID, ["lamp-1", "lamp-2", "lamp-3"], now_s=1, max_devices=BIG, skip_existing=True
    )
    assert (report.created, report.skipped_existing) == (2, 1)
    assert [n async for n in devices.iter_names(account, PID)] == ["lamp-1", "lamp-2", "lamp-3"]


def test_cli_creates_devices_without_a_server(database_url: str, tmp_path: Path) -> None:
    asyncio.run(_prepare(database_url))
    psk_file = tmp_path / "psk.csv"
    base = ["--data-dir", str(tmp_path / "data"), "--database", database_url, "devices", "create"]
    runner = CliRunner()
    args = [
        *base,
        "--product",
        PID,
        "--account",
        "fleet",
        "--prefix",
        "lamp-",
        "--digits",
        "4",
        "--count",
        "120",
    ]
    result = runner.invoke(main, [*args, "--batch-size", "50", "--psk-out", str(psk_file)])
    assert result.exit_code == 0, result.output
    assert "created 120 devices" in result.output
    assert stat.S_IMODE(psk_file.stat().st_mode) == 0o600
    rows = psk_file.read_text().splitlines()
    assert rows[0] == "name,psk" and rows[1].startswith("lamp-0001,") and len(rows) == 121

    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "already has 120 of these" in again.output
    resumed = runner.invoke(main, [*args[:-1], "130", "--skip-existing"])
    assert resumed.exit_code == 0, resumed.output
    assert "created 10 devices" in resumed.output and "skipped 120 existing" in resumed.output

    names_file = tmp_path / "names.txt"
    names_file.write_text("ok-1\nnot ok\n")
    bad = runner.invoke(main, [*base, "--product", PID, "--account", "fleet", "--names-file", str(names_file)])
    assert bad.exit_code != 0 and "do not match" in bad.output
    wrong = runner.invoke(
        main, [*base, "--product", "NOPE000000", "--account", "fleet", "--prefix", "x-", "--count", "1"]
    )
    assert wrong.exit_code != 0 and "has no product" in wrong.output
    # bare numbers are legal names, but a run without --prefix is a mistake, said so before anything is written
    bare = runner.invoke(main, [*base, "--product", PID, "--account", "fleet", "--count", "3"])
    assert bare.exit_code != 0 and "give --prefix with --count" in bare.output
    nobody = runner.invoke(main, [*base, "--product", PID, "--account", "nobody", "--prefix", "x-", "--count", "1"])
    assert nobody.exit_code != 0 and "no account named" in nobody.output

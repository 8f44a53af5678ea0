"""`fleetops keys create | list | disable` and the first-start bootstrap, on both databases, without a server."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fleetops.cli import main
from fleetops.credentials import bootstrap_default_account
from fleetops.store.accounts import AccountStore
from fleetops.store.database import open_database
from fleetops.store.migrate import upgrade


def _cli(data_dir: Path, database_url: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--data-dir", str(data_dir), "--database", database_url, *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_create_list_disable(tmp_path: Path, database_url: str) -> None:
    created = json.loads(_cli(tmp_path, database_url, "keys", "create", "--account", "ops", "--json"))
    assert created["account"] == "ops"
    assert created["SecretId"].startswith("AKID") and len(created["SecretKey"]) == 32

    listed = json.loads(_cli(tmp_path, database_url, "keys", "list", "--json"))
    assert [(k["account"], k["SecretId"], k["enabled"]) for k in listed] == [("ops", created["SecretId"], True)]
    assert "SecretKey" not in listed[0] and created["SecretKey"] not in json.dumps(listed)

    _cli(tmp_path, database_url, "keys", "disable", created["SecretId"], "--json")
    listed = json.loads(_cli(tmp_path, database_url, "keys", "list", "--json"))
    assert listed[0]["enabled"] is False

    missing = CliRunner().invoke(
        main, ["--data-dir", str(tmp_path), "--database", database_url, "keys", "disable", "AKIDnope"]
    )
    assert missing.exit_code != 0 and "no key" in missing.output


def test_first_start_creates_one_default_key_in_a_private_file(tmp_path: Path, database_url: str) -> None:
    async def run() -> None:
        db = open_database(database_url)
        try:
            await upgrade(db)
            accounts = AccountStore(db)
            created = await bootstrap_default_account(accounts, tmp_path, 1_700_000_000)
            assert created is not None and created.kept is None
            key = created.key
            path = tmp_path / "credentials.json"
            assert created.path == path
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            saved = json.loads(path.read_text())
            assert saved == {"account": "default", "SecretId": key.secret_id, "SecretKey": key.secret_key}
            # a second start with the same database creates nothing
            assert await bootstrap_default_account(accounts, tmp_path, 1_700_000_001) is None
            assert [k.secret_id for k in await accounts.list_keys()] == [key.secret_id]
        finally:
            await db.dispose()

    asyncio.run(run())


def test_a_credentials_file_of_another_database_is_kept_not_overwritten(tmp_path: Path) -> None:
    async def first_start(url: str) -> Any:
        db = open_database(url)
        try:
            await upgrade(db)
            return await bootstrap_default_account(AccountStore(db), tmp_path, 1_700_000_000)
        finally:
            await db.dispose()

    first = asyncio.run(first_start(f"sqlite:///{tmp_path / 'one.db'}"))
    second = asyncio.run(first_start(f"sqlite:///{tmp_path / 'two.db'}"))
    assert first is not None and second is not None
    assert second.kept == tmp_path / "credentials.json.1"
    assert json.loads(second.kept.read_text())["SecretKey"] == first.key.secret_key
    assert json.loads((tmp_path / "credentials.json").read_text())["SecretKey"] == second.key.secret_key
    assert stat.S_IMODE(second.kept.stat().st_mode) == 0o600


def test_subcommands_accept_the_data_dir_and_database_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub.db'}"
    result = CliRunner().invoke(main, ["keys", "create", "--data-dir", str(tmp_path), "--database", url, "--json"])
    assert result.exit_code == 0, result.output
    listed = CliRunner().invoke(main, ["--database", url, "keys", "list", "--json", "--data-dir", str(tmp_path)])
    assert json.loads(listed.output)[0]["SecretId"] == json.loads(result.output)["SecretId"]


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        ("mysql://root@127.0.0.1/x", "fleetops runs on SQLite"),
        ("postgresql://postgres@127.0.0.1:5432/fleetops_no_such_database", "does not exist: create it"),
        ("postgresql://postgres@127.0.0.1:1/x", "cannot connect to the database"),
    ],
)
def test_a_database_that_cannot_be_used_is_one_line_and_exit_2(tmp_path: Path, database: str, expected: str) -> None:
    result = CliRunner().invoke(main, ["keys", "list", "--data-dir", str(tmp_path), "--database", database])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.output


def test_an_empty_database_says_where_it_looked(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["keys", "list", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0
    assert f"no key pairs in data directory {tmp_path.resolve()}" in result.output

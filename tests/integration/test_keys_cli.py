"""`fleetops keys create | list | disable` and the first-start bootstrap, on both databases, without a server."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

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
            key = await bootstrap_default_account(accounts, tmp_path, 1_700_000_000)
            assert key is not None
            path = tmp_path / "credentials.json"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            saved = json.loads(path.read_text())
            assert saved == {"account": "default", "SecretId": key.secret_id, "SecretKey": key.secret_key}
            # a second start with the same database creates nothing
            assert await bootstrap_default_account(accounts, tmp_path, 1_700_000_001) is None
            assert [k.secret_id for k in await accounts.list_keys()] == [key.secret_id]
        finally:
            await db.dispose()

    asyncio.run(run())

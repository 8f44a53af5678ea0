"""The first-start bootstrap: a default account with one key pair, written to <data-dir>/credentials.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fleetops.store.accounts import AccountStore, ApiKey

DEFAULT_ACCOUNT = "default"
CREDENTIALS_FILE = "credentials.json"


async def bootstrap_default_account(accounts: AccountStore, data_dir: Path, now_s: int) -> ApiKey | None:
    """Create the default account and key when the database has no account yet; None otherwise."""
    if await accounts.count_accounts() > 0:
        return None
    account_id = await accounts.create_account(DEFAULT_ACCOUNT, now_s)
    key = await accounts.create_key(account_id, now_s)
    write_credentials(data_dir / CREDENTIALS_FILE, key)
    return key


def write_credentials(path: Path, key: ApiKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"account": key.account_name, "SecretId": key.secret_id, "SecretKey": key.secret_key}
    # created 0600 from the start: the secret is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.chmod(path, 0o600)

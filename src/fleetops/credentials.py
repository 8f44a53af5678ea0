"""The first-start bootstrap: a default account with one key pair, written to <data-dir>/credentials.json."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from fleetops.ports.store import AccountStore, ApiKey

DEFAULT_ACCOUNT = "default"
CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Bootstrap:
    key: ApiKey
    path: Path  # where the key pair was written
    kept: Path | None  # a credentials.json of another database, moved aside rather than overwritten


async def bootstrap_default_account(accounts: AccountStore, data_dir: Path, now_s: int) -> Bootstrap | None:
    """Create the default account and key when the database has no account yet; None otherwise."""
    if await accounts.count_accounts() > 0:
        return None
    account_id = await accounts.create_account(DEFAULT_ACCOUNT, now_s)
    key = await accounts.create_key(account_id, now_s)
    path = data_dir / CREDENTIALS_FILE
    kept = _keep_previous(path)
    write_credentials(path, key)
    return Bootstrap(key, path, kept)


def _keep_previous(path: Path) -> Path | None:
    """A credentials.json already there belongs to another database (this one had no account): its SecretKey
    would be lost by overwriting it, so it is renamed to the first free ``credentials.json.N``."""
    if not path.exists():
        return None
    for n in range(1, 1000):
        aside = path.with_name(f"{path.name}.{n}")
        if not aside.exists():
            path.rename(aside)
            return aside
    raise FileExistsError(f"{path} and 999 older copies exist; move them away")


def write_credentials(path: Path, key: ApiKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"account": key.account_name, "SecretId": key.secret_id, "SecretKey": key.secret_key}
    # created 0600 from the start: the secret is never readable by others, not even briefly
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")


def read_credentials(path: Path) -> tuple[str, str] | None:
    """(SecretId, SecretKey) from a credentials file, or None when there is none or it is unreadable."""
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return str(payload["SecretId"]), str(payload["SecretKey"])
    except (OSError, ValueError, KeyError, TypeError):
        return None

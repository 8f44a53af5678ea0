"""KeyService: resolved keys kept for a short TTL; disabled and unknown keys never kept (backend/keys.py)."""

from __future__ import annotations

import asyncio
import dataclasses

from fleetops.backend.keys import KEY_CACHE_TTL_S, KeyService
from fleetops.ports.store import ApiKey

KEY = ApiKey(secret_id="AKIDtest", secret_key="s", account_id=1, account_name="a", enabled=True, created_at=0)


class Accounts:
    """The one method KeyService uses, counting its calls."""

    def __init__(self) -> None:
        self.keys = {KEY.secret_id: KEY}
        self.reads = 0

    async def get_key(self, secret_id: str) -> ApiKey | None:
        self.reads += 1
        return self.keys.get(secret_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def service() -> tuple[KeyService, Accounts, Clock]:
    accounts, clock = Accounts(), Clock()
    return KeyService(accounts, clock=clock), accounts, clock  # type: ignore[arg-type]


def test_a_resolved_key_is_read_once_within_the_ttl() -> None:
    keys, accounts, clock = service()
    assert asyncio.run(keys.resolve(KEY.secret_id)) == KEY
    clock.now += KEY_CACHE_TTL_S * 0.9
    assert asyncio.run(keys.resolve(KEY.secret_id)) == KEY
    assert accounts.reads == 1


def test_a_disabled_key_is_refused_once_the_ttl_has_passed() -> None:
    keys, accounts, clock = service()
    assert asyncio.run(keys.resolve(KEY.secret_id)) == KEY
    accounts.keys[KEY.secret_id] = dataclasses.replace(KEY, enabled=False)
    clock.now += KEY_CACHE_TTL_S + 0.001
    assert asyncio.run(keys.resolve(KEY.secret_id)) is None
    assert accounts.reads == 2
    assert KEY_CACHE_TTL_S < 0.5  # docs/limits.md promises a disabled key is refused within 0.5 s


def test_unknown_and_disabled_keys_are_not_kept() -> None:
    keys, accounts, _clock = service()
    assert asyncio.run(keys.resolve("AKIDnone")) is None
    accounts.keys["AKIDnone"] = dataclasses.replace(KEY, secret_id="AKIDnone")
    assert asyncio.run(keys.resolve("AKIDnone")) is not None  # a new key works at once
    assert accounts.reads == 2

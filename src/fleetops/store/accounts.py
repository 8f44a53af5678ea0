"""Accounts and their API keys (SecretId / SecretKey)."""

from __future__ import annotations

from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleetops import ids
from fleetops.ports.store import AccountNameTaken, ApiKey
from fleetops.store.database import Database, PointQuery
from fleetops.store.tables import accounts, api_keys

_KEYS: Final = sa.select(
    api_keys.c.secret_id,
    api_keys.c.secret_key,
    api_keys.c.account_id,
    accounts.c.name.label("account_name"),
    api_keys.c.enabled,
    api_keys.c.created_at,
).join(accounts, accounts.c.id == api_keys.c.account_id)
# built once: a statement composed per call costs more than the read itself (issue 12)
_KEY_BY_ID: Final = PointQuery(_KEYS.where(api_keys.c.secret_id == sa.bindparam("secret_id")))


class AccountStore:
    """:class:`fleetops.ports.store.AccountStore` on SQLite / PostgreSQL."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def count_accounts(self) -> int:
        async with self._db.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(accounts))).scalar_one())

    async def create_account(self, name: str, now_s: int) -> int:
        try:
            async with self._db.begin() as conn:
                result = await conn.execute(
                    sa.insert(accounts).values(name=name, created_at=now_s).returning(accounts.c.id)
                )
                return int(result.scalar_one())
        except IntegrityError as exc:
            raise AccountNameTaken(name) from exc

    async def account_id(self, name: str) -> int | None:
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(accounts.c.id).where(accounts.c.name == name))).first()
            return None if row is None else int(row.id)

    async def create_key(self, account_id: int, now_s: int) -> ApiKey:
        secret_id, secret_key = ids.new_secret_id(), ids.new_secret_key()
        async with self._db.begin() as conn:
            await conn.execute(
                sa.insert(api_keys).values(
                    secret_id=secret_id,
                    secret_key=secret_key,
                    account_id=account_id,
                    enabled=True,
                    created_at=now_s,
                )
            )
        key = await self.get_key(secret_id)
        assert key is not None  # just inserted
        return key

    async def get_key(self, secret_id: str) -> ApiKey | None:
        rows = await self._db.point(_KEY_BY_ID, {"secret_id": secret_id})
        return _key(rows[0]) if rows else None

    async def list_keys(self) -> list[ApiKey]:
        async with self._db.connect() as conn:
            rows = (await conn.execute(self._key_query().order_by(accounts.c.name, api_keys.c.created_at))).all()
        return [_key(r) for r in rows]

    async def set_key_enabled(self, secret_id: str, enabled: bool) -> bool:
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(api_keys).where(api_keys.c.secret_id == secret_id).values(enabled=enabled)
            )
            return bool(result.rowcount)

    @staticmethod
    def _key_query() -> sa.Select[tuple[str, str, int, str, bool, int]]:
        return _KEYS


def _key(row: Any) -> ApiKey:
    return ApiKey(
        secret_id=row.secret_id,
        secret_key=row.secret_key,
        account_id=int(row.account_id),
        account_name=row.account_name,
        enabled=bool(row.enabled),
        created_at=int(row.created_at),
    )

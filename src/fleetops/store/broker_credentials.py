"""Passwords of broker identities (``broker_credentials``): the Mosquitto plugin's service identity.

Every node that shares the database reads the same row, so no password is copied between machines; the first
node to ask creates it. On PostgreSQL a change notifies the plugin, which reads the new password at once.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleetops.store.database import Database
from fleetops.store.tables import broker_credentials

SECRET_BYTES = 32


class BrokerCredentialStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def secret(self, name: str) -> str | None:
        async with self._db.connect() as conn:
            row = (
                await conn.execute(sa.select(broker_credentials.c.secret).where(broker_credentials.c.name == name))
            ).first()
        return None if row is None else str(row.secret)

    async def get_or_create(self, name: str, now_s: int) -> str:
        """The secret of ``name``; a new random one if there is none yet (two nodes racing get the same)."""
        found = await self.secret(name)
        if found is not None:
            return found
        try:
            async with self._db.begin() as conn:
                await conn.execute(
                    sa.insert(broker_credentials).values(
                        name=name, secret=secrets.token_hex(SECRET_BYTES), created_at=now_s
                    )
                )
        except IntegrityError:
            pass  # another node created it first
        created = await self.secret(name)
        assert created is not None  # inserted above or by the winner of the race; rows are never deleted here
        return created

    async def rotate(self, name: str, now_s: int) -> str:
        """Replace the secret of ``name`` (connected nodes stay connected; new connections need the new one)."""
        secret = secrets.token_hex(SECRET_BYTES)
        async with self._db.begin() as conn:
            result = await conn.execute(
                sa.update(broker_credentials)
                .where(broker_credentials.c.name == name)
                .values(secret=secret, created_at=now_s)
            )
            if not result.rowcount:
                await conn.execute(sa.insert(broker_credentials).values(name=name, secret=secret, created_at=now_s))
        return secret

"""The API rate limit's shared counter (``rate_windows``): :class:`~fleetops.ports.store.RateWindows`.

One row per (SecretId, Action) holds the current window and how much of it is granted. A reservation is one
upsert, sent outside a transaction (autocommit: one round trip): a new window starts the row again, the same
window adds what is left up to the limit, and the row lock PostgreSQL takes for the update serializes nodes
reserving at once, so their grants never add up to more than the limit. Rows are reused, never purged: there
is one per key and action that was ever called.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from fleetops.ports.store import Grant
from fleetops.store.database import Database
from fleetops.store.dialect import greatest, least
from fleetops.store.tables import rate_windows


class RateWindowStore:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._dialect = db.engine.dialect.name

    async def reserve(self, secret_id: str, action: str, window_s: int, asked: int, limit: int) -> Grant:
        d, row = self._dialect, rate_windows.c
        fresh = max(0, min(asked, limit))  # a new window (or a new row): what was asked, up to the limit
        insert = (postgresql.insert if d == "postgresql" else sqlite.insert)(rate_windows)
        new = insert.values(secret_id=secret_id, action=action, window_s=window_s, used=fresh, granted=fresh)
        newer = new.excluded.window_s > row.window_s
        left = greatest(d, 0, least(d, asked, limit - row.used))  # every SET reads the row as it was
        stmt = new.on_conflict_do_update(
            index_elements=[row.secret_id, row.action],
            set_={
                # a node whose clock is behind is charged to the newer window the row is in
                "window_s": greatest(d, row.window_s, new.excluded.window_s),
                "used": sa.case((newer, fresh), else_=row.used + left),
                "granted": sa.case((newer, fresh), else_=left),
            },
        ).returning(row.granted, row.used)
        async with self._db.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            granted, used = (await conn.execute(stmt)).one()
        return Grant(int(granted), int(used))

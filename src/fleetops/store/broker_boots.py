"""The broker's current run (``broker_boots``): :class:`~fleetops.ports.messaging.BrokerBoots`.

A Mosquitto with the fleetops plugin names its run in the welcome it sends a node; a new run lost every
connection of the last. The first node to see a new run marks every device offline in the transaction that
records it; a node that sees it recorded already does nothing, so it cannot undo what the first node has
written since (docs/mosquitto.md#presence-and-broker-restarts).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleetops.store.database import Database
from fleetops.store.devices import mark_all_offline
from fleetops.store.tables import broker_boots


class BrokerBootStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def begin_boot(self, broker: str, boot: str, now_s: int) -> int | None:
        for _attempt in range(2):  # a second attempt only after losing the race to insert the first row
            try:
                async with self._db.begin() as conn:
                    # FOR UPDATE: two nodes seeing the same new boot at once are serialized here (PostgreSQL)
                    row = (
                        await conn.execute(
                            sa.select(broker_boots.c.boot).where(broker_boots.c.name == broker).with_for_update()
                        )
                    ).first()
                    if row is not None and row.boot == boot:
                        return None
                    if row is None:
                        await conn.execute(sa.insert(broker_boots).values(name=broker, boot=boot, recorded_at=now_s))
                    else:
                        await conn.execute(
                            sa.update(broker_boots)
                            .where(broker_boots.c.name == broker)
                            .values(boot=boot, recorded_at=now_s)
                        )
                    return await mark_all_offline(conn, now_s)
            except IntegrityError:
                continue  # another node inserted the row first: read it again
        return None

    async def current(self, broker: str) -> str | None:
        """The boot recorded for ``broker``."""
        async with self._db.connect() as conn:
            row = (await conn.execute(sa.select(broker_boots.c.boot).where(broker_boots.c.name == broker))).first()
        return None if row is None else str(row.boot)

"""Products, always scoped to the owning account."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from fleetops.ports.store import ProductNameTaken, ProductRecord
from fleetops.store.database import Database
from fleetops.store.tables import devices, products


class ProductStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(
        self,
        account_id: int,
        product_id: str,
        name: str,
        properties: dict[str, Any],
        now_s: int,
        max_products: int,
    ) -> ProductRecord | None:
        """Insert a product; None when the account is at ``max_products``. Raises ProductNameTaken."""
        async with self._db.begin() as conn:
            count = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(products).where(products.c.account_id == account_id)
                )
            ).scalar_one()
            if count >= max_products:
                return None
            try:
                async with conn.begin_nested():
                    pk = (
                        await conn.execute(
                            sa.insert(products)
                            .values(
                                account_id=account_id,
                                product_id=product_id,
                                name=name,
                                properties=properties,
                                created_at=now_s,
                            )
                            .returning(products.c.id)
                        )
                    ).scalar_one()
            except IntegrityError as exc:
                raise ProductNameTaken(name) from exc
        return ProductRecord(int(pk), account_id, product_id, name, properties, now_s)

    async def get(self, account_id: int, product_id: str) -> ProductRecord | None:
        async with self._db.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(products).where(products.c.account_id == account_id, products.c.product_id == product_id)
                )
            ).first()
        return None if row is None else _record(row)

    async def id_for_name(self, account_id: int, name: str) -> str | None:
        async with self._db.connect() as conn:
            found = (
                await conn.execute(
                    sa.select(products.c.product_id).where(products.c.account_id == account_id, products.c.name == name)
                )
            ).scalar_one_or_none()
        return None if found is None else str(found)

    async def page(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ProductRecord]]:
        async with self._db.connect() as conn:
            total = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(products).where(products.c.account_id == account_id)
                )
            ).scalar_one()
            rows = (
                await conn.execute(
                    sa.select(products)
                    .where(products.c.account_id == account_id)
                    .order_by(products.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return int(total), [_record(r) for r in rows]

    async def delete_if_empty(self, account_id: int, product_id: str) -> bool | None:
        """Delete the product. None: not found; False: it still has devices; True: deleted."""
        async with self._db.begin() as conn:
            row = (
                await conn.execute(
                    sa.select(products.c.id).where(
                        products.c.account_id == account_id, products.c.product_id == product_id
                    )
                )
            ).first()
            if row is None:
                return None
            has_devices = (
                await conn.execute(sa.select(devices.c.id).where(devices.c.product_pk == row.id).limit(1))
            ).first()
            if has_devices is not None:
                return False
            await conn.execute(sa.delete(products).where(products.c.id == row.id))
            return True


def _record(row: Any) -> ProductRecord:
    return ProductRecord(
        pk=int(row.id),
        account_id=int(row.account_id),
        product_id=row.product_id,
        name=row.name,
        properties=dict(row.properties),
        created_at=int(row.created_at),
    )

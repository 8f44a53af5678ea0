"""Product use cases: create, describe, list, delete (docs/api.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fleetops import errors, ids
from fleetops.ports.store import ProductNameTaken, ProductRecord, ProductStore

MAX_PRODUCTS_PER_ACCOUNT = 2000  # vendor usage limit

# Only plain key-authenticated devices are implemented (see docs/decisions.md): EncryptionType "2", ProductType 0.
SUPPORTED_ENCRYPTION_TYPES = ("2",)
SUPPORTED_PRODUCT_TYPES = (0,)


def normalized_properties(given: Mapping[str, Any]) -> dict[str, Any]:
    """ProductProperties with the defaults filled, in wire (PascalCase) form, as CreateProduct echoes them."""
    encryption = str(given.get("encryption_type") or "2")
    if encryption not in SUPPORTED_ENCRYPTION_TYPES:
        raise errors.InvalidParameterValue(
            f"ProductProperties.EncryptionType `{encryption}` is not supported: fleetops implements key "
            'authentication only; use "2" (or omit it).'
        )
    product_type = int(given.get("product_type") or 0)
    if product_type not in SUPPORTED_PRODUCT_TYPES:
        raise errors.ProductTypeNotSupport(
            f"ProductProperties.ProductType {product_type} is not supported: fleetops implements normal "
            "products only; use 0 (or omit it)."
        )
    region = given.get("region") or "gz"
    if region != "gz":
        raise errors.InvalidParameterValue(f'ProductProperties.Region `{region}` is not supported; use "gz".')
    return {
        "ProductDescription": given.get("product_description") or "",
        "EncryptionType": encryption,
        "Region": region,
        "ProductType": product_type,
        "Format": given.get("format") or "json",
        "Platform": given.get("platform") or "DEFAULT",
        "Appeui": "",
        "ModelId": given.get("model_id") or "-1",
        "ModelName": given.get("model_name") or "",
        "ProductKey": "",
        "RegisterType": 0,
        "ProductSecret": "",
        "RegisterLimit": 0,
    }


class ProductService:
    def __init__(self, store: ProductStore, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock

    async def create(self, account_id: int, name: str, properties: Mapping[str, Any]) -> ProductRecord:
        props = normalized_properties(properties)
        for _attempt in range(5):  # a product id collision is astronomically rare; retry a few times anyway
            product_id = ids.new_product_id()
            try:
                record = await self._store.insert(
                    account_id, product_id, name, props, int(self._clock()), MAX_PRODUCTS_PER_ACCOUNT
                )
            except ProductNameTaken as exc:
                if await self._store.name_exists(account_id, name):
                    raise errors.ProductAlreadyExist(
                        f"The account already has a product named `{name}`; choose another ProductName."
                    ) from exc
                continue
            if record is None:
                raise errors.ProductExceedLimit(
                    f"The account already has {MAX_PRODUCTS_PER_ACCOUNT} products, the limit; delete one first."
                )
            return record
        raise errors.InternalError("could not allocate a unique ProductId")

    async def get(self, account_id: int, product_id: str) -> ProductRecord:
        record = await self._store.get(account_id, product_id)
        if record is None:
            raise errors.ProductNotExist(f"The product `{product_id}` does not exist in this account.")
        return record

    async def page(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ProductRecord]]:
        return await self._store.page(account_id, offset, limit)

    async def delete(self, account_id: int, product_id: str) -> None:
        outcome = await self._store.delete_if_empty(account_id, product_id)
        if outcome is None:
            raise errors.ProductNotExist(f"The product `{product_id}` does not exist in this account.")
        if outcome is False:
            raise errors.DevicesExistUnderProduct(
                f"The product `{product_id}` still has devices; delete them (DeleteDevice) before the product."
            )

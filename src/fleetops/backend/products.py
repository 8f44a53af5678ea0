"""Product use cases: create, describe, list, delete (docs/api.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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
            'authentication only; use "2" (or omit it).',
            message_zh=f"不支持 ProductProperties.EncryptionType `{encryption}`："
            'fleetops 仅实现密钥认证，请使用 "2"（或不填）。',
        )
    product_type = int(given.get("product_type") or 0)
    if product_type not in SUPPORTED_PRODUCT_TYPES:
        raise errors.ProductTypeNotSupport(
            f"ProductProperties.ProductType {product_type} is not supported: fleetops implements normal "
            "products only; use 0 (or omit it).",
            message_zh=f"不支持 ProductProperties.ProductType {product_type}："
            "fleetops 仅实现普通产品，请使用 0（或不填）。",
        )
    region = given.get("region") or "gz"
    if region != "gz":
        raise errors.InvalidParameterValue(
            f'ProductProperties.Region `{region}` is not supported; use "gz".',
            message_zh=f'不支持 ProductProperties.Region `{region}`，请使用 "gz"。',
        )
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


class Hint(NamedTuple):
    """A sentence to append to an error message, in English and in Chinese (both empty: nothing to add)."""

    en: str = ""
    zh: str = ""


class ProductNames:
    """Recognizes a ProductName sent where a ProductId belongs, the mistake every newcomer makes once: the
    console and CreateProduct show the name first, and both look like identifiers. Only consulted on the way to
    a not-found error, so it costs nothing on success."""

    def __init__(self, store: ProductStore) -> None:
        self._store = store

    async def hint(self, account_id: int, given: str) -> Hint:
        """The sentence "`lamps` is a ProductName; its ProductId is `ABCDE12345`." when ``given`` is no ProductId
        of the account but the name of one of its products; an empty Hint otherwise."""
        if await self._store.get(account_id, given) is not None:
            return Hint()
        product_id = await self._store.id_for_name(account_id, given)
        if product_id is None:
            return Hint()
        return Hint(
            f" `{given}` is a ProductName; its ProductId is `{product_id}`.",
            f"`{given}` 是产品名称（ProductName），其 ProductId 为 `{product_id}`。",
        )

    async def not_exist(self, account_id: int, product_id: str) -> errors.ProductNotExist:
        hint = await self.hint(account_id, product_id)
        return errors.ProductNotExist(
            f"The product `{product_id}` does not exist in this account.{hint.en}",
            message_zh=f"该账号下不存在产品 `{product_id}`。{hint.zh}",
        )


class ProductService:
    def __init__(self, store: ProductStore, clock: Callable[[], float], names: ProductNames) -> None:
        self._store = store
        self._clock = clock
        self._names = names

    async def create(self, account_id: int, name: str, properties: Mapping[str, Any]) -> ProductRecord:
        props = normalized_properties(properties)
        for _attempt in range(5):  # a product id collision is astronomically rare; retry a few times anyway
            product_id = ids.new_product_id()
            try:
                record = await self._store.insert(
                    account_id, product_id, name, props, int(self._clock()), MAX_PRODUCTS_PER_ACCOUNT
                )
            except ProductNameTaken as exc:
                if await self._store.id_for_name(account_id, name) is not None:
                    raise errors.ProductAlreadyExist(
                        f"The account already has a product named `{name}`; choose another ProductName.",
                        message_zh=f"该账号下已有名为 `{name}` 的产品，请换一个 ProductName。",
                    ) from exc
                continue
            if record is None:
                raise errors.ProductExceedLimit(
                    f"The account already has {MAX_PRODUCTS_PER_ACCOUNT} products, the limit; delete one first.",
                    message_zh=f"该账号已有 {MAX_PRODUCTS_PER_ACCOUNT} 个产品，达到上限；请先删除一个。",
                )
            return record
        raise errors.InternalError(
            "Could not allocate a unique ProductId; retry.", message_zh="无法分配唯一的 ProductId，请重试。"
        )

    async def get(self, account_id: int, product_id: str) -> ProductRecord:
        record = await self._store.get(account_id, product_id)
        if record is None:
            raise await self._names.not_exist(account_id, product_id)
        return record

    async def page(self, account_id: int, offset: int, limit: int) -> tuple[int, list[ProductRecord]]:
        return await self._store.page(account_id, offset, limit)

    async def delete(self, account_id: int, product_id: str) -> None:
        outcome = await self._store.delete_if_empty(account_id, product_id)
        if outcome is None:
            raise await self._names.not_exist(account_id, product_id)
        if outcome is False:
            raise errors.DevicesExistUnderProduct(
                f"The product `{product_id}` still has devices; delete them (DeleteDevice) before the product.",
                message_zh=f"产品 `{product_id}` 下仍有设备，请先删除设备（DeleteDevice）再删除产品。",
            )

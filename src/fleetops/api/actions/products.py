"""Product actions: CreateProduct, DescribeProduct, DescribeProducts, DeleteProduct (docs/api.md)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from fleetops import errors
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import wire
from fleetops.ports.store import ProductRecord

PRODUCT_NAME_PATTERN: Final = r"[a-zA-Z0-9:_-]{1,32}"


# A ProductName in place of the ProductId is every newcomer's first mistake; one that passes the length check
# gets its ProductId named by the backend (backend.products.ProductNames), a longer one this hint.
PRODUCT_ID_HINT: Final = (
    " A ProductId is the 10-character id CreateProduct returned (e.g. `ABCDE12345`), not the ProductName; "
    "DescribeProducts (fleetops products list) shows both.",
    "ProductId 是 CreateProduct 返回的 10 位 ID（例如 `ABCDE12345`），不是产品名称（ProductName）；"
    "DescribeProducts（fleetops products list）会同时列出两者。",
)


def product_id(*, doc: str = "product id (10 characters)", name: str = "ProductId") -> Any:
    """The ``ProductId`` parameter, as most actions declare it (DescribeDevice says ``ProductID``)."""
    return wire(name, required=True, max_length=10, doc=doc, hint=PRODUCT_ID_HINT)


@dataclass(frozen=True, slots=True)
class ProductProperties:
    product_description: str | None = wire("ProductDescription", max_length=256, doc="description")
    encryption_type: str | None = wire("EncryptionType", doc='"2" key authentication (default); "1" is not supported')
    region: str | None = wire("Region", doc='"gz" (the only value)')
    product_type: int | None = wire("ProductType", doc="0 normal (the only supported type)")
    format: str | None = wire("Format", choices=("json", "custom"), doc="json (default) or custom")
    platform: str | None = wire("Platform", max_length=32, doc="free text, default DEFAULT")
    appeui: str | None = wire("Appeui", doc="LoRa only; ignored")
    model_id: str | None = wire("ModelId", doc="ignored")
    model_name: str | None = wire("ModelName", doc="ignored")
    product_key: str | None = wire("ProductKey", doc="ignored")
    register_type: int | None = wire("RegisterType", doc="ignored (dynamic registration is not implemented)")
    product_secret: str | None = wire("ProductSecret", doc="ignored")
    register_limit: int | None = wire("RegisterLimit", doc="ignored")


@dataclass(frozen=True, slots=True)
class CreateProductRequest:
    product_name: str = wire(
        "ProductName", required=True, pattern=PRODUCT_NAME_PATTERN, doc="[a-zA-Z0-9:_-]{1,32}, unique in the account"
    )
    product_properties: ProductProperties | None = wire(
        "ProductProperties", doc="product properties; only key-authenticated normal products are supported"
    )
    skey: str | None = wire("Skey", doc="LoRa only; ignored")


@dataclass(frozen=True, slots=True)
class DescribeProductRequest:
    product_id: str = product_id()


@dataclass(frozen=True, slots=True)
class DescribeProductsRequest:
    offset: int = wire("Offset", required=True, doc="from 0")
    limit: int = wire("Limit", required=True, min_value=10, max_value=250, doc="10..250")


@dataclass(frozen=True, slots=True)
class DeleteProductRequest:
    product_id: str = product_id()
    skey: str | None = wire("Skey", doc="LoRa only; ignored")


def product_info(record: ProductRecord) -> dict[str, Any]:
    return {
        "ProductId": record.product_id,
        "ProductName": record.name,
        "ProductMetadata": {"CreationDate": record.created_at},
        "ProductProperties": record.properties,
    }


async def create_product(ctx: ActionContext, req: CreateProductRequest) -> dict[str, Any]:
    given = dataclasses.asdict(req.product_properties) if req.product_properties is not None else {}
    record = await ctx.backend.products.create(
        ctx.account_id, req.product_name, {name: value for name, value in given.items() if value is not None}
    )
    return {"ProductName": record.name, "ProductId": record.product_id, "ProductProperties": record.properties}


async def describe_product(ctx: ActionContext, req: DescribeProductRequest) -> dict[str, Any]:
    return product_info(await ctx.backend.products.get(ctx.account_id, req.product_id))


async def describe_products(ctx: ActionContext, req: DescribeProductsRequest) -> dict[str, Any]:
    total, records = await ctx.backend.products.page(ctx.account_id, req.offset, req.limit)
    return {"TotalCount": total, "Products": [product_info(r) for r in records]}


async def delete_product(ctx: ActionContext, req: DeleteProductRequest) -> dict[str, Any]:
    await ctx.backend.products.delete(ctx.account_id, req.product_id)
    return {}


ACTIONS: tuple[Action[Any], ...] = (
    Action(
        name="CreateProduct",
        summary="Create a product.",
        request=CreateProductRequest,
        handler=create_product,
        response=("ProductName", "ProductId", "ProductProperties"),
        errors=(
            errors.InvalidParameterValue,
            errors.ProductAlreadyExist,
            errors.ProductTypeNotSupport,
            errors.ProductExceedLimit,
        ),
    ),
    Action(
        name="DescribeProduct",
        summary="Describe one product.",
        request=DescribeProductRequest,
        handler=describe_product,
        response=("ProductId", "ProductName", "ProductMetadata", "ProductProperties"),
        errors=(errors.ProductNotExist,),
    ),
    Action(
        name="DescribeProducts",
        summary="List the account's products, oldest first.",
        request=DescribeProductsRequest,
        handler=describe_products,
        response=("TotalCount", "Products"),
        errors=(errors.InvalidParameterValue,),
    ),
    Action(
        name="DeleteProduct",
        summary="Delete a product that has no devices.",
        request=DeleteProductRequest,
        handler=delete_product,
        errors=(errors.ProductNotExist, errors.DevicesExistUnderProduct),
    ),
)

"""Product actions: CreateProduct, DescribeProduct, DescribeProducts, DeleteProduct (iotcloud-actions.md §2)."""

from __future__ import annotations

from typing import Any

from fleetops import errors
from fleetops.api.registry import Action, ActionContext
from fleetops.api.schema import Kind, Param
from fleetops.store.products import ProductRecord

PRODUCT_NAME_PATTERN = r"[a-zA-Z0-9:_-]{1,32}"
PRODUCT_ID = Param("ProductId", Kind.STRING, required=True, max_length=10, doc="product id (10 characters)")

PRODUCT_PROPERTIES = Param(
    "ProductProperties",
    Kind.OBJECT,
    doc="product properties; only key-authenticated normal products are supported",
    fields=(
        Param("ProductDescription", Kind.STRING, max_length=256, doc="description"),
        Param("EncryptionType", Kind.STRING, doc='"2" key authentication (default); "1" is not supported'),
        Param("Region", Kind.STRING, doc='"gz" (the only value)'),
        Param("ProductType", Kind.INTEGER, doc="0 normal (the only supported type)"),
        Param("Format", Kind.STRING, choices=("json", "custom"), doc="json (default) or custom"),
        Param("Platform", Kind.STRING, max_length=32, doc="free text, default DEFAULT"),
        Param("Appeui", Kind.STRING, doc="LoRa only; ignored"),
        Param("ModelId", Kind.STRING, doc="ignored"),
        Param("ModelName", Kind.STRING, doc="ignored"),
        Param("ProductKey", Kind.STRING, doc="ignored"),
        Param("RegisterType", Kind.INTEGER, doc="ignored (dynamic registration is not implemented)"),
        Param("ProductSecret", Kind.STRING, doc="ignored"),
        Param("RegisterLimit", Kind.INTEGER, doc="ignored"),
    ),
)


def product_info(record: ProductRecord) -> dict[str, Any]:
    return {
        "ProductId": record.product_id,
        "ProductName": record.name,
        "ProductMetadata": {"CreationDate": record.created_at},
        "ProductProperties": record.properties,
    }


async def create_product(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    record = await ctx.backend.products.create(
        ctx.account_id, params["product_name"], params.get("product_properties") or {}
    )
    return {
        "ProductName": record.name,
        "ProductId": record.product_id,
        "ProductProperties": record.properties,
    }


async def describe_product(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    return product_info(await ctx.backend.products.get(ctx.account_id, params["product_id"]))


async def describe_products(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    total, records = await ctx.backend.products.page(ctx.account_id, params["offset"], params["limit"])
    return {"TotalCount": total, "Products": [product_info(r) for r in records]}


async def delete_product(ctx: ActionContext, params: dict[str, Any]) -> dict[str, Any]:
    await ctx.backend.products.delete(ctx.account_id, params["product_id"])
    return {}


ACTIONS = (
    Action(
        name="CreateProduct",
        summary="Create a product.",
        params=(
            Param(
                "ProductName",
                Kind.STRING,
                required=True,
                pattern=PRODUCT_NAME_PATTERN,
                doc="[a-zA-Z0-9:_-]{1,32}, unique in the account",
            ),
            PRODUCT_PROPERTIES,
            Param("Skey", Kind.STRING, doc="LoRa only; ignored"),
        ),
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
        params=(PRODUCT_ID,),
        handler=describe_product,
        response=("ProductId", "ProductName", "ProductMetadata", "ProductProperties"),
        errors=(errors.ProductNotExist,),
    ),
    Action(
        name="DescribeProducts",
        summary="List the account's products, oldest first.",
        params=(
            Param("Offset", Kind.INTEGER, required=True, doc="from 0"),
            Param("Limit", Kind.INTEGER, required=True, min_value=10, max_value=250, doc="10..250"),
        ),
        handler=describe_products,
        response=("TotalCount", "Products"),
        errors=(errors.InvalidParameterValue,),
    ),
    Action(
        name="DeleteProduct",
        summary="Delete a product that has no devices.",
        params=(PRODUCT_ID, Param("Skey", Kind.STRING, doc="LoRa only; ignored")),
        handler=delete_product,
        errors=(errors.ProductNotExist, errors.DevicesExistUnderProduct),
    ),
)

"""``fleetops products list`` and ``fleetops devices list --product P``: what the fleet is made of."""

from __future__ import annotations

from typing import Any, Final

from fleetops.client.api import ApiClient
from fleetops.client.output import columns, local_time

PAGE_LIMIT: Final = 250  # the largest Limit DescribeProducts and DescribeDevices accept (10..250)


def list_products(client: ApiClient) -> list[dict[str, Any]]:
    """Every product of the account (at most 2,000: a few pages), oldest first."""
    return client.collect("DescribeProducts", {}, "Products", page_limit=PAGE_LIMIT)[1]


def product_rows(products: list[dict[str, Any]]) -> list[str]:
    rows = [
        (
            p["ProductId"],
            p["ProductName"],
            local_time((p.get("ProductMetadata") or {}).get("CreationDate")),
            (p.get("ProductProperties") or {}).get("ProductDescription") or "",
        )
        for p in products
    ]
    return columns(("PRODUCT ID", "NAME", "CREATED", "DESCRIPTION"), rows)


def list_devices(
    client: ApiClient, product_id: str, *, offset: int, limit: int, name_contains: str | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """(TotalCount, up to ``limit`` devices from ``offset``): a product may hold a million, so this pages."""
    params: dict[str, Any] = {"ProductId": product_id}
    if name_contains:
        params["DeviceName"] = name_contains
    return client.collect("DescribeDevices", params, "Devices", page_limit=PAGE_LIMIT, offset=offset, count=limit)


def device_rows(devices: list[dict[str, Any]]) -> list[str]:
    rows = [
        (
            d["DeviceName"],
            "online" if d.get("Online") else "offline",
            "enabled" if d.get("EnableState", 1) else "disabled",
            local_time(d.get("LoginTime")),
            local_time(d.get("CreateTime")),
        )
        for d in devices
    ]
    return columns(("DEVICE", "ONLINE", "STATE", "LAST LOGIN", "CREATED"), rows)

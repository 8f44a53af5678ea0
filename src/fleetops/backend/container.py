"""The use cases an API handler can reach, built once by the app factory (fleetops.node)."""

from __future__ import annotations

from dataclasses import dataclass

from fleetops.backend.products import ProductService


@dataclass(frozen=True)
class Backend:
    products: ProductService

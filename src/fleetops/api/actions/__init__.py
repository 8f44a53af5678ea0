"""Every implemented action, collected for the registry and for docs/api.md."""

from __future__ import annotations

from typing import Any

from fleetops.api.actions import devices, extensions, messages, products, shadows, tasks
from fleetops.api.registry import Action


def all_actions() -> tuple[Action[Any], ...]:
    return (
        *products.ACTIONS,
        *devices.ACTIONS,
        *shadows.ACTIONS,
        *tasks.ACTIONS,
        *messages.ACTIONS,
        *extensions.ACTIONS,
    )

"""The action registry: every action is declared once (name, parameters, handler, documented errors).

Decoding, MissingParameter / UnknownParameter / InvalidParameter and range checks come from the declaration
(``api.decoding``), and so does docs/api.md (``fleetops.api.docs``), so the docs cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetops.api.schema import Param
from fleetops.errors import ApiError

if TYPE_CHECKING:
    from fleetops.backend.container import Backend


@dataclass(frozen=True)
class ActionContext:
    """What a handler knows about the call besides its parameters."""

    account_id: int
    secret_id: str
    request_id: str
    language: str
    backend: Backend


Handler = Callable[[ActionContext, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Action:
    name: str
    summary: str
    params: tuple[Param, ...]
    handler: Handler
    response: tuple[str, ...] = ()
    errors: tuple[type[ApiError], ...] = ()
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


class Registry:
    def __init__(self, actions: Iterable[Action]) -> None:
        self._actions: dict[str, Action] = {}
        for action in actions:
            if action.name in self._actions:
                raise ValueError(f"action {action.name} declared twice")
            self._actions[action.name] = action

    def get(self, name: str) -> Action | None:
        return self._actions.get(name)

    def __iter__(self) -> Any:
        return iter(sorted(self._actions.values(), key=lambda a: a.name))

    def names(self) -> list[str]:
        return sorted(self._actions)

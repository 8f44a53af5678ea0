"""The action registry: every action is declared once (name, request class, handler, documented errors).

Decoding, MissingParameter / UnknownParameter / InvalidParameter and range checks come from the request class
(``api.schema``, ``api.decoding``), and so does docs/api.md (``fleetops.api.docs``), so the docs cannot drift
from the code. The type checker sees each handler with its own request type::

    Action(name="DescribeTask", request=DescribeTaskRequest, handler=describe_task, ...)
    async def describe_task(ctx: ActionContext, req: DescribeTaskRequest) -> dict[str, Any]: ...
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fleetops.api.schema import Param, parameters
from fleetops.errors import ApiError

if TYPE_CHECKING:
    from fleetops.backend.container import Backend

R = TypeVar("R")


@dataclass(frozen=True)
class ActionContext:
    """What a handler knows about the call besides its parameters."""

    account_id: int
    secret_id: str
    request_id: str
    language: str
    backend: Backend


@dataclass(frozen=True)
class Action(Generic[R]):
    name: str
    summary: str
    request: type[R]
    handler: Callable[[ActionContext, R], Awaitable[dict[str, Any]]]
    response: tuple[str, ...] = ()
    errors: tuple[type[ApiError], ...] = ()
    notes: str = ""
    extension: bool = False  # a fleetops extension, not an iotcloud action (docs/extensions.md)

    def __post_init__(self) -> None:
        parameters(self.request)  # a declaration that cannot work fails at import, not on the first call

    @property
    def params(self) -> tuple[Param, ...]:
        return parameters(self.request)


class Registry:
    def __init__(self, actions: Iterable[Action[Any]]) -> None:
        self._actions: dict[str, Action[Any]] = {}
        for action in actions:
            if action.name in self._actions:
                raise ValueError(f"action {action.name} declared twice")
            self._actions[action.name] = action

    def get(self, name: str) -> Action[Any] | None:
        return self._actions.get(name)

    def __iter__(self) -> Iterator[Action[Any]]:
        return iter(sorted(self._actions.values(), key=lambda a: a.name))

    def names(self) -> list[str]:
        return sorted(self._actions)

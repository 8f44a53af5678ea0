"""The event loop `fleetops serve` and `fleetops worker` run on (Settings ``event_loop``), and what fleetops'
protocols use of a connection's transport on any loop (docs/decisions.md#event-loop).

``auto`` (the default) is uvloop when it can be imported, else asyncio's own loop; ``uvloop`` insists on it;
``asyncio`` is asyncio's own. The short commands (keys, devices, db...) stay on asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, Protocol, runtime_checkable

from fleetops.errors import ConfigurationError

__all__ = ["EVENT_LOOPS", "LoopFactory", "StreamTransport", "loop_factory", "loop_name"]

EVENT_LOOPS: Final = ("auto", "asyncio", "uvloop")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(choice: str) -> LoopFactory | None:
    """The factory of the loop ``choice`` names, None for asyncio's own; a ConfigurationError for a choice that
    is none of :data:`EVENT_LOOPS` or for ``uvloop`` when it is not installed."""
    if choice not in EVENT_LOOPS:
        raise ConfigurationError(
            f"event_loop (FLEETOPS_EVENT_LOOP) must be one of {', '.join(EVENT_LOOPS)}, got {choice!r}"
        )
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError as exc:
        if choice == "uvloop":
            raise ConfigurationError(
                "event_loop (FLEETOPS_EVENT_LOOP) is uvloop but uvloop cannot be imported "
                f"({exc}): install it, or choose auto or asyncio"
            ) from exc
        return None
    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: the package whose loop ``loop`` is (for the start-up log line)."""
    return type(loop).__module__.partition(".")[0]


@runtime_checkable
class StreamTransport(Protocol):
    """The part of a stream transport's public interface fleetops' protocols use.

    asyncio's transports are ``asyncio.Transport`` subclasses; uvloop's (``TCPTransport``, its TLS transport)
    have the same methods without subclassing it, so a protocol checks for these methods, never for the class.
    """

    def write(self, data: bytes | bytearray | memoryview) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def is_closing(self) -> bool: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...

    def get_write_buffer_size(self) -> int: ...

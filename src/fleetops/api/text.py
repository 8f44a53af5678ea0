"""How client-supplied text is quoted in error messages: cut short, and JSON values shown as JSON."""

from __future__ import annotations

import json
from typing import Any, Final

SHOWN_CHARS: Final = 64


def cut(text: str) -> str:
    """``text``, or its first characters and ``...`` when it is longer than :data:`SHOWN_CHARS`."""
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def shown_value(value: Any, from_strings: bool) -> tuple[str, str]:
    """How a received value is quoted in a message, in English and Chinese; long values are cut short.

    A JSON string is shown with its quotes, so `"10"` (a String) is not mistaken for 10 (an Integer); a flat
    (GET/form) value is shown as typed.
    """
    if isinstance(value, dict):
        return "an Object", "对象"
    if isinstance(value, list):
        return "an Array", "数组"
    if value is None:
        return "null", "null"
    text = value if from_strings and isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    shown = f"`{cut(text)}`"
    return shown, shown

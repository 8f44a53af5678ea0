"""Generate docs/api.md from the action registry, so the docs cannot drift from the code.

``python -m fleetops.api.docs > docs/api.md`` writes it; ``--check docs/api.md`` fails when it is stale (CI).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from fleetops.api.actions import all_actions
from fleetops.api.registry import Action
from fleetops.api.schema import INT64_MAX, Kind, Param

HEADER = """# API reference (generated)

Generated from the action declarations by `python -m fleetops.api.docs` (`make docs`); do not edit by hand.
Every action is served at `/` over Tencent Cloud API 3.0 (service `iotcloud`, version `2018-06-14`): POST JSON,
POST form or GET, signed with TC3-HMAC-SHA256, HmacSHA256 or HmacSHA1. Errors common to every action (signature,
parameters, rate limit) are listed in [errors.md](errors.md).
"""


def _constraints(p: Param) -> str:
    parts: list[str] = []
    if p.kind in (Kind.INTEGER, Kind.INT64) and p.choices is None:
        hi = "2^63-1" if p.high == INT64_MAX else str(p.high)
        parts.append(f"{p.low}..{hi}")
    if p.max_length is not None:
        parts.append(f"length <= {p.max_length}")
    if p.pattern is not None:
        parts.append(f"`{p.pattern.pattern}`")
    if p.choices:
        parts.append("one of " + ", ".join(f"`{c}`" for c in p.choices))
    return "; ".join(parts)


def _rows(params: Iterable[Param], prefix: str = "") -> list[str]:
    rows: list[str] = []
    for p in params:
        name = prefix + p.name
        kind = p.kind.value
        if p.item is not None:
            kind = f"Array of {p.item.kind.value}"
        constraints = _constraints(p.item if p.item is not None else p)
        if p.max_items is not None:
            constraints = "; ".join(c for c in (constraints, f"<= {p.max_items} items") if c)
        rows.append(f"| `{name}` | {kind} | {'yes' if p.required else 'no'} | {constraints} | {p.doc} |")
        rows.extend(_rows(p.fields, name + "."))
        if p.item is not None and p.item.fields:
            rows.extend(_rows(p.item.fields, name + ".N."))
    return rows


def render_action(action: Action[Any]) -> str:
    lines = [f"## {action.name}", ""]
    if action.extension:
        lines += ["*A fleetops extension (not an iotcloud action): see [extensions.md](extensions.md).*", ""]
    lines += [action.summary, ""]
    if action.params:
        lines += ["| parameter | type | required | constraints | meaning |", "|---|---|---|---|---|"]
        lines += _rows(action.params)
        lines.append("")
    response = ", ".join(f"`{r}`" for r in (*action.response, "RequestId"))
    lines += [f"Response: {response}.", ""]
    if action.errors:
        lines += ["Errors: " + ", ".join(f"`{e.code}`" for e in action.errors) + ".", ""]
    if action.notes:
        lines += [action.notes, ""]
    return "\n".join(lines)


def render() -> str:
    actions = sorted(all_actions(), key=lambda a: a.name)
    index = ["| action | summary |", "|---|---|"] + [
        f"| [{a.name}](#{a.name.lower()}) | {a.summary} |" for a in actions
    ]
    return "\n".join([HEADER, *index, "", *(render_action(a) for a in actions)]).rstrip() + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if len(argv) == 2 and argv[0] == "--check":
        with open(argv[1], encoding="utf-8") as fh:
            if fh.read() != text:
                print(f"{argv[1]} is stale: run `make docs`", file=sys.stderr)
                return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The pre-encoded delta push (messaging/shadow_protocol.py: DeltaPush), and which patches are flat (the
task engine merges those in SQL)."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.shadow import is_flat
from fleetops.messaging.shadow_protocol import DeltaPush, render_delta_push

scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=8)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)
states = st.dictionaries(st.text(max_size=8), values.filter(lambda v: v is not None), max_size=5)


@given(state=states, version=st.integers(0, 2**63 - 1), now_ms=st.integers(0, 2**45))
def test_the_halves_around_the_version_are_the_rendered_delta_push(
    state: dict[str, Any], version: int, now_ms: int
) -> None:
    assert DeltaPush(state, now_ms).payload(version) == orjson.dumps(render_delta_push(version, state, now_ms))


def test_a_push_is_the_documented_shape() -> None:
    assert orjson.loads(DeltaPush({"power": "on"}, 1700000010456).payload(2)) == {
        "type": "delta",
        "timestamp": 1700000010456,
        "payload": {
            "state": {"power": "on"},
            "metadata": {"power": {"timestamp": 1700000010456}},
            "version": 2,
            "timestamp": 1700000010456,
        },
    }


def test_only_patches_without_objects_are_flat() -> None:
    assert is_flat({"a": 1, "b": None, "c": [{"x": 1}], "d": "s"})
    assert is_flat({})
    assert not is_flat({"a": 1, "b": {"c": 1}})
    assert not is_flat({"b": {}})

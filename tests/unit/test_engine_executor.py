"""The executor's pure parts: the pre-encoded delta push, and which patches the SQL fast path may merge."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.shadow import render_delta_push
from fleetops.engine.executor import delta_push_halves
from fleetops.store.task_execution import is_flat

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
    head, tail = delta_push_halves(state, now_ms)
    assert head + b"%d" % version + tail == orjson.dumps(render_delta_push(version, state, now_ms))


def test_a_push_is_the_documented_shape() -> None:
    head, tail = delta_push_halves({"power": "on"}, 1700000010456)
    assert orjson.loads(head + b"2" + tail) == {
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

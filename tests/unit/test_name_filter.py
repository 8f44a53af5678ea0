"""DeviceNameFilter: RE2 search semantics, the literal shortcuts, refusals and linear time."""

from __future__ import annotations

import time

import pytest
import re2
from hypothesis import given
from hypothesis import strategies as st

from fleetops.domain.limits import NAME_FILTER_MAX_LENGTH
from fleetops.domain.name_filter import NameFilter, compile_name_filter
from fleetops.errors import InvalidParameterValue

NAMES = ["door", "door1", "frontdoor", "backdoor2", "lamp-1", "lamp-10", "lamp-2", "Lamp-1", "gw:01", "a_b"]


def reference(pattern: str, names: list[str]) -> list[str]:
    """google-re2's public API, the slow but obviously right search."""
    regexp = re2.compile(pattern)
    return [name for name in names if regexp.search(name) is not None]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("", NAMES),
        ("door$", ["door", "frontdoor"]),
        ("^door", ["door", "door1"]),
        ("^door$", ["door"]),
        ("door", ["door", "door1", "frontdoor", "backdoor2"]),
        ("^lamp-1", ["lamp-1", "lamp-10"]),
        ("^lamp-[0-9]$", ["lamp-1", "lamp-2"]),
        ("(?i)^lamp-1$", ["lamp-1", "Lamp-1"]),
        ("door[0-9]$|^gw:", ["door1", "backdoor2", "gw:01"]),
        (r"\d{2}", ["lamp-10", "gw:01"]),
        ("_", ["a_b"]),
        ("^", NAMES),
        ("zzz", []),
    ],
)
def test_unanchored_search_semantics(pattern: str, expected: list[str]) -> None:
    name_filter = compile_name_filter(pattern)
    assert name_filter.filter(NAMES) == expected
    assert [name for name in NAMES if name_filter.matches(name)] == expected
    assert reference(pattern, NAMES) == expected


def test_filter_returns_a_new_list() -> None:
    names = ["a", "b"]
    result = compile_name_filter("").filter(names)
    assert result == names and result is not names


def test_non_ascii_names_go_through_utf8() -> None:
    # Names are ASCII by the API's rules, but a stray one must not be misjudged: "." is one code point.
    assert compile_name_filter("^.$").filter(["é", "ab", "x"]) == ["é", "x"]
    assert compile_name_filter("é$").filter(["café", "cafe"]) == ["café"]


patterns = st.sampled_from(
    [
        "a",
        "^a",
        "b$",
        "^ab$",
        "a-b",
        "^:",
        "_$",
        "a|b",
        "^(ab)+$",
        "[^a]",
        "a.b",
        "^.{2}$",
        r"\w-\d",
        "(a+)+$",
        "b*",
        "(?i)A",
        r"\bab",
        "^$",
    ]
)
names_strategy = st.lists(st.text(alphabet="ab:_-1", max_size=6), max_size=20)


@given(pattern=patterns, names=names_strategy)
def test_filter_agrees_with_re2_search(pattern: str, names: list[str]) -> None:
    name_filter = compile_name_filter(pattern)
    assert name_filter.filter(names) == reference(pattern, names)
    assert [name for name in names if name_filter.matches(name)] == reference(pattern, names)


@given(
    literal=st.text(alphabet="ab:_-1", min_size=1, max_size=3),
    anchors=st.sampled_from(["{}", "^{}", "{}$", "^{}$"]),
    names=names_strategy,
)
def test_literal_shortcuts_agree_with_re2_search(literal: str, anchors: str, names: list[str]) -> None:
    pattern = anchors.format(literal)
    assert compile_name_filter(pattern).filter(names) == reference(pattern, names)


def elapsed_s(name_filter: NameFilter, names: list[str]) -> float:
    start = time.perf_counter()
    name_filter.filter(names)
    return time.perf_counter() - start


@pytest.mark.parametrize("length", [30, 10_000])
def test_catastrophic_backtracking_pattern_is_linear(length: int) -> None:
    # Python's re needs more than 30 s for (a+)+$ on a 30-character name; RE2 needs microseconds. The bound
    # is a guard against a backtracking engine slipping in, not a benchmark.
    name_filter = compile_name_filter("(a+)+$")
    name = "a" * length + "!"
    assert not name_filter.matches(name)
    assert name_filter.matches("a" * length)
    assert elapsed_s(name_filter, [name] * 10) < 1.0


@pytest.mark.parametrize(
    ("pattern", "re2_error"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("(?=a)", "invalid perl operator: (?="),
        ("(?<=a)b", "invalid perl operator: (?<="),
        ("(?P<n>a)(?P=n)", "invalid perl operator: (?P"),
        ("[", "missing ]: ["),
        ("a{1001}", "invalid repetition size: {1001}"),
        (r"\pL{1000}", "pattern too large"),
    ],
)
def test_invalid_or_unsupported_patterns_are_refused(pattern: str, re2_error: str) -> None:
    with pytest.raises(InvalidParameterValue) as caught:
        compile_name_filter(pattern)
    assert type(caught.value) is InvalidParameterValue
    assert caught.value.code == "InvalidParameterValue"
    message = caught.value.message
    assert message.startswith(f"DeviceNameFilter {pattern!r} is not a valid RE2 regular expression")
    assert re2_error in message
    assert "RE2 syntax is required" in message


def test_a_valid_pattern_too_big_for_a_dfa_set_still_matches_correctly() -> None:
    # \pL{150}x compiles in RE2 but its DFA does not fit a Set in max_mem: the NFA fallback is used.
    pattern = r"\pL{150}x"
    names = ["é" * 150 + "x", "é" * 149 + "x", "a" * 200 + "x", "a" * 200]
    assert compile_name_filter(pattern).filter(names) == reference(pattern, names) == [names[0], names[2]]


def test_pattern_length_is_limited() -> None:
    assert compile_name_filter("a" * NAME_FILTER_MAX_LENGTH).matches("a" * NAME_FILTER_MAX_LENGTH)
    assert compile_name_filter("[a]" + "b" * (NAME_FILTER_MAX_LENGTH - 3)).pattern.startswith("[a]")
    with pytest.raises(InvalidParameterValue, match=f"1025 characters long; at most {NAME_FILTER_MAX_LENGTH}"):
        compile_name_filter("a" * (NAME_FILTER_MAX_LENGTH + 1))


def test_repr_names_the_pattern() -> None:
    assert repr(compile_name_filter("^lamp")) == "NameFilter('^lamp')"

"""``DeviceNameFilter`` of CreateTask: an RE2 regular expression searched (unanchored) in each device name.

The docs' examples ``door$`` and ``^door`` imply search semantics (docs/tasks.md#devicenamefilter); an empty
filter matches every device. RE2 guarantees time linear in the name length, so a filter such as ``(a+)+$``
cannot stall the engine the way a backtracking engine would (Python's ``re`` takes > 30 s on a 30-character
name). RE2 refuses backreferences and lookaround assertions; such filters are rejected with the RE2 error.

Speed: the engine filters up to a million names per task. A compiled pattern's ``search`` costs 1.6-2.6 us per
name (it decodes spans to ``str`` offsets); a one-pattern ``re2.Set`` answers only "does it match", with a
single DFA pass and no submatch extraction, at about 0.5-1 us per name. Filters that are a plain literal (the
common ``^lamp-``, ``door$``, ``sensor``) need no regex engine at all: ``str`` methods give the same answer for
any text, ten times faster. ``bench/name_filter.py`` prints the figures. Only google-re2's public API is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import compress
from typing import Any, Final, NamedTuple

import re2

from fleetops.domain.limits import NAME_FILTER_MAX_LENGTH, NAME_FILTER_MAX_MEM_BYTES
from fleetops.errors import InvalidParameterValue

# Characters that are never special in RE2 outside a character class, so a pattern made only of them is a
# literal. Device names use exactly this alphabet ([a-zA-Z0-9:_-]).
_LITERAL_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_-")


def _options() -> Any:  # re2 is untyped
    options = re2.Options()
    options.max_mem = NAME_FILTER_MAX_MEM_BYTES
    options.log_errors = False  # a bad filter is the client's error, reported in the response, not to stderr
    options.never_capture = True  # only "does it match" is asked: no submatch bookkeeping
    return options


def _invalid(pattern: str, reason: str) -> InvalidParameterValue:
    return InvalidParameterValue(
        f"DeviceNameFilter {pattern!r} is not a valid RE2 regular expression: {reason}. "
        "RE2 syntax is required (https://github.com/google/re2/wiki/Syntax); backreferences and "
        "lookaround assertions are not supported.",
        message_zh=f"DeviceNameFilter {pattern!r} 不是合法的 RE2 正则表达式：{reason}。"
        "须使用 RE2 语法（https://github.com/google/re2/wiki/Syntax），不支持反向引用和环视断言。",
    )


class _Literal(NamedTuple):
    text: str
    at_start: bool  # the pattern began with ^
    at_end: bool  # the pattern ended with $


def _as_literal(pattern: str) -> _Literal | None:
    """``pattern`` as a literal with optional ``^`` and ``$``, or None when it needs the regex engine."""
    at_start, at_end = pattern.startswith("^"), pattern.endswith("$")
    text = pattern[1 if at_start else 0 : len(pattern) - 1 if at_end else len(pattern)]
    if not text or not _LITERAL_CHARS.issuperset(text):
        return None
    return _Literal(text, at_start, at_end)


def _filter_literal(literal: _Literal, names: Sequence[str]) -> list[str]:
    # Without the (?m) flag RE2's ^ and $ match only at the ends of the text (unlike Python's $, which also
    # matches before a final newline), exactly like startswith and endswith. One comprehension per case keeps
    # the loop free of function calls.
    text = literal.text
    if literal.at_start and literal.at_end:
        return [name for name in names if name == text]
    if literal.at_start:
        return [name for name in names if name.startswith(text)]
    if literal.at_end:
        return [name for name in names if name.endswith(text)]
    return [name for name in names if text in name]


class NameFilter:
    """A compiled ``DeviceNameFilter``; build it with :func:`compile_name_filter`."""

    __slots__ = ("_literal", "_search", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._literal = _as_literal(pattern)
        self._search: Callable[[bytes], object] | None = None
        if pattern and self._literal is None:
            self._search = _compile_search(pattern)

    def matches(self, name: str) -> bool:
        return bool(self.filter((name,)))

    def filter(self, names: Sequence[str]) -> list[str]:
        """The matching names, in order. One call per page of names keeps the per-name cost minimal."""
        search = self._search
        if search is not None:
            # compress/map keep the loop in C: 10-30 % faster than a list comprehension here.
            return list(compress(names, map(search, map(str.encode, names))))
        if self._literal is not None:
            return _filter_literal(self._literal, names)
        return list(names)  # the empty filter matches every name

    def __repr__(self) -> str:
        return f"NameFilter({self.pattern!r})"


def _compile_search(pattern: str) -> Callable[[bytes], object]:
    """A function of the UTF-8 name that is truthy when the pattern is found in it."""
    encoded = pattern.encode()
    options = _options()
    # re2.Set does not say why a pattern fails, so a compiled pattern checks it first, for the message.
    try:
        regexp = re2.compile(encoded, options)
    except re2.error as exc:
        raise _invalid(pattern, _reason(exc)) from exc
    matcher = re2.Set.SearchSet(options)
    matcher.Add(encoded)
    try:
        matcher.Compile()
    except re2.error:
        # A Set runs only the DFA and never falls back to the NFA, so its Compile refuses a pattern whose DFA
        # does not fit in max_mem (say \pL{150}x). A compiled pattern's search falls back instead: slower,
        # always right.
        search: Callable[[bytes], object] = regexp.search
        return search
    # Set.Match returns the indices of the matching patterns, or None when none matches.
    set_match: Callable[[bytes], object] = matcher.Match
    return set_match


def _reason(exc: Exception) -> str:
    text = exc.args[0] if exc.args else str(exc)
    return text.decode(errors="replace") if isinstance(text, bytes) else str(text)


def compile_name_filter(pattern: str) -> NameFilter:
    """Compile a ``DeviceNameFilter``; raises InvalidParameterValue naming the parameter and the RE2 error."""
    if len(pattern) > NAME_FILTER_MAX_LENGTH:
        raise InvalidParameterValue(
            f"DeviceNameFilter is {len(pattern)} characters long; at most {NAME_FILTER_MAX_LENGTH} allowed.",
            message_zh=f"DeviceNameFilter 长度为 {len(pattern)} 个字符，最多允许 {NAME_FILTER_MAX_LENGTH} 个。",
        )
    return NameFilter(pattern)

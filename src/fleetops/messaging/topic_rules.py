"""The device ACL rule file (``device_acl.rules``): its parser and its matcher, pure functions.

The file is the one written copy of the device ACL. :mod:`fleetops.messaging.topics` answers the embedded
broker and the EMQX HTTP ACL from the parsed rules; ``fleetops mosquitto build`` turns the same parsed rules
into a C header for the Mosquitto plugin (:mod:`fleetops.mosquitto.build`). The format is described at the top
of the file itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, IntFlag
from importlib import resources

RULES_FILE = "device_acl.rules"

# Only these characters may appear in a literal level or a syntax class: the C generator writes them into
# string literals and bitmaps, so nothing here may need escaping.
_LITERAL = re.compile(r"[A-Za-z0-9$_:.-]+")
_SYNTAX = re.compile(r"\[(?P<chars>[A-Za-z0-9:_.-]+)\]\{(?P<min>[0-9]+)(?:,(?P<max>[0-9]+))?\}")
_PLACEHOLDER = re.compile(r"\{([a-z]+)\}")
_OWN_PRODUCT, _OWN_DEVICE, _ANY = "pid", "dn", "any"

_Fail = Callable[[str], "RuleFileError"]


class RuleFileError(ValueError):
    """The rule file is malformed; the message names the line."""


class Access(IntFlag):
    """What a device may do with a topic."""

    NONE = 0
    PUBLISH = 1
    SUBSCRIBE = 2
    BOTH = 3


_ACCESS_WORDS = {"publish": Access.PUBLISH, "subscribe": Access.SUBSCRIBE, "both": Access.BOTH}


class LevelKind(Enum):
    LITERAL = "literal"
    OWN_PRODUCT = "own product id"
    OWN_DEVICE = "own device name"
    SYNTAX = "syntax"
    ANY = "any non-empty level"
    PLUS = "+"
    HASH = "#"


@dataclass(frozen=True)
class Syntax:
    """``[characters]{min,max}``: the text a placeholder level may hold."""

    name: str
    characters: str  # the body of the class, ranges written ``a-z``
    min_length: int
    max_length: int
    pattern: re.Pattern[str] = field(repr=False, compare=False)

    def allowed(self) -> frozenset[str]:
        """Every character of the class (ranges expanded); all ASCII."""
        chars: set[str] = set()
        body, index = self.characters, 0
        while index < len(body):
            if index + 2 < len(body) and body[index + 1] == "-":
                chars.update(chr(code) for code in range(ord(body[index]), ord(body[index + 2]) + 1))
                index += 3
            else:
                chars.add(body[index])
                index += 1
        return frozenset(chars)


@dataclass(frozen=True)
class Level:
    kind: LevelKind
    text: str = ""  # the literal, or the syntax name


@dataclass(frozen=True)
class Rule:
    access: Access
    levels: tuple[Level, ...]
    shape: str
    line: int

    @property
    def is_wildcard(self) -> bool:
        return any(level.kind in (LevelKind.PLUS, LevelKind.HASH) for level in self.levels)


# A rule compiled for matching: (level index, check, argument) triples, cheapest and most selective first.
_EQUALS, _OWN_PID, _OWN_DN, _PATTERN, _NON_EMPTY = range(5)
_Check = tuple[int, int, object]
_Compiled = tuple[tuple[_Check, ...], Access]


@dataclass(frozen=True)
class RuleSet:
    syntaxes: dict[str, Syntax]
    topic_max_bytes: int
    topic_max_levels: int
    rules: tuple[Rule, ...]
    # concrete-topic rules by (level count, literal first level), and by level count alone for a topic whose
    # first level no rule spells; wildcard rules by level count. Each list keeps the file order.
    _by_head: dict[tuple[int, str], tuple[_Compiled, ...]] = field(repr=False, compare=False)
    _by_count: dict[int, tuple[_Compiled, ...]] = field(repr=False, compare=False)
    _wildcards: dict[int, tuple[_Compiled, ...]] = field(repr=False, compare=False)

    @property
    def product_id(self) -> Syntax:
        return self.syntaxes[_OWN_PRODUCT]

    @property
    def device_name(self) -> Syntax:
        return self.syntaxes[_OWN_DEVICE]

    def within_limits(self, topic: str) -> bool:
        return len(topic.encode("utf-8")) <= self.topic_max_bytes and topic.count("/") < self.topic_max_levels

    def topic_access(self, product_id: str, device_name: str, topic: str) -> Access:
        """The access of the first rule matching the concrete topic ``topic`` (wildcard rules never do)."""
        levels = topic.split("/")
        count = len(levels)
        candidates = self._by_head.get((count, levels[0]))
        if candidates is None:
            candidates = self._by_count.get(count, ())
        for checks, access in candidates:
            if _passes(checks, levels, product_id, device_name):
                return access
        return Access.NONE

    def filter_granted(self, product_id: str, device_name: str, topic_filter: str) -> bool:
        """Whether a subscribe rule spells the wildcard filter ``topic_filter`` exactly."""
        levels = topic_filter.split("/")
        return any(
            _passes(checks, levels, product_id, device_name) for checks, _ in self._wildcards.get(len(levels), ())
        )


def _passes(checks: tuple[_Check, ...], levels: list[str], product_id: str, device_name: str) -> bool:
    for position, check, argument in checks:
        text = levels[position]
        if check == _EQUALS:
            if text != argument:
                return False
        elif check == _OWN_PID:
            if text != product_id:
                return False
        elif check == _OWN_DN:
            if text != device_name:
                return False
        elif check == _PATTERN:
            if argument(text) is None:  # type: ignore[operator]
                return False
        elif not text or text == "+" or text == "#":  # _NON_EMPTY: {any}, never a wildcard
            return False
    return True


def _compile(rule: Rule, syntaxes: dict[str, Syntax]) -> _Compiled:
    """The rule's checks; a wildcard level is an equality with the wildcard itself (filters only)."""
    checks: list[tuple[int, _Check]] = []  # (cost rank, check)
    for position, level in enumerate(rule.levels):
        if level.kind is LevelKind.LITERAL:
            checks.append((0, (position, _EQUALS, level.text)))
        elif level.kind in (LevelKind.PLUS, LevelKind.HASH):
            checks.append((0, (position, _EQUALS, level.kind.value)))
        elif level.kind is LevelKind.OWN_PRODUCT:
            checks.append((1, (position, _OWN_PID, None)))
        elif level.kind is LevelKind.OWN_DEVICE:
            checks.append((1, (position, _OWN_DN, None)))
        elif level.kind is LevelKind.SYNTAX:
            checks.append((2, (position, _PATTERN, syntaxes[level.text].pattern.fullmatch)))
        else:
            checks.append((2, (position, _NON_EMPTY, None)))
    checks.sort(key=lambda ranked: ranked[0])  # stable: level order within a rank
    return tuple(check for _, check in checks), rule.access


def _index(
    rules: list[Rule], syntaxes: dict[str, Syntax]
) -> tuple[
    dict[tuple[int, str], tuple[_Compiled, ...]], dict[int, tuple[_Compiled, ...]], dict[int, tuple[_Compiled, ...]]
]:
    """The lookup tables of :class:`RuleSet`. A topic whose first level is the literal first level of some rule
    can match those rules and the rules whose first level is not a literal; merged in file order, so the first
    match still wins."""
    by_head: dict[tuple[int, str], tuple[_Compiled, ...]] = {}
    by_count: dict[int, tuple[_Compiled, ...]] = {}
    wildcards: dict[int, tuple[_Compiled, ...]] = {}
    for count in {len(rule.levels) for rule in rules}:
        same = [rule for rule in rules if len(rule.levels) == count]
        concrete = [rule for rule in same if not rule.is_wildcard]
        wildcards[count] = tuple(_compile(rule, syntaxes) for rule in same if rule.is_wildcard)
        by_count[count] = tuple(
            _compile(rule, syntaxes) for rule in concrete if rule.levels[0].kind is not LevelKind.LITERAL
        )
        for head in {rule.levels[0].text for rule in concrete if rule.levels[0].kind is LevelKind.LITERAL}:
            by_head[(count, head)] = tuple(
                _compile(rule, syntaxes)
                for rule in concrete
                if rule.levels[0].kind is not LevelKind.LITERAL or rule.levels[0].text == head
            )
    return by_head, by_count, wildcards


def parse_rules(text: str, source: str = RULES_FILE) -> RuleSet:
    """Parse a rule file; :class:`RuleFileError` names the first bad line."""
    syntaxes: dict[str, Syntax] = {}
    limits: dict[str, int] = {}
    rules: list[Rule] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):  # only whole-line comments: "#" is also a filter level
            continue
        words = line.split()

        def fail(message: str, number: int = number) -> RuleFileError:
            return RuleFileError(f"{source}:{number}: {message}")

        head = words[0]
        if head == "syntax":
            if len(words) != 3:
                raise fail("expected: syntax <name> [<characters>]{<min>,<max>}")
            syntaxes[words[1]] = _parse_syntax(words[1], words[2], fail)
        elif head == "limit":
            if len(words) != 3 or words[1] not in ("topic-bytes", "topic-levels") or not words[2].isdigit():
                raise fail("expected: limit topic-bytes <n> | limit topic-levels <n>")
            limits[words[1]] = int(words[2])
        elif head in _ACCESS_WORDS:
            if len(words) != 2:
                raise fail("expected: <publish|subscribe|both> <topic shape>")
            rules.append(_parse_rule(_ACCESS_WORDS[head], words[1], number, syntaxes, fail))
        else:
            raise fail(f"unknown line {head!r}: expected syntax, limit, publish, subscribe or both")
    for name in (_OWN_PRODUCT, _OWN_DEVICE):
        if name not in syntaxes:
            raise RuleFileError(f"{source}: no 'syntax {name}' line (the client id needs it)")
    if syntaxes[_OWN_PRODUCT].min_length != syntaxes[_OWN_PRODUCT].max_length:
        raise RuleFileError(f"{source}: 'syntax pid' must have a fixed length (the client id is split after it)")
    for name in ("topic-bytes", "topic-levels"):
        if name not in limits:
            raise RuleFileError(f"{source}: no 'limit {name}' line")
    by_head, by_count, wildcards = _index(rules, syntaxes)
    return RuleSet(
        syntaxes=syntaxes,
        topic_max_bytes=limits["topic-bytes"],
        topic_max_levels=limits["topic-levels"],
        rules=tuple(rules),
        _by_head=by_head,
        _by_count=by_count,
        _wildcards=wildcards,
    )


def _parse_syntax(name: str, text: str, fail: _Fail) -> Syntax:
    if not re.fullmatch(r"[a-z]+", name) or name == _ANY:
        raise fail(f"bad syntax name {name!r}: lower-case letters, not 'any'")
    found = _SYNTAX.fullmatch(text)
    if found is None:
        raise fail(f"bad syntax {text!r}: expected [<characters>]{{<min>,<max>}}")
    low = int(found["min"])
    high = int(found["max"]) if found["max"] is not None else low
    if not 1 <= low <= high <= 65535:
        raise fail(f"bad length range {{{low},{high}}}: need 1 <= min <= max")
    return Syntax(name, found["chars"], low, high, re.compile(f"[{found['chars']}]{{{low},{high}}}"))


def _parse_rule(access: Access, shape: str, number: int, syntaxes: dict[str, Syntax], fail: _Fail) -> Rule:
    texts = shape.split("/")
    levels: list[Level] = []
    for position, text in enumerate(texts):
        placeholder = _PLACEHOLDER.fullmatch(text)
        if placeholder is not None:
            name = placeholder[1]
            if name == _OWN_PRODUCT:
                levels.append(Level(LevelKind.OWN_PRODUCT))
            elif name == _OWN_DEVICE:
                levels.append(Level(LevelKind.OWN_DEVICE))
            elif name == _ANY:
                levels.append(Level(LevelKind.ANY))
            elif name in syntaxes:
                levels.append(Level(LevelKind.SYNTAX, name))
            else:
                raise fail(f"unknown placeholder {text!r} (define it with a syntax line first)")
        elif text in ("+", "#"):
            if access is not Access.SUBSCRIBE:
                raise fail(f"a {text!r} level is only allowed in a subscribe rule")
            if text == "#" and position != len(texts) - 1:
                raise fail("'#' must be the last level")
            levels.append(Level(LevelKind.PLUS if text == "+" else LevelKind.HASH))
        elif _LITERAL.fullmatch(text):
            levels.append(Level(LevelKind.LITERAL, text))
        else:
            raise fail(f"bad level {text!r}: a literal is [A-Za-z0-9$_:.-]+")
    kinds = {level.kind for level in levels}
    if LevelKind.OWN_PRODUCT not in kinds or LevelKind.OWN_DEVICE not in kinds:
        # Every rule must pin the device, or a device could reach another device's topics.
        raise fail("a rule must contain both {pid} and {dn}")
    return Rule(access, tuple(levels), shape, number)


def load_rules() -> RuleSet:
    """The rules shipped with fleetops."""
    text = resources.files("fleetops.messaging").joinpath(RULES_FILE).read_text(encoding="utf-8")
    return parse_rules(text)

"""Every reference to the project's docs resolves inside the repository (the repository stands alone).

Code and tests point at ``docs/<page>.md`` or ``docs/<page>.md#<anchor>``; the pages link each other with
``[text](page.md#anchor)``. Each page must exist and each anchor must be one of the page's headings (GitHub's
anchor rules: lower case, punctuation dropped, spaces to hyphens). Nothing may point outside the repository at
the notes the project was built from.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SOURCES = [
    p
    for d in ("src", "tests", "bench", "fuzz")
    for p in (ROOT / d).rglob("*")
    if p.suffix in {".py", ".c", ".h", ".js", ".rules"}
]
CODE_REFERENCE = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")
PAGE_LINK = re.compile(r"\]\(([\w.-]+\.md)?(?:#([\w-]+))?\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^(```|~~~)")


def github_anchor(heading: str) -> str:
    text = re.sub(r"`|\*\*?|_(?=\w)|(?<=\w)_", "", heading).strip().lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: str) -> frozenset[str]:
    found: set[str] = set()
    counts: dict[str, int] = {}
    in_fence = False
    for line in (DOCS / page).read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            anchor = github_anchor(match.group(1))
            n = counts.get(anchor, 0)
            counts[anchor] = n + 1
            found.add(anchor if n == 0 else f"{anchor}-{n}")
    return frozenset(found)


def _problems(where: str, page: str, anchor: str | None) -> list[str]:
    if not (DOCS / page).is_file():
        return [f"{where}: docs/{page} does not exist"]
    if anchor and anchor not in anchors(page):
        return [f"{where}: docs/{page}#{anchor} is not a heading of that page"]
    return []


def test_github_anchor_rules() -> None:
    assert (
        github_anchor("Choices where the vendor is silent (UNSETTLED)")
        == "choices-where-the-vendor-is-silent-unsettled"
    )
    assert github_anchor("The vendor's rules") == "the-vendors-rules"
    assert github_anchor("`DeviceNameFilter`") == "devicenamefilter"
    assert github_anchor("DescribeTask, DescribeTasks, CancelTask") == "describetask-describetasks-canceltask"


def test_code_references_resolve() -> None:
    problems: list[str] = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), 1):
            for page, anchor in CODE_REFERENCE.findall(line):
                problems += _problems(f"{path.relative_to(ROOT)}:{number}", page, anchor or None)
    assert problems == []


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_page_links_resolve(page: str) -> None:
    problems: list[str] = []
    in_fence = False
    for number, line in enumerate((DOCS / page).read_text(encoding="utf-8").splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
        if in_fence:
            continue
        for target, anchor in PAGE_LINK.findall(line):
            problems += _problems(f"docs/{page}:{number}", target or page, anchor or None)
    assert problems == []


def test_nothing_points_outside_the_repository() -> None:
    outside = re.compile("|".join([r"\.\./" + "shared", "shared/" + "spec", "/" + "work/"]))
    offenders = [
        str(path.relative_to(ROOT))
        for path in [*SOURCES, *DOCS.glob("*.md"), ROOT / "README.md"]
        if outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []

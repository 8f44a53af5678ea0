"""Every error message an API client can see exists in both languages.

The official SDK asks for zh-CN unless told otherwise; a reply that mixes Chinese common errors with English
business errors is what a newcomer saw. Two checks keep that from coming back: every error class has its own
Chinese default, and every place in the API's layers (api/, backend/, domain/) that builds an error with a
specific message gives its Chinese wording too. The end-to-end check through the SDK's default profile is
tests/e2e/test_error_language.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fleetops
from fleetops import errors

CJK = re.compile(r"[\u4e00-\u9fff]")
SOURCE = Path(fleetops.__file__).parent
# What an API response can carry. messaging/ answers devices over MQTT, where the protocol has no language.
API_LAYERS = ("api", "backend", "domain")


def _api_error_classes() -> dict[str, type[errors.ApiError]]:
    return {
        name: value
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.ApiError)
    }


def _concrete_classes() -> list[type[errors.ApiError]]:
    """Every error class a response can carry (ApiError itself is only the base)."""
    return sorted((c for c in _api_error_classes().values() if c is not errors.ApiError), key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", _concrete_classes(), ids=lambda c: c.__name__)
def test_every_error_class_has_its_own_chinese_default(cls: type[errors.ApiError]) -> None:
    own = cls.__dict__.get("message_zh")
    assert own and CJK.search(own), f"{cls.__name__} has no Chinese default message of its own"


def _constructions(path: Path) -> list[tuple[int, str, bool, bool]]:
    """(line, class, gives a specific message, gives message_zh) for every ApiError built in ``path``."""
    classes = _api_error_classes()
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name not in classes:
            continue
        keywords = {k.arg for k in node.keywords}
        found.append((node.lineno, name, bool(node.args) or "message" in keywords, "message_zh" in keywords))
    return found


def _api_sources() -> list[Path]:
    return sorted(p for layer in API_LAYERS for p in (SOURCE / layer).rglob("*.py"))


def test_the_walk_finds_the_raise_sites() -> None:
    # the check below is only as good as its walk: it must see the known sites
    sites = [site for path in _api_sources() for site in _constructions(path)]
    assert len(sites) > 80
    assert any(name == "TaskNotExist" for _, name, _, _ in sites)


@pytest.mark.parametrize("path", _api_sources(), ids=lambda p: str(p.relative_to(SOURCE)))
def test_every_specific_message_is_given_in_chinese_too(path: Path) -> None:
    missing = [f"{path.name}:{line} {name}" for line, name, specific, zh in _constructions(path) if specific and not zh]
    assert not missing, f"errors raised with an English-only message: {missing}"


def test_a_specific_message_without_chinese_falls_back_to_the_class_default() -> None:
    error = errors.TaskNotExist("The task `x` does not exist.")
    assert error.localized("zh-CN") == errors.TaskNotExist.message_zh
    assert error.localized("en-US") == "The task `x` does not exist."
    given = errors.TaskNotExist("The task `x` does not exist.", message_zh="任务 `x` 不存在。")
    assert given.localized("zh-CN") == "任务 `x` 不存在。"
    assert errors.TaskNotExist().localized("zh-CN") == "任务不存在。"

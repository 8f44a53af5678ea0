"""Fixtures of the console's browser tests: a live fleetops node and a real headless Chromium.

Chromium is Debian's (``apt-get install -y chromium``; ``.ci/run`` installs it), driven by Playwright, whose
Python wheel carries its own driver: ``playwright install`` (a browser download) is never needed. Every test
gets a fresh browser with a new, empty profile, so no state (sessionStorage, clock) leaks between tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import IN_CI, LiveServer, server_on

CHROMIUM = Path("/usr/bin/chromium")
# The machine has no internet and Chromium's background connections would only be refused: turn them off.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One live node (SQLite) for the tests of a module; each test makes its own product."""
    with server_on("sqlite", tmp_path_factory.mktemp("console-server")) as server:
        yield server


@pytest.fixture
def browser_context(tmp_path: Path) -> Iterator[Any]:
    """A Playwright BrowserContext of a new headless Chromium on an empty user data directory."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 860},
            timezone_id="UTC",
        )
        try:
            yield context
        finally:
            context.close()


def save_artifact(path: Path) -> None:
    """Print where a screenshot is, and copy it to $FLEETOPS_ARTIFACTS_DIR when that is set."""
    print(f"screenshot: {path}")
    target = os.environ.get("FLEETOPS_ARTIFACTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
        print(f"screenshot copied to {Path(target) / path.name}")

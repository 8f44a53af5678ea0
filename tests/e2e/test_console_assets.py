"""How fleetops serves the console: the redirect, cache headers, the CSP, and that every asset ships."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import requests

from fleetops.console import CONTENT_SECURITY_POLICY, STATIC_DIR
from tests.support import LiveServer

ROOT = Path(__file__).resolve().parents[2]


class _Scripts(HTMLParser):
    """The script, stylesheet and inline-handler facts of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self.inline_styles += tag == "style" or "style" in named
        if tag == "script":
            self._in_script = True
            if named.get("src"):
                self.srcs.append(str(named["src"]))
        if tag == "link" and named.get("rel") == "stylesheet":
            self.srcs.append(str(named["href"]))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def test_console_redirects_and_serves_the_page_with_a_strict_csp(console_server: LiveServer) -> None:
    redirect = requests.get(f"{console_server.url}console", allow_redirects=False, timeout=10)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == "console/"
    page = requests.get(f"{console_server.url}console", timeout=10)  # follows the redirect
    assert page.url == f"{console_server.url}console/"
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["cache-control"] == "no-cache"
    csp = page.headers["content-security-policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "unsafe" not in csp and "script-src 'self'" in csp and "default-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    parsed = _Scripts()
    parsed.feed(page.text)
    assert (parsed.inline_scripts, parsed.inline_styles, parsed.handlers) == (0, 0, [])
    assert len(parsed.srcs) == 2 and all(
        re.fullmatch(r"assets/[0-9a-f]{16}/(app\.js|style\.css)", s) for s in parsed.srcs
    )


def test_assets_are_immutable_under_their_digest(console_server: LiveServer) -> None:
    page = requests.get(f"{console_server.url}console/", timeout=10)
    prefix = re.search(r'src="(assets/[0-9a-f]{16})/app\.js"', page.text)
    assert prefix is not None
    base = f"{console_server.url}console/{prefix.group(1)}"
    for name, content_type in [
        ("app.js", "text/javascript"),
        ("signer.js", "text/javascript"),
        ("vendor/preact-htm.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        asset = requests.get(f"{base}/{name}", timeout=10)
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(content_type)
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert asset.content == (STATIC_DIR / name).read_bytes()
        again = requests.get(f"{base}/{name}", headers={"if-none-match": asset.headers["etag"]}, timeout=10)
        assert again.status_code == 304
    # another digest (an older release), a missing file, a way out of the directory: not found
    for path in [
        "console/assets/0000000000000000/app.js",
        f"{prefix.group(1)}/nope.js",
        f"{prefix.group(1)}/../__init__.py",
    ]:
        url = path if path.startswith("console/") else f"console/{path}"
        assert requests.get(f"{console_server.url}{url}", timeout=10).status_code == 404, path
    assert requests.post(f"{base}/app.js", timeout=10).status_code == 405


def test_every_asset_is_package_data() -> None:
    """pyproject's package-data globs cover every file the console serves, so a wheel ships them all."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fleetops"]
    package = ROOT / "src" / "fleetops"
    files = [p.relative_to(package).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert "console/static/index.html" in files and "console/static/vendor/preact-htm.js" in files
    missing = [f for f in files if not any(_glob_match(f, pattern) for pattern in patterns)]
    assert missing == []


def _glob_match(path: str, pattern: str) -> bool:
    """setuptools' glob rule: ``*`` stays within one directory level."""
    parts, pattern_parts = path.split("/"), pattern.split("/")
    return len(parts) == len(pattern_parts) and all(map(fnmatch.fnmatchcase, parts, pattern_parts))

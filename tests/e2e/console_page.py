"""Driving the console in Chromium the way an operator does: by labels, roles and visible text."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tests.support import LiveServer

# the browser contexts run in UTC (conftest.py), so a datetime-local value is a UTC time
LOCAL_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class Console:
    """One browser tab on the console of ``server``; page errors, console errors and requested URLs are kept."""

    def __init__(self, context: Any, server: LiveServer) -> None:
        self.server = server
        self.page = context.new_page()
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", lambda msg: self.errors.append(msg.text) if msg.type == "error" else None)
        self.page.on("request", lambda request: self.urls.append(request.url))

    def open(self, fragment: str = "") -> Any:
        self.page.goto(f"{self.server.url}console/{fragment}")
        return self.page

    def sign_in(self, secret_id: str | None = None, secret_key: str | None = None) -> Any:
        page = self.page
        page.get_by_label("SecretId").fill(secret_id or self.server.secret_id)
        page.get_by_label("SecretKey").fill(secret_key or self.server.secret_key)
        page.get_by_role("button", name="Sign in").click()
        return page

    def signed_in(self, fragment: str = "") -> Any:
        """Open the console, sign in with the server's key and wait for the products page, then go to ``fragment``."""
        page = self.open()
        self.sign_in()
        page.get_by_role("heading", name="Products").wait_for()
        if fragment:
            page.evaluate("fragment => { location.hash = fragment }", fragment)
        return page

    def task_row(self, task_id: str) -> Any:
        return self.page.locator(f'tr[data-task-id="{task_id}"]')

    def fill_new_task(
        self,
        product_id: str,
        name_filter: str,
        *,
        desired: str | None = None,
        topic_payload: tuple[str, str] | None = None,
        start_at_s: float | None = None,
    ) -> None:
        page = self.page
        page.get_by_label("Product").select_option(product_id)
        page.get_by_label("Device name filter").fill(name_filter)
        if topic_payload is not None:
            page.get_by_label("PublishMessage").check()
            page.get_by_label("Topic").fill(topic_payload[0])
            page.get_by_label("Payload").fill(topic_payload[1])
        if desired is not None:
            page.get_by_label("Desired (JSON object)").fill(desired)
        if start_at_s is not None:
            page.get_by_label("at", exact=True).check()
            start = datetime.fromtimestamp(int(start_at_s), UTC).strftime(LOCAL_TIME_FORMAT)
            page.get_by_label("Start time (local)").fill(start)

    def assert_unlabelled_controls(self) -> None:
        """Every form control on the page has a label (or an aria-label) for assistive technology."""
        unlabelled = self.page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                .filter(e => (e.labels ? e.labels.length === 0 : true) && !e.getAttribute('aria-label')
                             && !(e.tagName === 'BUTTON' && e.textContent.trim()))
                .map(e => e.outerHTML)"""
        )
        assert unlabelled == []

    def assert_fits_width(self) -> None:
        """Nothing makes the page scroll sideways (wide tables scroll inside their own box)."""
        widths = self.page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], widths

    def assert_no_errors(self, allowed: Sequence[str] = ()) -> None:
        """No script error, no CSP violation; ``allowed``: substrings of errors the test caused on purpose."""
        unexpected = [e for e in self.errors if not any(a in e for a in allowed)]
        assert unexpected == [], unexpected

    def assert_same_origin_only(self) -> None:
        """Everything the page loaded or called came from the fleetops server: no CDN, works offline."""
        foreign = [u for u in self.urls if not u.startswith(self.server.url) and not u.startswith("data:")]
        assert foreign == []

"""End to end in headless Chromium: an application closes a session with unflushed
changes; the finding reaches the app's findings page live, with the code that closed
the session and the fix; a user acknowledges it (htmx POST with the CSRF header) and
sees the status change; when the app does it again, the group reopens on its own."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import USERNAME
from .test_session_page import _log_in

pytestmark = pytest.mark.browser

SHOT = "/work/shots/findings.png"
CLOSE_LOCATION = re.compile(r"tests/e2e/session_app\.py:\d+ in discard_changes")


def test_a_lost_change_is_advised_acknowledged_and_reopened(page: Page, dashboard, start_app,
                                                            tmp_path):
    app = start_app(script="session_app.py", db=f"sqlite:///{tmp_path / 'lost.sqlite3'}",
                    app_name="e2e-app")
    app.send("changes")
    app.send("discard")

    _log_in(page, dashboard.url)
    link = page.locator("a.findings-link").first
    expect(link).to_contain_text("error", timeout=15_000)  # the overview counts it, live
    link.click()
    expect(page.get_by_role("heading", name="Findings of e2e-app")).to_be_visible()

    group = page.locator('article.advice[data-rule="lost-changes-on-close"]', has=page.locator(
        "code", has_text=CLOSE_LOCATION))
    expect(group).to_have_count(1, timeout=15_000)
    expect(group.locator("h3")).to_have_text("A session was closed with unflushed changes")
    expect(group.locator("[data-status-badge]")).to_have_text("open")
    expect(group.locator(".advice-message")).to_contain_text(
        "was closed with unflushed changes (2 new, 2 modified, 1 deleted)")
    expect(group.locator('[data-evidence="objects"] li')).to_have_count(5)
    expect(group.locator(".fix pre")).to_contain_text("session.commit()")
    expect(group.locator("a.rule-link")).to_have_attribute("href", "/rules/lost-changes-on-close/")

    group.locator("button.acknowledge").click()
    expect(group.locator("[data-status-badge]")).to_have_text("acknowledged")
    expect(group.locator(".advice-note")).to_contain_text(f"Acknowledged by {USERNAME} at")
    expect(group.locator("button.acknowledge")).to_have_count(0)
    page.wait_for_timeout(500)  # let the live re-render settle before the picture
    expect(page.locator("p.findings-counts")).to_contain_text("acknowledged")
    page.screenshot(path=SHOT, full_page=True)

    # it happens again: the page shows it open again, by itself
    app.send("changes")
    app.send("discard")
    expect(group.locator("[data-status-badge]")).to_have_text("open", timeout=15_000)
    expect(group.locator(".advice-note.reopened")).to_contain_text(
        f"it occurred again after {USERNAME} acknowledged it")
    expect(group.locator(".advice-count")).to_have_text("×2")
    page.screenshot(path=str(tmp_path / "findings-reopened.png"), full_page=True)

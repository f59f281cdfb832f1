"""End to end in headless Chromium: a real daphne, a real instrumented app in another
process, the engine page following the app's checked-out count live — and surviving a
restart of the dashboard."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import PASSWORD, USERNAME

pytestmark = pytest.mark.browser

HOLD_LOCATION = re.compile(r"tests/e2e/holder_app\.py:\d+ in hold_connections")


def _log_in(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Applications")).to_be_visible()


def _checked_out_in_status(status: str) -> str:
    return re.search(r"Checked out connections: (\d+)", status).group(1)


def test_engine_page_follows_the_pool_live(page: Page, dashboard, start_app, tmp_path):
    app = start_app()
    _log_in(page, dashboard.url)
    page.get_by_role("link", name="sqlite/app0.sqlite3").click()
    gauge = page.locator('[data-gauge="checked_out"]')
    expect(gauge).to_have_text("0")

    status = app.send("hold 3")
    expect(gauge).to_have_text("3")
    expect(page.locator("[data-status]")).to_have_text(status)
    rows = page.locator("#pool-holders tbody tr")
    expect(rows).to_have_count(3)
    expect(rows.first).to_contain_text("MainThread")
    expect(rows.first.locator("code").first).to_have_text(HOLD_LOCATION)

    status = app.send("release 2")
    assert _checked_out_in_status(status) == "1"
    expect(gauge).to_have_text("1")
    expect(rows).to_have_count(1)
    page.screenshot(path=str(tmp_path / "engine-page.png"), full_page=True)

    # the dashboard goes away: the app keeps working, then the dashboard comes back
    dashboard.stop()
    assert "elapsed=" in app.send("work 2000")
    app.send("hold 2")
    dashboard.start()
    # the agent reconnects by itself; htmx's socket too: the page is live again
    expect(gauge).to_have_text("3", timeout=30_000)
    app.send("release 3")
    expect(gauge).to_have_text("0", timeout=10_000)

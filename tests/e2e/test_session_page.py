"""End to end in headless Chromium: an application's ORM session with unflushed changes
shown exactly on its session page — on SQLite and PostgreSQL — while the database gets
no statement from the agent; and a session idle in a transaction standing out on the
sessions page with the code that opened it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests import services

from .conftest import PASSWORD, USERNAME

pytestmark = pytest.mark.browser

IDLE_LOCATION = re.compile(r"tests/e2e/session_app\.py:\d+ in open_idle_transaction")


def _log_in(page: Page, base: str) -> None:
    page.goto(base + "/")
    page.fill("#id_username", USERNAME)
    page.fill("#id_password", PASSWORD)
    page.click("button[type=submit]")
    expect(page.get_by_role("heading", name="Applications")).to_be_visible()


def _answer(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split())


def _diff_row(page: Page, op: str, cls: str, identity: str, attribute: str):
    change = page.locator(f'#changes .change.{op}[data-class="{cls}"]'
                          f'[data-identity="{identity}"]')
    return change.locator(f'tr[data-attribute="{attribute}"]')


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_session_page_shows_the_pending_changes(page: Page, dashboard, start_app, tmp_path,
                                                kind):
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    else:
        services.require("postgresql")
        url = services.POSTGRES_URL
    app = start_app(script="session_app.py", db=url, app_name="e2e-app")
    answer = _answer(app.send("changes"))
    statements, sid, pid = int(answer["statements"]), answer["session"], answer["pid"]

    _log_in(page, dashboard.url)
    page.locator("a.sessions-link").first.click()
    # every app process numbers its sessions from s1: pick this process's row
    row = page.locator(f'#sessions-table tr[data-session="{sid}"]', has_text=f":{pid}")
    expect(row).to_be_visible(timeout=15_000)
    expect(row.locator("td").nth(7)).to_have_text("2 / 2 / 1")  # new / dirty / deleted
    row.locator("a.session-link").click()

    # exactly the scenario's changes, old → new
    changes = page.locator("#changes .change")
    expect(changes).to_have_count(5, timeout=15_000)
    name = _diff_row(page, "update", "Customer", "1", "name")
    expect(name.locator("td.old")).to_have_text("'Ann'")
    expect(name.locator("td.new")).to_have_text("'Annie'")
    email = _diff_row(page, "update", "Customer", "1", "email")
    expect(email.locator("td.old")).to_have_text("'ann@example.com'")
    expect(email.locator("td.new")).to_have_text("'annie@example.com'")
    orders = _diff_row(page, "update", "Customer", "1", "orders")
    expect(orders.locator("td.old")).to_have_text("− Order#1")
    expect(orders.locator("td.new")).to_have_text("+ Order (new)")
    expect(_diff_row(page, "update", "Order", "1", "customer").locator("td.old")).to_have_text(
        "Customer#1")
    expect(_diff_row(page, "insert", "Customer", "", "name")).to_contain_text("'Dana'")
    # secrets never leave the application
    expect(_diff_row(page, "insert", "Customer", "", "password_hash")).to_contain_text("••••••")
    expect(page.locator("body")).not_to_contain_text("h-dana")
    expect(_diff_row(page, "insert", "Order", "", "total")).to_contain_text("5.00")
    expect(page.locator('#changes .change.delete[data-class="Customer"][data-identity="2"]')
           ).to_have_count(1)
    entities = page.locator("#entities-table tr.entity")
    expect(entities).to_have_count(6)
    expect(page.locator('#entities-table tr.entity.modified')).to_have_count(2)
    page.screenshot(path=str(tmp_path / f"session-page-{kind}.png"), full_page=True)

    # the page has asked the agent for a snapshot about every second all along: the
    # database received nothing from the agent
    page.wait_for_timeout(2500)
    assert int(_answer(app.send("statements"))["statements"]) == statements

    # the application commits: the page follows, and nothing is pending any more
    app.send("commit")
    expect(page.locator("#session-summary")).to_contain_text("closed", timeout=15_000)


def test_idle_in_transaction_stands_out_with_its_code(page: Page, dashboard, start_app,
                                                       tmp_path):
    app = start_app(script="session_app.py", db=f"sqlite:///{tmp_path / 'idle.sqlite3'}",
                    app_name="e2e-app")
    app.send("idle")
    _log_in(page, dashboard.url)
    page.locator("a.sessions-link").first.click()
    # after IDLE_IN_TRANSACTION_SECONDS (5 s) without activity
    badge = page.locator("#sessions-table tr.session .badge.idle-in-transaction")
    expect(badge).to_have_count(1, timeout=20_000)
    idle_row = page.locator("#sessions-table tr.session",
                            has=page.locator(".badge.idle-in-transaction"))
    expect(idle_row.locator("td.location code").first).to_have_text(IDLE_LOCATION)
    page.screenshot(path=str(tmp_path / "sessions-idle.png"), full_page=True)
    idle_row.locator("a.session-link").click()
    expect(page.locator("#session-summary")).to_contain_text("idle in transaction")
    expect(page.locator("#session-summary code").first).to_have_text(IDLE_LOCATION)

"""End to end in headless Chromium, a real daphne and a real instrumented application
(tests/e2e/controls_app.py): an operator starts a recording on the app's traces page,
watches it receive lines live, stops it, sees it complete, and opens its timeline: a
lane for the app's thread and one for its connection, the flush and its statements as
spans, a click on a statement span leading to its row, and the flush's change
(name 'Ann' → 'Zed') in the table."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from .conftest import USERNAME
from .test_session_page import _answer, _log_in

pytestmark = pytest.mark.browser

SHOT = "/work/shots/trace-timeline-e2e.png"


def test_record_stop_and_open_the_timeline(page: Page, dashboard, start_app, tmp_path):
    dashboard.manage("operator", USERNAME)
    app = start_app(script="controls_app.py", db=str(tmp_path / "timeline.sqlite3"))
    pid = _answer(app.send("query"))["pid"]

    _log_in(page, dashboard.url)
    page.locator("a.traces-link").first.click()
    expect(page.get_by_role("heading", name="Traces of e2e-app")).to_be_visible()
    # the process field shows only for the scopes that use it
    expect(page.locator("#record-form label.for-process")).to_be_hidden()
    page.select_option("#record-form select[name=scope]", "process")
    expect(page.locator("#record-form label.for-process")).to_be_visible()
    choice = page.locator("#record-form select[name=process] option", has_text=f":{pid}")
    page.select_option("#record-form select[name=process]", choice.get_attribute("value"))
    page.fill("#record-form input[name=name]", "rename-flow")
    page.click("#record-form button[type=submit]")

    row = page.locator("tr.trace", has_text="rename-flow")
    expect(row.locator(".badge.trace-status")).to_have_text("recording")
    expect(page.locator(".messages")).to_contain_text(
        "Recording 'rename-flow' of process ")
    # the header arrives over the agent's socket and the row follows it live
    expect(row.locator(".muted", has_text="waiting for the agent")).to_have_count(
        0, timeout=5_000)
    app.send("rename Zed")
    app.send("add Eve")
    page.wait_for_timeout(500)  # the trace's writer hands lines over every 0.2 s
    row.locator("button.stop").click()
    expect(row.locator(".badge.trace-status")).to_have_text("complete", timeout=5_000)
    expect(row.locator(".reason")).to_have_text("stopped from the dashboard")

    row.locator("a.trace-link").click()
    expect(page.get_by_role("heading", name="Trace rename-flow")).to_be_visible()
    lanes = page.locator(".trace-timeline .tl-row.lane")
    expect(lanes).to_have_count(2)
    expect(lanes.nth(0)).to_have_class(re.compile(r"\bthread\b"))
    expect(lanes.nth(0).locator(".tl-name")).to_contain_text("MainThread")
    expect(lanes.nth(1).locator(".tl-name")).to_contain_text("connection #1")
    thread = lanes.nth(0)
    expect(thread.locator(".span.transaction.commit")).to_have_count(2)  # rename, add
    expect(thread.locator(".span.flush")).to_have_count(2)
    expect(page.locator(".tl-row.counter")).to_have_count(1)
    # the statement spans link to their rows
    update = thread.locator(".span.statement", has_text="UPDATE retort_customer")
    expect(update).to_have_count(1)
    update.click()
    expect(page).to_have_url(re.compile(r"#st-\d+$"))
    anchor = page.url.rsplit("#", 1)[1]
    expect(page.locator(f"tr#{anchor} .span-name")).to_have_text("UPDATE retort_customer")

    change = page.locator('#trace-flushes .change.update[data-class="Customer"]'
                          '[data-identity="1"]')
    expect(change.locator('tr[data-attribute="name"] td.old')).to_have_text("'Ann'")
    expect(change.locator('tr[data-attribute="name"] td.new')).to_have_text("'Zed'")
    expect(page.locator('#trace-flushes .change.insert[data-class="Customer"] '
                        'tr[data-attribute="name"] td.new')).to_have_text("'Eve'")
    expect(page.locator("a.download", has_text="Chrome trace")).to_have_attribute(
        "href", re.compile(r"/download/chrome/$"))
    page.locator(".zoom a", has_text="4×").click()
    expect(page.locator(".tl-inner")).to_have_attribute("style", "width:400%")
    page.locator(".zoom a", has_text="1×").click()
    page.screenshot(path=SHOT, full_page=True)

"""End to end in headless Chromium, a real daphne and a real instrumented application
(tests/e2e/controls_app.py): an operator flips statement capture off for the app's
engine on the engine page — its statements stop reaching the dashboard — and on again;
asks for parameter capture, which the app's agent refuses, with its reason shown; and
makes the app's flushes ignore the Customer class (confirmed first): the app's next
flush writes nothing for it, and the audit log says who did it and what each process
answered. Removing the policy (confirmed too) makes the app write again."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from .conftest import USERNAME
from .test_session_page import _answer, _log_in

pytestmark = pytest.mark.browser

SHOT = "/work/shots/controls-e2e.png"


def counted(dashboard) -> int:
    """Statement executions the dashboard has stored for the app (all fingerprints)."""
    out = dashboard.manage("shell", "-c",
                           "from dashboard.models import StatementStat; "
                           "print(sum(StatementStat.objects.values_list('count', flat=True)))")
    return int(out.split()[-1])  # after what the shell says about its imports


def wait_counted(dashboard, predicate, timeout: float = 15) -> int:
    deadline = time.monotonic() + timeout
    while True:
        total = counted(dashboard)
        if predicate(total) or time.monotonic() > deadline:
            return total
        time.sleep(0.3)


def test_an_operator_switches_statements_parameters_and_a_policy(page: Page, dashboard,
                                                                 start_app, tmp_path):
    dashboard.manage("operator", USERNAME)
    app = start_app(script="controls_app.py", db=str(tmp_path / "controls.sqlite3"))
    first = _answer(app.send("query"))
    process = f":{first['pid']}"
    base = wait_counted(dashboard, lambda n: n > 0)
    assert base > 0

    _log_in(page, dashboard.url)
    page.locator("a.engine-link").first.click()
    quick = page.locator('#quick-toggles .quick[data-switch="statements"]')
    expect(quick).to_contain_text("as the agent's configuration says")

    # statements off for this engine: applied, live, and nothing more is counted
    quick.locator('button[value="off"]').click()
    expect(quick.locator(".badge.value")).to_have_text("off")
    expect(quick.locator(".badge.delivery.applied")).to_contain_text(process, timeout=3_000)
    before = counted(dashboard)
    for _ in range(3):
        ran = _answer(app.send("query"))
    assert int(ran["statements"]) > int(first["statements"])  # the app did run them
    time.sleep(1.5)  # several state intervals (0.2 s)
    assert counted(dashboard) == before

    # on again: counted again
    quick.locator('button[value="on"]').click()
    expect(quick.locator(".badge.value")).to_have_text("on")
    expect(quick.locator(".badge.delivery.applied")).to_contain_text(process, timeout=3_000)
    for _ in range(3):
        app.send("query")
    assert wait_counted(dashboard, lambda n: n >= before + 3) >= before + 3

    # parameter capture for the app: the agent's configuration does not allow it
    page.locator("a.controls-link").click()
    expect(page.get_by_role("heading", name="Controls of e2e-app")).to_be_visible()
    # each choice re-renders the fields (htmx): wait for it before the next
    page.select_option("#toggle-fields select[name=scope]", "app")
    expect(page.locator("#toggle-fields input[name=target]")).to_have_count(0)
    page.select_option("#toggle-fields select[name=switch]", "parameters")
    expect(page.locator("#toggle-fields .switch-help")).to_contain_text("Send the (redacted)")
    page.select_option("#toggle-fields select[name=value]", "on")
    page.click("#toggle-form button[type=submit]")
    row = page.locator('tr.toggle[data-switch="parameters"]')
    answer = row.locator(".answer", has_text=process)
    expect(answer.locator(".badge.delivery")).to_have_text("refused", timeout=3_000)
    expect(answer.locator(".reason")).to_contain_text(
        "parameter capture is not allowed by this process's agent configuration "
        "(capture_parameters=False")

    # ignore changes for Customer: confirmed first, then the app writes nothing for it
    page.select_option("#toggle-fields select[name=scope]", "entity")
    expect(page.locator("#toggle-fields select[name=switch] option")).to_have_count(2)
    page.select_option("#toggle-fields select[name=switch]", "ignore_changes")
    expect(page.locator("#toggle-form button[type=submit]")).to_have_text("Review…")
    page.fill("#toggle-fields input[name=target]", "Customer")
    page.select_option("#toggle-fields select[name=value]", "on")
    page.click("#toggle-form button[type=submit]")
    expect(page.get_by_role("heading", name="Confirm: Ignore changes for entity class "
                                             "Customer")).to_be_visible()
    expect(page.locator(".warn-box")).to_contain_text(
        "The app's flushes will stop writing Customer")
    expect(page.locator("ul.confirm-processes li")).to_contain_text([re.compile(process)])
    page.click("button.confirm-button")
    row = page.locator('tr.toggle[data-switch="ignore_changes"]')
    expect(row.locator(".answer", has_text=process).locator(".badge.delivery")).to_have_text(
        "applied", timeout=3_000)
    renamed = _answer(app.send("rename Zed"))
    assert (renamed["writes"], renamed["name"]) == ("-", "Ann")
    added = _answer(app.send("add Eve"))
    assert (added["writes"], added["customers"]) == ("-", "3")
    page.wait_for_timeout(300)
    page.screenshot(path=SHOT, full_page=True)

    # the audit log says who did it, and what the process answered
    page.locator("a", has_text="the whole audit log").click()
    entries = page.locator("tr.audit-entry")
    expect(entries.filter(has_text="toggle.set").filter(
        has_text="Ignore changes for entity class Customer: not set → on")).to_contain_text(
        USERNAME)
    expect(entries.filter(has_text="toggle.result").filter(
        has_text="Ignore changes for entity class Customer")).to_contain_text(
        re.compile(r"applied on \S+" + re.escape(process)))

    # removing the policy (through the live row's htmx form) is confirmed too
    page.go_back()
    row = page.locator('tr.toggle[data-switch="ignore_changes"]')
    row.locator("button.remove").click()
    expect(page.locator(".warn-box")).to_contain_text(
        "The app's flushes will write the entity class Customer again")
    page.click("button.confirm-button")
    expect(page.locator('tr.toggle.removed[data-switch="ignore_changes"] .badge.delivery')
           ).to_have_text("applied", timeout=3_000)
    renamed = _answer(app.send("rename Zed"))
    assert (renamed["writes"], renamed["name"]) == ("UPDATE", "Zed")

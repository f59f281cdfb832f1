"""The controls page (toggles in force, each process's answer), the one endpoint that
changes a toggle (operators only, CSRF, audited; policies confirmed first), the quick
toggles of the engine and session pages, the audit log page and the overview link."""

from __future__ import annotations

import re
from html import unescape

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.test import Client

from dashboard import groups, toggles
from dashboard.models import AuditLog, Toggle

from .conftest import second_process

pytestmark = pytest.mark.django_db

ENGINE = "postgresql/shop"
REFUSAL = ("parameter capture is not allowed by this process's agent configuration "
           "(capture_parameters=False, RETORT_CAPTURE_PARAMETERS)")
NO_PERMISSION = ("refused: you do not have the permission to change what agents track "
                 "(dashboard.operate_agents; ask an admin to add you to the Operators group)")


def text(html: str) -> str:
    """Visible text, whitespace folded (inline tags leave no space)."""
    html = re.sub(r"</?(?:a|code|em|strong|span)\b[^>]*>", "", html)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def answers(html: str, toggle_pk: int) -> list[tuple[str, str, str]]:
    """(process, status shown, reason) of each answer in a toggle's row."""
    row = re.search(rf'<tr id="toggle-{toggle_pk}".*?</tr>', html, re.S)
    assert row is not None, f"no row for toggle {toggle_pk}"
    return [(process, status, unescape(reason or "")) for process, status, reason in re.findall(
        r'<span class="process-name">([^<]+)</span> <span class="badge delivery [\w-]+">'
        r'([^<]+)</span>(?: <span class="reason">([^<]+)</span>)?', row.group(0))]


def audit() -> list[tuple]:
    return list(AuditLog.objects.order_by("pk")
                .values_list("actor_name", "action", "target", "result"))


@pytest.fixture
def listening():
    """A channel in process groups: what a change sends to a connected agent."""
    layer = get_channel_layer()
    channel = async_to_sync(layer.new_channel)()

    def join(process_pk: int) -> None:
        async_to_sync(layer.group_add)(groups.process(process_pk), channel)

    def received() -> dict:
        return async_to_sync(layer.receive)(channel)
    return join, received


@pytest.fixture
def operator_view(frozen, tracked, as_operator):
    def get(url: str) -> str:
        response = as_operator.get(url)
        assert response.status_code == 200
        return response.content.decode()
    return get


# -- the page -----------------------------------------------------------------------

def test_the_controls_page_shows_each_process_answer(operator_view, tracked, operator):
    web2 = second_process(tracked.app, host="web-2", pid=77)
    params = toggles.change(tracked.app, operator, scope="app", target="",
                            switch="parameters", value=True).toggle
    second_process(tracked.app, host="web-3", pid=78, connected=False)
    statements = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                                switch="statements", value=False).toggle
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{params.pk}:1", "status": "applied"})
    toggles.store_ack(web2.pk, {"id": f"toggle:{params.pk}:1", "status": "refused",
                                "reason": REFUSAL})

    html = operator_view(f"/apps/{tracked.app.pk}/controls/")

    assert answers(html, params.pk) == [
        ("web-1:4242", "applied", ""), ("web-2:77", "refused", REFUSAL),
        ("web-3:78", "not connected: sent when it reconnects", "")]
    assert answers(html, statements.pk) == [
        ("web-1:4242", "pending", ""), ("web-2:77", "pending", ""),
        ("web-3:78", "not connected: sent when it reconnects", "")]
    row = re.search(rf'<tr id="toggle-{statements.pk}".*?</tr>', html, re.S).group(0)
    assert text(row).startswith("Statements engine postgresql/shop off web-1:4242 pending")
    assert "olga 2026-01-01 00:01:40.500 rev 1" in text(row)
    assert 'ws-connect="/ws/live/app/%d/controls/"' % tracked.app.pk in html
    assert 'id="toggle-form"' in html
    assert "{#" not in html and "{%" not in html  # no template text leaks
    # the recent changes, newest first
    assert text(html).count("sent to 2 processes: web-1:4242, web-2:77") == 2
    assert f"refused on web-2:77: {REFUSAL}" in text(html)


def test_viewers_see_the_controls_read_only(view, tracked, operator):
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    html = view(f"/apps/{tracked.app.pk}/controls/")
    assert answers(html, toggle.pk) == [("web-1:4242", "pending", "")]
    assert 'id="toggle-form"' not in html
    assert 'class="remove"' not in html
    assert ("You can see these controls but not change them: that needs the permission "
            "Can change what agents track (dashboard.operate_agents), which an admin gives "
            "by adding you to the Operators group.") in text(html)


def test_removed_toggles_are_listed_with_the_answers_to_their_removal(
        operator_view, tracked, operator):
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=None)
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:2", "status": "applied"})
    html = operator_view(f"/apps/{tracked.app.pk}/controls/")
    assert "In force (0)" in text(html)
    assert "Recently removed (1)" in text(html)
    assert answers(html, toggle.pk) == [("web-1:4242", "applied", "")]


def test_the_form_follows_the_scope_and_switch(operator_view, tracked):
    html = operator_view(f"/apps/{tracked.app.pk}/controls/form/?scope=session&switch=snapshots")
    assert re.findall(r'<option value="(\d+)"[^>]*>([^<]+)</option>', html) == [
        (str(tracked.process.pk), "web-1:4242 (connected)")]
    assert re.findall(r'<datalist id="toggle-targets">\s*<option value="([^"]+)">([^<]+)', html) \
        == [("s1", "web-1:4242 · worker-1")]
    assert re.findall(r'<select name="switch".*?</select>', html, re.S)[0].count("<option") == 2
    assert re.findall(r'<option value="(\w+)"', html) == [
        "snapshots", "detectors", str(tracked.process.pk), "s1", "on", "off"]
    html = operator_view(f"/apps/{tracked.app.pk}/controls/form/?scope=entity&switch=bogus")
    # an unknown switch falls back to the first of the scope's
    assert '<option value="snapshots" selected>' in html
    assert 'name="process"' not in html
    datalist = re.findall(r'<datalist id="toggle-targets">(.*?)</datalist>', html, re.S)[0]
    assert re.findall(r'<option value="(\w+)">', datalist) == ["Customer", "Order"]


# -- changing -----------------------------------------------------------------------

def test_an_operator_sets_a_toggle(frozen, tracked, as_operator, listening):
    join, received = listening
    join(tracked.process.pk)
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "engine", "target": ENGINE, "switch": "statements", "value": "off"})
    assert response.status_code == 303
    assert response["Location"] == f"/apps/{tracked.app.pk}/controls/"
    toggle = Toggle.objects.get()
    assert (toggle.scope, toggle.target, toggle.switch, toggle.value, toggle.revision) == (
        "engine", ENGINE, "statements", False, 1)
    assert received() == {"type": "agent.control", "id": f"toggle:{toggle.pk}:1",
                          "action": "set", "args": {"scope": "engine", "target": ENGINE,
                                                    "switch": "statements", "value": False}}
    assert audit() == [("olga", "toggle.set",
                        "Statements for engine postgresql/shop: not set → off",
                        "sent to 1 process: web-1:4242")]
    page = as_operator.get(response["Location"]).content.decode()
    assert ("Statements for engine postgresql/shop: not set → off: sent to 1 process: "
            "web-1:4242.") in text(page)


def test_an_operator_removes_a_toggle_and_goes_back_where_they_were(
        frozen, tracked, as_operator, operator):
    toggles.change(tracked.app, operator, scope="session", target="s1", switch="detectors",
                   value=False, process=tracked.process)
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "session", "target": "s1", "switch": "detectors",
        "process": tracked.process.pk, "remove": "1",
        "next": f"/sessions/{tracked.session.pk}/"})
    assert response.status_code == 303
    assert response["Location"] == f"/sessions/{tracked.session.pk}/"
    assert Toggle.objects.get().value is None
    assert audit()[-1] == ("olga", "toggle.remove",
                           "Detectors for session s1 of web-1:4242: off → not set",
                           "sent to 1 process: web-1:4242")
    # a next elsewhere is not followed
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "engine", "target": ENGINE, "switch": "statements", "value": "on",
        "next": "https://evil.example/"})
    assert response["Location"] == f"/apps/{tracked.app.pk}/controls/"


@pytest.mark.parametrize("post, message", [
    ({"scope": "engine", "target": ENGINE, "switch": "sampling", "value": "2"},
     "expected a fraction above 0 and at most 1, not 2.0"),
    ({"scope": "app", "switch": "ignore_changes", "value": "on"},
     "ignore_changes cannot be set per app (scopes: entity)"),
    ({"scope": "engine", "target": "", "switch": "statements", "value": "off"},
     "a engine setting needs a target"),
    ({"scope": "process", "switch": "statements", "value": "off"},
     "a process setting needs a process"),
    ({"scope": "process", "switch": "statements", "value": "off", "process": "999999"},
     "unknown process '999999' of shop"),
    ({"scope": "app", "switch": "thresholds", "value": "slow"},
     "expected name=number pairs separated by commas, e.g. slow_statement_seconds=0.5"),
    ({"scope": "app", "switch": "statements", "value": ""},
     "choose a value (or remove the setting)"),
])
def test_invalid_settings_are_shown_and_nothing_is_stored(frozen, tracked, as_operator,
                                                          post, message):
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", post)
    assert response.status_code == 400
    html = response.content.decode()
    shown = re.search(r'<p class="error form-error" role="alert">([^<]*)</p>', html)
    assert unescape(shown.group(1)) == message
    assert Toggle.objects.count() == 0
    assert AuditLog.objects.count() == 0


def test_a_viewer_is_refused_403_and_the_attempt_is_audited(frozen, tracked, logged_in):
    response = logged_in.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "entity", "target": "Order", "switch": "ignore_changes", "value": "on",
        "confirm": "yes"})
    assert response.status_code == 403
    assert ("Refused: you do not have the permission to change what agents track "
            "(dashboard.operate_agents; ask an admin to add you to the Operators group). "
            "The attempt was written to the audit log.") in text(response.content.decode())
    assert Toggle.objects.count() == 0
    assert audit() == [("alice", "toggle.set", "Ignore changes for entity class Order: → on",
                        NO_PERMISSION)]
    # garbage from a viewer is refused (and audited) the same way
    response = logged_in.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "app", "switch": "sampling", "value": "lots"})
    assert response.status_code == 403
    assert audit()[-1] == ("alice", "toggle.set", "Statement sampling for every process of "
                           "shop: → lots", NO_PERMISSION)


def test_changes_need_a_csrf_token_and_a_post(tracked, operator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(operator)
    response = client.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "engine", "target": ENGINE, "switch": "statements", "value": "off"})
    assert response.status_code == 403
    assert client.get(f"/apps/{tracked.app.pk}/controls/change/").status_code == 405
    assert Toggle.objects.count() == 0
    # the page's forms carry the token
    page = client.get(f"/apps/{tracked.app.pk}/controls/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(f"/apps/{tracked.app.pk}/controls/change/", {
        "csrfmiddlewaretoken": token, "scope": "engine", "target": ENGINE,
        "switch": "statements", "value": "off"})
    assert response.status_code == 303
    assert Toggle.objects.count() == 1


def test_anonymous_users_are_sent_to_the_login(tracked):
    response = Client().post(f"/apps/{tracked.app.pk}/controls/change/", {
        "scope": "engine", "target": ENGINE, "switch": "statements", "value": "off"})
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")
    assert Toggle.objects.count() == 0


# -- policies: confirmed first ------------------------------------------------------

def test_a_policy_needs_confirmation(frozen, tracked, as_operator, listening):
    join, received = listening
    join(tracked.process.pk)
    web2 = second_process(tracked.app, host="web-2", pid=77)
    join(web2.pk)
    asked = {"scope": "entity", "target": "Order", "switch": "ignore_changes", "value": "on"}

    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", asked)

    assert response.status_code == 200
    html = response.content.decode()
    assert Toggle.objects.count() == 0
    assert AuditLog.objects.count() == 0
    page = text(html)
    assert "Confirm: Ignore changes for entity class Order" in page
    assert "Ignore changes for entity class Order: not set → on" in page
    assert ("The app's flushes will stop writing Order: no INSERT, UPDATE or DELETE for "
            "objects of the entity class Order (or its subclasses).") in page
    assert re.findall(r'<ul class="confirm-processes"><li>([\w:-]+) ', html) == ["web-1:4242"]
    assert re.findall(r'<li>([\w-]+:\d+) <span', html) == ["web-1:4242", "web-2:77"]
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    assert hidden.pop("csrfmiddlewaretoken")
    assert hidden == {"scope": "entity", "target": "Order", "switch": "ignore_changes",
                      "process": "", "value": "on", "confirm": "yes",
                      "next": f"/apps/{tracked.app.pk}/controls/"}

    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", hidden)

    assert response.status_code == 303
    toggle = Toggle.objects.get()
    assert (toggle.scope, toggle.target, toggle.switch, toggle.value) == (
        "entity", "Order", "ignore_changes", True)
    assert received()["id"] == f"toggle:{toggle.pk}:1"
    assert received()["id"] == f"toggle:{toggle.pk}:1"
    assert audit() == [("olga", "toggle.set", "Ignore changes for entity class Order: "
                        "not set → on", "sent to 2 processes: web-1:4242, web-2:77")]


def test_removing_a_policy_is_confirmed_too(frozen, tracked, as_operator, operator):
    toggles.change(tracked.app, operator, scope="entity", target="Order",
                   switch="ignore_changes", value=True)
    asked = {"scope": "entity", "target": "Order", "switch": "ignore_changes", "remove": "1"}
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/", asked)
    assert response.status_code == 200
    assert ("Ignore changes for entity class Order: on → not set"
            in text(response.content.decode()))
    assert "The app's flushes will write the entity class Order again" in text(
        response.content.decode())
    assert Toggle.objects.get().value is True
    response = as_operator.post(f"/apps/{tracked.app.pk}/controls/change/",
                                {**asked, "confirm": "yes"})
    assert response.status_code == 303
    assert Toggle.objects.get().value is None


# -- quick toggles, audit page, overview --------------------------------------------

def quick(html: str) -> dict[str, str]:
    section = re.search(r'<section class="card quick-toggles".*?</section>', html, re.S)
    assert section is not None
    return {switch: text(body) for switch, body in re.findall(
        r'<div class="quick" data-switch="(\w+)">(.*?)</div>', section.group(0), re.S)}


def test_the_engine_page_has_statements_on_off(operator_view, tracked, operator):
    url = f"/engines/{tracked.engine.pk}/"
    assert quick(operator_view(url)) == {
        "statements": "Statements as the agent's configuration says On Off"}
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1", "status": "applied"})
    html = operator_view(url)
    assert quick(html) == {"statements": "Statements off web-1:4242 applied On Off Default"}
    form = re.search(r'<div class="quick" data-switch="statements">.*?</form>', html, re.S)
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form.group(0)))
    del hidden["csrfmiddlewaretoken"]
    assert hidden == {"scope": "engine", "target": ENGINE, "switch": "statements",
                      "process": "", "next": url}
    assert '<button type="submit" name="value" value="off" disabled>' in form.group(0)


def test_the_session_page_has_snapshots_and_detectors(view, tracked):
    html = view(f"/sessions/{tracked.session.pk}/")
    assert quick(html) == {
        "snapshots": "Entity snapshots as the agent's configuration says",
        "detectors": "Detectors as the agent's configuration says"}  # a viewer: no buttons
    assert "Controls for session s1 of web-1:4242" in text(html)


def test_the_audit_log_page(operator_view, tracked, operator, alice):
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=False)
    toggles.refuse(tracked.app, alice, scope="app", target="", switch="statements",
                   value=True)
    html = operator_view(f"/apps/{tracked.app.pk}/audit/")
    rows = [text(row) for row in re.findall(r'<tr class="audit-entry".*?</tr>', html, re.S)]
    assert rows == [
        f"2026-01-01 00:01:40.500 alice toggle.set Statements for every process of shop: → on "
        f"(shop) – {NO_PERMISSION}",
        "2026-01-01 00:01:40.500 olga toggle.set Statements for engine postgresql/shop: "
        "not set → off (shop) web-1:4242 sent to 1 process: web-1:4242",
    ]
    assert "2 entries" in text(html)
    assert len(re.findall(r'<tr class="audit-entry"', operator_view("/audit/"))) == 2


def test_the_overview_links_the_controls(operator_view, tracked, operator):
    toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                   switch="statements", value=False)
    html = operator_view("/")
    link = re.search(r'<a class="controls-link" href="([^"]+)">([^<]+)</a>', html)
    assert link.groups() == (f"/apps/{tracked.app.pk}/controls/", "controls (1 in force)")


def test_a_pending_answer_from_a_silent_process_says_so(operator_view, tracked, operator):
    from datetime import timedelta

    from dashboard.models import Process
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    # connected, but not heard of for a minute (say, the dashboard restarted under it)
    Process.objects.filter(pk=tracked.process.pk).update(
        last_seen=tracked.process.last_seen - timedelta(seconds=60))
    html = operator_view(f"/apps/{tracked.app.pk}/controls/")
    assert answers(html, toggle.pk) == [("web-1:4242", "pending: no news from the process", "")]
    assert "(last heard of 60.00 s ago)" in html


def test_the_admin_lists_toggles_and_their_answers_read_only(tracked, operator, admin_client):
    toggle = toggles.change(tracked.app, operator, scope="engine", target=ENGINE,
                            switch="statements", value=False).toggle
    toggles.store_ack(tracked.process.pk, {"id": f"toggle:{toggle.pk}:1", "status": "applied"})
    listing = admin_client.get("/admin/dashboard/toggle/").content.decode()
    assert ENGINE in listing
    detail = admin_client.get(f"/admin/dashboard/toggle/{toggle.pk}/change/").content.decode()
    assert "applied" in detail
    assert admin_client.get("/admin/dashboard/toggle/add/").status_code == 403
    assert admin_client.post(f"/admin/dashboard/toggle/{toggle.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    assert Toggle.objects.count() == 1

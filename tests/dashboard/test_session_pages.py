"""The sessions page (an app's ORM sessions) and the session page (one session's
summary, lifecycle, tracked objects, pending changes and findings): first paint with
exact values, filters, sorting, paging, bad input; the links from the overview and
the engine page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from dashboard import control, ingest, session_ingest
from dashboard.models import App, Process, TrackedSession
from tracker import protocol

from .conftest import (
    ENTITIES, SESSION_LOCATION, STATE_TS, engine_info, engine_state, ended_summary,
    events_msg, finding_event, frame, hello_msg, session_summary, snapshot_msg, state_msg,
)

pytestmark = pytest.mark.django_db


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def report(tracked, *sessions: dict, **kwargs) -> None:
    tracked.ingest.store(decoded(state_msg(sessions=list(sessions), **kwargs)))


def sessions_url(tracked, query: str = "") -> str:
    return f"/apps/{tracked.app.pk}/sessions/" + (f"?{query}" if query else "")


def session_url(tracked, key: str = "s1", query: str = "") -> str:
    pk = TrackedSession.objects.get(process=tracked.process, key=key).pk
    return f"/sessions/{pk}/" + (f"?{query}" if query else "")


def listed(html: str) -> list[str]:
    """The session ids of the sessions table, in order."""
    return re.findall(r'<tr class="session [a-z-]+" data-session="([^"]+)">', html)


def row(html: str, key: str) -> str:
    match = re.search(rf'<tr class="session [a-z-]+" data-session="{key}">(.*?)</tr>', html,
                      re.S)
    assert match, f"no row for {key}"
    return match.group(0)


def snapshot(tracked, key: str = "s1", query: dict | None = None, **overrides) -> None:
    """The agent answered a snapshot request of the session page with ``query``."""
    pk = TrackedSession.objects.get(process=tracked.process, key=key).pk
    _, message = control.snapshot_request(pk, control.snapshot_args(query or {}))
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        message["id"], session=key, **overrides)))


# -- login and 404 ------------------------------------------------------------------

def test_session_pages_redirect_anonymous_users_to_login(client, tracked):
    for url in (sessions_url(tracked), session_url(tracked)):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={url}"
        assert SESSION_LOCATION.encode() not in response.content


def test_unknown_app_or_session_is_404(logged_in, tracked):
    assert logged_in.get(f"/apps/{tracked.app.pk + 1000}/sessions/").status_code == 404
    assert logged_in.get(f"/sessions/{tracked.session.pk + 1000}/").status_code == 404
    assert logged_in.get("/sessions/s1/").status_code == 404


# -- sessions page ------------------------------------------------------------------

def test_an_idle_in_transaction_session_stands_out_with_its_code_location(view, tracked):
    html = view(sessions_url(tracked))
    assert ("<h2>Sessions <span class=\"muted small\">1 live · 1 in a transaction · "
            "0 ended within 15 min 00 s</span></h2>") in html
    assert ('<p class="idle-summary"><span class="badge idle-in-transaction">1 idle in '
            'transaction</span>') in html
    s1 = row(html, "s1")
    assert s1.startswith('<tr class="session idle-in-transaction" data-session="s1">')
    cells = re.findall(r"<td[^>]*>(.*?)</td>", s1, re.S)
    assert cells[0] == (f'<a class="session-link" href="/sessions/{tracked.session.pk}/">'
                        's1</a><div class="muted small">Session</div>')
    assert cells[1] == "web-1:4242"
    assert cells[2] == f'<a href="/engines/{tracked.engine.pk}/">postgresql/shop</a>'
    assert cells[3] == "worker-1"
    assert cells[4] == ('<span class="badge idle-in-transaction">idle in transaction</span>'
                        '<div class="small">nothing done for 8.00 s; transaction open since '
                        '00:01:20.000 (20.00 s)</div>')
    assert cells[5:8] == ["30.00 s", "4", "1 / 1 / 1"]
    assert cells[8] == f'<a class="held" href="/engines/{tracked.engine.pk}/">postgresql/shop</a>'
    assert cells[9:11] == ["7", "1 / 0 / 0"]
    # its code location, the stack on hover and open below it
    assert cells[11].startswith(
        '<code title="shop/orders.py:88 in checkout\nshop/views.py:12 in post">'
        f'shop/orders.py:88 in checkout</code><details data-keep="stack-{tracked.session.pk}" '
        'open>')
    assert f'ws-connect="/ws/live/app/{tracked.app.pk}/sessions/"' in html


def test_a_busy_transaction_is_not_idle(view, tracked, settings):
    report(tracked, session_summary(last_activity=STATE_TS - 1.0))
    html = view(sessions_url(tracked))
    assert "idle-summary" not in html
    assert row(html, "s1").startswith('<tr class="session transaction" data-session="s1">')
    assert ('<td class="state">in transaction since 00:01:20.000<div class="muted small">'
            'for 20.00 s</div></td>') in html
    settings.RETORT = {"IDLE_IN_TRANSACTION_SECONDS": 0.5}
    assert "1 idle in transaction" in view(sessions_url(tracked))


def test_idle_flushing_and_ended_states(view, tracked):
    report(tracked, session_summary("s2", state="idle", txn_since=None, connections=[]),
           session_summary("s3", state="flushing"), ended_summary("s1"))
    html = view(sessions_url(tracked))
    assert '<td class="state">idle</td>' in row(html, "s2")
    assert '<td class="state"><span class="badge flushing">flushing</span></td>' in row(html, "s3")
    s1 = row(html, "s1")
    assert s1.startswith('<tr class="session ended" data-session="s1">')
    assert ('<td class="state"><span class="badge ended">ended</span> closed'
            '<div class="muted small">at 00:01:39.000</div></td>') in s1
    assert '<td class="num">29.00 s</td>' in s1  # its whole life: created → ended
    assert "<td><span class=\"muted\">–</span></td>" in s1  # holds no connection now
    assert "2 live · 1 in a transaction · 1 ended within 15 min 00 s" in html


def test_ended_sessions_are_listed_for_the_recent_window_only(view, tracked, settings):
    report(tracked, ended_summary("s2"))
    assert listed(view(sessions_url(tracked))) == ["s1", "s2"]
    assert listed(view(sessions_url(tracked, "show=live"))) == ["s1"]
    settings.RETORT = {"RECENT_SESSION_SECONDS": 60}
    TrackedSession.objects.filter(key="s2").update(
        updated_at=TrackedSession.objects.get(key="s2").updated_at - timedelta(seconds=61))
    assert listed(view(sessions_url(tracked))) == ["s1"]


def test_sessions_are_sorted_oldest_open_transaction_first(view, tracked):
    report(tracked,
           session_summary("s2", txn_since=STATE_TS - 50, created=STATE_TS - 60),
           session_summary("s3", state="idle", txn_since=None, created=STATE_TS - 5),
           session_summary("s4", state="idle", txn_since=None, created=STATE_TS - 90),
           ended_summary("s5", ended=STATE_TS - 2), ended_summary("s6", ended=STATE_TS - 1),
           session_summary("s7", txn_since=STATE_TS - 2, created=STATE_TS - 3))
    html = view(sessions_url(tracked))
    # open transactions (oldest first), idle live ones (newest first), ended ones
    # (the latest ended first)
    assert listed(html) == ["s2", "s1", "s7", "s3", "s4", "s6", "s5"]
    assert "Sessions 1–7 of 7, oldest open transaction first." in html


@pytest.mark.parametrize("sort, expected", [
    ("newest", ["s3", "s1", "s2"]),
    ("oldest", ["s2", "s1", "s3"]),
    ("objects", ["s2", "s1", "s3"]),
    ("pending", ["s3", "s1", "s2"]),
    ("statements", ["s3", "s1", "s2"]),
    ("thread", ["s1", "s2", "s3"]),
    ("nonsense", ["s2", "s1", "s3"]),  # the default
])
def test_sessions_sort_by_the_chosen_column(view, tracked, sort, expected):
    report(tracked,
           session_summary("s2", created=STATE_TS - 40, txn_since=STATE_TS - 39,
                           objects=50, new=0, dirty=0, deleted=0, statements=1,
                           thread="worker-2"),
           session_summary("s3", created=STATE_TS - 10, state="idle", txn_since=None,
                           objects=1, new=9, statements=99, thread="worker-3"))
    assert listed(view(sessions_url(tracked, f"sort={sort}"))) == expected


def test_sort_links_keep_the_filters(view, tracked):
    html = view(sessions_url(tracked, f"process={tracked.process.pk}&sort=objects&page=1"))
    assert f'<th><a href="?process={tracked.process.pk}&amp;sort=newest">session</a></th>' in html
    assert f'<th><a href="?process={tracked.process.pk}">state</a></th>' in html
    assert '<input type="hidden" name="sort" value="objects">' in html
    assert (f'ws-connect="/ws/live/app/{tracked.app.pk}/sessions/'
            f'?process={tracked.process.pk}&amp;sort=objects"') in html


def test_sessions_filter_by_process_engine_and_thread(view, tracked):
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    ingest.StateIngest(other.pk).store(decoded(state_msg(sessions=[
        session_summary("s1", thread="other-1"),
        session_summary("s2", thread="other-2", task="Task-7")])))
    ingest.store_engine(tracked.process.pk, decoded({"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/cache", url="sqlite://")}))
    report(tracked, session_summary("s3", engines=["e2"]))
    e2 = tracked.process.engines.get(key="e2")

    def rows_of(query: str) -> list[tuple[str, str]]:
        html = view(sessions_url(tracked, query))
        return re.findall(r'data-session="(s\d)">.*?<td>web-1:(\d+)</td>', html, re.S)

    assert sorted(rows_of("")) == [("s1", "4242"), ("s1", "5151"), ("s2", "5151"),
                                   ("s3", "4242")]
    assert sorted(rows_of(f"process={other.pk}")) == [("s1", "5151"), ("s2", "5151")]
    assert rows_of(f"engine={e2.pk}") == [("s3", "4242")]
    assert sorted(rows_of(f"engine={tracked.engine.pk}")) == [("s1", "4242")]
    assert rows_of("thread=other-1") == [("s1", "5151")]
    assert rows_of("thread=Task-7") == [("s2", "5151")]  # an asyncio task's name
    assert rows_of(f"process={other.pk}&thread=worker-1") == []
    html = view(sessions_url(tracked, f"process={other.pk}&thread=other-1"))
    assert f'<option value="{other.pk}" selected>web-1:5151</option>' in html
    assert "<option selected>other-1</option>" in html
    assert "<option>Task-7</option>" in html
    assert "No session matches." in view(sessions_url(tracked, "thread=nobody"))


@pytest.mark.parametrize("query", [
    "process=abc", "engine=-1", "page=x", "sort=%3Cscript%3E", "show=everything",
    "process=99999999999999999999999", "thread=" + "x" * 300,
])
def test_bad_filter_values_are_ignored(view, tracked, query):
    html = view(sessions_url(tracked, query))
    assert "<script>" not in html.split("<main>")[1]
    if not query.startswith("thread"):
        assert listed(html) == ["s1"]


def test_sessions_are_paged(view, tracked, settings):
    settings.RETORT = {"SESSIONS_PER_PAGE": 2}
    report(tracked, *(session_summary(f"s{n}", txn_since=STATE_TS - 100 + n)
                      for n in range(2, 6)))
    first = view(sessions_url(tracked))
    assert listed(first) == ["s2", "s3"]
    assert "Sessions 1–2 of 5, oldest open transaction first." in first
    assert '<a rel="next" href="?page=2">next →</a>' in first
    assert 'rel="prev"' not in first
    second = view(sessions_url(tracked, "page=2&show=live"))
    assert listed(second) == ["s4", "s5"]
    assert '<a rel="prev" href="?show=live">← previous</a>' in second
    assert '<a rel="next" href="?show=live&amp;page=3">next →</a>' in second
    assert f'ws-connect="/ws/live/app/{tracked.app.pk}/sessions/?show=live&amp;page=2"' in second
    assert listed(view(sessions_url(tracked, "page=9"))) == ["s1"]  # the last page


def test_sessions_the_agent_left_out_are_counted(view, tracked):
    report(tracked, omitted=3)
    assert ("3 changed sessions left out of the agent's last report"
            in view(sessions_url(tracked)))


def test_the_sessions_page_lists_the_apps_findings(view, tracked):
    tracked.ingest.store_events(decoded(events_msg(
        finding_event(), finding_event("s9", "", rule="detached-modification",
                                       ts=STATE_TS + 1))))
    html = view(sessions_url(tracked))
    findings = html.split('<section id="sessions-findings" class="card">')[1]
    assert ('<h2>Findings <span class="muted small">(the newest 2)</span> <a class="small '
            f'findings-link" href="/apps/{tracked.app.pk}/findings/">grouped, with fixes →</a>'
            '</h2>') in findings
    assert re.findall(r'data-rule="([^"]+)"', findings) == [
        "detached-modification", "lost-changes-on-close"]
    assert f'<td><a href="/sessions/{tracked.session.pk}/">s1</a></td>' in findings
    assert "<td>s9</td>" in findings  # not stored: no link
    assert '<ul class="evidence small"><li><code>Customer (new)</code></li></ul>' in findings


# -- overview and engine page -------------------------------------------------------

def test_the_overview_links_each_app_to_its_sessions_with_the_live_count(view, tracked):
    report(tracked, session_summary("s2"), ended_summary("s3"))
    App.objects.create(name="billing")
    html = view("/")
    assert (f'<p class="small app-links"><a class="sessions-link" href="/apps/{tracked.app.pk}'
            f'/sessions/">2 live sessions</a> · <a class="findings-link" '
            f'href="/apps/{tracked.app.pk}/findings/">no open finding</a> · <a '
            f'class="controls-link" href="/apps/{tracked.app.pk}/controls/">controls</a> · '
            f'<a class="traces-link" href="/apps/{tracked.app.pk}/traces/">traces</a> · '
            f'<a class="audit-link" href="/apps/{tracked.app.pk}/audit/">audit log</a>'
            '</p>') in html
    assert html.count('class="sessions-link"') == 1  # billing has no process yet
    # the per-app count does not multiply the process count
    assert "1 process in all" not in html


def test_the_engine_page_links_a_holder_to_its_session(view, tracked):
    state = engine_state(checked_out=2)
    state["holders"][0]["session"] = "s1"
    state["holders"][1]["session"] = "s99"  # not stored (yet): shown, not linked
    tracked.ingest.store(decoded(state_msg(state)))
    html = view(f"/engines/{tracked.engine.pk}/")
    assert (f'<td><a class="session-link" href="/sessions/{tracked.session.pk}/">s1</a></td>'
            in html)
    assert "<td>s99</td>" in html


# -- session page -------------------------------------------------------------------

def test_the_session_page_shows_the_summary(view, tracked):
    html = view(session_url(tracked))
    assert '<h1>Session s1 <span class="muted small">Session</span></h1>' in html
    assert ('<p><span class="badge idle-in-transaction">idle in transaction</span> for '
            f'8.00 s: this session holds a connection of <a href="/engines/'
            f'{tracked.engine.pk}/">postgresql/shop</a> in a transaction open since '
            '00:01:20.000 (20.00 s) and has done nothing with it.</p>') in html
    assert "<p>The transaction began at <code>shop/orders.py:88 in checkout</code></p>" in html
    for term, value in [
        ("thread / task", 'worker-1 <span class="muted small">140000001</span>'),
        ("created", '00:01:10.000 <span class="muted small">(30.00 s ago)</span>'),
        ("last activity", '00:01:32.000 <span class="muted small">(8.00 s ago)</span>'),
        ("autoflush / expire_on_commit", "on / on"),
        ("engines", f'<a href="/engines/{tracked.engine.pk}/">postgresql/shop</a>'),
    ]:
        assert f"<dt>{term}</dt><dd>{value}</dd>" in html
    assert '<dd data-count="objects">4</dd>' in html
    assert '<dd data-count="pending">1 / 1 / 1</dd>' in html
    assert '<dd data-count="statements">7</dd>' in html
    assert '<dd data-count="transactions">1 / 0 / 0</dd>' in html
    assert f'ws-connect="/ws/live/session/{tracked.session.pk}/"' in html
    assert "hx-swap-oob" not in html


def test_the_session_page_shows_the_lifecycle_and_objects_per_class(view, tracked):
    report(tracked, session_summary(by_class={"Order": 1, "Customer": 3, "Address": 3},
                                    lifecycle=[[STATE_TS - 25, "begin", ""],
                                               [STATE_TS - 24.5, "flush", ""],
                                               [STATE_TS - 24, "commit", ""],
                                               [STATE_TS - 20, "begin", ""]]))
    html = view(session_url(tracked))
    assert re.findall(r'<tr class="event (\w+)"><td>([\d:.]+)</td><td class="num">([^<]+)'
                      r'</td><td>(\w+)</td>', html) == [
        ("begin", "00:01:15.000", "5.00 s", "begin"),
        ("flush", "00:01:15.500", "5.50 s", "flush"),
        ("commit", "00:01:16.000", "6.00 s", "commit"),
        ("begin", "00:01:20.000", "10.00 s", "begin"),
    ]
    assert re.findall(r'<tr><td><a href="\?class=(\w+)">\w+</a></td><td class="num">(\d+)</td>',
                      html) == [("Address", "3"), ("Customer", "3"), ("Order", "1")]


def test_before_the_first_snapshot_the_page_waits_for_the_agent(view, tracked):
    html = view(session_url(tracked))
    assert '<p class="snapshot-status waiting muted">waiting for the agent…</p>' in html
    assert '<p class="waiting muted">waiting for the agent…</p>' in html
    assert 'id="entities-table"' not in html


def test_the_session_page_shows_tracked_objects(view, tracked):
    snapshot(tracked)
    html = view(session_url(tracked))
    assert ('<p class="snapshot-status muted small">Snapshot taken at 00:01:40.250 '
            '(0 µs ago); refreshed about every 1.0 s while this page is open.</p>') in html
    assert "Objects 1–4 of 4." in html
    entities = re.findall(
        r'<tr class="entity ([a-z ]+)" data-class="(\w+)" data-identity="(\w*)">\s*'
        r'<td>\w+</td>\s*<td>(.*?)</td>\s*<td><span class="state \w+">(\w+)</span></td>\s*'
        r'<td>(.*?)</td>\s*<td>(.*?)</td>', html)
    assert entities == [
        ("pending modified", "Customer", "", '<span class="muted">no key yet</span>',
         "pending", '<span class="warn">modified</span>', '<span class="muted">–</span>'),
        ("deleted", "Customer", "2", "<code>2</code>", "deleted",
         '<span class="muted">–</span>', '<span class="muted">–</span>'),
        ("persistent modified", "Customer", "1", "<code>1</code>", "persistent",
         '<span class="warn">modified</span>', "email_verified_at"),
        ("persistent modified", "Order", "1", "<code>1</code>", "persistent",
         '<span class="warn">modified</span>', '<span class="muted">–</span>'),
    ]
    assert "Partial snapshot" not in html


def change_rows(html: str) -> list[tuple[str, ...]]:
    """(op, class, identity, row kind, attribute, text of the row) for every row of
    the pending changes."""
    found = []
    for op, cls, identity, body in re.findall(
            r'<div class="change (\w+)" data-class="(\w+)" data-identity="(\w*)">(.*?)</div>\s*'
            r'(?=<div class="change|</div>)', html, re.S):
        rows = re.findall(r'<tr class="(\w+)" data-attribute="(\w+)"><th>\w+</th>(.*?)</tr>',
                          body, re.S)
        if not rows:
            found.append((op, cls, identity, "", "", ""))
        for kind, attribute, cells in rows:
            text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", cells)).strip()
            found.append((op, cls, identity, kind, attribute, text))
    return found


def test_the_session_page_shows_pending_changes_with_old_and_new_values(view, tracked):
    snapshot(tracked)
    html = view(session_url(tracked))
    assert ('<h2>Pending changes <span class="muted small">(1 insert · 2 updates · '
            '1 delete)</span></h2>') in html
    assert change_rows(html) == [
        ("insert", "Customer", "", "value", "name", "&#x27;Dana&#x27;"),
        ("insert", "Customer", "", "value", "email", "&#x27;dana@example.com&#x27;"),
        ("insert", "Customer", "", "value", "password_hash", "••••••"),
        ("update", "Customer", "1", "attribute", "name",
         "&#x27;Ann&#x27; → &#x27;Annie&#x27;"),
        ("update", "Customer", "1", "attribute", "email",
         "&#x27;ann@example.com&#x27; → &#x27;annie@example.com&#x27;"),
        ("update", "Customer", "1", "collection", "orders", "− Order#1 → + Order (new)"),
        ("update", "Order", "1", "reference", "customer", "Customer#1 → None"),
        ("delete", "Customer", "2", "", "", ""),
    ]
    assert ('<td class="old"><code>&#x27;Ann&#x27;</code></td><td class="arrow">→</td>'
            '<td class="new"><code>&#x27;Annie&#x27;</code></td>') in html


def test_attributes_named_like_dict_methods_are_shown(view, tracked):
    """``items``/``values`` keys must not be taken for methods by the templates."""
    snapshot(tracked, changes=[
        {"op": "insert", "class": "Cart", "identity": "",
         "values": {"items": "<list of 2>", "values": "'v'", "keys": "3"}},
        {"op": "update", "class": "Cart", "identity": "5",
         "attributes": {"items": ["1", "2"]},
         "collections": {"values": {"added": ["Line#1"], "removed": []}}}],
        changes_total=2)
    assert change_rows(view(session_url(tracked))) == [
        ("insert", "Cart", "", "value", "items", "&lt;list of 2&gt;"),
        ("insert", "Cart", "", "value", "values", "&#x27;v&#x27;"),
        ("insert", "Cart", "", "value", "keys", "3"),
        ("update", "Cart", "5", "attribute", "items", "1 → 2"),
        ("update", "Cart", "5", "collection", "values", "– → + Line#1"),
    ]


def test_values_from_the_agent_are_escaped(view, tracked):
    snapshot(tracked, entities=[{"class": "<b>X</b>", "identity": "'<script>'",
                                 "state": "persistent", "modified": False, "expired": []}],
             total=1, changes=[], changes_total=0)
    html = view(session_url(tracked))
    assert "<b>X</b>" not in html and "<script>" not in html
    assert "<td>&lt;b&gt;X&lt;/b&gt;</td>" in html
    assert "<code>&#x27;&lt;script&gt;&#x27;</code>" in html


def test_partial_snapshots_errors_and_refusals_are_said(view, tracked):
    snapshot(tracked, partial=True, error="RuntimeError: changed under us")
    html = view(session_url(tracked))
    assert ('<p class="snapshot-status partial warn">Partial snapshot: the application '
            'changed the session while it was read') in html
    assert ("The agent could not read everything: <code>RuntimeError: changed under us"
            "</code>") in html
    _, message = control.snapshot_request(tracked.session.pk,
                                          control.snapshot_args({"state": "pending"}))
    session_ingest.store_refusal(tracked.process.pk, decoded(
        {"t": "ack", "id": message["id"], "status": "refused",
         "reason": "unknown action 'snapshot'"}))
    html = view(session_url(tracked, query="state=pending"))
    assert ("<p class=\"snapshot-status refused alert\">The agent refused the snapshot: "
            "unknown action &#x27;snapshot&#x27;</p>") in html
    assert "waiting for the agent" not in html


def test_nothing_pending_is_said(view, tracked):
    snapshot(tracked, changes=[], changes_total=0)
    assert ("Nothing to write: the next flush would emit no INSERT, UPDATE or DELETE."
            in view(session_url(tracked)))


def test_truncated_changes_say_how_many_there_are(view, tracked):
    snapshot(tracked, changes_total=812)
    assert ('<p class="warn small">Showing the first 4 of 812 pending changes.</p>'
            in view(session_url(tracked)))


def test_the_entity_filter_picks_the_snapshot_of_that_filter(view, tracked):
    snapshot(tracked)  # unfiltered
    snapshot(tracked, query={"class": "Order", "modified": "yes"},
             entities=[ENTITIES[3]], total=1)
    html = view(session_url(tracked, query="class=Order&modified=yes"))
    assert re.findall(r'<tr class="entity [a-z ]+" data-class="(\w+)" data-identity="(\w*)">',
                      html) == [("Order", "1")]
    assert "Objects 1–1 of 1 matching the filter." in html
    assert "<option selected>Order</option>" in html
    assert '<option value="yes" selected>modified</option>' in html
    assert (f'ws-connect="/ws/live/session/{tracked.session.pk}/'
            f'?class=Order&amp;modified=yes"') in html
    # a filter not asked yet: its snapshot is awaited
    assert "waiting for the agent…" in view(session_url(tracked, query="state=deleted"))


def test_tracked_objects_are_paged(view, tracked, settings):
    settings.RETORT = {"ENTITIES_PER_PAGE": 2}
    snapshot(tracked, query={"page": 2, "class": "Customer"}, entities=ENTITIES[2:4],
             total=5, offset=2)
    html = view(session_url(tracked, query="class=Customer&page=2"))
    assert "Objects 3–4 of 5 matching the filter." in html
    assert ('<p class="pager"><a rel="prev" href="?class=Customer">← previous</a> page 2 '
            'of 3 <a rel="next" href="?class=Customer&amp;page=3">next →</a></p>') in html
    assert (f'ws-connect="/ws/live/session/{tracked.session.pk}/'
            f'?class=Customer&amp;page=2"') in html


def test_a_page_past_the_last_object_links_to_the_last_page(view, tracked, settings):
    settings.RETORT = {"ENTITIES_PER_PAGE": 2}
    snapshot(tracked, query={"page": 7}, entities=[], total=5, offset=12)
    html = view(session_url(tracked, query="page=7"))
    assert ('Page 7 is past the last object (5 match). <a href="?page=3">Go to the last '
            'page</a>') in html


@pytest.mark.parametrize("query", ["page=abc", "state=frozen&modified=maybe", "class=" + "C" * 400,
                                   "page=0", "class=%3Cscript%3E"])
def test_bad_entity_filters_are_ignored(view, tracked, query):
    html = view(session_url(tracked, query=query))
    assert "waiting for the agent…" in html
    assert "<script>" not in html.split("<main>")[1]


def test_an_ended_session_keeps_its_last_snapshot(view, tracked):
    snapshot(tracked)
    report(tracked, ended_summary())
    html = view(session_url(tracked))
    assert ('<p class="ended-note"><span class="badge ended">ended</span> ended at '
            '00:01:39.000 (closed) after 29.00 s.') in html
    assert ("Snapshot taken at 00:01:40.250, before the session ended.") in html
    assert "Objects 1–4 of 4." in html
    assert "waiting for the agent" not in html
    assert "idle in transaction" not in html


def test_an_ended_session_without_snapshot_says_so(view, tracked):
    ingest.mark_disconnected(tracked.process.pk)
    html = view(session_url(tracked))
    assert "ended at 00:01:40.000 (disconnected)" in html
    assert "No snapshot was taken while this session was live" in html
    assert "waiting for the agent" not in html


def test_the_session_page_lists_this_sessions_findings_only(view, tracked):
    tracked.ingest.store_events(decoded(events_msg(finding_event(), finding_event("s2"))))
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    ingest.StateIngest(other.pk).store_events(decoded(events_msg(finding_event())))
    html = view(session_url(tracked))
    findings = html.split('<section id="session-findings" class="card">')[1]
    assert findings.count('<tr class="finding" data-severity="error" data-rule="lost-changes-on-close">') == 1
    assert ("session s1 was closed with unflushed changes (1 new): they were never "
            "written to the database") in findings
    assert (Process.objects.count(), TrackedSession.objects.count()) == (2, 1)


# -- with the real agent -------------------------------------------------------------

def test_the_real_agents_session_and_snapshot_are_shown_exactly(logged_in, shop, agent,
                                                                 tmp_path):
    """End to end without sockets: the agent's own state and snapshot frames for the
    shared scenario, stored and shown with the right old and new values."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from tests.tracker.scenario import make_changes, seed

    App.objects.filter(pk=shop.app.pk).update(name="tests")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    seed(engine)
    try:
        with Session(engine, autoflush=False) as orm_session:
            make_changes(orm_session)
            hello = decoded(agent.hello())
            state = decoded(agent.snapshot())
            process = ingest.register_process(shop.token, hello)
            ingest.StateIngest(process.pk).store(state)
            sid = agent.sessions.get(orm_session).sid
            tracked = TrackedSession.objects.get(process=process, key=sid)
            _, message = control.snapshot_request(tracked.pk, control.snapshot_args({}))
            _, _, (reply,) = agent.controls["snapshot"](message["args"], message["id"])
            assert session_ingest.store_snapshot(process.pk, decoded(reply)) == tracked.pk
            orm_session.rollback()
    finally:
        engine.dispose()
    html = logged_in.get(f"/sessions/{tracked.pk}/").content.decode()
    assert change_rows(html) == [
        ("insert", "Customer", "", "value", "name", "&#x27;Dana&#x27;"),
        ("insert", "Customer", "", "value", "email", "&#x27;dana@example.com&#x27;"),
        ("insert", "Customer", "", "value", "password_hash", "••••••"),
        ("insert", "Order", "", "value", "total", "5.00"),
        ("insert", "Order", "", "value", "note", "&#x27;extra&#x27;"),
        ("insert", "Order", "", "reference", "customer", "None → Customer#1"),
        ("update", "Customer", "1", "attribute", "name",
         "&#x27;Ann&#x27; → &#x27;Annie&#x27;"),
        ("update", "Customer", "1", "attribute", "email",
         "&#x27;ann@example.com&#x27; → &#x27;annie@example.com&#x27;"),
        ("update", "Customer", "1", "collection", "orders", "− Order#1 → + Order (new)"),
        ("update", "Order", "1", "reference", "customer", "Customer#1 → None"),
        ("delete", "Customer", "2", "", "", ""),
    ]
    assert "h-dana" not in html and "h-ann" not in html

"""The findings page (an app's advice by severity: exact rows, evidence, fix, filters,
muted hidden), its actions (acknowledge / mute / unmute: POST only, CSRF, login,
audited), the rules pages from the catalogue, and the overview's open counts."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.test import Client

from dashboard import advice, capacity, ingest
from dashboard.live.findings import evidence_rows
from dashboard.models import Advice, AuditLog
from tracker import protocol
from tracker.rules import RULES

from .conftest import (
    FINDING_MESSAGE, SESSION_LOCATION, STATE_TS, engine_info, events_msg, finding_event,
    frame, hello_msg,
)

pytestmark = pytest.mark.django_db

N_PLUS_ONE_LOCATION = "shop/orders.py:120 in list_orders"
N_PLUS_ONE_MESSAGE = ("Order.items was lazily loaded 12 times in session s3, one SELECT per "
                      "Order: load it with selectinload() in the query that loads the Order "
                      "objects")


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def n_plus_one(ts: float = STATE_TS) -> list:
    return ["finding", ts, "e1", "n-plus-one", "warning", "s3", "worker-2",
            N_PLUS_ONE_LOCATION, N_PLUS_ONE_MESSAGE,
            {"relationship": "Order.items", "count": 12, "collection": True,
             "fix": "select(Order).options(selectinload(Order.items))"}]


def report(tracked, *events: list) -> None:
    tracked.ingest.store_events(decoded(events_msg(*events)))


def findings_url(tracked, query: str = "") -> str:
    return f"/apps/{tracked.app.pk}/findings/" + (f"?{query}" if query else "")


def group(rule: str = "lost-changes-on-close") -> Advice:
    return Advice.objects.get(rule=rule)


def article(html: str, rule: str) -> str:
    match = re.search(rf'<article id="advice-\d+" class="card advice [a-z]+" '
                      rf'data-rule="{rule}".*?</article>', html, re.S)
    assert match, f"no group for {rule}"
    return match.group(0)


def listed(html: str) -> list[tuple[str, str]]:
    """(rule, status) of each group, in page order."""
    return re.findall(r'<article id="advice-\d+" class="card advice [a-z]+" '
                      r'data-rule="([^"]+)" data-status="([a-z]+)">', html)


def sections(html: str) -> list[str]:
    return re.findall(r'<section class="severity-section" data-severity="([a-z]+)">', html)


# -- login and 404 ------------------------------------------------------------------

def test_the_new_pages_redirect_anonymous_users_to_login(client, tracked):
    report(tracked, finding_event())
    for url in (findings_url(tracked), f"/engines/{tracked.engine.pk}/statements/",
                "/rules/", "/rules/n-plus-one/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"] == f"/accounts/login/?next={url}"


def test_unknown_app_engine_or_rule_is_404(logged_in, tracked):
    assert logged_in.get(f"/apps/{tracked.app.pk + 1000}/findings/").status_code == 404
    assert logged_in.get(f"/engines/{tracked.engine.pk + 1000}/statements/").status_code == 404
    assert logged_in.get("/rules/no-such-rule/").status_code == 404


# -- the findings page --------------------------------------------------------------

def test_a_group_shows_its_rule_counts_times_evidence_fix_and_actions(view, tracked):
    report(tracked, finding_event("s0", ts=STATE_TS - 60), finding_event())
    pk = group().pk
    html = view(findings_url(tracked))
    assert f'ws-connect="/ws/live/app/{tracked.app.pk}/findings/"' in html
    assert '<p class="findings-counts muted">1 open · 0 acknowledged · 0 muted</p>' in html
    g = article(html, "lost-changes-on-close")
    assert g.startswith(f'<article id="advice-{pk}" class="card advice open" '
                        'data-rule="lost-changes-on-close" data-status="open">')
    assert ('<h3><a class="rule-link" href="/rules/lost-changes-on-close/">A session was '
            'closed with unflushed changes</a></h3>') in g
    assert '<span class="badge error">error</span>' in g
    assert '<span class="badge status open" data-status-badge>open</span>' in g
    assert '<span class="advice-count" title="occurrences">×2</span>' in g
    assert f'<p class="advice-message">{FINDING_MESSAGE}</p>' in g
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>(.*?)</dd>",
                            g.split('<dl class="advice-facts">')[1].split("</dl>")[0], re.S))
    assert facts == {
        "code location": f"<code>{SESSION_LOCATION}</code>",
        "engine": f'<a href="/engines/{tracked.engine.pk}/">postgresql/shop</a>',
        "first seen": '2026-01-01 00:00:40.500 <span class="muted small">(60.00 s ago)</span>',
        "last seen": '2026-01-01 00:01:40.500 <span class="muted small">(just now)</span>',
        "last in": "web-1:4242 · session s1 · worker-1",
        "rule": '<code>lost-changes-on-close</code> · <a href="/rules/lost-changes-on-close/">docs</a>',
    }
    # the evidence, readably, with the stack folded
    assert '<dt>new</dt><dd data-evidence="new">1</dd>' in g
    assert ('<dt>objects</dt><dd data-evidence="objects"><ul class="evidence-list">'
            '<li><code>Customer (new)</code></li></ul>') in g
    assert (f'<dt>stack</dt><dd data-evidence="stack"><details data-keep="advice-{pk}-stack">'
            '<summary class="small muted">2 frames</summary><ol class="stack">'
            '<li><code>shop/orders.py:88 in checkout</code></li>'
            '<li><code>shop/views.py:12 in post</code></li></ol></details>') in g
    # the fix from the catalogue, with its code
    rule = RULES["lost-changes-on-close"]
    assert (f'<div class="fix"><h4>How to fix</h4><p>{rule.fix}</p><pre class="code"><code>'
            'with Session(engine) as session:\n    customer.name = &quot;Annie&quot;\n'
            '    session.commit()</code></pre></div>') in g
    # actions: forms that post with the CSRF token, and htmx swaps the group
    forms = re.findall(r'<form method="post" action="([^"]+)" hx-post="([^"]+)" '
                       r'hx-target="#advice-(\d+)" hx-swap="outerHTML">'
                       r'<input type="hidden" name="csrfmiddlewaretoken" value="[^"]+">'
                       r'<button type="submit" class="([a-z]+)">', g)
    assert forms == [(f"/findings/{pk}/acknowledge/", f"/findings/{pk}/acknowledge/", str(pk),
                      "acknowledge"),
                     (f"/findings/{pk}/mute/", f"/findings/{pk}/mute/", str(pk), "mute")]


def test_groups_are_listed_by_severity_open_first(view, tracked):
    report(tracked, n_plus_one(STATE_TS + 5), finding_event(),
           finding_event(rule="lost-changes-on-gc", ts=STATE_TS + 1))
    advice.change_status(group("lost-changes-on-gc").pk, "acknowledge", None)
    html = view(findings_url(tracked))
    assert sections(html) == ["error", "warning"]
    assert ('<h2><span class="badge error">Errors</span> <span class="muted small">(2)</span>'
            '</h2>') in html
    assert listed(html) == [("lost-changes-on-close", "open"),
                            ("lost-changes-on-gc", "acknowledged"), ("n-plus-one", "open")]


def test_evidence_is_shown_readably_whatever_its_shape():
    assert evidence_rows({
        "stack": ["a.py:1 in f", "b.py:2 in g"], "sql": "SELECT 1", "count": 12,
        "collection": True, "receivers": ["app.on_commit", "audit.log"],
        "config": {"SQLALCHEMY_POOL_SIZE": 10, "engine": None},
        "processes": [{"process": "web-1:1", "capacity": 15}, {"process": "web-2:2"}],
        "note": "two\nlines", "empty": [],
    }) == [
        {"label": "collection", "key": "collection", "kind": "text", "text": "yes"},
        {"label": "config", "key": "config", "kind": "map",
         "entries": [["SQLALCHEMY POOL SIZE", "10"], ["engine", "–"]]},
        {"label": "count", "key": "count", "kind": "text", "text": "12"},
        {"label": "empty", "key": "empty", "kind": "list", "entries": []},
        {"label": "note", "key": "note", "kind": "code", "text": "two\nlines"},
        {"label": "processes", "key": "processes", "kind": "table",
         "columns": ["process", "capacity"], "records": [["web-1:1", "15"], ["web-2:2", "–"]]},
        {"label": "receivers", "key": "receivers", "kind": "list",
         "entries": ["app.on_commit", "audit.log"]},
        {"label": "sql", "key": "sql", "kind": "code", "text": "SELECT 1"},
        {"label": "stack", "key": "stack", "kind": "stack",
         "entries": ["a.py:1 in f", "b.py:2 in g"]},
    ]
    assert evidence_rows(["not", "an", "object"]) == [
        {"label": "value", "key": "value", "kind": "list", "entries": ["not", "an", "object"]}]


def test_the_capacity_groups_evidence_is_a_table_of_processes(view, tracked):
    for pid in (5151, 6161):
        ingest.register_process(tracked.token, decoded(hello_msg(
            pid=pid, engines=[engine_info(server={"max_connections": 29})])))
    html = view(findings_url(tracked))
    g = article(html, "pool-exceeds-max-connections")
    assert ('<dt>code location</dt><dd><span class="muted">– (configuration)</span></dd>') in g
    assert ('<table class="evidence-table"><thead><tr><th>process</th><th>capacity</th>'
            '<th>engines</th></tr></thead><tbody><tr><td>web-1:4242</td><td>15</td>'
            '<td>postgresql/shop (pool_size 5, max_overflow 10)</td></tr>') in g
    assert '<dt>total</dt><dd data-evidence="total">45</dd>' in g


def test_a_muted_group_is_hidden_by_default_and_shown_on_request(view, tracked):
    report(tracked, finding_event(), n_plus_one())
    advice.change_status(group("n-plus-one").pk, "mute", None)
    html = view(findings_url(tracked))
    assert listed(html) == [("lost-changes-on-close", "open")]
    assert ('<p class="findings-counts muted">1 open · 0 acknowledged · 1 muted (<a '
            'href="?status=all">show the 1 muted</a>)</p>') in html
    html = view(findings_url(tracked, "status=all"))
    assert listed(html) == [("lost-changes-on-close", "open"), ("n-plus-one", "muted")]
    g = article(html, "n-plus-one")
    assert ('<p class="advice-note muted small">Muted by a deleted user at 00:01:40.500; '
            'still counted, hidden by default.</p>') in g
    assert 'class="unmute">Unmute</button>' in g
    assert 'class="mute">' not in g
    assert listed(view(findings_url(tracked, "status=muted"))) == [("n-plus-one", "muted")]


def test_a_reopened_group_says_who_acknowledged_it(view, tracked, alice, monkeypatch):
    from django.utils import timezone

    report(tracked, finding_event())
    advice.change_status(group().pk, "acknowledge", alice)
    html = view(findings_url(tracked))
    assert ('<p class="advice-note muted small">Acknowledged by alice at 00:01:40.500; it '
            'reopens if it occurs again.</p>') in article(html, "lost-changes-on-close")
    assert 'class="acknowledge"' not in article(html, "lost-changes-on-close")
    later = timezone.now() + timedelta(seconds=30)
    monkeypatch.setattr(timezone, "now", lambda: later)
    report(tracked, finding_event("s2", ts=STATE_TS + 29))
    g = article(view(findings_url(tracked)), "lost-changes-on-close")
    assert ('<p class="advice-note reopened">Reopened at 00:02:10.500: it occurred again after '
            'alice acknowledged it at 00:01:40.500.</p>') in g
    assert 'data-status="open"' in g


def test_filters_by_engine_severity_and_status(view, tracked):
    ingest.store_engine(tracked.process.pk, decoded({"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/cache", url="sqlite://")}))
    report(tracked, finding_event(), n_plus_one(), finding_event("s5", "e2"))
    html = view(findings_url(tracked))
    assert re.findall(r"<option(?: selected)?>([^<]+)</option>",
                      html.split('name="engine"')[1].split("</select>")[0]) == [
        "postgresql/shop", "sqlite/cache"]
    assert len(listed(html)) == 3
    only_cache = view(findings_url(tracked, "engine=sqlite/cache"))
    assert listed(only_cache) == [("lost-changes-on-close", "open")]
    assert "<option selected>sqlite/cache</option>" in only_cache
    assert f'ws-connect="/ws/live/app/{tracked.app.pk}/findings/?engine=sqlite%2Fcache"' in only_cache
    assert listed(view(findings_url(tracked, "severity=warning"))) == [("n-plus-one", "open")]
    assert listed(view(findings_url(tracked, "status=acknowledged"))) == []
    assert "No finding matches the filter." in view(findings_url(tracked, "status=acknowledged"))
    # nonsense is ignored, never an error
    assert len(listed(view(findings_url(tracked, "severity=fatal&status=gone")))) == 3


def test_a_rule_this_dashboard_does_not_know_is_shown_without_docs(view, tracked):
    event = finding_event()
    event[3] = "from-a-newer-agent"
    report(tracked, event)
    g = article(view(findings_url(tracked)), "from-a-newer-agent")
    assert "<h3>from-a-newer-agent</h3>" in g
    assert "/rules/" not in g
    assert 'class="fix"' not in g


def test_an_app_without_findings_says_how_they_come(view, tracked):
    html = view(findings_url(tracked))
    assert "No finding yet." in html
    assert sections(html) == []


# -- actions ------------------------------------------------------------------------

@pytest.fixture
def csrf_client(alice):
    """A logged-in client that enforces CSRF like a browser would be held to."""
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    return client


def token_of(client: Client, url: str) -> str:
    html = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html).group(1)


def test_acknowledge_with_csrf_is_audited_and_redirects_back(frozen, tracked, csrf_client,
                                                             alice):
    report(tracked, finding_event())
    pk = group().pk
    token = token_of(csrf_client, findings_url(tracked))
    response = csrf_client.post(f"/findings/{pk}/acknowledge/", {
        "csrfmiddlewaretoken": token, "next": findings_url(tracked, "severity=error")})
    assert response.status_code == 303
    assert response["Location"] == findings_url(tracked, "severity=error")
    g = group()
    assert (g.status, g.status_by, g.status_at) == ("acknowledged", alice, frozen)
    entry = AuditLog.objects.get()
    assert (entry.actor, entry.actor_name, entry.app_id, entry.action, entry.result) == (
        alice, "alice", tracked.app.pk, "advice.acknowledge", "open → acknowledged")
    assert entry.target == (f"advice #{pk} of shop: lost-changes-on-close at "
                            f"{SESSION_LOCATION} on postgresql/shop")


def test_htmx_gets_the_group_back_with_its_new_status(frozen, tracked, csrf_client):
    report(tracked, finding_event())
    pk = group().pk
    token = token_of(csrf_client, findings_url(tracked))
    response = csrf_client.post(f"/findings/{pk}/mute/", HTTP_HX_REQUEST="true",
                                HTTP_X_CSRFTOKEN=token)  # htmx sends the body's hx-headers
    assert response.status_code == 200
    html = response.content.decode()
    assert html.startswith(f'<article id="advice-{pk}" class="card advice muted" '
                           'data-rule="lost-changes-on-close" data-status="muted">')
    assert "Muted by alice at 00:01:40.500" in html
    assert 'class="unmute">Unmute</button>' in html
    response = csrf_client.post(f"/findings/{pk}/unmute/", HTTP_HX_REQUEST="true",
                                HTTP_X_CSRFTOKEN=token)
    assert 'data-status="open"' in response.content.decode()
    assert list(AuditLog.objects.order_by("pk").values_list("action", "result")) == [
        ("advice.mute", "open → muted"), ("advice.unmute", "muted → open")]


def test_the_page_carries_the_csrf_token_for_htmx(frozen, tracked, csrf_client):
    html = csrf_client.get(findings_url(tracked)).content.decode()
    assert re.search(r"""<body hx-headers='\{"X-CSRFToken": "[A-Za-z0-9]{64}"\}'>""", html)


def test_an_action_without_csrf_is_refused(frozen, tracked, csrf_client):
    report(tracked, finding_event())
    pk = group().pk
    assert csrf_client.post(f"/findings/{pk}/acknowledge/").status_code == 403
    assert csrf_client.post(f"/findings/{pk}/acknowledge/", HTTP_HX_REQUEST="true",
                            HTTP_X_CSRFTOKEN="forged").status_code == 403
    assert group().status == "open"
    assert AuditLog.objects.count() == 0


def test_an_action_by_get_is_refused(frozen, tracked, logged_in):
    report(tracked, finding_event())
    response = logged_in.get(f"/findings/{group().pk}/acknowledge/")
    assert response.status_code == 405
    assert group().status == "open"
    assert AuditLog.objects.count() == 0


def test_an_action_without_login_is_refused(frozen, tracked, client):
    report(tracked, finding_event())
    url = f"/findings/{group().pk}/mute/"
    response = client.post(url)
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next={url}"
    assert group().status == "open"
    assert AuditLog.objects.count() == 0


def test_unknown_actions_and_groups_are_404(frozen, tracked, logged_in):
    report(tracked, finding_event())
    pk = group().pk
    assert logged_in.post(f"/findings/{pk}/delete/").status_code == 404
    assert logged_in.post(f"/findings/{pk + 1000}/mute/").status_code == 404
    assert AuditLog.objects.count() == 0


def test_next_elsewhere_is_ignored(frozen, tracked, logged_in):
    report(tracked, finding_event())
    response = logged_in.post(f"/findings/{group().pk}/mute/",
                              {"next": "https://evil.example/"})
    assert response["Location"] == findings_url(tracked)


# -- rules --------------------------------------------------------------------------

def test_the_rules_index_lists_the_catalogue_most_severe_first(view):
    html = view("/rules/")
    ids = re.findall(r'<tr class="rule" data-rule="([^"]+)">', html)
    assert sorted(ids) == sorted(RULES)
    severities = [RULES[rule_id].severity for rule_id in ids]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    row = re.search(r'<tr class="rule" data-rule="n-plus-one">.*?</tr>', html, re.S).group(0)
    assert re.findall(r"<td>(.*?)</td>", row, re.S) == [
        '<a href="/rules/n-plus-one/"><code>n-plus-one</code></a>',
        '<span class="badge warning">warning</span>', "runtime",
        "N+1 lazy loads of a relationship", "<code>n_plus_one</code> = 5"]


def test_a_rule_page_explains_it_and_where_it_was_seen(view, tracked):
    report(tracked, n_plus_one(), n_plus_one(STATE_TS + 1))
    html = view("/rules/n-plus-one/")
    rule = RULES["n-plus-one"]
    assert "<h1>N+1 lazy loads of a relationship</h1>" in html
    assert f'<p class="rule-why">{rule.why}</p>' in html
    assert f'<p class="rule-fix">{rule.fix}</p>' in html
    assert ('<pre class="code"><code>stmt = select(Order).options(selectinload(Order.items))'
            '</code></pre>') in html
    assert ("Threshold <code>n_plus_one</code>, default <strong>5</strong>.") in html
    assert (f'<li><a href="/apps/{tracked.app.pk}/findings/">shop</a>: 2 occurrences at 1 '
            'place</li>') in html
    html = view("/rules/lost-changes-on-close/")
    assert "No threshold: every occurrence is reported." in html
    assert "No app has reported it." in html


# -- links --------------------------------------------------------------------------

def test_the_overview_counts_open_findings_per_app_by_severity(view, tracked):
    report(tracked, finding_event(), n_plus_one(), finding_event(rule="lost-changes-on-gc"))
    ingest.register_process(tracked.token, decoded(hello_msg(pid=1)))
    advice.change_status(group("lost-changes-on-gc").pk, "mute", None)
    html = view("/")
    assert (f'<a class="findings-link" href="/apps/{tracked.app.pk}/findings/">open findings '
            '<span class="badge error">1 error</span> <span class="badge warning">1 warning'
            '</span></a>') in html


def test_the_engine_page_links_its_statements_and_findings(view, tracked):
    html = view(f"/engines/{tracked.engine.pk}/")
    assert (f'<a class="statements-link" href="/engines/{tracked.engine.pk}/statements/">'
            'statements by fingerprint</a>') in html
    assert (f'<a class="findings-link" href="/apps/{tracked.app.pk}/findings/?engine='
            'postgresql/shop">findings about postgresql/shop</a>') in html
    assert '<a class="rules-nav" href="/rules/">rules</a>' in html


def test_the_engine_page_shows_the_servers_settings(view, tracked):
    ingest.store_engine(tracked.process.pk, decoded({"t": "engine", "engine": engine_info(
        server={"max_connections": 100, "wait_timeout": 28800})}))
    html = view(f"/engines/{tracked.engine.pk}/")
    assert ('<dt>server</dt><dd class="server"><span class="muted">max_connections</span> 100 · '
            '<span class="muted">wait_timeout</span> 28800</dd>') in html
    assert capacity.check(tracked.app.pk) == []  # 15 of 100


def test_the_admin_shows_advice_statements_and_the_audit_log_read_only(frozen, tracked,
                                                                      admin_client):
    report(tracked, finding_event())
    advice.change_status(group().pk, "mute", None)
    for model in ("advice", "statementstat", "slowstatement", "auditlog"):
        assert admin_client.get(f"/admin/dashboard/{model}/").status_code == 200
        assert admin_client.get(f"/admin/dashboard/{model}/add/").status_code == 403
    entry = AuditLog.objects.get()
    assert (entry.actor, entry.actor_name) == (None, "dashboard")
    assert admin_client.get(f"/admin/dashboard/auditlog/{entry.pk}/change/").status_code == 200
    assert admin_client.post(f"/admin/dashboard/auditlog/{entry.pk}/delete/",
                             {"post": "yes"}).status_code == 403
    assert AuditLog.objects.count() == 1

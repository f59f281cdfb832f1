"""An engine's statements page: fingerprints aggregated over the app's recent processes
(count, total, mean, p95 from the summed histograms, max, rows, errors, location),
sorted; the slowest recent statements; and the repeated statements of a session page."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from dashboard import ingest
from dashboard.models import App, AgentToken, Process, TrackedSession
from tracker import protocol

from .conftest import (
    STATE_TS, STATEMENT_LOCATION, STATEMENT_SQL, engine_state_with, events_msg, frame,
    hello_msg, session_summary, slow_statement, state_msg, statement_stats,
)

pytestmark = pytest.mark.django_db

INSERT_SQL = "INSERT INTO order_item (order_id, quantity) VALUES (?, ?)"


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def buckets(**counts: int) -> list[int]:
    """A histogram: buckets(b3=9) puts 9 in bucket 3 (≤ HIST_BOUNDS[3] = 5 ms)."""
    out = [0] * protocol.HIST_BUCKETS
    for name, n in counts.items():
        out[int(name[1:])] = n
    return out


@pytest.fixture
def two_processes(tracked):
    """The app's engine e1 in two processes: the tracked one (4242) ran the SELECT
    10 times and an INSERT 100 times; the other (5151) the SELECT 30 times."""
    tracked.ingest.store(decoded(state_msg(engine_state_with(
        statement_stats(),
        statement_stats("bbb", sql=INSERT_SQL, op="insert", table="order_item", count=100,
                        errors=0, total=0.5, max=0.01, rows=100, buckets=buckets(b2=100),
                        location="shop/orders.py:60 in add_items", stack=None)))))
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    ingest.StateIngest(other.pk).store(decoded(state_msg(engine_state_with(statement_stats(
        count=30, errors=0, total=0.9, max=1.5, rows=30, buckets=buckets(b3=20, b8=10))))))
    return other


def statements_url(tracked, query: str = "") -> str:
    return f"/engines/{tracked.engine.pk}/statements/" + (f"?{query}" if query else "")


def rows_of(html: str) -> list[tuple[str, list[str]]]:
    """(fp, cells) of the statements table, in order."""
    return [(fp, re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)) for fp, body in re.findall(
        r'<tr class="statement [a-z]+" data-fp="([^"]+)">(.*?)</tr>', html, re.S)]


def test_fingerprints_are_aggregated_across_the_apps_processes(view, tracked, two_processes):
    html = view(statements_url(tracked))
    assert f'ws-connect="/ws/live/engine/{tracked.engine.pk}/statements/"' in html
    assert ("<h2>By fingerprint <span class=\"muted small\">2 fingerprints · 140 executions · "
            "1.64 s in all, since each process started</span></h2>") in html
    assert (f'Across 2 processes: <a href="/engines/{tracked.engine.pk}/">web-1:4242</a>, '
            f'<a href="/engines/') in html
    rows = rows_of(html)
    assert [fp for fp, _ in rows] == ["a1b2c3d4e5f6", "bbb"]  # most total time first
    select = rows[0][1]
    assert select[0] == (f'<span class="op-label">select</span> <span class="muted small">'
                         f'customer</span><code class="sql">{STATEMENT_SQL}</code>')
    # 40 runs: 29 within 5 ms, 1 within 0.5 s, 10 within 1 s → p95 ≤ 1 s; max 1.5 s
    assert select[1:8] == ["40", "1.14 s", "28.4 ms", "1.00 s", "1.50 s", "40", "1"]
    assert select[8].startswith(f"<code>{STATEMENT_LOCATION}</code><details "
                                'data-keep="fp-a1b2c3d4e5f6">')
    # all 100 inserts within 1 ms: p95 is that bound
    assert rows[1][1][1:8] == ["100", "500.0 ms", "5.0 ms", "1.0 ms", "10.0 ms", "100", "0"]
    assert rows[1][1][8] == "<code>shop/orders.py:60 in add_items</code>"


@pytest.mark.parametrize("sort, order", [
    ("count", ["bbb", "a1b2c3d4e5f6"]), ("p95", ["a1b2c3d4e5f6", "bbb"]),
    ("mean", ["a1b2c3d4e5f6", "bbb"]), ("rows", ["bbb", "a1b2c3d4e5f6"]),
    ("errors", ["a1b2c3d4e5f6", "bbb"]), ("nonsense", ["a1b2c3d4e5f6", "bbb"]),
])
def test_the_table_sorts_by_any_column(view, tracked, two_processes, sort, order):
    html = view(statements_url(tracked, f"sort={sort}"))
    assert [fp for fp, _ in rows_of(html)] == order
    if sort != "nonsense":
        assert f'statements/?sort={sort}"' in html  # the live socket keeps the order


def test_only_recent_processes_of_the_app_count(view, tracked, two_processes, settings):
    from django.utils import timezone

    settings.RETORT = {"RECENT_PROCESS_SECONDS": 60}
    ingest.mark_disconnected(two_processes.pk)
    Process.objects.filter(pk=two_processes.pk).update(
        last_seen=timezone.now() - timedelta(seconds=61))
    # the same engine name in another app is another engine
    billing = App.objects.create(name="billing")
    token, _ = AgentToken.issue(billing)
    other_app = ingest.register_process(token, decoded(hello_msg("billing", pid=7)))
    ingest.StateIngest(other_app.pk).store(decoded(state_msg(engine_state_with(
        statement_stats(count=1000)))))
    rows = rows_of(view(statements_url(tracked)))
    assert [(fp, cells[1]) for fp, cells in rows] == [("bbb", "100"), ("a1b2c3d4e5f6", "10")]


def test_the_slowest_recent_statements_are_listed_slowest_first(view, tracked):
    tracked.ingest.store_events(decoded(events_msg(
        slow_statement(ts=STATE_TS - 5, seconds=0.75),
        slow_statement(ts=STATE_TS - 2, seconds=2.5, params={"id": 7, "password": "••••••"}),
    )))
    html = view(statements_url(tracked))
    slow = re.findall(r'<tr class="slow-statement" data-fp="[^"]+">(.*?)</tr>', html, re.S)
    assert len(slow) == 2
    cells = re.findall(r"<td[^>]*>(.*?)</td>", slow[0], re.S)
    assert cells[:3] == ["2.50 s", '00:01:38.000<div class="muted small">web-1:4242</div>', "1"]
    assert cells[3] == (f'<code class="sql">{STATEMENT_SQL}</code><div class="params small">'
                        '<span class="muted">parameters:</span> <code>{&quot;id&quot;: 7, '
                        '&quot;password&quot;: &quot;••••••&quot;}</code></div>')
    assert cells[4] == (f'<a href="/sessions/{tracked.session.pk}/">s1</a>'
                        '<div class="muted small">worker-1</div>')
    assert re.findall(r"<td[^>]*>(.*?)</td>", slow[1], re.S)[0] == "750.0 ms"
    assert "parameters:" not in slow[1]  # not captured: nothing shown


def test_an_engine_without_statements_says_so(view, tracked):
    html = view(statements_url(tracked))
    assert "No statement reported yet." in html
    assert "No slow statement recently." in html


# -- repeats on the session page ----------------------------------------------------

def test_a_session_page_shows_its_repeated_statements_with_their_sql(view, tracked,
                                                                     two_processes):
    tracked.ingest.store(decoded(state_msg(sessions=[session_summary(repeats=[
        ["a1b2c3d4e5f6", 12, 1], ["unknown", 3, -1], ["malformed"], ["bbb", 1, 1]])])))
    pk = TrackedSession.objects.get(process=tracked.process, key="s1").pk
    html = view(f"/sessions/{pk}/")
    section = html.split('<section id="session-repeats" class="card">')[1].split("</section>")[0]
    repeats = re.findall(r'<tr class="repeat" data-fp="([^"]+)">(.*?)</tr>', section, re.S)
    assert [(fp, re.findall(r"<td[^>]*>(.*?)</td>", body, re.S)) for fp, body in repeats] == [
        ("a1b2c3d4e5f6", ["12", "1", f'<code class="sql">{STATEMENT_SQL}</code>']),
        ("unknown", ["3", '<span class="muted" title="parameters are not captured">unknown'
                          '</span>',
                     '<span class="muted">fingerprint <code>unknown</code> (its SQL has not '
                     'been reported yet)</span>']),
    ]


def test_a_session_without_repeats_says_so(view, tracked):
    html = view(f"/sessions/{tracked.session.pk}/")
    assert '<section id="session-repeats" class="card">' in html
    assert "No statement repeated." in html

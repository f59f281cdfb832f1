"""Processes grouped by host and command line, and restarts found within a group."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.utils.timezone import now as django_now

from dashboard.lineage import group_processes
from dashboard.models import App, Process

T0 = datetime(2026, 11, 21, 9, 0, 0, tzinfo=timezone.utc)
GUNICORN = ["/venv/bin/gunicorn", "-w", "2", "shop:app"]


def _process(app: App, pid: int, *, started: float, argv=GUNICORN, host="web-1",
             ppid: int | None = 100, ended: float | None = None) -> Process:
    return Process.objects.create(
        app=app, host=host, pid=pid, ppid=ppid, started_at=T0 + timedelta(seconds=started),
        argv=argv, python_version="3.11.7", sqlalchemy_version="2.1.0",
        agent_version="0.1.0",
        # a connected process was seen just now (else it would be "stale")
        last_seen=django_now() if ended is None else T0 + timedelta(seconds=ended),
        connected=ended is None,
        disconnected_at=None if ended is None else T0 + timedelta(seconds=ended))


@pytest.fixture
def shop(db):
    return App.objects.create(name="shop")


def _summary(groups):
    return [(g.host, g.command, [(p.pid, p.replaced_by.pid if p.replaced_by else None)
                                 for p in g.processes], g.restarts, g.last_restart)
            for g in groups]


def test_a_killed_worker_is_replaced_and_its_sibling_is_not_a_restart(shop):
    w1 = _process(shop, 101, started=0, ended=50)
    w2 = _process(shop, 102, started=0.2)
    w3 = _process(shop, 103, started=50.4)  # gunicorn's replacement for 101
    groups = group_processes([w1, w2, w3])
    assert _summary(groups) == [
        ("web-1", "/venv/bin/gunicorn -w 2 shop:app", [(103, None), (102, None), (101, 103)],
         1, T0 + timedelta(seconds=50.4))]


def test_a_replacement_started_just_before_the_close_was_seen_still_counts(shop):
    old = _process(shop, 101, started=0, ended=30.0)
    new = _process(shop, 102, started=28.5)  # within the 2 s slack
    assert _summary(group_processes([old, new]))[0][2:4] == ([(102, None), (101, 102)], 1)


def test_a_process_started_long_before_the_close_ran_beside_it(shop):
    old = _process(shop, 101, started=0, ended=30.0)
    beside = _process(shop, 102, started=20.0)
    assert _summary(group_processes([old, beside]))[0][2:4] == ([(102, None), (101, None)], 0)


def test_each_successor_replaces_one_predecessor(shop):
    a = _process(shop, 101, started=0, ended=10)
    b = _process(shop, 102, started=0, ended=11)
    c = _process(shop, 103, started=10.5)
    assert _summary(group_processes([a, b, c]))[0][2:4] == (
        [(103, None), (102, None), (101, 103)], 1)


def test_runs_of_a_script_on_two_hosts_are_two_groups(shop):
    script = ["report.py", "--daily"]
    first = _process(shop, 200, started=0, ended=5, argv=script, ppid=1)
    second = _process(shop, 201, started=100, argv=script, ppid=1)
    elsewhere = _process(shop, 300, started=50, argv=script, host="web-2", ppid=1)
    groups = group_processes([first, second, elsewhere])
    assert _summary(groups) == [
        ("web-1", "report.py --daily", [(201, None), (200, 201)], 1,
         T0 + timedelta(seconds=100)),
        ("web-2", "report.py --daily", [(300, None)], 0, None)]
    assert [(g.running, g.stale) for g in groups] == [(1, 0), (1, 0)]


def test_the_overview_shows_each_group_with_its_restarts(shop, logged_in):
    # recent enough to be listed: started now, one worker killed and replaced
    now = django_now()
    base = (now - T0).total_seconds() - 60
    _process(shop, 101, started=base, ended=base + 50)
    _process(shop, 102, started=base + 0.2)
    _process(shop, 103, started=base + 50.4)
    html = logged_in.get("/").content.decode()
    head = html[html.index('<tr class="group-head">'):]
    head = head[:head.index("</tr>")]
    assert '<code class="group-command" title="/venv/bin/gunicorn -w 2 shop:app">' in head
    restart = (T0 + timedelta(seconds=base + 50.4)).strftime("%H:%M:%S")
    assert (f'— 2 running · <span class="restarts">1 restart</span>, last at {restart}'
            in head)
    assert html.count('<tr class="group-head">') == 1
    assert '<div class="muted small replaced">replaced by 103</div>' in html
    assert html.index("web-1:103<") < html.index("web-1:102<") < html.index("web-1:101<")


def test_a_process_with_many_engines_lists_six_and_folds_the_rest(shop, logged_in):
    from dashboard.models import Engine

    process = _process(shop, 101, started=(django_now() - T0).total_seconds() - 5)
    for n in range(8):
        Engine.objects.create(process=process, key=f"e{n + 1}", name=f"sqlite/db{n + 1}",
                              pool={"class": "QueuePool"})
    html = logged_in.get("/").content.decode()
    shown, folded = html.split('<details class="more-engines"', 1)
    assert shown.count('class="engine-link"') == 6
    assert (f' data-keep="engines-{process.pk}"><summary class="small muted">2 more engines'
            f'</summary>') in folded
    assert folded.count('class="engine-link"') == 2

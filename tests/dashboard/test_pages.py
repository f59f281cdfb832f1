"""Overview and engine pages (first paint), login, 404 and the admin's staff check."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from dashboard import ingest
from dashboard.models import AgentToken, App, Engine, Process
from tracker import protocol

from .conftest import (HOLDER_LOCATION, HOST, MASKED_URL, NOW, PID, engine_state, frame,
                       hello_msg, state_msg)

pytestmark = pytest.mark.django_db


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice")


@pytest.fixture
def logged_in(client, user):
    client.force_login(user)
    return client


# -- login --------------------------------------------------------------------------

def test_overview_redirects_anonymous_users_to_login(client, stored):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/login/?next=/"


def test_engine_page_redirects_anonymous_users_to_login(client, stored):
    response = client.get(f"/engines/{stored.engine.pk}/")
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=/engines/{stored.engine.pk}/"
    assert MASKED_URL.encode() not in response.content


def test_login_page_is_public(client):
    response = client.get("/accounts/login/?next=/")
    assert response.status_code == 200
    assert b'<input type="hidden" name="next" value="/">' in response.content


def test_login_with_password_lands_on_the_overview(client, django_user_model, stored):
    django_user_model.objects.create_user("bob", password="correct-horse-42")
    response = client.post("/accounts/login/", {"username": "bob",
                                                 "password": "correct-horse-42",
                                                 "next": "/"})
    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


# -- overview -----------------------------------------------------------------------

@pytest.fixture
def connected(shop):
    """A connected process of "shop" whose engine "e1" reported 3 connections out."""
    process = ingest.register_process(shop.token, protocol.decode(frame(hello_msg())))
    ingest.StateIngest(process.pk).store(protocol.decode(frame(state_msg())))
    return Engine.objects.get(process=process)


def test_overview_lists_apps_processes_and_engine_links(logged_in, connected):
    App.objects.create(name="billing")
    response = logged_in.get("/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "<h2>shop</h2>" in html
    assert "<h2>billing</h2>" in html
    assert f"<td>{HOST}:{PID}<div" in html
    assert (f'<a class="engine-link" href="/engines/{connected.pk}/">'
            f"postgresql/shop</a>") in html
    assert '<span class="badge connected">connected</span>' in html
    assert ('<span class="muted small">QueuePool · 3 out / 15 · '
            '<span class="warn">1 waiting</span></span>') in html
    assert '<td class="num warn" title="disconnected: 5, queue_full: 2">7</td>' in html
    # the app with no process yet explains how to connect one
    assert "<code>RETORT_APP=billing</code>" in html
    assert "<code>RETORT_APP=shop</code>" not in html
    assert 'ws-connect="/ws/live/overview/"' in html


def test_overview_shows_no_gauges_for_a_disconnected_process(logged_in, stored):
    html = logged_in.get("/").content.decode()
    assert f"<td>{HOST}:{PID}<div" in html
    assert '<span class="badge disconnected">disconnected</span>' in html
    assert '<span class="muted small">QueuePool</span>' in html
    assert "3 out" not in html


def test_overview_lists_only_recent_processes(logged_in, stored, settings):
    settings.RETORT = {"RECENT_PROCESS_SECONDS": 60}
    Process.objects.filter(pk=stored.process.pk).update(
        last_seen=timezone.now() - timedelta(seconds=120))
    ingest.register_process(stored.token, protocol.decode(frame(hello_msg(pid=5151))))
    html = logged_in.get("/").content.decode()
    assert f"<td>{HOST}:5151<div" in html
    assert f"<td>{HOST}:{PID}<div" not in html
    assert "2 processes in all; those disconnected more than" in html


def test_overview_lists_old_processes_that_are_still_connected(logged_in, connected):
    Process.objects.update(last_seen=timezone.now() - timedelta(days=2))
    html = logged_in.get("/").content.decode()
    assert f"<td>{HOST}:{PID}<div" in html
    assert '<span class="badge stale">stale</span>' in html


def test_overview_of_an_app_whose_processes_are_all_old(logged_in, stored):
    Process.objects.update(last_seen=timezone.now() - timedelta(hours=2))
    html = logged_in.get("/").content.decode()
    assert f"<td>{HOST}:{PID}<div" not in html
    assert "No process has connected yet" not in html
    assert "1 process in all, not listed" in html


def test_overview_without_apps_explains_how_to_start(logged_in):
    html = logged_in.get("/").content.decode()
    assert "python manage.py create_agent_token APP_NAME" in html


# -- engine page --------------------------------------------------------------------

def test_engine_page_shows_config_state_and_holders(logged_in, stored):
    response = logged_in.get(f"/engines/{stored.engine.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f"<dt>URL</dt><dd><code>{MASKED_URL}</code></dd>" in html
    assert "<dt>pool_size</dt><dd>5</dd>" in html
    assert "<dt>max_overflow</dt><dd>10</dd>" in html
    assert "<dt>pool_timeout</dt><dd>30.0 s</dd>" in html
    assert "<dt>pool_recycle</dt><dd>3600 s</dd>" in html
    assert "<dt>pool_pre_ping</dt><dd>on</dd>" in html
    assert 'data-gauge="checked_out">3<' in html
    assert 'data-gauge="capacity">15<' in html
    assert "Checked out now <span class=\"muted small\">(3)</span>" in html
    assert html.count(f"<td><code>{HOLDER_LOCATION}</code>") == 3 + 1  # holders + event
    assert "waited 30.004 s" in html
    assert f'ws-connect="/ws/live/engine/{stored.engine.pk}/"' in html
    # first paint: the live sections are swapped in place, not out of band
    assert "hx-swap-oob" not in html


def test_engine_page_shows_connections_held_since_before_the_agent(logged_in, shop,
                                                                     frozen):
    process = ingest.register_process(shop.token, protocol.decode(frame(hello_msg())))
    state = engine_state(checked_out=1)
    # 90 s before NOW on the dashboard clock; the agent's clock is 0.5 s behind it
    state["holders"] = [{"since": NOW.timestamp() - 90, "thread": "unknown", "thread_id": 0,
                         "stack": [], "before_agent": True}]
    ingest.StateIngest(process.pk).store(protocol.decode(frame(state_msg(state))))
    engine = Engine.objects.get(process=process)
    html = logged_in.get(f"/engines/{engine.pk}/").content.decode()
    row = html[html.index('<table class="holders">'):html.index("</table>")]
    assert ('<td class="num"><span title="checked out before the agent was attached: held '
            'at least this long">≥ 89.50 s</span></td>') in row
    assert "<td>unknown <span class=\"muted small\">0</span></td>" in row
    assert ('<span class="muted before-agent">checked out before the agent was attached'
            '</span>') in row


def test_engine_page_before_any_state(logged_in, shop):
    process = ingest.register_process(shop.token, protocol.decode(frame(hello_msg())))
    engine = Engine.objects.get(process=process)
    html = logged_in.get(f"/engines/{engine.pk}/").content.decode()
    assert "no state received yet" in html
    assert 'data-gauge="checked_out">0<' in html
    assert "No connection is checked out." in html


def test_engine_page_never_shows_the_password(logged_in, agent):
    """End to end with the real agent: the URL it reports is masked, and the page shows
    that masked URL."""
    import sqlalchemy

    app = App.objects.create(name="tests")
    token, _ = AgentToken.issue(app)
    engine = sqlalchemy.create_engine(
        "postgresql+psycopg://shop:s3cret-Pa55@db.internal:5432/shop")
    try:
        # the agent registers an engine on its first connection; no server here
        agent.registry.engine_entry(engine)
        hello = protocol.decode(frame(agent.hello()))
        state = protocol.decode(frame(agent.snapshot()))
    finally:
        engine.dispose()
    process = ingest.register_process(token, hello)
    ingest.StateIngest(process.pk).store(state)
    stored = Engine.objects.get(process=process, url__startswith="postgresql")
    html = logged_in.get(f"/engines/{stored.pk}/").content.decode()
    assert f"<code>{MASKED_URL}</code>" in html
    assert "s3cret-Pa55" not in html
    assert "s3cret-Pa55" not in stored.url


def test_unknown_engine_is_404(logged_in, stored):
    assert logged_in.get(f"/engines/{stored.engine.pk + 1000}/").status_code == 404


# -- admin --------------------------------------------------------------------------

def test_admin_redirects_anonymous_users_to_its_login(client):
    response = client.get("/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/"


def test_admin_refuses_users_who_are_not_staff(logged_in):
    response = logged_in.get("/admin/dashboard/agenttoken/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/dashboard/agenttoken/"


def test_admin_serves_staff(admin_client, stored):
    response = admin_client.get("/admin/dashboard/agenttoken/")
    assert response.status_code == 200
    assert stored.token.prefix.encode() in response.content
    assert stored.raw.encode() not in response.content
    assert stored.token.digest.encode() not in response.content


def test_nav_shows_the_admin_link_to_staff_only(logged_in, admin_client, stored):
    admin_link = b'<a href="/admin/">admin</a>'
    assert admin_link not in logged_in.get("/").content
    assert admin_link in admin_client.get("/").content


def test_static_assets_are_referenced_by_the_pages(logged_in):
    html = logged_in.get("/").content.decode()
    assert re.search(r'<script src="/static/vendor/htmx/htmx-[0-9.]+\.min\.js"', html)

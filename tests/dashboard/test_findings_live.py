"""Live findings and statements pages with real consumers on the channel layer: a
finding an agent reports reaches the open findings page (with its filters) and the
overview; a user's acknowledgement reaches every open findings page; the dashboard's
own capacity advice appears when a process says hello; statement statistics and slow
statements reach the statements page; login, Origin and unknown objects."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from dashboard import groups
from dashboard.models import Advice, Engine

from .conftest import (
    ORIGIN, drain, engine_info, engine_state_with, events_msg, finding_event, frame,
    hello_msg, join, live, open_agent, say_hello, send_and_settle, slow_statement,
    state_msg, statement_stats,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _membership(record_membership):
    yield


async def connected_agent(shop, hello=None):
    agent = await open_agent(shop.raw)
    welcome = await say_hello(agent, hello)
    await send_and_settle(agent, state_msg())
    return agent, welcome["process"]


async def open_findings_page(shop, session_cookie, query: str = ""):
    page = live(f"/ws/live/app/{shop.app.pk}/findings/" + (f"?{query}" if query else ""),
                ORIGIN, session_cookie)
    await join(page, groups.app_findings(shop.app.pk))
    return page


@sync_to_async
def engine_pk(key: str = "e1") -> int:
    return Engine.objects.get(key=key).pk


@sync_to_async
def advice_pk(rule: str) -> int:
    return Advice.objects.get(rule=rule).pk


async def test_a_reported_finding_appears_on_the_open_findings_page(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    page = await open_findings_page(shop, session_cookie)
    overview = live("/ws/live/overview/", ORIGIN, session_cookie)
    await join(overview, groups.OVERVIEW)
    await agent.send_to(bytes_data=frame(events_msg(finding_event(), finding_event("s2"))))
    html = await page.receive_from(timeout=2)
    assert html.startswith('<section id="findings-list" hx-swap-oob="true">')
    pk = await advice_pk("lost-changes-on-close")
    assert (f'<article id="advice-{pk}" class="card advice open" '
            'data-rule="lost-changes-on-close" data-status="open">') in html
    assert '<span class="advice-count" title="occurrences">×2</span>' in html
    assert '<p class="findings-counts muted">1 open · 0 acknowledged · 0 muted</p>' in html
    # the overview counts it
    frames = [await overview.receive_from(timeout=2)] + await drain(overview)
    assert '<span class="badge error">1 error</span>' in frames[-1]
    await page.disconnect()
    await overview.disconnect()
    await agent.disconnect()


async def test_the_live_page_keeps_its_filters(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    page = await open_findings_page(shop, session_cookie, "severity=warning")
    n_plus_one = ["finding", 1_767_225_700.0, "e1", "n-plus-one", "warning", "s3", "worker-2",
                  "shop/orders.py:120 in list_orders", "Order.items lazily loaded 6 times",
                  {"relationship": "Order.items", "count": 6}]
    await agent.send_to(bytes_data=frame(events_msg(finding_event(), n_plus_one)))
    html = await page.receive_from(timeout=2)
    assert 'data-rule="n-plus-one"' in html
    assert 'data-rule="lost-changes-on-close"' not in html
    await page.disconnect()
    await agent.disconnect()


async def test_an_acknowledgement_reaches_every_open_findings_page(shop, session_cookie,
                                                                   django_user_model):
    agent, _ = await connected_agent(shop)
    await send_and_settle(agent, events_msg(finding_event()))
    pk = await advice_pk("lost-changes-on-close")
    page = await open_findings_page(shop, session_cookie)

    @sync_to_async
    def acknowledge() -> int:
        client = Client()
        client.force_login(django_user_model.objects.get(username="alice"))
        return client.post(f"/findings/{pk}/acknowledge/").status_code

    assert await acknowledge() == 303
    html = await page.receive_from(timeout=2)
    assert (f'<article id="advice-{pk}" class="card advice acknowledged" '
            'data-rule="lost-changes-on-close" data-status="acknowledged">') in html
    assert "Acknowledged by alice at " in html
    await page.disconnect()
    await agent.disconnect()


async def test_capacity_advice_appears_when_a_process_says_hello(shop, session_cookie):
    engines = [engine_info(server={"max_connections": 20})]
    first, _ = await connected_agent(shop, hello_msg(engines=engines))
    page = await open_findings_page(shop, session_cookie)
    second, _ = await connected_agent(shop, hello_msg(pid=5151, engines=engines))
    frames = [await page.receive_from(timeout=2)] + await drain(page)
    assert 'data-rule="pool-exceeds-max-connections"' in frames[-1]
    assert ("2 processes can open 30 connections to postgresql://db.internal:5432") in frames[-1]
    await page.disconnect()
    await first.disconnect()
    await second.disconnect()


async def test_the_statements_page_follows_state_frames_and_slow_statements(
        shop, session_cookie):
    agent, _ = await connected_agent(shop)
    pk = await engine_pk()
    page = live(f"/ws/live/engine/{pk}/statements/?sort=count", ORIGIN, session_cookie)
    await join(page, groups.app_statements(shop.app.pk))
    await agent.send_to(bytes_data=frame(state_msg(engine_state_with(
        statement_stats(), statement_stats("bbb", count=99)))))
    html = await page.receive_from(timeout=2)
    assert html.startswith('<section id="statements-list" class="card" hx-swap-oob="true">')
    assert html.index('data-fp="bbb"') < html.index('data-fp="a1b2c3d4e5f6"')  # by count
    assert '<section id="slow-statements" class="card" hx-swap-oob="true">' in html
    await agent.send_to(bytes_data=frame(events_msg(slow_statement(seconds=3.5))))
    html = await page.receive_from(timeout=2)
    assert '<td class="num">3.50 s</td>' in html
    # a state frame without statements changes nothing there: no re-render
    await agent.send_to(bytes_data=frame(state_msg()))
    assert await page.receive_nothing(timeout=0.5) is True
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("path", ["/ws/live/app/{app}/findings/",
                                  "/ws/live/engine/{engine}/statements/"])
async def test_anonymous_sockets_are_closed_4401(shop, path):
    agent, _ = await connected_agent(shop)
    page = live(path.format(app=shop.app.pk, engine=await engine_pk()), ORIGIN)
    assert (await page.connect())[0] is True
    assert await page.receive_output() == {"type": "websocket.close", "code": 4401,
                                           "reason": "login required"}
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("path", ["/ws/live/app/{app}/findings/",
                                  "/ws/live/engine/{engine}/statements/"])
async def test_sockets_from_a_foreign_origin_are_rejected(shop, session_cookie, path):
    agent, _ = await connected_agent(shop)
    page = live(path.format(app=shop.app.pk, engine=await engine_pk()),
                (b"origin", b"http://evil.example"), session_cookie)
    assert await page.connect() == (False, 1000)
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("path", ["/ws/live/app/999999/findings/",
                                  "/ws/live/engine/999999/statements/"])
async def test_unknown_apps_and_engines_are_closed_4404(shop, session_cookie, path):
    page = live(path, ORIGIN, session_cookie)
    assert (await page.connect())[0] is True
    assert await page.receive_output() == {"type": "websocket.close", "code": 4404,
                                           "reason": "not found"}
    await page.disconnect()

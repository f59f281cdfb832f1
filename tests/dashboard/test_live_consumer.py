"""``/ws/live/…``: browser sockets behind login and an Origin check, pushing coalesced
``hx-swap-oob`` fragments on every "changed" notice."""

from __future__ import annotations

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings

from dashboard import groups, ingest
from dashboard.models import Engine
from tracker import protocol

from .conftest import (
    HOST, ORIGIN, PID, drain, engine_state, frame, join, live, members, notify, open_agent,
    say_hello, state_msg,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _membership(record_membership):
    """Every test here records group membership (see ``members``)."""
    yield


def gauge(name: str, value: int) -> str:
    return f'data-gauge="{name}">{value}<'


def test_test_settings_allow_the_origin_used_here():
    assert "127.0.0.1" in django_settings.ALLOWED_HOSTS


async def test_anonymous_is_closed_4401(stored):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN)
    connected, _ = await communicator.connect()
    assert connected is True
    assert await communicator.receive_output() == {
        "type": "websocket.close", "code": protocol.CLOSE_LOGIN_REQUIRED,
        "reason": "login required"}
    await notify(groups.engine(stored.engine.pk))
    assert await communicator.receive_nothing() is True
    await communicator.disconnect()


async def test_anonymous_overview_is_closed_4401(stored):
    communicator = live("/ws/live/overview/", ORIGIN)
    assert (await communicator.connect())[0] is True
    assert (await communicator.receive_output())["code"] == 4401
    await communicator.disconnect()


async def test_session_with_unknown_key_is_anonymous(stored):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN,
                        (b"cookie", b"sessionid=not-a-session"))
    assert (await communicator.connect())[0] is True
    assert (await communicator.receive_output())["code"] == 4401
    await communicator.disconnect()


async def test_engine_page_socket_pushes_the_stored_state(stored, session_cookie):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    await join(communicator, groups.engine(stored.engine.pk))
    await notify(groups.engine(stored.engine.pk))
    html = await communicator.receive_from(timeout=2)
    assert isinstance(html, str)
    assert '<section id="pool-gauges" class="card gauges" hx-swap-oob="true">' in html
    assert gauge("checked_out", 3) in html
    assert gauge("idle", 2) in html
    assert gauge("capacity", 15) in html
    assert gauge("waiting", 1) in html
    for section in ("pool-timeline", "pool-holders", "pool-counters", "pool-events"):
        assert f'<section id="{section}" class="card" hx-swap-oob="true">' in html
    # 3 holders and 1 checkout timeout, each with its code location
    assert html.count("<td><code>shop/orders.py:42 in place_order</code>") == 3 + 1
    assert "waited 30.004 s" in html
    assert '<span class="badge disconnected">process disconnected</span>' in html
    assert await communicator.receive_nothing() is True  # one notice, one frame
    await communicator.disconnect()


async def test_engine_page_socket_shows_the_new_state_after_a_change(stored, session_cookie):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    await join(communicator, groups.engine(stored.engine.pk))
    state = ingest.StateIngest(stored.process.pk)
    await sync_to_async(state.store)(protocol.decode(frame(
        state_msg(engine_state(checked_out=7, idle=0, waiting=4)))))
    await notify(groups.engine(stored.engine.pk))
    html = await communicator.receive_from(timeout=2)
    assert gauge("checked_out", 7) in html
    assert gauge("idle", 0) in html
    assert gauge("waiting", 4) in html
    assert gauge("checked_out", 3) not in html
    await communicator.disconnect()


async def test_notices_for_another_engine_are_not_pushed(stored, session_cookie):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    await join(communicator, groups.engine(stored.engine.pk))
    await notify(groups.engine(stored.engine.pk + 1))
    await notify(groups.OVERVIEW)
    assert await communicator.receive_nothing(timeout=0.5) is True
    await communicator.disconnect()


async def test_closed_socket_leaves_its_group(stored, session_cookie):
    group = groups.engine(stored.engine.pk)
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    before = members(group)
    await join(communicator, group)
    assert members(group) == before + 1
    await communicator.disconnect()
    assert members(group) == before


async def test_overview_socket_pushes_the_apps(stored, session_cookie):
    communicator = live("/ws/live/overview/", ORIGIN, session_cookie)
    await join(communicator, groups.OVERVIEW)
    await notify(groups.OVERVIEW)
    html = await communicator.receive_from(timeout=2)
    assert html.startswith('<section id="apps" hx-swap-oob="true">')
    assert "<h2>shop</h2>" in html
    assert f"{HOST}:{PID}" in html
    assert f'href="/engines/{stored.engine.pk}/"' in html
    await communicator.disconnect()


async def test_agent_frames_reach_open_pages(shop, session_cookie):
    """End to end: an agent's hello updates the overview, its state the engine page."""
    overview = live("/ws/live/overview/", ORIGIN, session_cookie)
    await join(overview, groups.OVERVIEW)
    agent = await open_agent(shop.raw)
    welcome = await say_hello(agent)
    html = await overview.receive_from(timeout=2)
    assert f"{HOST}:{PID}" in html
    assert '<span class="badge connected">connected</span>' in html

    engine_pk = await sync_to_async(
        lambda: Engine.objects.get(process_id=welcome["process"]).pk)()
    page = live(f"/ws/live/engine/{engine_pk}/", ORIGIN, session_cookie)
    await join(page, groups.engine(engine_pk))
    await agent.send_to(bytes_data=frame(state_msg(engine_state(checked_out=2, idle=3))))
    html = await page.receive_from(timeout=2)
    assert gauge("checked_out", 2) in html
    assert gauge("idle", 3) in html
    assert "process disconnected" not in html
    await agent.disconnect()
    await page.disconnect()
    await overview.disconnect()


async def test_engine_page_learns_that_its_process_disconnected(shop, session_cookie):
    agent = await open_agent(shop.raw)
    welcome = await say_hello(agent)
    engine_pk = await sync_to_async(
        lambda: Engine.objects.get(process_id=welcome["process"]).pk)()
    page = live(f"/ws/live/engine/{engine_pk}/", ORIGIN, session_cookie)
    await join(page, groups.engine(engine_pk))
    await agent.send_to(bytes_data=frame(state_msg()))
    assert "process disconnected" not in await page.receive_from(timeout=2)
    await agent.send_to(bytes_data=frame({"t": "bye"}))
    await agent.disconnect()
    try:
        html = await page.receive_from(timeout=2)
        assert '<span class="badge disconnected">process disconnected</span>' in html
    finally:
        await page.disconnect()


async def test_a_notice_right_after_the_handshake_is_not_lost(stored, session_cookie,
                                                              monkeypatch):
    from dashboard.consumers.live import EngineLive

    resolve = EngineLive.resolve

    def slow_resolve(self):  # a busy database: the lookup takes 0.2 s
        time.sleep(0.2)
        return resolve(self)

    monkeypatch.setattr(EngineLive, "resolve", slow_resolve)
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    assert await communicator.connect() == (True, None)  # the page sees "open"
    await notify(groups.engine(stored.engine.pk))
    try:
        html = await communicator.receive_from(timeout=2)
        assert gauge("checked_out", 3) in html
    finally:
        await communicator.disconnect()


@pytest.mark.parametrize("origin", [b"http://evil.example", b"http://127.0.0.1.evil.example"])
async def test_foreign_origin_is_rejected_at_the_handshake(stored, session_cookie, origin):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", (b"origin", origin),
                        session_cookie)
    assert await communicator.connect() == (False, 1000)
    await communicator.disconnect()


async def test_missing_origin_is_rejected_at_the_handshake(stored, session_cookie):
    communicator = live("/ws/live/overview/", session_cookie)
    assert await communicator.connect() == (False, 1000)
    await communicator.disconnect()


async def test_unknown_engine_is_closed_4404(stored, session_cookie):
    communicator = live(f"/ws/live/engine/{stored.engine.pk + 1000}/", ORIGIN,
                        session_cookie)
    assert (await communicator.connect())[0] is True
    assert await communicator.receive_output() == {
        "type": "websocket.close", "code": 4404, "reason": "not found"}
    await communicator.disconnect()


async def test_a_burst_of_notices_is_coalesced(stored, session_cookie):
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    await join(communicator, groups.engine(stored.engine.pk))
    await notify(groups.engine(stored.engine.pk), times=20)
    await asyncio.sleep(1.0)
    frames = await drain(communicator)
    assert 1 <= len(frames) <= 2
    assert all(gauge("checked_out", 3) in html for html in frames)
    assert await communicator.receive_nothing(timeout=0.5) is True
    await communicator.disconnect()


async def test_steady_notices_are_limited_to_the_update_rate(stored, session_cookie, settings):
    settings.RETORT = {"LIVE_UPDATES_PER_SECOND": 4.0}
    communicator = live(f"/ws/live/engine/{stored.engine.pk}/", ORIGIN, session_cookie)
    await join(communicator, groups.engine(stored.engine.pk))
    start = time.monotonic()
    for _ in range(40):  # 40 notices over ~1 s
        await notify(groups.engine(stored.engine.pk))
        await asyncio.sleep(0.025)
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.4)
    frames = await drain(communicator)
    # at most one frame per 0.25 s, plus the first one at once
    assert 3 <= len(frames) <= int((elapsed + 0.4) * 4) + 1
    assert await communicator.receive_nothing(timeout=0.4) is True
    await communicator.disconnect()

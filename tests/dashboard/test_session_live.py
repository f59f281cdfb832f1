"""Live session pages with real consumers on the channel layer: a session page's socket
asks the agent (through the agent consumer of its process) for snapshots, the agent's
reply is stored and re-rendered; the sessions page follows state frames; ends and
findings reach open pages; login, Origin and bad replies."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from dashboard import groups
from dashboard.models import SessionSnapshot, TrackedSession
from tracker import protocol

from .conftest import (
    ORIGIN, arows, ended_summary, events_msg, finding_event, frame, join, live, members,
    notify, open_agent, say_hello, send_and_settle, session_summary, snapshot_msg, state_msg,
)
from .test_session_pages import change_rows

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _membership(record_membership):
    yield


@sync_to_async
def session_pk(key: str = "s1") -> int:
    return TrackedSession.objects.get(key=key).pk


async def connected_agent(shop, *sessions: dict):
    """An agent that said hello and reported ``sessions`` (s1 by default)."""
    agent = await open_agent(shop.raw)
    welcome = await say_hello(agent)
    await send_and_settle(agent, state_msg(sessions=list(sessions or [session_summary()])))
    return agent, welcome["process"]


async def receive_control(agent) -> dict:
    reply = await agent.receive_from(timeout=2)
    assert isinstance(reply, bytes)
    return protocol.decode(reply, allowed=frozenset({"control"}))


async def open_session_page(session_cookie, pk: int, query: str = ""):
    page = live(f"/ws/live/session/{pk}/" + (f"?{query}" if query else ""), ORIGIN,
                session_cookie)
    await join(page, groups.session(pk))
    return page


# -- the control path -----------------------------------------------------------------

async def test_the_agent_joins_its_process_group_until_it_leaves(shop):
    agent, process = await connected_agent(shop)
    assert members(groups.process(process)) == 1
    await agent.disconnect()
    assert members(groups.process(process)) == 0


async def test_an_open_session_page_asks_the_agent_and_shows_its_snapshot(
        shop, session_cookie):
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk)
    control = await receive_control(agent)
    assert control == {"v": 1, "t": "control", "id": f"snapshot:{pk}:limit=100&offset=0",
                       "action": "snapshot",
                       "args": {"session": "s1", "offset": 0, "limit": 100}}
    await agent.send_to(bytes_data=frame({"t": "ack", "id": control["id"],
                                          "status": "applied", "reason": ""}))
    await agent.send_to(bytes_data=frame(snapshot_msg(control["id"])))
    html = await page.receive_from(timeout=2)
    for section in ("session-summary", "session-lifecycle", "session-classes",
                    "session-entities", "session-changes", "session-findings"):
        assert f'id="{section}"' in html
    assert '<section id="session-entities" class="card" hx-swap-oob="true">' in html
    assert "Objects 1–4 of 4." in html
    assert ('<tr class="entity persistent modified" data-class="Customer" '
            'data-identity="1">') in html
    assert ("update", "Customer", "1", "attribute", "name",
            "&#x27;Ann&#x27; → &#x27;Annie&#x27;") in change_rows(html)
    assert len(change_rows(html)) == 8
    assert "waiting for the agent" not in html
    await page.disconnect()
    await agent.disconnect()


async def test_the_request_carries_the_pages_filter_and_page(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk, "class=Order&modified=yes&page=2")
    control = await receive_control(agent)
    assert control["id"] == f"snapshot:{pk}:class=Order&limit=100&modified=true&offset=100"
    assert control["args"] == {"session": "s1", "offset": 100, "limit": 100,
                               "class": "Order", "modified": True}
    await agent.send_to(bytes_data=frame(snapshot_msg(
        control["id"], entities=[], total=1, offset=100)))
    html = await page.receive_from(timeout=2)
    assert "Page 2 is past the last object (1 match)." in html
    await page.disconnect()
    await agent.disconnect()


async def test_the_page_asks_again_while_open_and_stops_when_closed(
        shop, session_cookie, settings):
    settings.RETORT = {"SNAPSHOT_SECONDS": 0.2}
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk)
    first = await receive_control(agent)
    second = await receive_control(agent)
    assert first == second  # the same request, asked again
    await page.disconnect()
    await agent.receive_nothing(timeout=0.3)  # one may have been under way
    assert await agent.receive_nothing(timeout=0.5) is True
    await agent.disconnect()


async def test_nothing_is_asked_about_an_ended_session(shop, session_cookie):
    agent, _ = await connected_agent(shop, ended_summary())
    page = await open_session_page(session_cookie, await session_pk())
    assert await agent.receive_nothing(timeout=0.5) is True
    await page.disconnect()
    await agent.disconnect()


async def test_a_snapshot_that_finds_the_session_gone_ends_it_on_the_page(
        shop, session_cookie):
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk)
    control = await receive_control(agent)
    await agent.send_to(bytes_data=frame(snapshot_msg(
        control["id"], found=False, total=0, entities=[], changes=[], changes_total=0)))
    html = await page.receive_from(timeout=2)
    assert "(gone)" in html
    assert ("No snapshot was taken while this session was live" in html)
    await page.disconnect()
    await agent.disconnect()


async def test_a_refused_request_is_shown_instead_of_waiting(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    page = await open_session_page(session_cookie, await session_pk())
    control = await receive_control(agent)
    await agent.send_to(bytes_data=frame({"t": "ack", "id": control["id"],
                                          "status": "refused",
                                          "reason": "unknown action 'snapshot'"}))
    html = await page.receive_from(timeout=2)
    assert ("The agent refused the snapshot: unknown action &#x27;snapshot&#x27;" in html)
    assert "waiting for the agent" not in html
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("request_id, session", [
    ("c1", "s1"),
    ("snapshot:999999:limit=100&offset=0", "s1"),
    ("snapshot:{pk}:limit=100&offset=0", "s2"),       # not the session it names
    ("snapshot:{pk}:offset=0&limit=100", "s1"),       # not a key we make
])
async def test_a_snapshot_answering_no_request_is_ignored(shop, request_id, session):
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    before = await arows()
    await send_and_settle(agent, snapshot_msg(request_id.format(pk=pk), session=session))
    assert await arows() == before
    # the connection goes on
    await send_and_settle(agent, state_msg(sessions=[session_summary(statements=8)]))
    assert (await sync_to_async(TrackedSession.objects.get)(key="s1")).statements == 8
    await agent.disconnect()


async def test_a_malformed_snapshot_is_refused_4000_and_nothing_is_stored(shop):
    agent, _ = await connected_agent(shop)
    before = await arows()
    bad = snapshot_msg("c1")
    del bad["changes_total"]
    await agent.send_to(bytes_data=frame(bad))
    reply = protocol.decode(await agent.receive_from(), allowed=frozenset({"error"}))
    assert (reply["code"], reply["reason"]) == (4000, "snapshot.changes_total: missing")
    await agent.disconnect()
    after = await arows()
    # the disconnect ended s1; nothing else changed
    assert [row["end"] for row in after["sessions"]] == ["disconnected"]
    assert after["snapshots"] == before["snapshots"] == []


async def test_a_control_for_a_process_whose_agent_is_gone_goes_nowhere(shop):
    agent, process = await connected_agent(shop)
    await agent.disconnect()
    await get_channel_layer().group_send(groups.process(process), {
        "type": groups.CONTROL, "id": "c1", "action": "snapshot", "args": {}})
    assert members(groups.process(process)) == 0


# -- pages follow what agents report -------------------------------------------------

async def test_the_sessions_page_follows_state_frames_with_its_filters(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    app_pk = shop.app.pk
    page = live(f"/ws/live/app/{app_pk}/sessions/?thread=worker-2", ORIGIN, session_cookie)
    await join(page, groups.app_sessions(app_pk))
    await agent.send_to(bytes_data=frame(state_msg(sessions=[
        session_summary("s2", thread="worker-2", statements=42)])))
    html = await page.receive_from(timeout=2)
    assert html.startswith('<section id="sessions-list" class="card" hx-swap-oob="true">')
    assert 'data-session="s2"' in html
    assert 'data-session="s1"' not in html  # worker-1: filtered out
    assert '<td class="num">42</td>' in html
    await page.disconnect()
    await agent.disconnect()


async def test_open_pages_learn_that_the_agent_went_away(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk)
    await receive_control(agent)
    sessions_page = live(f"/ws/live/app/{shop.app.pk}/sessions/", ORIGIN, session_cookie)
    await join(sessions_page, groups.app_sessions(shop.app.pk))
    await agent.send_to(bytes_data=frame({"t": "bye"}))
    html = await page.receive_from(timeout=2)
    assert "(disconnected)" in html
    assert '<span class="badge disconnected">disconnected</span>' in html
    html = await sessions_page.receive_from(timeout=2)
    assert '<tr class="session ended" data-session="s1">' in html
    await page.disconnect()
    await sessions_page.disconnect()
    await agent.disconnect()


async def test_a_finding_reaches_the_page_of_its_session(shop, session_cookie):
    agent, _ = await connected_agent(shop)
    page = await open_session_page(session_cookie, await session_pk())
    await receive_control(agent)
    await agent.send_to(bytes_data=frame(events_msg(finding_event())))
    html = await page.receive_from(timeout=2)
    assert '<tr class="finding" data-severity="error" data-rule="lost-changes-on-close">' in html
    await page.disconnect()
    await agent.disconnect()


async def test_a_session_pruned_while_its_page_is_open(shop, session_cookie):
    agent, _ = await connected_agent(shop, ended_summary())
    pk = await session_pk()
    page = await open_session_page(session_cookie, pk)
    await sync_to_async(TrackedSession.objects.filter(pk=pk).delete)()
    await notify(groups.session(pk))
    html = await page.receive_from(timeout=2)
    assert html.startswith('<section id="session-summary" class="card" hx-swap-oob="true">')
    assert "This session ended more than 15 min 00 s ago and is no longer kept." in html
    await page.disconnect()
    await agent.disconnect()


# -- login and Origin ---------------------------------------------------------------

@pytest.mark.parametrize("path", ["/ws/live/session/{pk}/", "/ws/live/app/{app}/sessions/"])
async def test_anonymous_session_sockets_are_closed_4401_and_ask_nothing(shop, path):
    agent, _ = await connected_agent(shop)
    page = live(path.format(pk=await session_pk(), app=shop.app.pk), ORIGIN)
    assert (await page.connect())[0] is True
    assert await page.receive_output() == {"type": "websocket.close", "code": 4401,
                                           "reason": "login required"}
    assert await agent.receive_nothing(timeout=0.5) is True
    assert await sync_to_async(SessionSnapshot.objects.count)() == 0
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("path", ["/ws/live/session/{pk}/", "/ws/live/app/{app}/sessions/"])
async def test_session_sockets_from_a_foreign_origin_are_rejected(shop, session_cookie, path):
    agent, _ = await connected_agent(shop)
    page = live(path.format(pk=await session_pk(), app=shop.app.pk),
                (b"origin", b"http://evil.example"), session_cookie)
    assert await page.connect() == (False, 1000)
    assert await agent.receive_nothing(timeout=0.5) is True
    await page.disconnect()
    await agent.disconnect()


@pytest.mark.parametrize("path", ["/ws/live/session/999999/", "/ws/live/app/999999/sessions/"])
async def test_unknown_sessions_and_apps_are_closed_4404(shop, session_cookie, path):
    page = live(path, ORIGIN, session_cookie)
    assert (await page.connect())[0] is True
    assert await page.receive_output() == {"type": "websocket.close", "code": 4404,
                                           "reason": "not found"}
    await page.disconnect()

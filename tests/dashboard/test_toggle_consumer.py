"""Toggles over the real consumers: a (re)connecting agent gets exactly the toggles
that concern it then a ``sync``; a change reaches connected agents as ``control``
frames; their ``ack`` lands on the delivery and re-renders the open controls pages."""

from __future__ import annotations

import re

import pytest
from asgiref.sync import sync_to_async

from dashboard import groups, toggles
from dashboard.models import ToggleDelivery

from .conftest import (
    ORIGIN, frame, group_send, hello_and_controls, hello_msg, join, live, next_control,
    open_agent, process_of, second_process,
)

pytestmark = pytest.mark.django_db(transaction=True)

ENGINE = "postgresql/shop"
REFUSAL = ("parameter capture is not allowed by this process's agent configuration "
           "(capture_parameters=False, RETORT_CAPTURE_PARAMETERS)")


@pytest.fixture(autouse=True)
def _membership(record_membership):
    yield


@sync_to_async
def change(app, user, **setting):
    return toggles.change(app, user, **setting)


@sync_to_async
def delivery_rows() -> list[tuple]:
    return list(ToggleDelivery.objects.order_by("toggle_id", "process__host")
                .values_list("toggle_id", "process__host", "revision", "status", "reason"))


async def test_a_new_agent_gets_no_setting_but_an_empty_sync(shop):
    agent = await open_agent(shop.raw)
    welcome, controls = await hello_and_controls(agent)
    assert controls == [{"v": 1, "t": "control", "id": f"sync:{welcome['process']}:1",
                         "action": "sync", "args": {"keep": []}}]
    assert await agent.receive_nothing(timeout=0.2) is True
    await agent.disconnect()


async def test_reconnection_resends_exactly_the_toggles_of_the_process_then_sync(
        shop, operator):
    # the process connected once; while it was away an operator set four toggles,
    # one of them for another process, and removed a fifth
    agent = await open_agent(shop.raw)
    welcome, _ = await hello_and_controls(agent)
    await agent.disconnect()
    process = await process_of(welcome["process"])
    other = await sync_to_async(second_process)(shop.app, host="web-2", pid=77,
                                                connected=False)
    engine = (await change(shop.app, operator, scope="engine", target=ENGINE,
                           switch="statements", value=False)).toggle
    app_wide = (await change(shop.app, operator, scope="app", target="", switch="sampling",
                             value=0.25)).toggle
    mine = (await change(shop.app, operator, scope="process", target="",
                         switch="detectors", value=False, process=process)).toggle
    await change(shop.app, operator, scope="process", target="", switch="detectors",
                 value=True, process=other)
    await change(shop.app, operator, scope="entity", target="Order",
                 switch="ignore_changes", value=True)
    await change(shop.app, operator, scope="entity", target="Order",
                 switch="ignore_changes", value=None)

    agent = await open_agent(shop.raw)
    welcome, controls = await hello_and_controls(agent)

    assert welcome["process"] == process.pk
    assert controls == [
        {"v": 1, "t": "control", "id": f"toggle:{engine.pk}:1", "action": "set",
         "args": {"scope": "engine", "target": ENGINE, "switch": "statements",
                  "value": False}},
        {"v": 1, "t": "control", "id": f"toggle:{app_wide.pk}:1", "action": "set",
         "args": {"scope": "app", "target": "", "switch": "sampling", "value": 0.25}},
        {"v": 1, "t": "control", "id": f"toggle:{mine.pk}:1", "action": "set",
         "args": {"scope": "process", "target": "", "switch": "detectors", "value": False}},
        {"v": 1, "t": "control", "id": f"sync:{process.pk}:2", "action": "sync",
         "args": {"keep": [["engine", ENGINE, "statements"], ["app", "", "sampling"],
                           ["process", "", "detectors"]]}},
    ]
    assert await agent.receive_nothing(timeout=0.2) is True
    assert await delivery_rows() == [(engine.pk, "web-1", 1, "pending", ""),
                                     (app_wide.pk, "web-1", 1, "pending", ""),
                                     (mine.pk, "web-1", 1, "pending", "")]
    await agent.disconnect()


async def test_a_change_reaches_the_agent_and_its_ack_the_controls_page(
        shop, operator, session_cookie):
    agent = await open_agent(shop.raw)
    welcome, _ = await hello_and_controls(agent)
    page = live(f"/ws/live/app/{shop.app.pk}/controls/", ORIGIN, session_cookie)
    await join(page, groups.app_controls(shop.app.pk))
    # one render right away: answers that came before the socket joined are shown
    first = await page.receive_from(timeout=2)
    assert first.startswith('<section id="controls-list" hx-swap-oob="true">')
    assert "In force <span class=\"muted small\">(0)</span>" in first

    result = await change(shop.app, operator, scope="app", target="", switch="parameters",
                          value=True)
    await group_send(result.messages)
    frame_in = await next_control(agent)
    assert frame_in == {"v": 1, "t": "control", "id": f"toggle:{result.toggle.pk}:1",
                        "action": "set", "args": {"scope": "app", "target": "",
                                                  "switch": "parameters", "value": True}}

    await agent.send_to(bytes_data=frame({"t": "ack", "id": frame_in["id"],
                                          "status": "refused", "reason": REFUSAL}))
    html = await page.receive_from(timeout=2)
    assert await delivery_rows() == [(result.toggle.pk, "web-1", 1, "refused", REFUSAL)]
    assert 'id="controls-list" hx-swap-oob="true"' in html
    answer = re.search(r'<div class="answer" data-process="(\d+)" data-status="(\w+)">'
                       r'<span class="process-name">([^<]+)</span> '
                       r'<span class="badge delivery \w+">([^<]+)</span> '
                       r'<span class="reason">([^<]+)</span>', html)
    assert answer is not None
    assert answer.groups() == (str(welcome["process"]), "refused", "web-1:4242", "refused",
                               REFUSAL.replace("'", "&#x27;"))
    await page.disconnect()
    await agent.disconnect()


async def test_an_applied_ack_and_a_sync_ack(shop, operator):
    agent = await open_agent(shop.raw)
    welcome, controls = await hello_and_controls(agent)
    result = await change(shop.app, operator, scope="engine", target=ENGINE,
                          switch="statements", value=False)
    await group_send(result.messages)
    sent = await next_control(agent)
    await agent.send_to(bytes_data=frame({"t": "ack", "id": sent["id"], "status": "applied"}))
    await agent.send_to(bytes_data=frame({"t": "ack", "id": controls[-1]["id"],
                                          "status": "applied"}))
    # the dashboard answers neither
    assert await agent.receive_nothing(timeout=0.3) is True
    assert await delivery_rows() == [(result.toggle.pk, "web-1", 1, "applied", "")]
    await agent.disconnect()


async def test_a_new_process_of_the_app_gets_the_app_wide_toggles(shop, operator):
    result = await change(shop.app, operator, scope="entity", target="Order",
                          switch="snapshots", value=False)
    agent = await open_agent(shop.raw)
    welcome, controls = await hello_and_controls(agent, hello_msg(host="web-5", pid=5))
    assert [c["id"] for c in controls] == [f"toggle:{result.toggle.pk}:1",
                                           f"sync:{welcome['process']}:1"]
    assert controls[-1]["args"] == {"keep": [["entity", "Order", "snapshots"]]}
    await agent.disconnect()


async def test_engine_and_session_pages_show_their_quick_toggles_live(
        shop, operator, session_cookie):
    from dashboard.models import Engine, TrackedSession

    from .conftest import session_summary, state_msg, send_and_settle
    agent = await open_agent(shop.raw)
    await hello_and_controls(agent)
    await send_and_settle(agent, state_msg(sessions=[session_summary()]))
    engine_pk = await sync_to_async(lambda: Engine.objects.get(key="e1").pk)()
    session_pk = await sync_to_async(lambda: TrackedSession.objects.get(key="s1").pk)()
    engine_page = live(f"/ws/live/engine/{engine_pk}/", ORIGIN, session_cookie)
    await join(engine_page, groups.app_controls(shop.app.pk))
    session_page = live(f"/ws/live/session/{session_pk}/", ORIGIN, session_cookie)
    await join(session_page, groups.app_controls(shop.app.pk))

    result = await change(shop.app, operator, scope="engine", target=ENGINE,
                          switch="statements", value=False)
    await group_send(result.messages)
    sent = await next_control(agent)
    await agent.send_to(bytes_data=frame({"t": "ack", "id": sent["id"], "status": "applied"}))

    def quick(html: str) -> str:
        found = re.search(r'<section class="card quick-toggles" id="quick-toggles" '
                          r'hx-swap-oob="true">.*?</section>', html, re.S)
        assert found is not None
        return " ".join(re.sub(r"<[^>]+>", " ", found.group(0)).split())

    deadline = 20
    html = ""
    while "applied" not in html and deadline:  # the first render may precede the ack
        html = quick(await engine_page.receive_from(timeout=2))
        deadline -= 1
    # alice is no operator: no buttons
    assert html == ("Controls for engine postgresql/shop all controls of shop → "
                    "Statements off web-1:4242 applied")
    session_html = quick(await session_page.receive_from(timeout=2))
    assert session_html.startswith("Controls for session s1 of web-1:4242 ")
    await engine_page.disconnect()
    await session_page.disconnect()
    await agent.disconnect()

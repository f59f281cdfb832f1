"""Traces over the real agent consumer: the ``record`` control reaches the agent's
socket; ``trace`` frames are appended to the trace's file in ``seq`` order (duplicates
ignored and counted, gaps counted and said); the ``end`` frame completes it; a
malformed record refuses the frame with nothing stored; the size cap truncates and
stops; an agent's refusal fails the trace, audited; open traces pages re-render."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from dashboard import groups, traces, traces_store
from dashboard.models import AuditLog, Trace
from tracker import protocol
from tracker.traces import jsonl

from . import trace_records as tr
from .conftest import (
    ORIGIN, frame, group_send, join, live, next_control, open_agent, process_of, say_hello,
    second_process,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _membership(record_membership):
    yield


@pytest.fixture
def traces_dir(settings, tmp_path):
    settings.RETORT = {"TRACES_DIR": str(tmp_path / "traces")}
    return tmp_path / "traces"


@sync_to_async
def start(app, user, **asked):
    return traces.start(app, user, traces.Asked(**asked))


@sync_to_async
def trace_row(pk: int) -> Trace:
    return Trace.objects.get(pk=pk)


async def recording(shop, operator, **asked):
    """A connected agent of shop, and a recording of its process started: (agent
    socket, trace pk as the wire names it, the trace row)."""
    agent = await open_agent(shop.raw)
    welcome = await say_hello(agent)
    process = await process_of(welcome["process"])
    started = await start(shop.app, operator, scope="process", name="checkout",
                          process=process, **asked)
    await group_send(started.messages)
    (trace,) = started.traces
    return agent, str(trace.pk), trace


def lines(path) -> list[dict]:
    header, records = jsonl.read(path)
    return [header, *records]


async def test_the_record_control_reaches_the_agent_and_frames_fill_the_file(
        shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    assert await next_control(agent) == {
        "v": 1, "t": "control", "id": f"record:{trace.pk}:start", "action": "record",
        "args": {"trace": wire, "action": "start", "name": "checkout", "max_seconds": 600.0}}

    first = [tr.header(wire), *tr.body()[:4]]
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, first)))
    await agent.send_to(bytes_data=frame(tr.trace_msg(
        wire, 2, [*tr.body()[4:], tr.end()], last=True, reason="stopped from the dashboard")))
    assert await agent.receive_nothing(timeout=0.3) is True

    row = await trace_row(trace.pk)
    path = traces_dir / row.path
    assert lines(path) == [tr.header(wire), *tr.body(), tr.end()]
    assert (row.status, row.seq, row.records, row.bytes, row.gaps, row.duplicates,
            row.dropped, row.reason, row.truncated) == (
        "complete", 2, 12, path.stat().st_size, 0, 0, 0, "stopped from the dashboard", False)
    assert row.header == tr.header(wire)
    assert row.stopped_at is not None
    await agent.disconnect()


async def test_duplicates_are_ignored_and_gaps_counted(shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    body = tr.body()
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, [tr.header(wire), *body[:3]])))
    # the same frame again (a resend), then frame 3: frame 2 never came
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, [tr.header(wire), *body[:3]])))
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 3, body[6:8])))
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 4, [*body[8:], tr.end(dropped=2)],
                                                      last=True,
                                                      reason="stopped at its time limit")))
    assert await agent.receive_nothing(timeout=0.3) is True

    row = await trace_row(trace.pk)
    assert lines(traces_dir / row.path) == [tr.header(wire), *body[:3], *body[6:],
                                            tr.end(dropped=2)]
    assert (row.status, row.seq, row.records, row.gaps, row.duplicates, row.dropped) == (
        "complete", 4, 9, 1, 1, 2)
    assert row.reason == ("stopped at its time limit; 1 frame of lines never arrived (lost "
                          "while the agent reconnected): the trace has gaps; the agent "
                          "dropped 2 events (its queue was full)")
    await agent.disconnect()


async def test_a_malformed_record_refuses_the_frame_and_stores_nothing(
        shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    broken = tr.body()
    del broken[4]["dur"]
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, [tr.header(wire), *broken])))
    reply = protocol.decode(await agent.receive_from(timeout=2), allowed=frozenset({"error"}))
    assert (reply["code"], reply["reason"]) == (
        4000, f"trace {wire}, seq 1, record 6: statement: dur missing")
    assert (await agent.receive_output(timeout=2))["code"] == 4000
    row = await trace_row(trace.pk)
    assert (row.status, row.seq, row.records, row.bytes) == ("recording", 0, 0, 0)
    assert not (traces_dir / row.path).exists()
    await agent.disconnect()


@pytest.mark.parametrize("record, problem", [
    ({"type": "nope"}, "unknown record type 'nope'"),
    ({**tr.BODY[4], "rows": "1"}, "statement: rows has the wrong type (str)"),
    ({**tr.BODY[3], "phase": "pause"}, "transaction: unknown phase 'pause'"),
    ({**tr.BODY[6], "changes": [{"op": "update"}]}, "flush: change 1: class missing"),
    ({**tr.BODY[2], "conn": True}, "checkout: conn has the wrong type (bool)"),
    ("a line", "not an object"),
])
def test_check_record_names_the_problem(record, problem):
    assert traces_store.check_record(record) == problem


def test_check_record_accepts_every_record_of_the_format():
    assert [traces_store.check_record(r) for r in [tr.header("1"), *tr.BODY, tr.end()]] == \
        [""] * 12


async def test_frames_of_another_process_or_an_ended_trace_are_ignored(
        shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    other = await sync_to_async(second_process)(shop.app)
    started = await start(shop.app, operator, scope="process", name="theirs", process=other)
    theirs = str(started.traces[0].pk)
    await agent.send_to(bytes_data=frame(tr.trace_msg(theirs, 1, [tr.header(theirs)])))
    await agent.send_to(bytes_data=frame(tr.trace_msg("999999", 1, [tr.header("999999")])))
    assert await agent.receive_nothing(timeout=0.3) is True
    row = await trace_row(started.traces[0].pk)
    assert (row.status, row.seq, row.records) == ("recording", 0, 0)
    assert not (traces_dir / row.path).exists()
    await agent.disconnect()


async def test_a_trace_whose_header_never_came_fails(shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 2, tr.body()[:2])))
    assert await agent.receive_nothing(timeout=0.3) is True
    row = await trace_row(trace.pk)
    assert (row.status, row.records, row.reason) == (
        "failed", 0, "the beginning of the trace (its header) never arrived: the first "
                     "frame received was number 2")
    await agent.disconnect()


async def test_over_the_size_cap_the_trace_is_truncated_and_the_agent_asked_to_stop(
        shop, operator, traces_dir, settings):
    cap = len(jsonl.line(tr.header("1"))) + sum(len(jsonl.line(r)) for r in tr.BODY[:3])
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    header = tr.header(wire)
    # the header line is as long as with trace "1" as long as the pk has one digit
    settings.RETORT = {"TRACES_DIR": str(traces_dir),
                       "TRACE_MAX_BYTES": cap + len(wire) - 1}
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, [header, *tr.body()])))
    assert await next_control(agent) == {
        "v": 1, "t": "control", "id": f"record:{trace.pk}:stop", "action": "record",
        "args": {"trace": wire, "action": "stop"}}
    row = await trace_row(trace.pk)
    assert lines(traces_dir / row.path) == [header, *tr.body()[:3]]
    assert (row.status, row.truncated, row.records, row.bytes) == (
        "complete", True, 4, cap + len(wire) - 1)
    assert row.reason == (f"truncated at {cap + len(wire) - 1} bytes (TRACE_MAX_BYTES): 7 "
                          "later records of that frame and everything after it were not "
                          "stored; the recording was stopped")
    # what the agent sends after is not kept
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 2, [tr.end()], last=True)))
    assert await agent.receive_nothing(timeout=0.3) is True
    assert (await trace_row(trace.pk)).records == 4
    await agent.disconnect()


async def test_a_refused_start_fails_the_trace_and_is_audited(shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    request = await next_control(agent)
    await agent.send_to(bytes_data=frame({"t": "ack", "id": request["id"],
                                          "status": "refused",
                                          "reason": "no live session s9 in this process"}))
    assert await agent.receive_nothing(timeout=0.3) is True
    row = await trace_row(trace.pk)
    assert (row.status, row.reason) == (
        "failed", "the agent refused to start: no live session s9 in this process")
    entry = await sync_to_async(AuditLog.objects.filter(action="trace.result").get)()
    assert (entry.actor_name, entry.target, entry.result) == (
        "olga", "Recording 'checkout' of process web-1:4242",
        "refused on web-1:4242: no live session s9 in this process")
    await agent.disconnect()


async def test_an_applied_ack_changes_nothing(shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    request = await next_control(agent)
    await agent.send_to(bytes_data=frame({"t": "ack", "id": request["id"],
                                          "status": "applied"}))
    assert await agent.receive_nothing(timeout=0.3) is True
    assert (await trace_row(trace.pk)).status == "recording"
    await agent.disconnect()


async def test_an_open_traces_page_shows_the_records_as_they_arrive(
        shop, operator, traces_dir, session_cookie):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    page = live(f"/ws/live/app/{shop.app.pk}/traces/", ORIGIN, session_cookie)
    await join(page, groups.app_traces(shop.app.pk))
    # one render right away: what came before the socket joined is shown
    first = await page.receive_from(timeout=2)
    assert '<span class="badge trace-status recording">recording</span>' in first
    assert '<td class="num records">0</td>' in first
    assert "waiting for the agent…" in first
    await agent.send_to(bytes_data=frame(tr.trace_msg(wire, 1, [tr.header(wire),
                                                                 *tr.body()[:4]])))
    html = await page.receive_from(timeout=2)
    assert html.startswith('<section id="traces-list" hx-swap-oob="true">')
    assert f'<tr class="trace recording" data-trace="{trace.pk}" data-status="recording">' \
        in html
    assert '<td class="num records">5</td>' in html
    assert "waiting for the agent…" not in html
    await page.disconnect()
    await agent.disconnect()


async def test_an_open_trace_page_follows_its_status(shop, operator, traces_dir,
                                                    session_cookie):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    page = live(f"/ws/live/trace/{trace.pk}/", ORIGIN, session_cookie)
    await join(page, groups.app_traces(shop.app.pk))
    first = await page.receive_from(timeout=2)
    assert first.startswith('<section id="trace-status" class="card trace-status" '
                            'hx-swap-oob="true" data-status="recording">')
    await agent.send_to(bytes_data=frame(tr.trace_msg(
        wire, 1, [tr.header(wire), *tr.body(), tr.end()], last=True,
        reason="stopped from the dashboard")))
    html = await page.receive_from(timeout=2)
    assert 'data-status="complete"' in html
    assert '<dd class="records">12 <span class="muted small">' in html
    assert '<p class="small trace-reason">stopped from the dashboard</p>' in html
    await page.disconnect()
    await agent.disconnect()


async def test_a_live_socket_needs_a_login_and_a_known_trace(shop, session_cookie):
    page = live("/ws/live/trace/999999/", ORIGIN, session_cookie)
    assert await page.connect() == (True, None)
    assert (await page.receive_output(timeout=2))["code"] == 4404
    await page.disconnect()
    anonymous = live(f"/ws/live/app/{shop.app.pk}/traces/", ORIGIN)
    assert await anonymous.connect() == (True, None)
    assert (await anonymous.receive_output(timeout=2))["code"] == 4401
    await anonymous.disconnect()


def test_lines_whose_row_never_committed_are_cut_before_the_next_frame(
        tracked, operator, traces_dir):
    started = traces.start(tracked.app, operator, traces.Asked(scope="app", name="x"))
    trace = started.traces[0]
    wire = str(trace.pk)
    first = protocol.decode(frame(tr.trace_msg(wire, 1, [tr.header(wire), *tr.body()[:3]])))
    traces_store.store_frame(tracked.process.pk, first)
    path = traces_dir / trace.path
    with open(path, "ab") as out:  # a frame written, then its transaction rolled back
        out.write(jsonl.line(tr.BODY[3]) + b'{"type": "stat')
    second = protocol.decode(frame(tr.trace_msg(wire, 2, tr.body()[3:])))
    traces_store.store_frame(tracked.process.pk, second)
    row = Trace.objects.get(pk=trace.pk)
    assert lines(path) == [tr.header(wire), *tr.body()]
    assert (row.records, row.bytes) == (11, path.stat().st_size)


async def test_a_refused_stop_of_a_trace_still_recording_fails_it(shop, operator, traces_dir):
    agent, wire, trace = await recording(shop, operator)
    await next_control(agent)
    stopped = await sync_to_async(traces.stop)(await trace_row(trace.pk), operator)
    await group_send(stopped.messages)
    request = await next_control(agent)
    assert request["id"] == f"record:{trace.pk}:stop"
    await agent.send_to(bytes_data=frame({"t": "ack", "id": request["id"], "status": "refused",
                                          "reason": f"no recording {wire} in this process"}))
    assert await agent.receive_nothing(timeout=0.3) is True
    row = await trace_row(trace.pk)
    assert (row.status, row.reason) == (
        "failed", f"the agent refused to stop: no recording {wire} in this process")
    await agent.disconnect()

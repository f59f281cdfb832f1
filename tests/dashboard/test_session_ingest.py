"""What the dashboard stores of sessions, snapshots and findings: upserts of changed
sessions only, ends (closed, collected, disconnected, gone), pruning, bounds, and
replies that match no request."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest

from dashboard import control, ingest, session_ingest
from dashboard.models import Finding, Process, SessionSnapshot, TrackedSession
from tracker import protocol

from .conftest import (
    CHANGES, ENTITIES, FINDING_MESSAGE, LAST_ACTIVITY, NOW, SESSION_CREATED,
    SESSION_LOCATION, SESSION_STACK, SNAPSHOT_TS, STATE_TS, TXN_SINCE, checkout_timeout,
    ended_summary, engine_info, events_msg, finding_event, frame, hello_msg, rows,
    session_summary, snapshot_msg, state_msg,
)

pytestmark = pytest.mark.django_db


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=dt_timezone.utc)


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def store_state(tracked, *sessions: dict, **kwargs) -> ingest.Stored:
    return tracked.ingest.store(decoded(state_msg(sessions=list(sessions), **kwargs)))


def session(key: str = "s1") -> TrackedSession:
    return TrackedSession.objects.get(key=key)


def engine_keys(tracked_session: TrackedSession) -> list[str]:
    return sorted(tracked_session.engines.values_list("key", flat=True))


# -- state frames -------------------------------------------------------------------

def test_a_state_frame_stores_its_sessions(tracked):
    s1 = session()
    assert s1.process_id == tracked.process.pk
    assert (s1.key, s1.kind, s1.thread, s1.task, s1.state) == (
        "s1", "Session", "worker-1", "", "transaction")
    assert (s1.created, s1.txn_since, s1.last_activity) == (
        at(SESSION_CREATED), at(TXN_SINCE), at(LAST_ACTIVITY))
    assert (s1.objects_count, s1.new, s1.dirty, s1.deleted) == (4, 1, 1, 1)
    assert (s1.statements, s1.flushes, s1.commits, s1.rollbacks) == (7, 1, 0, 0)
    assert s1.location == SESSION_LOCATION
    assert (s1.ended_at, s1.end) == (None, "")
    assert s1.summary == session_summary()
    assert engine_keys(s1) == ["e1"]
    assert s1.live is True
    assert s1.pending == 3


def test_the_state_frame_returns_what_it_changed(tracked):
    stored = store_state(tracked, session_summary("s2"))
    assert stored == ingest.Stored(engines=[tracked.engine.pk],
                                   sessions=[session("s2").pk], findings=0)


def test_a_changed_session_is_updated_in_place(tracked):
    pk = session().pk
    store_state(tracked, session_summary(state="flushing", statements=9, flushes=2,
                                         by_class={"Customer": 5}, objects=5))
    s1 = session()
    assert s1.pk == pk
    assert (s1.state, s1.statements, s1.flushes, s1.objects_count) == (
        "flushing", 9, 2, 5)
    assert s1.summary["by_class"] == {"Customer": 5}
    assert TrackedSession.objects.count() == 1


def test_a_session_left_out_of_a_frame_is_left_as_it_was(tracked):
    """Frames carry only the sessions that changed."""
    before = rows()["sessions"]
    stored = store_state(tracked)  # no session changed
    assert stored.sessions == []
    assert rows()["sessions"] == before
    stored = tracked.ingest.store(decoded(state_msg()))  # no "sessions" field at all
    assert stored.sessions == []
    assert rows()["sessions"] == before


def test_a_session_given_twice_in_one_frame_keeps_the_last(tracked):
    store_state(tracked, session_summary("s2", statements=1),
                session_summary("s2", statements=2))
    assert session("s2").statements == 2


def test_an_ended_session_keeps_how_it_ended(tracked):
    store_state(tracked, ended_summary(end="collected"))
    s1 = session()
    assert (s1.state, s1.ended_at, s1.end) == ("closed", at(STATE_TS - 1.0), "collected")
    assert s1.live is False
    assert s1.txn_since is None
    assert s1.location == ""


def test_a_closed_session_reused_by_the_app_is_live_again(tracked):
    store_state(tracked, ended_summary())
    store_state(tracked, session_summary(commits=1))
    s1 = session()
    assert (s1.ended_at, s1.end, s1.state, s1.commits) == (None, "", "transaction", 1)
    assert TrackedSession.objects.count() == 1


def test_engines_of_a_session_follow_its_summary(tracked):
    tracked.ingest.store(decoded(state_msg(sessions=[])))
    ingest.store_engine(tracked.process.pk, decoded({"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/cache", url="sqlite://")}))
    store_state(tracked, session_summary(engines=["e1", "e2", "e1"]))
    assert engine_keys(session()) == ["e1", "e2"]
    store_state(tracked, session_summary(engines=["e2", "e9"]))  # e9: never announced
    assert engine_keys(session()) == ["e2"]


def test_sessions_of_two_processes_with_the_same_key_are_two_sessions(tracked):
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    ingest.StateIngest(other.pk).store(decoded(state_msg(sessions=[session_summary(
        thread="other-thread")])))
    assert sorted(TrackedSession.objects.values_list("process_id", "thread")) == sorted([
        (tracked.process.pk, "worker-1"), (other.pk, "other-thread")])


def test_the_frame_records_the_clock_offset_and_omitted_sessions(tracked, frozen):
    store_state(tracked, omitted=12)
    process = Process.objects.get()
    assert process.clock_offset == 0.5  # NOW is STATE_TS + 0.5 s
    assert process.sessions_omitted == 12
    assert process.agent_now() == at(STATE_TS)
    store_state(tracked)
    assert Process.objects.get().sessions_omitted == 0


def test_counts_beyond_a_column_are_capped(tracked):
    store_state(tracked, session_summary(objects=2**40, statements=2**63 - 1, new=-3))
    s1 = session()
    assert (s1.objects_count, s1.statements, s1.new) == (2**31 - 1, 2**63 - 1, 0)


def test_a_session_frame_is_stored_whole_or_not_at_all(tracked):
    """An unstorable session in a frame leaves the frame's engines unchanged too."""
    before = rows()
    bad = session_summary("s2", kind=None)  # not a frame decode() accepts: stored as is
    with pytest.raises(TypeError):
        tracked.ingest.store(state_msg(sessions=[session_summary("s3"), bad]))
    assert rows() == before


# -- ends ---------------------------------------------------------------------------

def test_a_disconnect_ends_the_live_sessions_of_its_process(tracked, frozen):
    store_state(tracked, ended_summary("s2"))
    stored = ingest.mark_disconnected(tracked.process.pk)
    s1, s2 = session("s1"), session("s2")
    assert stored == ingest.Stored(engines=[tracked.engine.pk], sessions=[s1.pk])
    # on the agent's clock, like the times the agent reports
    assert (s1.ended_at, s1.end, s1.updated_at) == (at(STATE_TS), "disconnected", NOW)
    assert (s2.ended_at, s2.end) == (at(STATE_TS - 1.0), "closed")


def test_sessions_come_back_live_when_the_agent_reconnects(tracked):
    ingest.mark_disconnected(tracked.process.pk)
    process = ingest.register_process(tracked.token, decoded(hello_msg()))
    assert process.pk == tracked.process.pk
    ingest.StateIngest(process.pk).store(decoded(state_msg(sessions=[session_summary()])))
    assert (session().ended_at, session().end) == (None, "")


def test_sessions_of_a_silent_process_end_when_it_goes_stale(tracked, settings):
    """A crashed app (or a dashboard restarted without seeing the disconnect): its
    sessions must not stay "live", or idle in a transaction, for ever."""
    settings.RETORT = {**settings.RETORT, "STALE_AFTER_SECONDS": 10.0}
    store_state(tracked, session_summary("s2"))
    last_seen = Process.objects.get(pk=tracked.process.pk).last_seen
    # still within STALE_AFTER_SECONDS: nothing ends
    assert session_ingest.end_sessions_of_silent_processes(last_seen + timedelta(seconds=9)) == 0
    assert session("s1").ended_at is None
    later = last_seen + timedelta(seconds=11)
    assert session_ingest.end_sessions_of_silent_processes(later) == 2
    s1, s2 = session("s1"), session("s2")
    assert (s1.ended_at, s1.end, s1.updated_at) == (last_seen, "stale", later)
    assert (s2.ended_at, s2.end) == (last_seen, "stale")
    assert session_ingest.end_sessions_of_silent_processes(later) == 0
    # the agent speaks again: its sessions are live again
    store_state(tracked, session_summary("s1"))
    assert (session("s1").ended_at, session("s1").end) == (None, "")


def test_a_hello_ends_sessions_left_live_by_a_connection_whose_end_was_not_seen(tracked):
    """The dashboard restarted: nobody marked the old connection's sessions ended."""
    ingest.register_process(tracked.token, decoded(hello_msg()))
    assert session().end == "disconnected"


def test_ended_sessions_are_pruned_after_the_recent_window(tracked, settings, monkeypatch):
    from django.utils import timezone

    settings.RETORT = {"RECENT_SESSION_SECONDS": 60}
    store_state(tracked, ended_summary("s2"), session_summary("s3"))
    control.snapshot_request(session("s2").pk, control.snapshot_args({}))
    TrackedSession.objects.filter(key__in=["s2", "s3"]).update(
        updated_at=timezone.now() - timedelta(seconds=61))
    # pruning runs at most every 30 s per connection
    later = timezone.now() + timedelta(seconds=31)
    monkeypatch.setattr(timezone, "now", lambda: later)
    store_state(tracked)
    # s2 ended long ago: gone with its snapshot; s3 is old but live; s1 ended recently
    assert sorted(TrackedSession.objects.values_list("key", flat=True)) == ["s1", "s3"]
    assert SessionSnapshot.objects.count() == 0


# -- findings -----------------------------------------------------------------------

def test_finding_events_are_stored(tracked):
    stored = tracked.ingest.store_events(decoded(events_msg(finding_event())))
    finding = Finding.objects.get()
    assert stored == ingest.Stored(engines=[], sessions=[session().pk], findings=1)
    assert (finding.process_id, finding.engine_id, finding.session) == (
        tracked.process.pk, tracked.engine.pk, "s1")
    assert (finding.rule, finding.severity, finding.thread, finding.location) == (
        "lost-changes-on-close", "error", "worker-1", SESSION_LOCATION)
    assert finding.message == FINDING_MESSAGE
    assert finding.evidence == {"new": 1, "modified": 0, "deleted": 0,
                                "objects": ["Customer (new)"], "stack": SESSION_STACK}
    assert finding.at == at(STATE_TS)


def test_findings_about_no_engine_or_an_unknown_one_are_kept(tracked):
    tracked.ingest.store_events(decoded(events_msg(
        finding_event("s7", "", rule="detached-modification"),
        finding_event("s8", "e9"),
        checkout_timeout("e9"),  # a pool event of an unknown engine is still skipped
    )))
    assert list(Finding.objects.order_by("session").values_list(
        "session", "engine_id", "rule")) == [
        ("s7", None, "detached-modification"), ("s8", None, "lost-changes-on-close")]
    assert rows()["events"] == []


def test_findings_with_evidence_that_is_not_an_object_are_kept(tracked):
    event = finding_event()
    event[-1] = ["a", "list"]
    tracked.ingest.store_events(decoded(events_msg(event)))
    assert Finding.objects.get().evidence == {"value": ["a", "list"]}


def test_only_the_newest_findings_per_process_are_kept(tracked, settings):
    settings.RETORT = {"FINDINGS_PER_PROCESS": 3}
    tracked.ingest.store_events(decoded(events_msg(
        *(finding_event(f"s{n}", ts=STATE_TS + n) for n in range(5)))))
    tracked.ingest.store_events(decoded(events_msg(finding_event("s9", ts=STATE_TS - 50))))
    assert list(Finding.objects.values_list("session", flat=True)) == ["s4", "s3", "s2"]


# -- snapshots ----------------------------------------------------------------------

def ask(tracked, **query) -> str:
    """A page asks for a snapshot; the request id the agent will answer."""
    _, message = control.snapshot_request(tracked.session.pk, control.snapshot_args(query))
    return message["id"]


def test_a_snapshot_reply_fills_its_row(tracked):
    request = ask(tracked)
    pk = session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    assert pk == tracked.session.pk
    snapshot = SessionSnapshot.objects.get()
    assert snapshot.taken_at == at(SNAPSHOT_TS)
    assert snapshot.data == {"entities": ENTITIES, "total": 4, "offset": 0,
                             "partial": False, "changes_total": 4, "changes": [
        {"op": "insert", "class": "Customer", "identity": "",
         "values": [["name", "'Dana'"], ["email", "'dana@example.com'"],
                    ["password_hash", "••••••"]]},
        {"op": "update", "class": "Customer", "identity": "1",
         "attributes": [["name", ["'Ann'", "'Annie'"]],
                        ["email", ["'ann@example.com'", "'annie@example.com'"]]],
         "collections": [["orders", {"added": ["Order (new)"], "removed": ["Order#1"]}]]},
        {"op": "update", "class": "Order", "identity": "1",
         "references": [["customer", ["Customer#1", "None"]]]},
        {"op": "delete", "class": "Customer", "identity": "2"},
    ]}
    assert [session_ingest.ordered_change(c) for c in CHANGES] == snapshot.data["changes"]
    assert snapshot.refusal == ""


def test_a_snapshot_with_a_summary_updates_the_session(tracked):
    request = ask(tracked)
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, summary=session_summary(statements=11, dirty=2))))
    assert (session().statements, session().dirty) == (11, 2)


def test_a_snapshot_error_is_kept(tracked):
    request = ask(tracked)
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, partial=True, error="RuntimeError: dictionary changed size")))
    data = SessionSnapshot.objects.get().data
    assert (data["partial"], data["error"]) == (True, "RuntimeError: dictionary changed size")


def test_a_reply_overtaken_by_a_newer_one_is_dropped(tracked):
    request = ask(tracked)
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, ts=SNAPSHOT_TS - 1, entities=[], total=0)))
    snapshot = SessionSnapshot.objects.get()
    assert (snapshot.taken_at, snapshot.data["total"]) == (at(SNAPSHOT_TS), 4)


def test_a_reply_for_a_request_whose_row_was_pruned_recreates_it(tracked):
    request = ask(tracked, state="persistent")
    SessionSnapshot.objects.all().delete()
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    snapshot = SessionSnapshot.objects.get()
    assert snapshot.args == {"offset": 0, "limit": 100, "state": "persistent"}
    assert snapshot.data["total"] == 4


def test_not_found_ends_the_session_and_keeps_the_last_snapshot(tracked, frozen):
    request = ask(tracked)
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    before = list(SessionSnapshot.objects.values())
    pk = session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, ts=SNAPSHOT_TS + 1, found=False, total=0, entities=[], changes=[],
        changes_total=0)))
    assert pk == tracked.session.pk
    assert (session().ended_at, session().end) == (at(SNAPSHOT_TS + 1), "gone")
    assert list(SessionSnapshot.objects.values()) == before
    # the state frame that follows says how it ended
    store_state(tracked, ended_summary(ended=SNAPSHOT_TS + 0.5, end="collected"))
    assert (session().ended_at, session().end) == (at(SNAPSHOT_TS + 0.5), "collected")


def test_a_reply_about_a_closed_session_keeps_the_last_snapshot(tracked):
    """A closed session that is not collected yet is still found, with nothing in it."""
    request = ask(tracked)
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    before = list(SessionSnapshot.objects.values())
    pk = session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, ts=SNAPSHOT_TS + 1, total=0, entities=[], changes=[], changes_total=0,
        summary=ended_summary(ended=SNAPSHOT_TS + 0.5))))
    assert pk == tracked.session.pk
    assert (session().ended_at, session().end) == (at(SNAPSHOT_TS + 0.5), "closed")
    assert list(SessionSnapshot.objects.values()) == before


@pytest.mark.parametrize("request_id", [
    "c1", "snapshot:999999:limit=100&offset=0", "snapshot:{pk}:limit=100&offset=0&x=1",
])
def test_a_reply_to_no_request_of_ours_stores_nothing(tracked, request_id):
    ask(tracked)
    before = rows()
    request_id = request_id.format(pk=tracked.session.pk)
    assert session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request_id))) is None
    assert rows() == before


def test_a_reply_about_another_session_or_process_stores_nothing(tracked):
    request = ask(tracked)
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    before = rows()
    # the right request id, but another session key, or from another process
    assert session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(
        request, session="s2"))) is None
    assert session_ingest.store_snapshot(other.pk, decoded(snapshot_msg(request))) is None
    assert rows() == before


def test_a_refused_request_is_noted_on_its_snapshot(tracked):
    request = ask(tracked)
    pk = session_ingest.store_refusal(tracked.process.pk, decoded(
        {"t": "ack", "id": request, "status": "refused",
         "reason": "unknown action 'snapshot'"}))
    assert pk == tracked.session.pk
    assert SessionSnapshot.objects.get().refusal == "unknown action 'snapshot'"
    # the next reply clears it
    session_ingest.store_snapshot(tracked.process.pk, decoded(snapshot_msg(request)))
    assert SessionSnapshot.objects.get().refusal == ""


@pytest.mark.parametrize("ack", [
    {"t": "ack", "id": "c1", "status": "refused", "reason": "no"},
    {"t": "ack", "id": "snapshot:{pk}:limit=100&offset=0", "status": "applied"},
    {"t": "ack", "id": "snapshot:{pk}:limit=100&offset=100", "status": "refused"},
])
def test_other_acks_change_nothing(tracked, ack):
    ask(tracked)
    before = rows()
    ack = {**ack, "id": ack["id"].format(pk=tracked.session.pk)}
    assert session_ingest.store_refusal(tracked.process.pk, decoded(ack)) is None
    assert rows() == before

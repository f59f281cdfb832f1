"""Advice: every finding event is stored as an occurrence and counted in its group
(rule, engine, code location) per app — count, first and last seen, the last message
and evidence; muted groups keep counting; acknowledged ones reopen when the rule fires
again after the acknowledgement; status changes are audited with the user."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest

from dashboard import advice, ingest
from dashboard.models import Advice, AuditLog, Finding
from tracker import protocol

from .conftest import (
    FINDING_MESSAGE, NOW, SESSION_LOCATION, SESSION_STACK, STATE_TS, events_msg,
    finding_event, frame, hello_msg, rows,
)

pytestmark = pytest.mark.django_db

EVIDENCE = {"new": 1, "modified": 0, "deleted": 0, "objects": ["Customer (new)"],
            "stack": SESSION_STACK}


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=dt_timezone.utc)


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def report(tracked, *events: list) -> ingest.Stored:
    return tracked.ingest.store_events(decoded(events_msg(*events)))


# The process's clock offset is 0.5 s (its state frame was received at NOW, frozen):
# an occurrence at STATE_TS on the agent's clock is NOW on ours.

def test_a_finding_is_stored_and_starts_its_group(frozen, tracked):
    stored = report(tracked, finding_event())
    assert stored.findings == 1
    assert Finding.objects.count() == 1
    group = Advice.objects.get()
    assert (group.app_id, group.rule, group.engine_name, group.engine_id, group.location) == (
        tracked.app.pk, "lost-changes-on-close", "postgresql/shop", tracked.engine.pk,
        SESSION_LOCATION)
    assert group.key == advice.group_key("lost-changes-on-close", "postgresql/shop",
                                         SESSION_LOCATION)
    assert (group.severity, group.count, group.first_seen, group.last_seen) == (
        "error", 1, NOW, NOW)
    assert (group.message, group.evidence) == (FINDING_MESSAGE, EVIDENCE)
    assert (group.session, group.thread, group.process_id) == (
        "s1", "worker-1", tracked.process.pk)
    assert (group.status, group.status_by, group.status_at, group.reopened_at) == (
        "open", None, None, None)


def test_occurrences_at_one_place_are_counted_in_one_group(frozen, tracked):
    report(tracked, finding_event("s2", ts=STATE_TS + 1),
           finding_event("s4", ts=STATE_TS + 3, new=4),
           finding_event("s3", ts=STATE_TS + 2))
    report(tracked, finding_event("s5", ts=STATE_TS + 10, new=7))
    group = Advice.objects.get()
    assert group.count == 4
    assert (group.first_seen, group.last_seen) == (at(STATE_TS + 1.5), at(STATE_TS + 10.5))
    # the last occurrence's message, evidence and session
    assert (group.session, group.evidence["new"]) == ("s5", 7)
    assert Finding.objects.count() == 4


def test_a_late_occurrence_counts_without_moving_the_group_back(frozen, tracked):
    report(tracked, finding_event("s2", ts=STATE_TS + 10))
    report(tracked, finding_event("s1", ts=STATE_TS - 5, new=9))
    group = Advice.objects.get()
    assert group.count == 2
    assert (group.first_seen, group.last_seen) == (at(STATE_TS - 4.5), at(STATE_TS + 10.5))
    assert (group.session, group.evidence["new"]) == ("s2", 1)


def test_another_rule_place_or_engine_is_another_group(frozen, tracked):
    other_place = finding_event("s2")
    other_place[7] = "shop/profile.py:9 in save_profile"
    report(tracked, finding_event(), finding_event(rule="lost-changes-on-gc"), other_place,
           finding_event("s3", ""))  # about no engine
    assert sorted(Advice.objects.values_list("rule", "engine_name", "location", "count")) == [
        ("lost-changes-on-close", "", SESSION_LOCATION, 1),
        ("lost-changes-on-close", "postgresql/shop", SESSION_LOCATION, 1),
        ("lost-changes-on-close", "postgresql/shop", "shop/profile.py:9 in save_profile", 1),
        ("lost-changes-on-gc", "postgresql/shop", SESSION_LOCATION, 1),
    ]


def test_the_same_place_in_another_process_of_the_app_is_the_same_group(frozen, tracked):
    report(tracked, finding_event())
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    # no state frame from it yet: its clock offset is 0
    ingest.StateIngest(other.pk).store_events(decoded(events_msg(
        finding_event("s9", ts=STATE_TS + 20))))
    group = Advice.objects.get()
    assert (group.count, group.first_seen, group.last_seen) == (2, NOW, at(STATE_TS + 20))
    assert (group.process_id, group.session) == (other.pk, "s9")
    assert group.engine.process_id == other.pk  # links go to the newest engine


def test_a_muted_group_keeps_counting_and_stays_muted(frozen, tracked, alice):
    report(tracked, finding_event())
    pk = Advice.objects.get().pk
    advice.change_status(pk, "mute", alice)
    report(tracked, finding_event("s2", ts=STATE_TS + 5))
    group = Advice.objects.get()
    assert (group.status, group.count, group.last_seen, group.reopened_at) == (
        "muted", 2, at(STATE_TS + 5.5), None)


def test_an_acknowledged_group_reopens_when_it_occurs_again(frozen, tracked, alice,
                                                           monkeypatch):
    from django.utils import timezone

    report(tracked, finding_event())
    pk = Advice.objects.get().pk
    advice.change_status(pk, "acknowledge", alice)  # at NOW
    # an occurrence from before the acknowledgement, arriving late: still acknowledged
    report(tracked, finding_event("s0", ts=STATE_TS - 3))
    group = Advice.objects.get()
    assert (group.status, group.count) == ("acknowledged", 2)
    # it happens again 5 s later
    later = NOW + timedelta(seconds=6)
    monkeypatch.setattr(timezone, "now", lambda: later)
    report(tracked, finding_event("s2", ts=STATE_TS + 5))
    group = Advice.objects.get()
    assert (group.status, group.count, group.reopened_at) == ("open", 3, later)
    # who acknowledged it, and when, is still known
    assert (group.status_by, group.status_at) == (alice, NOW)
    # acknowledged again: no longer "reopened"
    advice.change_status(pk, "acknowledge", alice)
    group = Advice.objects.get()
    assert (group.status, group.reopened_at, group.status_at) == ("acknowledged", None, later)


def test_status_changes_are_audited_with_the_user_and_the_outcome(frozen, tracked, alice):
    report(tracked, finding_event())
    pk = Advice.objects.get().pk
    for action in ("acknowledge", "acknowledge", "mute", "unmute", "unmute"):
        advice.change_status(pk, action, alice)
    target = (f"advice #{pk} of shop: lost-changes-on-close at {SESSION_LOCATION} on "
              "postgresql/shop")
    assert list(AuditLog.objects.order_by("pk").values_list(
        "actor", "actor_name", "app", "action", "target", "result")) == [
        (alice.pk, "alice", tracked.app.pk, "advice.acknowledge", target, "open → acknowledged"),
        (alice.pk, "alice", tracked.app.pk, "advice.acknowledge", target,
         "unchanged: already acknowledged"),
        (alice.pk, "alice", tracked.app.pk, "advice.mute", target, "acknowledged → muted"),
        (alice.pk, "alice", tracked.app.pk, "advice.unmute", target, "muted → open"),
        (alice.pk, "alice", tracked.app.pk, "advice.unmute", target, "unchanged: already open"),
    ]
    assert AuditLog.objects.order_by("pk").first().details == {
        "advice": pk, "rule": "lost-changes-on-close", "engine": "postgresql/shop",
        "location": SESSION_LOCATION, "count": 1, "from": "open", "to": "acknowledged"}
    group = Advice.objects.get()
    assert (group.status, group.status_by, group.status_at) == ("open", alice, NOW)


def test_an_unknown_action_or_group_is_refused_and_not_audited(frozen, tracked, alice):
    report(tracked, finding_event())
    pk = Advice.objects.get().pk
    with pytest.raises(KeyError):
        advice.change_status(pk, "delete", alice)
    with pytest.raises(Advice.DoesNotExist):
        advice.change_status(pk + 1, "mute", alice)
    assert AuditLog.objects.count() == 0
    assert Advice.objects.get().status == "open"


def test_only_the_most_recently_seen_groups_of_an_app_are_kept(frozen, tracked, settings):
    settings.RETORT = {"ADVICE_PER_APP": 2}
    events = []
    for n in range(4):
        event = finding_event(f"s{n}", ts=STATE_TS + n)
        event[7] = f"shop/place{n}.py:1 in f"
        events.append(event)
    report(tracked, *events)
    assert sorted(Advice.objects.values_list("location", flat=True)) == [
        "shop/place2.py:1 in f", "shop/place3.py:1 in f"]
    assert Finding.objects.count() == 4  # occurrences have their own bound


def test_a_frame_that_fails_after_counting_leaves_no_trace(frozen, tracked, monkeypatch):
    """The group is updated inside the frame's transaction: a failure later in the
    frame undoes it with the occurrences."""
    from dashboard import session_ingest

    report(tracked, finding_event())
    before = rows()

    def fail(process_id):
        raise OverflowError("simulated")

    monkeypatch.setattr(session_ingest, "keep_newest_findings", fail)
    with pytest.raises(OverflowError):
        report(tracked, finding_event("s2", ts=STATE_TS + 1))
    assert rows() == before
    assert Advice.objects.get().count == 1

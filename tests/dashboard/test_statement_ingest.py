"""What the dashboard stores of statements: per-fingerprint statistics upserted from
state frames (cumulative, only the changed ones sent), bounded per engine; slow
statements from events, bounded per engine; refused and unstorable frames change
nothing."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from asgiref.sync import sync_to_async

from dashboard import ingest
from dashboard.models import Engine, Process, SlowStatement, StatementStat
from tracker import protocol

from .conftest import (
    NOW, STATE_TS, STATEMENT_LOCATION, STATEMENT_SQL, arows, engine_info, engine_state_with,
    events_msg, frame, hello_msg, open_agent, rows, say_hello, send_and_settle,
    slow_statement, state_msg, statement_stats,
)

STACK = [STATEMENT_LOCATION, "shop/views.py:30 in show"]


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=dt_timezone.utc)


def decoded(message: dict) -> dict:
    return protocol.decode(frame(message))


def report(tracked, *stats: dict, engine_id: str = "e1") -> ingest.Stored:
    return tracked.ingest.store(decoded(state_msg(engine_state_with(*stats,
                                                                    engine_id=engine_id))))


def stored_stats() -> dict[str, tuple]:
    return {row.fp: (row.count, row.errors, row.total, row.max, row.rows)
            for row in StatementStat.objects.all()}


@pytest.mark.django_db
def test_a_state_frame_stores_its_statements(frozen, tracked):
    stored = report(tracked, statement_stats())
    assert stored.statements == 1
    row = StatementStat.objects.get()
    assert (row.engine_id, row.fp, row.sql, row.op, row.table) == (
        tracked.engine.pk, "a1b2c3d4e5f6", STATEMENT_SQL, "select", "customer")
    assert (row.count, row.errors, row.total, row.max, row.rows) == (10, 1, 0.236, 0.2, 10)
    assert row.buckets == [0, 0, 0, 9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
    assert (row.location, row.stack, row.updated_at) == (STATEMENT_LOCATION, STACK, NOW)
    # the engine's state keeps its gauges, not the statements
    assert "statements" not in Engine.objects.get(pk=tracked.engine.pk).state


@pytest.mark.django_db
def test_a_changed_fingerprint_replaces_its_row_and_others_stay(tracked):
    report(tracked, statement_stats("aaa"), statement_stats("bbb"))
    pk = StatementStat.objects.get(fp="aaa").pk
    report(tracked, statement_stats("aaa", count=25, total=1.5, max=0.9, rows=30, errors=2))
    assert stored_stats() == {"aaa": (25, 2, 1.5, 0.9, 30), "bbb": (10, 1, 0.236, 0.2, 10)}
    assert StatementStat.objects.get(fp="aaa").pk == pk
    report(tracked)  # a frame without statements changes none
    assert StatementStat.objects.count() == 2


@pytest.mark.django_db
def test_engines_keep_their_own_fingerprints(tracked):
    ingest.store_engine(tracked.process.pk, decoded({"t": "engine", "engine": engine_info(
        id="e2", name="sqlite/cache", url="sqlite://")}))
    tracked.ingest.store(decoded(state_msg(
        engine_state_with(statement_stats(count=3)),
        engine_state_with(statement_stats(count=4), engine_id="e2"))))
    assert sorted(StatementStat.objects.values_list("engine__key", "fp", "count")) == [
        ("e1", "a1b2c3d4e5f6", 3), ("e2", "a1b2c3d4e5f6", 4)]


@pytest.mark.django_db
def test_an_engine_keeps_its_most_recently_updated_fingerprints(tracked, settings,
                                                                monkeypatch):
    from django.utils import timezone

    settings.RETORT = {"STATEMENTS_PER_ENGINE": 3}
    start = timezone.now()
    for n in range(5):
        moment = start + timedelta(seconds=n)
        monkeypatch.setattr(timezone, "now", lambda moment=moment: moment)
        report(tracked, statement_stats(f"fp{n}"))
    assert sorted(StatementStat.objects.values_list("fp", flat=True)) == ["fp2", "fp3", "fp4"]
    # fp2 changes: it is recent again, fp3 is the oldest and goes with the next new one
    for n, fp in ((5, "fp2"), (6, "fp5")):
        moment = start + timedelta(seconds=n)
        monkeypatch.setattr(timezone, "now", lambda moment=moment: moment)
        report(tracked, statement_stats(fp))
    assert sorted(StatementStat.objects.values_list("fp", flat=True)) == ["fp2", "fp4", "fp5"]


@pytest.mark.django_db
def test_thousands_of_fingerprints_in_one_frame_stay_bounded(tracked, settings):
    settings.RETORT = {"STATEMENTS_PER_ENGINE": 1000}
    report(tracked, *(statement_stats(f"{n:012x}", sql=f"SELECT {n}", location=None,
                                      stack=None) for n in range(2500)))
    assert StatementStat.objects.count() == 1000


@pytest.mark.django_db
def test_numbers_beyond_a_column_are_clamped(tracked):
    report(tracked, statement_stats(count=2**64 - 1, rows=-1, total=-0.5))
    row = StatementStat.objects.get()
    assert (row.count, row.rows, row.total) == (2**63 - 1, 0, 0.0)


@pytest.mark.django_db
def test_slow_statements_are_stored_and_bounded_per_engine(tracked, settings):
    settings.RETORT = {"SLOW_STATEMENTS_PER_ENGINE": 2}
    stored = tracked.ingest.store_events(decoded(events_msg(
        slow_statement(ts=STATE_TS + 1, seconds=0.75),
        slow_statement(ts=STATE_TS + 3, seconds=2.5, params={"id": 7, "password": "••••••"}),
        slow_statement(ts=STATE_TS + 2, seconds=9.0),
        slow_statement("e9"),  # an engine never announced: skipped
    )))
    assert stored.statements == 3
    assert list(SlowStatement.objects.values_list("at", "seconds", "params")) == [
        (at(STATE_TS + 3), 2.5, {"id": 7, "password": "••••••"}), (at(STATE_TS + 2), 9.0, None)]
    row = SlowStatement.objects.first()
    assert (row.engine_id, row.fp, row.sql, row.rows, row.session, row.thread, row.location,
            row.stack) == (tracked.engine.pk, "a1b2c3d4e5f6", STATEMENT_SQL, 1, "s1",
                           "worker-1", STATEMENT_LOCATION, STACK)


@pytest.mark.django_db
def test_statements_of_long_gone_processes_are_pruned(tracked, settings, monkeypatch):
    from django.utils import timezone

    settings.RETORT = {"RECENT_PROCESS_SECONDS": 60}
    report(tracked, statement_stats())
    tracked.ingest.store_events(decoded(events_msg(slow_statement())))
    ingest.mark_disconnected(tracked.process.pk)
    other = ingest.register_process(tracked.token, decoded(hello_msg(pid=5151)))
    later = timezone.now() + timedelta(seconds=61)
    monkeypatch.setattr(timezone, "now", lambda: later)
    ingest.StateIngest(other.pk).store(decoded(state_msg(engine_state_with(
        statement_stats("new")))))
    assert list(StatementStat.objects.values_list("fp", flat=True)) == ["new"]
    assert SlowStatement.objects.count() == 0
    assert Process.objects.count() == 2


@pytest.mark.django_db
def test_a_frame_that_cannot_be_stored_keeps_the_statements_stored_before(tracked):
    report(tracked, statement_stats())
    before = rows()
    bad = statement_stats("bbb", op=None)  # not a frame decode() accepts: stored as is
    with pytest.raises(TypeError):
        tracked.ingest.store(state_msg(engine_state_with(statement_stats("aaa", count=99),
                                                         bad)))
    assert rows() == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("field, value", [
    ("count", "10"), ("buckets", [1.5]), ("sql", None), ("extra", 1), ("rows", 1.5)])
async def test_a_malformed_statements_entry_is_refused_and_nothing_is_lost(shop, field, value):
    agent = await open_agent(shop.raw)
    await say_hello(agent)
    await send_and_settle(agent, state_msg(engine_state_with(statement_stats())))
    before = await arows()
    bad = statement_stats("bbb", **{field: value})
    await agent.send_to(bytes_data=frame(state_msg(engine_state_with(
        statement_stats(count=99), bad))))
    reply = await agent.receive_from()
    error = protocol.decode(reply, allowed=frozenset({"error"}))
    assert error["code"] == protocol.CLOSE_MALFORMED
    assert error["reason"].startswith("state.engines[0].statements[1]")
    assert (await agent.receive_output())["type"] == "websocket.close"
    await agent.disconnect()
    after = await arows()
    # the disconnect marked the process disconnected; every statement is as it was
    assert after["statements"] == before["statements"]
    assert await sync_to_async(stored_stats)() == {"a1b2c3d4e5f6": (10, 1, 0.236, 0.2, 10)}

"""Live sessions in the agent: summaries, snapshots of entities and pending changes
(exact values, no SQL), and the data-loss traps — on SQLite and PostgreSQL."""

from __future__ import annotations

import gc
import threading
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from tests import services
from tests.tracker.scenario import Customer, Order, make_changes, seed

HERE = "tests/tracker/test_sessions.py"


def _engine(kind: str, tmp_path):
    if kind == "sqlite":
        return sa.create_engine(f"sqlite:///{tmp_path / 'sessions.db'}")
    services.require(kind)
    return sa.create_engine(services.POSTGRES_URL)


class Statements:
    """Every statement the database receives on an engine (the test's own listener)."""

    def __init__(self, engine) -> None:
        self.seen: list[str] = []
        event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        self.seen.append(statement)


def _snapshot(agent, sid, **args):
    status, reason, (reply,) = agent._snapshot_control({"session": sid, **args}, "req-1")
    assert (status, reply["t"], reply["request"]) == ("applied", "snapshot", "req-1")
    return reply


def _summary(agent, session):
    entry = agent.sessions.get(session)
    assert entry is not None
    summaries, _ = agent.session_summaries(everything=True)
    return next(s for s in summaries if s["id"] == entry.sid)


def _by_op(changes):
    return {(c["op"], c["class"], c["identity"]): {k: v for k, v in c.items()
                                                   if k not in ("op", "class", "identity")}
            for c in changes}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_snapshot_shows_exactly_the_pending_changes_and_emits_no_sql(agent, tmp_path, kind):
    engine = _engine(kind, tmp_path)
    seed(engine)
    statements = Statements(engine)
    try:
        with Session(engine, autoflush=False) as session:
            objs = make_changes(session)
            before = len(statements.seen)
            tracked = (set(session.new), set(session.dirty), set(session.deleted),
                       len(session.identity_map))
            sid = agent.sessions.get(session).sid
            snap = _snapshot(agent, sid)

            # the agent read the session without a single statement, and changed nothing
            assert len(statements.seen) == before
            assert (set(session.new), set(session.dirty), set(session.deleted),
                    len(session.identity_map)) == tracked
            assert (snap["found"], snap["partial"], snap["session"]) == (True, False, sid)

            changes = _by_op(snap["changes"])
            assert changes == {
                ("insert", "Customer", ""): {
                    "values": {"name": "'Dana'", "email": "'dana@example.com'",
                               "password_hash": "••••••"},
                },
                ("insert", "Order", ""): {
                    "values": {"total": "5.00", "note": "'extra'"},
                    "references": {"customer": ["None", "Customer#1"]},
                },
                ("update", "Customer", "1"): {
                    "attributes": {"name": ["'Ann'", "'Annie'"],
                                   "email": ["'ann@example.com'", "'annie@example.com'"]},
                    "collections": {"orders": {"added": ["Order (new)"],
                                               "removed": ["Order#1"]}},
                },
                ("update", "Order", "1"): {
                    "references": {"customer": ["Customer#1", "None"]},
                },
                ("delete", "Customer", "2"): {},
            }
            assert snap["changes_total"] == 5

            entities = {(e["class"], e["identity"]): (e["state"], e["modified"])
                        for e in snap["entities"]}
            assert entities == {
                ("Customer", ""): ("pending", False),
                ("Order", ""): ("pending", False),
                ("Customer", "2"): ("deleted", False),
                ("Customer", "1"): ("persistent", True),
                ("Order", "1"): ("persistent", True),
                ("Order", "2"): ("persistent", False),
            }
            assert snap["total"] == 6

            summary = snap["summary"]
            assert (summary["objects"], summary["new"], summary["dirty"],
                    summary["deleted"]) == (4, 2, 2, 1)
            # identity map (Ann, Bob, orders 1 and 2) plus the two new objects
            assert summary["by_class"] == {"Customer": 3, "Order": 3}
            session.commit()
            dana_id, extra_id = objs["dana"].id, objs["extra"].id

        # the database got exactly those changes
        with engine.connect() as conn:
            customers = conn.execute(sa.text(
                "select id, name, email from retort_customer order by id")).all()
            orders = conn.execute(sa.text(
                "select id, customer_id, total, note from retort_order order by id")).all()
        assert [tuple(row) for row in customers] == [
            (1, "Annie", "annie@example.com"), (3, "Cy", None),
            (dana_id, "Dana", "dana@example.com")]
        assert [tuple(row) for row in orders] == [
            (1, None, Decimal("10.50"), "first"), (2, 1, Decimal("20.00"), None),
            (3, None, Decimal("7.25"), "gift"), (extra_id, 1, Decimal("5.00"), "extra")]
    finally:
        engine.dispose()


def test_summary_of_a_live_session(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    session = Session(engine)
    try:
        assert agent.sessions.get(session) is None  # not registered before it begins
        ann = session.get(Customer, 1)
        ann.name = "Annie"
        session.add(Customer(name="Eve"))
        summary = _summary(agent, session)
        assert summary["state"] == "transaction"
        assert (summary["objects"], summary["new"], summary["dirty"], summary["deleted"]) == (
            1, 1, 1, 0)
        assert summary["by_class"] == {"Customer": 2}
        assert summary["statements"] == 1
        assert (summary["flushes"], summary["commits"], summary["rollbacks"]) == (0, 0, 0)
        engine_id = agent.registry.engines[id(engine)].id
        assert summary["engines"] == [engine_id] and summary["connections"] == [engine_id]
        assert (summary["thread"], summary["kind"], summary["async"]) == (
            "MainThread", "Session", False)
        assert summary["autoflush"] is True and summary["expire_on_commit"] is True
        assert summary["location"].startswith(f"{HERE}:")
        assert summary["location"].endswith(" in test_summary_of_a_live_session")
        assert [kind for _, kind, _ in summary["lifecycle"]] == ["begin"]
        # the pool panel names the session holding the connection
        state = agent.snapshot()
        (holder,) = next(e for e in state["engines"] if e["id"] == engine_id)["holders"]
        assert holder["session"] == summary["id"]

        session.commit()  # flush (2 statements) + commit
        summary = _summary(agent, session)
        assert summary["state"] == "idle" and summary["connections"] == []
        assert (summary["statements"], summary["flushes"], summary["commits"]) == (3, 1, 1)
        assert [kind for _, kind, _ in summary["lifecycle"]] == ["begin", "flush", "commit"]
        session.close()
        summary = _summary(agent, session)
        assert (summary["state"], summary["end"]) == ("closed", "closed")
        assert summary["lifecycle"][-1][1] == "close"
    finally:
        session.close()
        engine.dispose()


def test_only_changed_sessions_are_sent_again(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    # the seeding session began and ended between two state frames: never shown
    assert agent.session_summaries() == ([], 0)
    with Session(engine) as session:
        ann = session.get(Customer, 1)
        sid = agent.sessions.get(session).sid
        first, _ = agent.session_summaries()
        assert [s["id"] for s in first] == [sid]
        again, _ = agent.session_summaries()
        assert again == []  # nothing changed
        bob = session.get(Customer, 2)
        changed, _ = agent.session_summaries()
        assert [(s["id"], s["objects"]) for s in changed] == [(sid, 2)]
        assert (ann.id, bob.id) == (1, 2)
    ended, _ = agent.session_summaries()
    assert [(s["id"], s["state"], s["end"]) for s in ended] == [(sid, "closed", "closed")]
    assert agent.session_summaries()[0] == []
    engine.dispose()


def test_sessionmaker_scoped_session_and_statement_counts(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    factory = sessionmaker(engine)
    scoped = scoped_session(factory)
    with factory() as made:
        made.execute(sa.select(Customer)).all()
        made_id = agent.sessions.get(made).sid
    scoped.get(Customer, 3)
    scoped_summary = _summary(agent, scoped())
    assert scoped_summary["statements"] == 1 and scoped_summary["state"] == "transaction"
    scoped.remove()
    ended = {s["id"]: s["end"] for s in agent.session_summaries(everything=True)[0]}
    assert ended[made_id] == "closed" and ended[scoped_summary["id"]] == "closed"
    engine.dispose()


def test_async_session_is_tracked_with_its_task(tmp_path):
    import asyncio

    import tracker
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    sync_engine = _engine("sqlite", tmp_path)
    seed(sync_engine)
    sync_engine.dispose()
    handle = tracker.instrument(run_worker=False, url=None, app="tests")
    seen = {}

    async def main():
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'sessions.db'}")
        async with AsyncSession(engine) as session:
            ann = await session.get(Customer, 1)
            ann.name = "Async Ann"
            entry = handle.agent.sessions.get(session.sync_session)
            seen["summary"] = handle.agent.session_reporter.summary(
                entry, session.sync_session, 0.0, 0.0, force=True)
            seen["snapshot"] = handle.agent._snapshot_control({"session": entry.sid}, "a")[2][0]
        await engine.dispose()

    try:
        asyncio.run(main(), debug=False)
    finally:
        tracker.uninstrument()
    summary = seen["summary"]
    assert summary["async"] is True and summary["task"].startswith("Task-")
    assert summary["state"] == "transaction" and summary["dirty"] == 1
    assert _by_op(seen["snapshot"]["changes"]) == {
        ("update", "Customer", "1"): {"attributes": {"name": ["'Ann'", "'Async Ann'"]}}}


def test_snapshot_pages_and_filters(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    with Session(engine) as session:
        session.add_all([Order(id=100 + i, total=Decimal(i), note=f"n{i}") for i in range(250)])
        session.commit()
        # the identity map is weak: the test keeps the objects, as a request would
        orders = session.execute(sa.select(Order)).scalars().all()
        customers = session.execute(sa.select(Customer)).scalars().all()
        assert (len(orders), len(customers)) == (253, 3)
        session.get(Order, 101).note = "changed"
        sid = agent.sessions.get(session).sid
        page = _snapshot(agent, sid, offset=100, limit=50, **{"class": "Order"})
        assert (page["total"], page["offset"], len(page["entities"])) == (253, 100, 50)
        assert {e["class"] for e in page["entities"]} == {"Order"}
        modified = _snapshot(agent, sid, modified=True)
        assert [(e["class"], e["identity"]) for e in modified["entities"]] == [("Order", "101")]
        assert modified["total"] == 1
        persistent = _snapshot(agent, sid, **{"class": "Customer", "state": "persistent"})
        assert sorted(e["identity"] for e in persistent["entities"]) == ["1", "2", "3"]
        # expired attributes are listed, and listing them loads nothing
        session.expire(session.get(Customer, 1), ["email"])
        (ann,) = [e for e in _snapshot(agent, sid, **{"class": "Customer"})["entities"]
                  if e["identity"] == "1"]
        assert ann["expired"] == ["email"]
        assert "email" not in session.get(Customer, 1).__dict__
    engine.dispose()


def test_snapshot_of_an_unknown_session(agent):
    reply = _snapshot(agent, "s999")
    assert (reply["found"], reply["entities"], reply["changes"]) == (False, [], [])


def _findings(agent):
    return [item[1] for item in list(agent.recorder.queue) if item[0] == "finding"]


def test_closing_a_session_with_unflushed_changes_is_a_finding(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    session = Session(engine, autoflush=False)
    ann = session.get(Customer, 1)
    ann.name = "Lost"
    session.add(Customer(name="Never written"))
    sid = agent.sessions.get(session).sid
    session.close()  # line that loses them
    (finding,) = _findings(agent)
    kind, _ts, engine_id, rule, severity, fsid, thread, location, message, evidence = finding
    assert (kind, rule, severity, fsid, thread) == (
        "finding", "lost-changes-on-close", "error", sid, "MainThread")
    assert engine_id == agent.registry.engines[id(engine)].id
    assert location.startswith(f"{HERE}:") and location.endswith(
        " in test_closing_a_session_with_unflushed_changes_is_a_finding")
    assert message == (f"session {sid} was closed with unflushed changes (1 new, 1 modified): "
                       "they were never written to the database")
    assert (evidence["new"], evidence["modified"], evidence["deleted"]) == (1, 1, 0)
    assert evidence["objects"] == ["Customer (new)", "Customer#1 (name)"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("select name from retort_customer where id = 1")).scalar() == "Ann"
    engine.dispose()


def test_a_committed_or_clean_close_is_not_a_finding(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    with Session(engine) as session:
        session.get(Customer, 1).name = "Saved"
        session.commit()
    with Session(engine) as session:
        ann = session.get(Customer, 1)
        ann.name = ann.name  # set to the same value: nothing to write
    assert _findings(agent) == []
    engine.dispose()


def test_a_garbage_collected_session_with_unflushed_changes_is_a_finding(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)

    def forget_to_commit():
        session = Session(engine)
        session.add(Customer(name="Orphan"))
        return agent.sessions.entry_for(session, threading.get_ident(), None).sid

    sid = forget_to_commit()
    gc.collect()
    (finding,) = _findings(agent)
    assert (finding[3], finding[5]) == ("lost-changes-on-gc", sid)
    assert finding[8] == (f"session {sid} was garbage collected without being closed with "
                          "unflushed changes (1 new): they were never written to the database")
    ended, _ = agent.session_summaries()
    assert [(s["id"], s["end"]) for s in ended if s["id"] == sid] == [(sid, "collected")]
    engine.dispose()


def test_modifying_an_object_after_its_session_closed_is_a_finding(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    with Session(engine, expire_on_commit=False) as session:
        ann = session.get(Customer, 1)
        bob = session.get(Customer, 2)
        sid = agent.sessions.get(session).sid
    start = 1000.0
    agent.detached_findings(start)  # the worker watches the closed session's objects
    ann.email = "changed-after-close@example.com"
    # seen, but given a second to be merged (modify-then-merge is the right way)
    assert agent.detached_findings(start + 0.5) == []
    (finding,) = agent.detached_findings(start + 1.6)
    assert finding[3:6] == ["detached-modification", "warning", sid]
    assert finding[8] == (f"Customer#1 was modified after its session {sid} closed: the "
                          "change (email) will never be written unless the object is "
                          "merged into a session")
    assert finding[9] == {"class": "Customer", "identity": "1", "attributes": ["email"]}
    assert agent.detached_findings(start + 3) == []  # reported once
    # modified, then merged into a session: written after all, not a finding
    bob.name = "Bobby"
    assert agent.detached_findings(start + 4) == []
    with Session(engine) as other:
        other.merge(bob)
        other.commit()
    assert agent.detached_findings(start + 10) == []
    with engine.connect() as conn:
        assert conn.execute(sa.text("select name from retort_customer where id = 2")).scalar() == "Bobby"
    engine.dispose()


def test_snapshot_while_the_application_changes_the_session(agent, tmp_path):
    """The worker reads while the app adds, modifies and flushes: no exception reaches
    the application, and every snapshot is complete or marked partial."""
    engine = _engine("sqlite", tmp_path)
    seed(engine)
    errors: list[BaseException] = []
    done = threading.Event()
    session = Session(engine)
    session.get(Customer, 1)
    sid = agent.sessions.get(session).sid

    def app():
        try:
            for i in range(300):
                session.add(Order(total=Decimal(i), note=f"busy {i}"))
                session.get(Customer, 1).name = f"busy {i}"
                if i % 50 == 49:
                    session.flush()
                if i % 100 == 99:
                    session.expunge_all()
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=app)
    thread.start()
    snapshots = 0
    while not done.is_set():
        reply = _snapshot(agent, sid, limit=500)
        assert reply["found"] is True
        assert len(reply["entities"]) <= 500
        snapshots += 1
    thread.join(5)
    session.rollback()
    session.close()
    assert errors == []
    assert snapshots >= 1
    engine.dispose()


def test_a_long_lived_session_keeps_a_bounded_lifecycle(agent, tmp_path):
    from tracker.protocol import MAX_LIFECYCLE

    engine = _engine("sqlite", tmp_path)
    seed(engine)
    with Session(engine) as session:
        for _ in range(500):
            session.get(Customer, 1)
            session.commit()
        entry = agent.sessions.get(session)
        assert len(entry.lifecycle) <= 4 * MAX_LIFECYCLE
        summary = _summary(agent, session)
        assert len(summary["lifecycle"]) == MAX_LIFECYCLE
        assert [kind for _, kind, _ in summary["lifecycle"][-2:]] == ["begin", "commit"]
        assert summary["commits"] == 500
    engine.dispose()

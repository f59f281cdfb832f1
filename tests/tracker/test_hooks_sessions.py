"""The session hooks' fast paths, on real SQLite engines: entries keyed by
``Session.hash_key`` and reaching their session through SQLAlchemy's own weak
reference; a session's first statement counted without a per-text dict; the
"flushing" state set by a flush's first write; commits and transaction ends seen by
the ``SessionTransaction.close`` wrapper (savepoints included)."""

from __future__ import annotations

import gc

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from tests.tracker.scenario import Customer, seed


def _engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'hooks.db'}")
    seed(engine)
    return engine


def _summary(agent, session):
    entry = agent.sessions.get(session)
    summaries, _ = agent.session_summaries(everything=True)
    return next(s for s in summaries if s["id"] == entry.sid)


def test_an_entry_is_keyed_by_hash_key_and_finds_its_session(agent, tmp_path):
    engine = _engine(tmp_path)
    session = Session(engine)
    session.get(Customer, 1)
    entry = agent.sessions.get(session)
    assert agent.sessions.by_id[session.hash_key] is entry
    assert entry.ref() is session
    assert (entry.kind, entry.engines) == ("Session", (agent.registry.engine_entry(engine).id,))
    session.close()
    del session
    gc.collect()
    # gone with its session (Session.__del__), and its reference is dead
    assert entry.key not in agent.sessions.by_id
    assert entry.ref() is None
    engine.dispose()


def test_a_sessions_first_statement_needs_no_dict_until_a_second(agent, tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as session:
        session.get(Customer, 1)
        entry = agent.sessions.get(session)
        assert entry.statements == 1 and entry.stmts is None
        first = entry.first
        assert first.startswith("SELECT")
        session.get(Customer, 2)  # the same text again: now counted per text
        assert entry.statements == 2
        assert {text: record[0] for text, record in entry.stmts.items()} == {first: 2}
        session.execute(sa.text("select 1"))
        assert {text: record[0] for text, record in entry.stmts.items()} == {
            first: 2, "select 1": 1}
    summaries, _ = agent.session_summaries(everything=True)
    (summary,) = [s for s in summaries if s["id"] == entry.sid]
    assert [runs for _, runs, _ in summary["repeats"]] == [2]
    engine.dispose()


def test_a_flush_is_flushing_from_its_first_write_until_it_ends(agent, tmp_path):
    engine = _engine(tmp_path)
    seen = []

    def after_insert(mapper, connection, target):
        seen.append(agent.sessions.get(session).state)

    event.listen(Customer, "after_insert", after_insert)
    try:
        with Session(engine) as session:
            session.get(Customer, 1)
            session.add(Customer(name="Eve"))
            session.add(Customer(name="Flo"))
            session.flush()
            assert seen == ["flushing", "flushing"]
            assert agent.sessions.get(session).state == "transaction"
            # a write of the application's own (not a flush) is no flush
            session.execute(sa.update(Customer).where(Customer.id == 1).values(name="A"))
            assert agent.sessions.get(session).state == "transaction"
            session.commit()
            assert _summary(agent, session)["flushes"] == 1
    finally:
        event.remove(Customer, "after_insert", after_insert)
    engine.dispose()


def test_commits_rollbacks_and_savepoints_in_the_lifecycle(agent, tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as session:
        session.add(Customer(name="Eve"))
        with session.begin_nested():  # flushes, then releases the savepoint: a commit
            session.add(Customer(name="Flo"))
        nested = session.begin_nested()
        session.add(Customer(name="Gus"))
        nested.rollback()
        assert agent.sessions.get(session).state == "transaction"
        session.commit()
        summary = _summary(agent, session)
        assert (summary["commits"], summary["rollbacks"], summary["flushes"]) == (2, 1, 2)
        assert [kind for _, kind, _ in summary["lifecycle"]] == [
            "begin", "flush", "flush", "commit", "rollback", "commit"]
        assert (summary["state"], summary["connections"]) == ("idle", [])
        with session.begin():  # committed by the context manager, not Session.commit()
            session.get(Customer, 1)
        summary = _summary(agent, session)
        assert summary["commits"] == 3
        assert [kind for _, kind, _ in summary["lifecycle"]][-2:] == ["begin", "commit"]
    assert agent.recorder.errors == 0
    engine.dispose()


def test_a_transaction_that_wrote_and_ended_without_commit_is_reported(agent, tmp_path):
    engine = _engine(tmp_path)
    session = Session(engine)
    session.add(Customer(name="Eve"))
    session.flush()
    session.close()  # the flush's INSERT is rolled back
    findings = [item[1] for item in list(agent.recorder.queue) if item[0] == "finding"]
    assert [f[3] for f in findings] == ["transaction-not-committed"]
    assert "after 1 INSERT/UPDATE/DELETE statement:" in findings[0][8]
    engine.dispose()

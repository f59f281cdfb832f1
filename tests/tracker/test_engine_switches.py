"""The per-engine switches the statement and pool hooks read on their fast paths
(``EngineEntry.statements``, ``.sample``, ``.locations``), and the statement wrappers
on dialect instances that carry them — on real SQLite engines."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import tracker
from tracker.detectors import SLOW
from tracker.hooks.engine import METHODS, STATEMENT
from tests.tracker.scenario import Customer, seed

HERE = "tests/tracker/test_engine_switches.py"


def _engines(tmp_path, *names):
    engines = [sa.create_engine(f"sqlite:///{tmp_path / f'{name}.db'}") for name in names]
    for engine in engines:
        with engine.connect() as conn:  # discovered: pool and dialect wrapped
            conn.execute(sa.text("select 0"))
    return engines


def _entry(agent, engine):
    return agent.registry.engines[id(engine)]


def _counters(agent, engine):
    entry_id = _entry(agent, engine).id
    state = agent.snapshot()
    return next(e for e in state["engines"] if e["id"] == entry_id)["counters"]


def _queued(agent, kind, entry=None):
    return [item for item in list(agent.recorder.queue)
            if item[0] == kind and (entry is None or item[1] is entry)]


def _run(engine, count, sql="select 1"):
    with engine.connect() as conn:
        for _ in range(count):
            assert conn.execute(sa.text(sql)).scalar() == 1


# -- statements -----------------------------------------------------------------------


def test_statements_off_records_nothing_for_that_engine_only(agent, tmp_path):
    a, b = _engines(tmp_path, "a", "b")
    before_a, before_b = _counters(agent, a), _counters(agent, b)
    _entry(agent, a).statements = False
    agent.detectors.set_thresholds({"slow_statement_seconds": 1e-9})  # every one is slow
    _run(a, 5)
    _run(b, 5)
    # nothing queued for a, not even a slow statement; b as usual
    assert _queued(agent, STATEMENT, _entry(agent, a)) == []
    assert len(_queued(agent, STATEMENT, _entry(agent, b))) == 5
    assert {item[1][2] for item in _queued(agent, SLOW)} == {_entry(agent, b).id}
    after_a, after_b = _counters(agent, a), _counters(agent, b)
    assert after_a["statements"] == before_a["statements"]
    assert after_b["statements"] == before_b["statements"] + 5
    # the pool is still followed
    assert after_a["checkouts"] == before_a["checkouts"] + 1
    assert after_a["checkins"] == before_a["checkins"] + 1
    # switched on again (at any time): counted again
    _entry(agent, a).statements = True
    _run(a, 2)
    assert _counters(agent, a)["statements"] == before_a["statements"] + 2
    a.dispose()
    b.dispose()


def test_statements_off_skips_per_session_counting(agent, tmp_path):
    (engine,) = _engines(tmp_path, "orm")
    seed(engine)
    _entry(agent, engine).statements = False
    with Session(engine) as session:
        for _ in range(3):
            session.scalars(sa.select(Customer).where(Customer.id == 1)).first()
        entry = agent.sessions.get(session)
        assert entry is not None  # the session itself is still followed
        assert (entry.statements, entry.stmts) == (0, None)
    _entry(agent, engine).statements = True
    with Session(engine) as session:
        for _ in range(3):
            session.scalars(sa.select(Customer).where(Customer.id == 1)).first()
        entry = agent.sessions.get(session)
        assert entry.statements == 3
        assert [record[0] for record in entry.stmts.values()] == [3]
    engine.dispose()


def test_sample_records_one_statement_in_n(agent, tmp_path):
    a, b = _engines(tmp_path, "a", "b")
    before = _counters(agent, a)["statements"]
    entry = _entry(agent, a)
    entry.sample = 3
    _run(a, 9)
    _run(b, 4)
    assert len(_queued(agent, STATEMENT, entry)) == 3
    assert len(_queued(agent, STATEMENT, _entry(agent, b))) == 4
    # the worker weighs each recorded statement by the engine's sample
    assert _counters(agent, a)["statements"] == before + 9
    entry.sample = 1
    _run(a, 2)
    assert len(_queued(agent, STATEMENT, entry)) == 2
    a.dispose()
    b.dispose()


def test_locations_off_on_one_engine(agent, tmp_path):
    # the agent fixture captures every checkout's location ("always")
    a, b = _engines(tmp_path, "a", "b")
    agent.snapshot()
    _entry(agent, a).locations = "off"
    with a.connect() as conn_a, b.connect() as conn_b:
        conn_a.execute(sa.text("select 11"))
        conn_b.execute(sa.text("select 12"))
        # a statement text's first location, likewise (item[6]: the captured stack)
        stacks = {item[3]: item[6] for item in _queued(agent, STATEMENT)}
        state = agent.snapshot()
    by_id = {e["id"]: e for e in state["engines"]}
    (holder_a,) = by_id[_entry(agent, a).id]["holders"]
    (holder_b,) = by_id[_entry(agent, b).id]["holders"]
    assert (holder_a["location"], holder_a["stack"]) == (None, [])
    assert holder_b["location"].startswith(f"{HERE}:")
    assert not stacks["select 11"]
    assert stacks["select 12"][0][0].co_filename.endswith(HERE)
    # read at each checkout: "always" again for a
    _entry(agent, a).locations = "always"
    with a.connect():
        (holder_a,) = {e["id"]: e for e in agent.snapshot()["engines"]}[
            _entry(agent, a).id]["holders"]
    assert holder_a["location"].startswith(f"{HERE}:")
    a.dispose()
    b.dispose()


def test_locations_switch_overrides_the_configured_mode(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a", capture_locations="off")
    try:
        agent = handle.agent
        with engine.connect():
            pass
        _entry(agent, engine).locations = "always"
        with engine.connect():
            state = agent.snapshot()
        (holder,) = {e["id"]: e for e in state["engines"]}[_entry(agent, engine).id][
            "holders"]
        assert holder["location"].startswith(f"{HERE}:")
    finally:
        tracker.uninstrument()
        engine.dispose()


# -- the statement wrappers on dialect instances --------------------------------------


def test_an_engine_created_after_instrument_is_wrapped_at_its_first_connection(agent,
                                                                              tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'late.db'}")
    assert not set(METHODS) & set(engine.dialect.__dict__)
    _run(engine, 2)
    assert set(METHODS) <= set(engine.dialect.__dict__)
    assert _counters(agent, engine)["statements"] >= 2
    engine.dispose()


def test_a_dialect_shared_by_engines_is_wrapped_once(agent, tmp_path):
    (engine,) = _engines(tmp_path, "shared")
    wrapper = engine.dialect.__dict__["do_execute"]
    other = engine.execution_options(isolation_level="AUTOCOMMIT")
    assert other.dialect is engine.dialect
    agent.snapshot()
    _run(engine, 2)
    _run(other, 3)
    assert engine.dialect.__dict__["do_execute"] is wrapper
    assert wrapper.__wrapped__.__func__ is type(engine.dialect).do_execute
    recorded = _queued(agent, STATEMENT)
    assert len(recorded) == 5  # each once, whichever engine ran it
    # and under the engine that ran it (the wrapper remembers the first engine it
    # served; the other is looked up), in any order
    _run(other, 1)
    _run(engine, 1)
    assert [item[1] for item in _queued(agent, STATEMENT)[5:]] == [
        _entry(agent, other), _entry(agent, engine)]
    assert len({_entry(agent, engine).id, _entry(agent, other).id}) == 2
    engine.dispose()


def test_a_dialect_attribute_already_there_is_wrapped_and_restored(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    calls = []
    class_method = engine.dialect.do_execute

    def own_do_execute(cursor, statement, parameters, context=None):
        calls.append(statement)
        class_method(cursor, statement, parameters, context)

    engine.dialect.do_execute = own_do_execute
    handle = tracker.instrument(run_worker=False, url=None, app="a")
    try:
        assert engine.dialect.__dict__["do_execute"] is not own_do_execute
        _run(engine, 2)
        assert calls == ["select 1", "select 1"]
        assert len(_queued(handle.agent, STATEMENT)) == 2
    finally:
        tracker.uninstrument()
    assert engine.dialect.__dict__["do_execute"] is own_do_execute
    assert "do_executemany" not in engine.dialect.__dict__
    engine.dispose()


def test_a_wrapper_put_over_ours_stays_and_ours_passes_through(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a")
    _run(engine, 1)  # ours has seen (and remembers) the engine
    ours = engine.dialect.do_execute
    seen = []

    def theirs(cursor, statement, parameters, context=None):
        seen.append(statement)
        ours(cursor, statement, parameters, context)

    engine.dialect.do_execute = theirs
    agent = handle.agent
    tracker.uninstrument()
    agent.recorder.clear()
    assert engine.dialect.__dict__["do_execute"] is theirs
    _run(engine, 1)
    assert seen == ["select 1"]
    assert len(agent.recorder) == 0 and agent.recorder.errors == 0
    engine.dispose()


def test_a_failing_statement_raises_its_own_error_and_is_counted(agent, tmp_path):
    (engine,) = _engines(tmp_path, "fail")
    before = _counters(agent, engine)
    with engine.connect() as conn:
        with pytest.raises(sa.exc.OperationalError, match="no such table: nowhere"):
            conn.execute(sa.text("select * from nowhere"))
        # executemany and no-parameter executions go through the wrappers too
        conn.execute(sa.text("create table t (x integer)"))
        conn.execute(sa.text("insert into t (x) values (:x)"), [{"x": 1}, {"x": 2}])
        conn.exec_driver_sql("select count(*) from t")
    after = _counters(agent, engine)
    assert after["statement_errors"] == before["statement_errors"] + 1
    assert after["statements"] == before["statements"] + 3
    assert agent.recorder.errors == 0
    engine.dispose()

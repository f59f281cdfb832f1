"""Pool hooks against real engines: exact counters, gauges, holders and their code
locations, waiting threads and checkout timeouts — on SQLite, PostgreSQL, MariaDB."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from tests import services

HERE = "tests/tracker/test_pool_hooks.py"


def _engine(kind: str, tmp_path, **pool):
    if kind == "sqlite":
        return sa.create_engine(f"sqlite:///{tmp_path / 'pool.db'}", **pool)
    services.require(kind)
    url = services.POSTGRES_URL if kind == "postgresql" else services.MARIADB_URL
    return sa.create_engine(url, pool_pre_ping=False, **pool)


def _state(agent, engine):
    state = agent.snapshot()  # also finds engines that have not run a statement yet
    entry = agent.registry.engines[id(engine)]
    return next(e for e in state["engines"] if e["id"] == entry.id)


def _wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_counters_gauges_and_holders(agent, tmp_path, kind):
    engine = _engine(kind, tmp_path, pool_size=3, max_overflow=2)
    try:
        first = engine.connect()  # line A: the holder's location
        # a network dialect runs its own statements on the first connect: count from here
        before = _state(agent, engine)["counters"]["statements"]
        first.execute(sa.text("select 1"))
        second = engine.connect()
        state = _state(agent, engine)
        assert state["gauges"] == {"checked_out": 2, "idle": 0, "overflow": 0, "size": 3,
                                   "capacity": 5, "waiting": 0}
        assert state["status"] == engine.pool.status()
        assert [h["thread"] for h in state["holders"]] == ["MainThread", "MainThread"]
        location = state["holders"][0]["location"]
        assert location.startswith(f"{HERE}:") and location.endswith(
            " in test_counters_gauges_and_holders")
        second.close()
        first.close()
        state = _state(agent, engine)
        assert state["gauges"]["checked_out"] == 0
        assert state["gauges"]["idle"] == 2
        assert state["holders"] == []
        counters = state["counters"]
        assert (counters["connects"], counters["checkouts"], counters["checkins"]) == (2, 2, 2)
        assert counters["statements"] == before + 1
        assert counters["timeouts"] == 0
        assert sum(state["hold"]["buckets"]) == 2
        # the first checkout of a pool created after instrument() discovers the pool
        # and is not timed (a new pool has free slots: that checkout cannot wait)
        assert sum(state["wait"]["buckets"]) == 1
    finally:
        engine.dispose()


def test_holder_location_is_the_application_line(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    line = _checkout_line()
    with engine.connect():
        holder = _state(agent, engine)["holders"][0]
    assert holder["location"] == f"{HERE}:{line} in test_holder_location_is_the_application_line"
    assert holder["stack"][0] == holder["location"]
    engine.dispose()


def _checkout_line() -> int:
    # the line of the `with engine.connect()` in the test above
    import inspect

    source, start = inspect.getsourcelines(test_holder_location_is_the_application_line)
    return start + next(i for i, text in enumerate(source) if "engine.connect()" in text)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_pool_pressure_waiting_threads_and_timeout(agent, tmp_path, kind):
    """More threads than the pool allows: the third waits, then times out."""
    engine = _engine(kind, tmp_path, pool_size=1, max_overflow=1, pool_timeout=1.5)
    release = threading.Event()
    holding = threading.Barrier(3)
    errors: list[str] = []

    def hold():
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
            holding.wait()
            release.wait(10)

    def wait_for_one():
        try:
            with engine.connect():
                pass
        except sa.exc.TimeoutError as exc:
            errors.append(type(exc).__name__)

    holders = [threading.Thread(target=hold, name=f"holder-{i}") for i in range(2)]
    for thread in holders:
        thread.start()
    holding.wait()
    waiter = threading.Thread(target=wait_for_one, name="waiter")
    waiter.start()
    try:
        assert _wait_until(lambda: _state(agent, engine)["gauges"]["waiting"] == 1)
        state = _state(agent, engine)
        assert state["gauges"]["checked_out"] == 2
        assert state["gauges"]["overflow"] == 1
        assert sorted(h["thread"] for h in state["holders"]) == ["holder-0", "holder-1"]
        assert all(h["location"].endswith(" in hold") for h in state["holders"])
        waiter.join(5)
        assert errors == ["TimeoutError"]
        state = _state(agent, engine)
        assert state["counters"]["timeouts"] == 1
        assert state["gauges"]["waiting"] == 0
        events = list(agent.worker.pending_events)
        assert events == []  # no dashboard: events are not kept
    finally:
        release.set()
        for thread in holders:
            thread.join(5)
        engine.dispose()
    state = _state(agent, engine)
    assert state["counters"]["checkouts"] == 2
    assert state["counters"]["checkins"] == 2


def test_timeout_event_names_thread_and_location(tmp_path):
    """With a dashboard configured, a checkout timeout becomes an event."""
    import tracker

    handle = tracker.instrument(run_worker=False, url="ws://127.0.0.1:9/", app="t")
    try:
        engine = _engine("sqlite", tmp_path, pool_size=1, max_overflow=0, pool_timeout=0.05)
        with engine.connect():
            with pytest.raises(sa.exc.TimeoutError):
                engine.connect()
            handle.agent.snapshot()
        event, finding = handle.agent.worker.pending_events
        kind, ts, engine_id, thread, location, waited = event
        expected_id = handle.agent.registry.engines[id(engine)].id
        assert (kind, engine_id, thread) == ("checkout_timeout", expected_id, "MainThread")
        assert location.startswith(f"{HERE}:") and location.endswith(
            " in test_timeout_event_names_thread_and_location")
        assert 0.05 <= waited < 1.0
        # the advisor's finding: where the checkout gave up, and who held the pool
        (_, _, f_engine, rule, severity, session, _, f_location, message,
         evidence) = finding
        assert (f_engine, rule, severity, session, f_location) == (
            expected_id, "pool-checkout-timeout", "error", "", location)
        assert message == (f"1 checkout of engine {handle.agent.registry.engines[id(engine)].name}"
                           " timed out waiting for a connection (pool exhausted)")
        assert {k: evidence[k] for k in ("waiting", "checked_out", "timeouts", "pool_size",
                                         "max_overflow", "timeout")} == {
            "waiting": 0, "checked_out": 1, "timeouts": 1, "pool_size": 1,
            "max_overflow": 0, "timeout": 0.05}
        engine.dispose()
    finally:
        tracker.uninstrument()


def test_engines_created_before_and_after_instrument(tmp_path):
    import tracker

    before = sa.create_engine(f"sqlite:///{tmp_path / 'before.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="t")
    try:
        after = sa.create_engine(f"sqlite:///{tmp_path / 'after.db'}")
        # the engine that existed is known at once, even before it is used
        assert id(before) in handle.agent.registry.engines
        with before.connect(), after.connect():
            pass
        # `after` has not run a statement: the worker's next round finds its engine
        handle.agent.snapshot()
        ours = {handle.agent.registry.engines[id(e)].id: e for e in (before, after)}
        states = {e["id"]: e for e in handle.agent.snapshot()["engines"] if e["id"] in ours}
        assert [states[key]["counters"]["checkouts"] for key in ours] == [1, 1]
        names = [handle.agent.engine_info(handle.agent.registry.engines[id(e)], e)["name"]
                 for e in (before, after)]
        assert names == ["sqlite/before.db", "sqlite/after.db"]
    finally:
        tracker.uninstrument()
        before.dispose()


def test_dispose_replaces_the_pool(agent, tmp_path):
    engine = _engine("sqlite", tmp_path, pool_size=2)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))  # the engine is known from its first statement
    old_pool = engine.pool
    engine.dispose()
    with engine.connect():
        state = _state(agent, engine)
    assert engine.pool is not old_pool
    assert "connect" in engine.pool.__dict__  # the new pool is timed too
    assert state["gauges"]["checked_out"] == 1
    assert state["counters"]["checkouts"] == 2
    entry = agent.registry.engines[id(engine)]
    assert entry.disposed == 1
    assert agent.engine_info(entry, engine)["disposed"] == 1


def test_invalidation_is_counted(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    with engine.connect() as conn:
        conn.invalidate()
    assert _state(agent, engine)["counters"]["invalidations"] == 1


def test_password_is_masked(agent):
    engine = sa.create_engine("postgresql+psycopg://alice:s3cr3t@db.example:5432/shop")
    entry = agent.registry.engine_entry(engine)
    info = agent.engine_info(entry, engine)
    assert info["url"] == "postgresql+psycopg://alice:***@db.example:5432/shop"
    assert "s3cr3t" not in repr(agent.hello())
    assert info["pool"]["class"] == "QueuePool"
    assert (info["pool"]["size"], info["pool"]["max_overflow"], info["pool"]["timeout"]) == (
        5, 10, 30.0)
    assert info["name"] == "postgresql@db.example/shop"


def test_statement_errors_are_counted(agent, tmp_path):
    engine = _engine("sqlite", tmp_path)
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("select * from no_such_table"))
    counters = _state(agent, engine)["counters"]
    assert (counters["statements"], counters["statement_errors"]) == (1, 1)
    assert agent.recorder.errors == 0


def test_orm_session_location_skips_generated_code(agent, tmp_path):
    from sqlalchemy.orm import Session

    engine = _engine("sqlite", tmp_path)
    with Session(engine) as session:
        session.execute(sa.text("select 1"))
        holder = _state(agent, engine)["holders"][0]
    assert holder["location"].startswith(f"{HERE}:")
    assert holder["location"].endswith(" in test_orm_session_location_skips_generated_code")
    assert not any(frame.startswith("<") for frame in holder["stack"])


def test_pressure_mode_walks_the_stack_only_from_half_the_pool(tmp_path):
    """Default mode: the stack walk (the main cost of a checkout) happens only once
    half the pool is in use; below that, held connections have no location yet."""
    import tracker

    engine = _engine("sqlite", tmp_path, pool_size=4, max_overflow=0)
    handle = tracker.instrument(run_worker=False, url=None, app="tests")
    try:
        assert handle.agent.config.capture_locations == "pressure"
        first = engine.connect()
        second = engine.connect()
        third = engine.connect()  # two already held: half of 4
        holders = _state(handle.agent, engine)["holders"]
        assert [h["location"] is None for h in holders] == [True, True, False]
        assert holders[2]["location"].endswith(
            " in test_pressure_mode_walks_the_stack_only_from_half_the_pool")
        assert "sampled" not in holders[2]
        for conn in (third, second, first):
            conn.close()
    finally:
        tracker.uninstrument()
        engine.dispose()


def test_long_held_connection_without_location_is_sampled_from_its_thread(tmp_path):
    import tracker

    engine = _engine("sqlite", tmp_path, pool_size=4, max_overflow=0)
    handle = tracker.instrument(run_worker=False, url=None, app="tests")
    holding, release = threading.Event(), threading.Event()

    def slow_report():
        with engine.connect():
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=slow_report, name="reporter")
    thread.start()
    try:
        assert holding.wait(5)
        (holder,) = _state(handle.agent, engine)["holders"]
        assert holder["location"] is None  # not under pressure, and held only briefly
        time.sleep(0.6)
        (holder,) = _state(handle.agent, engine)["holders"]
        assert holder["thread"] == "reporter"
        assert holder["sampled"] is True
        assert holder["location"].startswith(f"{HERE}:")
        assert holder["location"].endswith(" in slow_report")
        # sampled once per checkout: the same answer on the next state
        assert _state(handle.agent, engine)["holders"][0]["location"] == holder["location"]
        release.set()
        thread.join(5)
        assert _state(handle.agent, engine)["holders"] == []
        assert handle.agent.registry.pools[id(engine.pool)].sampled == {}  # forgotten
    finally:
        release.set()
        thread.join(5)
        tracker.uninstrument()
        engine.dispose()

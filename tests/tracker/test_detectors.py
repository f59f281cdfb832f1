"""The advisor's runtime rules, each with a scenario that must trigger it and a
near-miss twin that must stay quiet; statement fingerprints and their figures."""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, joinedload, selectinload

from tests import services
from tests.tracker.scenario import Base, Customer, Order, seed
from tracker.fingerprint import fingerprint

HERE = "tests/tracker/test_detectors.py"


@pytest.fixture
def advisor(request):
    """An agent (no worker, no dashboard) with thresholds from the test's
    ``thresholds`` marker; yields the Agent."""
    import tracker

    marker = request.node.get_closest_marker("thresholds")
    handle = tracker.instrument(run_worker=False, url=None, app="tests",
                                capture_locations="always",
                                thresholds=dict(marker.kwargs) if marker else {},
                                capture_parameters=bool(
                                    request.node.get_closest_marker("parameters")))
    try:
        yield handle.agent
    finally:
        tracker.uninstrument()


def _findings(agent) -> list[list]:
    """Finding events the hooks queued so far (taken off the queue)."""
    return [item[1] for item in agent.recorder.drain() if item[0] == "finding"]


def _rules(agent) -> list[str]:
    return [event[3] for event in _findings(agent)]


def _one(agent, rule: str) -> dict:
    matching = [event for event in _findings(agent) if event[3] == rule]
    assert len(matching) == 1, matching
    (_, _, engine, rule, severity, session, thread, location, message, evidence) = matching[0]
    return {"engine": engine, "severity": severity, "session": session, "thread": thread,
            "location": location, "message": message, "evidence": evidence}


def _line_of(text: str) -> int:
    """The line number of ``text`` in this file (for exact locations)."""
    with open(HERE) as source:
        for number, line in enumerate(source, 1):
            if text in line:
                return number
    raise AssertionError(text)


def _engine(tmp_path, **kwargs):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'advisor.db'}", **kwargs)
    seed(engine)
    return engine


def _many_customers(engine, count: int) -> None:
    """``count`` customers with one order each (on top of the seed)."""
    with Session(engine) as session:
        for i in range(count):
            session.add(Order(total=Decimal("1.00"),
                              customer=Customer(name=f"c{i}", email=None)))
        session.commit()


# -- n-plus-one ----------------------------------------------------------------------


def test_n_plus_one_names_the_relationship_line_and_fix(advisor, tmp_path):
    engine = _engine(tmp_path)
    _many_customers(engine, 6)
    _findings(advisor)
    with Session(engine) as session:
        orders = session.scalars(sa.select(Order).where(Order.id > 3)).all()
        names = [order.customer.name for order in orders]  # N+1 here
        sid = advisor.sessions.get(session).sid
    assert names == [f"c{i}" for i in range(6)]
    found = _one(advisor, "n-plus-one")
    assert found["message"] == (
        f"Order.customer was lazily loaded 5 times in session {sid}, one SELECT per "
        "Order: load it with joinedload() in the query that loads the Order objects")
    assert found["location"] == (
        f"{HERE}:{_line_of('# N+1 here')} in <listcomp>")
    assert (found["severity"], found["session"]) == ("warning", sid)
    assert {k: found["evidence"][k] for k in ("relationship", "target", "collection",
                                              "count", "fix", "table")} == {
        "relationship": "Order.customer", "target": "Customer", "collection": False,
        "count": 5, "fix": "select(Order).options(joinedload(Order.customer))",
        "table": "retort_customer"}
    engine.dispose()


def test_n_plus_one_of_a_collection_suggests_selectinload(advisor, tmp_path):
    engine = _engine(tmp_path)
    _many_customers(engine, 4)  # 3 seeded + 4 = 7 customers
    _findings(advisor)
    with Session(engine) as session:
        for customer in session.scalars(sa.select(Customer)).all():
            len(customer.orders)
    found = _one(advisor, "n-plus-one")
    assert found["evidence"]["fix"] == "select(Customer).options(selectinload(Customer.orders))"
    assert found["evidence"]["collection"] is True
    engine.dispose()


@pytest.mark.parametrize("option", [joinedload, selectinload])
def test_no_n_plus_one_with_eager_loading(advisor, tmp_path, option):
    engine = _engine(tmp_path)
    _many_customers(engine, 6)
    _findings(advisor)
    with Session(engine) as session:
        orders = session.scalars(sa.select(Order).options(option(Order.customer))).all()
        assert len({order.customer.name for order in orders}) == 8
    assert _rules(advisor) == []
    engine.dispose()


def test_no_n_plus_one_when_lazy_loads_hit_the_identity_map(advisor, tmp_path):
    """Many orders of one customer: one SELECT for the customer, then the identity map."""
    engine = _engine(tmp_path)
    with Session(engine) as session:
        session.add_all([Order(total=Decimal("1.00"), customer_id=1) for _ in range(8)])
        session.commit()
    _findings(advisor)
    with Session(engine) as session:
        orders = session.scalars(sa.select(Order).where(Order.customer_id == 1)).all()
        assert {order.customer.name for order in orders} == {"Ann"}
        assert session.get(Customer, 1) is orders[0].customer
    assert _rules(advisor) == []
    engine.dispose()


# -- repeated and similar queries -------------------------------------------------------


def test_repeated_query(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        for _ in range(3):
            session.execute(sa.select(Customer).where(Customer.name == "Ann")).all()
        sid = advisor.sessions.get(session).sid
        repeats = next(s for s in advisor.session_summaries(everything=True)[0]
                       if s["id"] == sid)["repeats"]
    found = _one(advisor, "repeated-query")
    assert found["message"] == (
        "the same SELECT on retort_customer with the same parameters ran 3 times in "
        f"session {sid}: run it once and keep the result")
    assert found["location"].startswith(f"{HERE}:") and found["location"].endswith(
        " in test_repeated_query")
    assert "params" not in found["evidence"]  # parameter capture is off by default
    sql = found["evidence"]["sql"]
    assert sql.startswith("SELECT retort_customer.id, ") and sql.endswith(
        "WHERE retort_customer.name = ?")
    assert repeats == [[fingerprint(sql).fp, 3, 1]]
    engine.dispose()


def test_same_query_with_different_parameters_is_not_repeated(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        for name in ("Ann", "Bob", "Cy"):
            session.execute(sa.select(Customer).where(Customer.name == name)).all()
        sid = advisor.sessions.get(session).sid
        repeats = next(s for s in advisor.session_summaries(everything=True)[0]
                       if s["id"] == sid)["repeats"]
    assert _rules(advisor) == []
    assert [r[1:] for r in repeats] == [[3, 3]]  # 3 runs, 3 distinct parameter sets
    engine.dispose()


def test_repeated_query_with_named_parameters(advisor, tmp_path):
    """Drivers with named or pyformat parameters (psycopg, PyMySQL) pass a dict: its
    parameter sets are told apart by their values, and an unhashable value (a list)
    still counts."""
    engine = _engine(tmp_path, paramstyle="named")
    _findings(advisor)
    with Session(engine) as session:
        for name in ("Ann", "Bob", "Ann", "Bob", "Ann"):
            session.execute(sa.select(Customer).where(Customer.name == name)).all()
        entry = advisor.sessions.get(session)
        ((text, record),) = entry.stmts.items()
        assert text.endswith("WHERE retort_customer.name = :name_1")
        # 5 runs, the dict parameters in 2 sets: Ann 3 times, Bob twice
        assert record[0] == 5
        assert sorted(record[2].values()) == [2, 3]
        assert entry.parameter_sets == 2
        sid = entry.sid
        repeats = next(s for s in advisor.session_summaries(everything=True)[0]
                       if s["id"] == sid)["repeats"]
    found = _one(advisor, "repeated-query")
    assert found["evidence"]["count"] == 3
    assert found["message"].startswith("the same SELECT on retort_customer with the "
                                       "same parameters ran 3 times in session")
    assert [r[1:] for r in repeats] == [[5, 2]]
    engine.dispose()


def test_parameter_keys_tell_sets_apart_whatever_their_shape():
    from tracker.detectors import parameters_key

    assert parameters_key({"a": 1, "b": "x"}) == parameters_key({"a": 1, "b": "x"})
    assert parameters_key({"a": 1, "b": "x"}) != parameters_key({"a": 2, "b": "x"})
    assert parameters_key({"ids": [1, 2]}) == parameters_key({"ids": [1, 2]})
    assert parameters_key({"ids": [1, 2]}) != parameters_key({"ids": [1, 3]})
    assert parameters_key((1, [2])) == parameters_key((1, [2]))
    assert parameters_key((1, [2])) != parameters_key((1, [3]))
    assert parameters_key([1, 2]) == hash(repr([1, 2]))
    assert parameters_key((1, "x")) == hash((1, "x"))


def test_parameter_sets_counted_per_session_are_bounded(advisor, tmp_path, monkeypatch):
    import tracker.detectors as detectors

    monkeypatch.setattr(detectors, "MAX_COUNTED", 4)
    engine = _engine(tmp_path)
    _many_customers(engine, 7)  # 10 customers
    _findings(advisor)
    with Session(engine) as session:
        for customer_id in (1, 2, 3, 4, 5, 6, 1, 1):
            session.execute(sa.select(Customer.name).where(Customer.id == customer_id)).all()
        entry = advisor.sessions.get(session)
        ((_, record),) = entry.stmts.items()
        # ids 1 to 4 counted, 5 and 6 past the bound; id 1 three times
        assert entry.parameter_sets == 4
        assert sorted(record[2].values()) == [1, 1, 1, 3]
    assert _one(advisor, "repeated-query")["evidence"]["count"] == 3
    engine.dispose()


def test_similar_queries(advisor, tmp_path):
    engine = _engine(tmp_path)
    _many_customers(engine, 7)  # 10 customers
    _findings(advisor)
    with Session(engine) as session:
        for customer_id in range(1, 11):
            session.execute(sa.select(Customer.name).where(Customer.id == customer_id)).one()
        sid = advisor.sessions.get(session).sid
    found = _one(advisor, "similar-queries")
    assert found["message"] == (
        "the same SELECT on retort_customer ran 10 times with different parameters in "
        f"session {sid}: fetch the rows in one statement with IN")
    assert found["evidence"]["count"] == 10
    engine.dispose()


def test_one_in_query_is_not_similar_queries(advisor, tmp_path):
    engine = _engine(tmp_path)
    _many_customers(engine, 7)
    _findings(advisor)
    with Session(engine) as session:
        names = session.scalars(sa.select(Customer.name).where(
            Customer.id.in_(range(1, 11)))).all()
        for customer_id in range(1, 10):  # nine: one below the threshold
            session.execute(sa.select(Customer.name).where(Customer.id == customer_id)).one()
    assert len(names) == 10
    assert _rules(advisor) == []
    engine.dispose()


# -- writes --------------------------------------------------------------------------


def test_row_by_row_inserts(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        for i in range(20):
            session.add(Customer(name=f"n{i}"))
            session.flush()  # one INSERT per row
        sid = advisor.sessions.get(session).sid
        session.commit()
    found = _one(advisor, "row-by-row-writes")
    assert found["message"] == (
        f"20 single-row INSERT statements to retort_customer in session {sid}: add the "
        "objects and flush once, or execute one statement with a list of parameter sets")
    assert found["location"] == f"{HERE}:{_line_of('# one INSERT per row')} in test_row_by_row_inserts"
    engine.dispose()


def test_one_flush_of_many_objects_is_not_row_by_row(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        session.add_all([Customer(name=f"n{i}") for i in range(50)])
        session.commit()
    assert _rules(advisor) == []
    engine.dispose()


def test_flushed_writes_rolled_back_by_close(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    session = Session(engine)
    session.add(Customer(name="Dana"))
    session.flush()
    sid = advisor.sessions.get(session).sid
    session.close()  # never committed
    found = _one(advisor, "transaction-not-committed")
    assert found["message"] == (
        f"session {sid} ended its transaction without commit after 1 INSERT/UPDATE/DELETE "
        "statement: the database rolled them back")
    assert found["severity"] == "error"
    assert found["location"] == (
        f"{HERE}:{_line_of('# never committed')} in test_flushed_writes_rolled_back_by_close")
    with Session(engine) as check:
        assert check.scalar(sa.select(sa.func.count()).select_from(Customer)) == 3
    engine.dispose()


def test_explicit_rollback_and_read_only_sessions_are_quiet(advisor, tmp_path):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        session.add(Customer(name="Dana"))
        session.flush()
        session.rollback()  # explicit: the application chose to undo
    with Session(engine) as session:
        session.get(Customer, 1)  # read only, closed without commit: the normal idiom
    assert _rules(advisor) == []
    engine.dispose()


# -- statements per session, threads --------------------------------------------------


@pytest.mark.parametrize("count,expected", [(100, ["too-many-statements"]), (99, [])])
def test_too_many_statements(advisor, tmp_path, count, expected):
    engine = _engine(tmp_path)
    _findings(advisor)
    with Session(engine) as session:
        for i in range(count):
            session.execute(sa.text(f"SELECT {i}"))
    assert _rules(advisor) == expected
    engine.dispose()


def test_one_session_used_by_two_threads(advisor, tmp_path):
    engine = _engine(tmp_path, connect_args={"check_same_thread": False})
    _findings(advisor)
    with Session(engine) as session:
        session.get(Customer, 1)
        sid = advisor.sessions.get(session).sid
        worker = threading.Thread(target=lambda: session.get(Customer, 2), name="helper")
        worker.start()
        worker.join()
    found = _one(advisor, "session-multiple-threads")
    assert found["message"] == (
        f"session {sid} began its transaction in thread MainThread and ran a statement "
        "in thread helper: a Session must not be shared by threads")
    assert found["thread"] == "helper"
    engine.dispose()


def test_session_handed_to_another_thread_after_commit_is_quiet(advisor, tmp_path):
    engine = _engine(tmp_path, connect_args={"check_same_thread": False})
    _findings(advisor)
    with Session(engine) as session:
        session.get(Customer, 1)
        session.commit()
        worker = threading.Thread(target=lambda: session.get(Customer, 2), name="helper")
        worker.start()
        worker.join()
    assert _rules(advisor) == []
    engine.dispose()


# -- large results (PostgreSQL reports the rows of a SELECT) ---------------------------


@pytest.mark.parametrize("limit,expected", [(None, ["large-result"]), (999, [])])
def test_large_result_on_postgresql(advisor, limit, expected):
    services.require("postgresql")
    engine = sa.create_engine(services.POSTGRES_URL)
    seed(engine)
    with Session(engine) as session:
        session.execute(sa.insert(Customer), [{"name": f"bulk {i}"} for i in range(997)])
        session.commit()  # 1000 customers
    _findings(advisor)
    with Session(engine) as session:
        stmt = sa.select(Customer.id, Customer.name)
        rows = session.execute(stmt.limit(limit) if limit else stmt).all()
        sid = advisor.sessions.get(session).sid
    assert len(rows) == (limit or 1000)
    events = _findings(advisor)
    assert [e[3] for e in events] == expected
    if expected:
        (*_, session_id, _, location, message, evidence) = events[0]
        assert message == ("a SELECT on retort_customer returned 1000 rows (no LIMIT): "
                           "paginate, filter, or stream with yield_per")
        assert (session_id, evidence["rows"], evidence["limit"]) == (sid, 1000, False)
        assert location.endswith(" in test_large_result_on_postgresql")
    Base.metadata.drop_all(engine)
    engine.dispose()


# -- durations (checked by the worker) ---------------------------------------------------


@pytest.mark.thresholds(idle_in_transaction_seconds=0.2, long_transaction_seconds=0.3)
def test_idle_and_long_transactions(advisor, tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as session:
        session.get(Customer, 1)  # begins the transaction
        sid = advisor.sessions.get(session).sid
        assert advisor.watch.check() == []  # just began, just active
        time.sleep(0.35)
        events = advisor.watch.check()
        assert advisor.watch.check() == []  # reported once per transaction
    by_rule = {e[3]: e for e in events}
    assert sorted(by_rule) == ["idle-in-transaction", "long-transaction"]
    idle = by_rule["idle-in-transaction"]
    assert (idle[5], idle[6]) == (sid, "MainThread")
    assert idle[8].startswith(f"session {sid} has been idle for ") and idle[8].endswith(
        " s in a transaction, holding a connection")
    assert idle[7] == f"{HERE}:{_line_of('# begins the transaction')} in test_idle_and_long_transactions"
    assert by_rule["long-transaction"][8].startswith(
        f"session {sid}'s transaction has been open for ")
    engine.dispose()


@pytest.mark.thresholds(idle_in_transaction_seconds=0.2, long_transaction_seconds=0.3)
def test_committed_sessions_are_not_idle_in_transaction(advisor, tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as session:
        session.get(Customer, 1)
        session.commit()
        time.sleep(0.35)
        assert advisor.watch.check() == []
    engine.dispose()


@pytest.mark.thresholds(connection_held_seconds=0.2)
def test_connection_held_long_names_where_it_was_checked_out(advisor, tmp_path):
    engine = _engine(tmp_path)
    conn = engine.connect()  # held on purpose
    conn.execute(sa.text("SELECT 1"))
    time.sleep(0.25)
    (event,) = advisor.watch.check()
    assert advisor.watch.check() == []  # once per checkout
    assert event[3] == "connection-held-long"
    assert event[7] == (f"{HERE}:{_line_of('# held on purpose')} in "
                        "test_connection_held_long_names_where_it_was_checked_out")
    assert event[8].startswith("a connection of engine ") and event[8].endswith(
        " s by thread MainThread")
    conn.close()
    with engine.connect() as quick:  # returned at once: the twin
        quick.execute(sa.text("SELECT 1"))
    time.sleep(0.25)
    assert advisor.watch.check() == []
    engine.dispose()


def test_pool_exhausted_when_a_thread_waits(advisor, tmp_path):
    engine = _engine(tmp_path, pool_size=1, max_overflow=0, pool_timeout=5)
    assert advisor.watch.check() == []  # nobody waits: the twin
    holder = engine.connect()  # the only connection
    waiter = threading.Thread(target=lambda: engine.connect().close(), name="waiter")
    waiter.start()
    pool_entry = advisor.registry.pools[id(engine.pool)]
    deadline = time.monotonic() + 5
    while not pool_entry.waiters and time.monotonic() < deadline:
        time.sleep(0.01)
    events = advisor.watch.check()
    holder.close()
    waiter.join()
    (event,) = events
    name = advisor.registry.engines[id(engine)].name
    assert event[3:5] == ["pool-exhausted", "warning"]
    assert event[8] == (f"1 thread waited for a connection of engine {name}: every "
                        "connection was in use")
    evidence = event[9]
    assert (evidence["waiting"], evidence["checked_out"], evidence["pool_size"],
            evidence["max_overflow"]) == (1, 1, 1, 0)
    assert evidence["holders_by_location"] == [[
        f"{HERE}:{_line_of('# the only connection')} in test_pool_exhausted_when_a_thread_waits",
        1]]
    engine.dispose()


# -- statements by fingerprint ------------------------------------------------------------


def test_statements_are_aggregated_by_fingerprint(advisor, tmp_path):
    engine = _engine(tmp_path)
    advisor.snapshot()  # the seed's statements are sent with this frame
    with engine.connect() as conn:
        conn.execute(sa.select(Customer.name).where(Customer.id.in_([1, 2]))).all()
        conn.execute(sa.select(Customer.name).where(Customer.id.in_([1, 2, 3]))).all()  # 2nd
        conn.execute(sa.text("SELECT 42"))
    state = advisor.snapshot()
    (engine_state,) = [e for e in state["engines"]
                       if e["id"] == advisor.registry.engines[id(engine)].id]
    by_sql = {s["sql"]: s for s in engine_state["statements"]}
    assert sorted(by_sql) == [
        "SELECT ?",
        "SELECT retort_customer.name FROM retort_customer WHERE retort_customer.id IN (…)",
    ]
    names = by_sql["SELECT retort_customer.name FROM retort_customer "
                   "WHERE retort_customer.id IN (…)"]
    assert {k: names[k] for k in ("op", "table", "count", "errors", "rows")} == {
        "op": "select", "table": "retort_customer", "count": 2, "errors": 0, "rows": 0}
    assert sum(names["buckets"]) == 2 and names["max"] <= names["total"]
    # the location of its first run
    assert names["location"].endswith(" in test_statements_are_aggregated_by_fingerprint")
    # sent again only when changed
    assert "statements" not in [e for e in advisor.snapshot()["engines"]
                                if e["id"] == engine_state["id"]][0]
    engine.dispose()


@pytest.mark.thresholds(slow_statement_seconds=0.0)
@pytest.mark.parameters
def test_slow_statement_with_redacted_parameters(advisor, tmp_path):
    engine = _engine(tmp_path)
    advisor.recorder.drain()
    with Session(engine) as session:
        session.execute(sa.update(Customer).where(Customer.id == 1).values(
            name="Annie", password_hash="secret!"))
        session.commit()
    slow = [item[1] for item in advisor.recorder.drain() if item[0] == "slow_statement"]
    update = next(event for event in slow if event[4].startswith("UPDATE"))
    kind, ts, engine_id, fp, sql, seconds, rows, session_id, thread, location, stack, params = update
    assert sql == "UPDATE retort_customer SET name=?, password_hash=? WHERE retort_customer.id = ?"
    assert rows == 1 and thread == "MainThread" and session_id.startswith("s")
    assert params == {"name": "'Annie'", "password_hash": "••••••",
                      "id_1": "1"}
    engine.dispose()

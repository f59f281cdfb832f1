"""Runtime switches: the catalogue's validation, the precedence of scopes, and the
agent's ``set``/``sync`` controls applied to detectors, snapshots, parameters,
thresholds and the ignore-changes policy."""

from __future__ import annotations

from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.tracker.scenario import Customer, Order, seed
from tracker import policies
from tracker.switches import Settings, SwitchError, validate


@pytest.fixture(autouse=True)
def no_conventions():
    yield
    policies.ignore_classes(())


def _set(agent, scope, target, switch, value, request="toggle:1:1"):
    return agent.controls["set"]({"scope": scope, "target": target, "switch": switch,
                                  "value": value}, request)


def _engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'switches.db'}")
    seed(engine)
    return engine


def _findings(agent) -> list[str]:
    return [item[1][3] for item in agent.recorder.drain() if item[0] == "finding"]


def _n_plus_one(engine, before_loads=None) -> str:
    """Five lazy loads of Order.customer in one session; returns the session id.
    ``before_loads(sid)`` runs once the session is known, before the lazy loads."""
    from tracker import current_agent

    seed(engine)
    with Session(engine) as session:
        for i in range(6):
            session.add(Order(total=Decimal("1.00"), customer=Customer(name=f"c{i}")))
        session.commit()
    with Session(engine) as session:
        orders = session.scalars(sa.select(Order).where(Order.id > 3)).all()
        sid = current_agent().sessions.get(session).sid
        if before_loads is not None:
            before_loads(sid)
        assert len({order.customer.name for order in orders}) == 6
    return sid


# -- the catalogue ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (("app", "", "volume", True), "unknown switch 'volume'"),
    (("cluster", "", "statements", True), "unknown scope 'cluster'"),
    (("session", "s1", "statements", False),
     "statements cannot be set per session (scopes: app, process, engine)"),
    (("app", "x", "statements", False), "a app setting takes no target"),
    (("engine", "", "statements", False), "a engine setting needs a target"),
    (("app", "", "statements", "off"), "expected true or false, not 'off'"),
    (("app", "", "sampling", 0), "expected a fraction above 0 and at most 1, not 0"),
    (("app", "", "locations", "never"), "expected one of always, pressure, off, not 'never'"),
    (("process", "", "thresholds", {"n_plus_two": 3}),
     "unknown threshold 'n_plus_two' (known: n_plus_one, repeated_query, similar_queries, "
     "row_by_row_writes, large_result_rows, statements_per_session, "
     "long_transaction_seconds, idle_in_transaction_seconds, connection_held_seconds, "
     "slow_statement_seconds)"),
    (("process", "", "thresholds", {"n_plus_one": -1}),
     "threshold n_plus_one must be a positive number, not -1"),
    (("engine", "sqlite/a.db", "ignore_changes", True),
     "ignore_changes cannot be set per engine (scopes: entity)"),
])
def test_validate_refuses_with_the_reason(args, message):
    with pytest.raises(SwitchError) as raised:
        validate(*args)
    assert str(raised.value) == message


def test_validate_normalises_and_none_clears():
    assert validate("engine", "sqlite/a.db", "sampling", 1) == 1.0
    assert validate("process", "", "thresholds", {"n_plus_one": 3}) == {"n_plus_one": 3.0}
    assert validate("entity", "Order", "ignore_changes", None) is None


def test_most_specific_scope_wins():
    settings = Settings()
    settings.set("app", "", "detectors", False)
    assert settings.get("detectors", True, engine="e", session="s1") is False
    settings.set("process", "", "detectors", True)
    assert settings.get("detectors", True, engine="e", session="s1") is True
    settings.set("engine", "e", "detectors", False)
    assert settings.get("detectors", True, engine="e", session="s1") is False
    assert settings.get("detectors", True, engine="other", session="s1") is True
    settings.set("session", "s1", "detectors", True)
    assert settings.get("detectors", True, engine="e", session="s1") is True
    settings.set("session", "s1", "detectors", None)
    assert settings.get("detectors", True, engine="e", session="s1") is False
    assert settings.keep_only({("app", "", "detectors")}) == [
        ("process", "", "detectors"), ("engine", "e", "detectors")]
    assert settings.values == {("app", "", "detectors"): False}


# -- the agent's controls -----------------------------------------------------------------

def test_set_puts_engine_switches_on_the_engine_entry(agent, tmp_path):
    engine = _engine(tmp_path)
    entry = agent.registry.engine_entry(engine)
    assert (entry.statements, entry.sample, entry.locations) == (True, 1, None)
    assert _set(agent, "engine", entry.name, "statements", False) == ("applied", "")
    assert _set(agent, "app", "", "sampling", 0.25) == ("applied", "")
    assert _set(agent, "process", "", "locations", "off") == ("applied", "")
    assert (entry.statements, entry.sample, entry.locations) == (False, 4, "off")
    # an engine created later gets them too
    late = sa.create_engine(f"sqlite:///{tmp_path / 'late.db'}")
    late_entry = agent.registry.engine_entry(late)
    assert (late_entry.statements, late_entry.sample) == (True, 4)
    assert _set(agent, "engine", entry.name, "statements", None) == ("applied", "")
    assert entry.statements is True
    engine.dispose()
    late.dispose()


def test_set_names_what_it_does_not_reach_and_refuses_bad_settings(agent):
    assert _set(agent, "engine", "postgresql@db/none", "statements", False) == (
        "applied", "no engine named postgresql@db/none in this process yet")
    assert _set(agent, "session", "s999", "detectors", False) == (
        "applied", "no live session s999 in this process")
    assert _set(agent, "app", "", "statements", "no") == (
        "refused", "expected true or false, not 'no'")
    assert agent.controls["set"]({"scope": "app"}, "toggle:2:1") == (
        "refused", "control set.target: missing")


def test_parameter_capture_cannot_be_enabled_where_the_owner_did_not_allow_it(agent):
    assert agent.config.capture_parameters is False
    assert _set(agent, "app", "", "parameters", True) == (
        "refused", "parameter capture is not allowed by this process's agent configuration "
        "(capture_parameters=False; the app's owner can allow it with "
        "RETORT_CAPTURE_PARAMETERS=1)")
    assert agent.settings.values == {}
    # switching it off is always allowed
    assert _set(agent, "app", "", "parameters", False) == ("applied", "")


def test_parameters_switched_off_for_one_engine(tmp_path):
    import tracker

    with tracker.instrument(run_worker=False, url=None, capture_parameters=True) as handle:
        agent = handle.agent
        engine = _engine(tmp_path)
        entry = agent.registry.engine_entry(engine)
        assert agent.detectors.parameters_allowed(entry.id) is True
        assert _set(agent, "engine", entry.name, "parameters", False) == ("applied", "")
        assert agent.detectors.parameters_allowed(entry.id) is False
        assert _set(agent, "engine", entry.name, "parameters", True) == ("applied", "")
        assert agent.detectors.parameters_allowed(entry.id) is True
        engine.dispose()


def test_detectors_off_for_the_process_and_back_on_for_one_session(agent, tmp_path):
    engine = _engine(tmp_path)
    _n_plus_one(engine)
    assert "n-plus-one" in _findings(agent)
    assert _set(agent, "process", "", "detectors", False) == ("applied", "")
    _n_plus_one(engine)
    assert _findings(agent) == []
    # a session-scope "on" wins over the process's "off"
    acks = []
    _n_plus_one(engine, lambda sid: acks.append(_set(agent, "session", sid, "detectors", True)))
    assert acks == [("applied", "")]
    assert _findings(agent) == ["n-plus-one"]
    engine.dispose()


def test_thresholds_from_the_dashboard_override_the_configured_ones(agent):
    assert agent.detectors.n_plus_one == 5
    assert _set(agent, "process", "", "thresholds", {"n_plus_one": 2,
                                                      "slow_statement_seconds": 2}) == (
        "applied", "")
    assert (agent.detectors.n_plus_one, agent.detectors.slow) == (2, 2.0)
    assert _set(agent, "process", "", "thresholds", None) == ("applied", "")
    assert (agent.detectors.n_plus_one, agent.detectors.slow) == (5, 0.5)


def test_snapshots_off_for_a_session_or_an_entity_class(agent, tmp_path):
    engine = _engine(tmp_path)
    with Session(engine) as session:
        kept = session.scalars(sa.select(Order)).all() + session.scalars(
            sa.select(Customer)).all()
        sid = agent.sessions.get(session).sid
        ack = agent.controls["snapshot"]({"session": sid}, "snapshot:1:x")
        assert sorted({e["class"] for e in ack[2][0]["entities"]}) == ["Customer", "Order"]
        assert _set(agent, "entity", "Customer", "snapshots", False) == ("applied", "")
        ack = agent.controls["snapshot"]({"session": sid}, "snapshot:1:x")
        assert {e["class"] for e in ack[2][0]["entities"]} == {"Order"}
        assert _set(agent, "session", sid, "snapshots", False) == ("applied", "")
        assert agent.controls["snapshot"]({"session": sid}, "snapshot:1:x") == (
            "refused", "snapshots are switched off for this session by the dashboard")
        assert len(kept) == 6
    engine.dispose()


def test_ignore_changes_for_an_entity_class_and_sync_removing_it(agent, tmp_path):
    engine = _engine(tmp_path)
    written: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: written.append(statement.split()[0]))
    assert _set(agent, "entity", "Customer", "ignore_changes", True) == ("applied", "")
    with Session(engine) as session:
        customer, order = session.get(Customer, 1), session.get(Order, 1)
        customer.name, order.note = "renamed", "gift"
        written.clear()
        session.commit()
    assert written == ["UPDATE"]  # the order's, not the customer's
    with engine.connect() as conn:
        assert conn.scalar(sa.select(Customer.name).where(Customer.id == 1)) == "Ann"
        assert conn.scalar(sa.select(Order.note).where(Order.id == 1)) == "gift"
    # the dashboard no longer has the toggle: sync drops it
    assert agent.controls["sync"]({"keep": []}, "sync:1:1") == (
        "applied", "1 setting(s) removed")
    with Session(engine) as session:
        session.get(Customer, 1).name = "renamed"
        session.commit()
    with engine.connect() as conn:
        assert conn.scalar(sa.select(Customer.name).where(Customer.id == 1)) == "renamed"
    engine.dispose()

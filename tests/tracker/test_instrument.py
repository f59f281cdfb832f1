"""instrument() / uninstrument(): idempotent, symmetric, configurable, harmless."""

from __future__ import annotations

import gc
import weakref

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import Pool

import tracker
from tracker.config import AgentConfig


@pytest.fixture(autouse=True)
def _detached():
    assert not tracker.is_instrumented()
    yield
    tracker.uninstrument()


def _listeners(agent):
    return [
        (Pool, "connect", agent.pool_hooks._connect_evt),
        (Pool, "invalidate", agent.pool_hooks._invalidate_evt),
        (Pool, "detach", agent.pool_hooks._detach_evt),
    ]


def test_instrument_is_idempotent():
    from sqlalchemy.orm import Session, SessionTransaction

    original_close = Session.__dict__["close"]
    original_transaction_close = SessionTransaction.__dict__["close"]
    first = tracker.instrument(run_worker=False, url=None, app="a")
    count = len(first.agent.listeners)
    second = tracker.instrument(run_worker=False, url=None, app="ignored")
    assert second.agent is first.agent
    # 5 pool, 3 session listeners (after_begin, after_rollback, after_flush_postexec):
    # checkouts, checkins and statements are wrappers, and so are transaction ends and
    # commits (SessionTransaction.close)
    assert len(first.agent.listeners) == count == 8
    assert Session.__dict__["close"].__wrapped__ is original_close
    assert SessionTransaction.__dict__["close"].__wrapped__ is original_transaction_close
    assert "__del__" in Session.__dict__
    assert first.agent.config.app == "a"
    tracker.uninstrument()
    tracker.uninstrument()
    assert not tracker.is_instrumented()
    # the Session and SessionTransaction classes are as they were
    assert Session.__dict__["close"] is original_close
    assert "__del__" not in Session.__dict__ and "__retort_patched__" not in Session.__dict__
    assert SessionTransaction.__dict__["close"] is original_transaction_close
    assert "__retort_patched__" not in SessionTransaction.__dict__


def test_uninstrument_removes_every_listener_and_wrapper(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a")
    agent = handle.agent
    with engine.connect():
        pass
    assert "connect" in engine.pool.__dict__ and "_return_conn" in engine.pool.__dict__
    assert {"do_execute", "do_executemany", "do_execute_no_params"} <= set(
        engine.dialect.__dict__)
    assert all(event.contains(*listener) for listener in _listeners(agent))
    tracker.uninstrument()
    assert not any(event.contains(*listener) for listener in _listeners(agent))
    assert "connect" not in engine.pool.__dict__
    assert "_return_conn" not in engine.pool.__dict__
    assert not {"do_execute", "do_executemany", "do_execute_no_params"} & set(
        engine.dialect.__dict__)
    assert len(agent.listeners) == 0
    # nothing is recorded any more
    with engine.connect() as conn:
        conn.execute(sa.text("select 1"))
    assert len(agent.recorder) == 0
    # and nothing keeps the agent alive
    ref = weakref.ref(agent)
    del agent, handle
    gc.collect()
    assert ref() is None
    engine.dispose()


def test_context_manager_uninstruments_on_exit(tmp_path):
    with tracker.instrument(run_worker=False, url=None, app="a") as handle:
        assert tracker.is_instrumented()
        assert tracker.current_agent() is handle.agent
    assert not tracker.is_instrumented()


def test_nested_context_manager_leaves_the_outer_agent():
    outer = tracker.instrument(run_worker=False, url=None, app="a")
    with tracker.instrument(run_worker=False, url=None) as inner:
        assert inner.agent is outer.agent
    assert tracker.is_instrumented()


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("RETORT_ENABLED", "false")
    handle = tracker.instrument(run_worker=False)
    assert not handle
    assert not tracker.is_instrumented()


def test_configuration_from_environment_and_keywords():
    environ = {"RETORT_URL": "ws://h:1/ws/agent/", "RETORT_TOKEN": "rt_x",
               "RETORT_APP": "shop", "RETORT_STATE_INTERVAL": "0.25",
               "RETORT_CAPTURE_LOCATIONS": "off", "RETORT_QUEUE_SIZE": "10"}
    config = AgentConfig.load({"app": "keyword wins"}, environ)
    assert (config.url, config.token, config.app) == ("ws://h:1/ws/agent/", "rt_x",
                                                      "keyword wins")
    assert (config.state_interval, config.capture_locations, config.queue_size) == (
        0.25, "off", 10)
    assert config.capture_parameters is False
    assert AgentConfig.load({}, {}).capture_locations == "pressure"
    assert AgentConfig.load({"capture_locations": True}, {}).capture_locations == "always"
    assert AgentConfig.load({}, {"RETORT_CAPTURE_LOCATIONS": "Always"}).capture_locations == (
        "always")


def test_bad_configuration_is_reported_clearly():
    with pytest.raises(ValueError, match=r"RETORT_QUEUE_SIZE='lots' is not a valid int"):
        AgentConfig.load({}, {"RETORT_QUEUE_SIZE": "lots"})
    with pytest.raises(ValueError, match=r"RETORT_ENABLED='maybe' is not a valid bool"):
        AgentConfig.load({}, {"RETORT_ENABLED": "maybe"})
    with pytest.raises(ValueError, match=r"RETORT_CAPTURE_LOCATIONS='sometimes' is not one "
                                         r"of always, pressure, off"):
        AgentConfig.load({}, {"RETORT_CAPTURE_LOCATIONS": "sometimes"})
    with pytest.raises(TypeError, match="unknown agent setting.*: colour"):
        tracker.instrument(colour="red")


def test_an_agent_failure_never_reaches_the_application(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a",
                                capture_locations="always")
    agent = handle.agent

    class Broken:
        def __getattr__(self, name):
            raise RuntimeError("agent bug")

    # the discovery of the new pool (at its first connection) fails inside the agent
    agent.pool_hooks.registry = agent.engine_hooks.registry = Broken()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 42")).scalar() == 42
    assert agent.recorder.errors == 1
    assert agent.recorder.first_error.startswith("pool.")
    # the wrappers of a discovered pool and dialect fail inside (their stack walks)
    agent.pool_hooks.registry = agent.engine_hooks.registry = agent.registry
    agent.registry.engine_entry(engine)

    def capture(frame=None):
        raise RuntimeError("agent bug")

    agent.finder.capture = capture
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 43")).scalar() == 43
        # the statement's own error reaches the application unchanged
        with pytest.raises(sa.exc.OperationalError, match="no such table: nowhere"):
            conn.execute(sa.text("select * from nowhere"))
    assert agent.recorder.errors >= 3  # + the checkout's and the statement's
    engine.dispose()


def test_capture_locations_off_records_no_stack(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    handle = tracker.instrument(run_worker=False, url=None, app="a", capture_locations=False)
    with engine.connect():
        (state,) = [e for e in handle.agent.snapshot()["engines"]
                    if e["id"] == handle.agent.registry.engines[id(engine)].id]
    assert state["holders"][0]["location"] is None
    assert state["holders"][0]["stack"] == []
    engine.dispose()

"""The agent runs the configuration checks on the engines it finds, reads the
server's settings once per engine (when allowed) and announces them."""

from __future__ import annotations

import gc

import pytest
import sqlalchemy as sa

import tracker
from tests import services


def _findings(agent) -> list[list]:
    return [item[1] for item in agent.recorder.drain() if item[0] == "finding"]


def test_network_engine_checked_once_with_server_settings():
    services.require("postgresql")
    reader = sa.create_engine(services.POSTGRES_URL)
    with reader.connect() as conn:
        max_connections = int(conn.scalar(sa.text("SHOW max_connections")))
    reader.dispose()
    del reader, conn
    gc.collect()  # not an engine the agent should find
    handle = tracker.instrument(run_worker=False, url=None, app="t")
    try:
        agent = handle.agent
        engine = sa.create_engine(services.POSTGRES_URL)           # no pre-ping
        careful = sa.create_engine(services.POSTGRES_URL, pool_pre_ping=True)
        agent.discover_existing()  # (an unused new engine is found by its first checkout)
        agent.snapshot()  # the worker notes their pools
        agent.recorder.drain()
        agent.engine_checks.run(agent.engine_checks.due())
        assert agent.engine_checks.due() == []  # once per engine and pool
        entry = agent.registry.engines[id(engine)]
        ours = {entry.id, agent.registry.engines[id(careful)].id}
        # (engines other tests left alive are checked too: only ours are asserted)
        findings = [f for f in _findings(agent) if f[2] in ours]
        assert [(f[2], f[3]) for f in findings] == [(entry.id, "no-pre-ping")]
        for one in (engine, careful):
            info = agent.engine_info(agent.registry.engines[id(one)], one)
            assert info["server"]["max_connections"] == max_connections
        assert agent.registry.engines[id(engine)].revision == 1  # announced again
        engine.dispose()
        careful.dispose()
    finally:
        tracker.uninstrument()


def test_server_settings_are_not_read_when_not_allowed():
    services.require("postgresql")
    handle = tracker.instrument(run_worker=False, url=None, app="t",
                                read_server_settings=False)
    try:
        agent = handle.agent
        engine = sa.create_engine(services.POSTGRES_URL, pool_pre_ping=True)
        agent.discover_existing()
        agent.snapshot()
        agent.engine_checks.run(agent.engine_checks.due())
        entry = agent.registry.engines[id(engine)]
        assert "server" not in agent.engine_info(entry, engine)
        agent.snapshot()
        assert agent.worker.stats_for(entry).counters["checkouts"] == 0  # never connected
        assert [f for f in _findings(agent) if f[2] == entry.id] == []
        engine.dispose()
    finally:
        tracker.uninstrument()


def test_flask_sqlalchemy_apps_are_checked_at_runtime():
    pytest.importorskip("flask_sqlalchemy")
    import importlib

    handle = tracker.instrument(run_worker=False, url=None, app="t",
                                read_server_settings=False)
    try:
        agent = handle.agent
        module = importlib.import_module("tests.tracker.check_targets.flask_app")
        with module.app.app_context():
            default = module.db.engine
        agent.discover_existing()
        agent.snapshot()
        agent.recorder.drain()
        agent.engine_checks.run(agent.engine_checks.due())
        agent.engine_checks.run(agent.engine_checks.due())  # each app once
        entry = agent.registry.engines[id(default)]
        events = _findings(agent)
        flask = [(f[2], f[3], f[8]) for f in events if f[3].startswith("flask-")]
        assert sorted((engine, rule) for engine, rule, _ in flask) == [
            (entry.id, "flask-ignored-config-key"),   # the pool keys, in one finding
            (entry.id, "flask-ignored-config-key"),   # COMMIT_ON_TEARDOWN: lost writes
            (entry.id, "flask-record-queries"),
            (entry.id, "flask-track-modifications"),
        ]
        track = next(message for _, rule, message in flask
                     if rule == "flask-track-modifications")
        assert "reindex_orders" in track  # the receiver that depends on it is named
        # the app's engines are checked like any other: SQLALCHEMY_ECHO on both binds
        with module.app.app_context():
            binds = {agent.registry.engines[id(e)].id for e in module.db.engines.values()}
        assert sorted(f[2] for f in events if f[3] == "echo-on" and f[2] in binds) == sorted(binds)
        assert len(binds) == 2
    finally:
        tracker.uninstrument()

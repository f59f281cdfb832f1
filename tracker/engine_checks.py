"""Configuration checks of the engines the agent finds, run once per engine (and again
after ``engine.dispose()`` replaced its pool), off the application's threads.

Reading the server's settings (``wait_timeout``, ``max_connections``…) takes a pooled
connection and a round trip, possibly a connect timeout when the server is down, so it
runs in a short-lived thread of its own, never in a hook and never in the worker's
round. Only when ``read_server_settings`` allows it; without, the rules that need the
server say so in their message.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import Agent
    from .registry import EngineEntry

FINDING = "finding"


class EngineChecks:
    """Checks each engine once per pool; findings go through the recorder."""

    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        #: (engine id, pool id) already checked or being checked
        self.done: set[tuple[str, int | None]] = set()
        #: the Flask apps already checked (compared by identity; a process has a few)
        self.apps_checked: list[Any] = []

    def due(self) -> list[tuple["EngineEntry", Any]]:
        """Live engines not checked yet with their current pool (worker thread)."""
        out = []
        for entry, engine in self.agent.registry.live_engines():
            if engine is None or entry.pool_id is None:
                continue
            key = (entry.id, entry.pool_id)
            if key not in self.done:
                self.done.add(key)
                out.append((entry, engine))
        return out

    def start_due(self) -> None:
        """Check new engines in a background thread (worker thread)."""
        due = self.due()
        if due:
            threading.Thread(target=self.run, args=(due,), name="retort-checks",
                             daemon=True).start()

    def run(self, due: list[tuple["EngineEntry", Any]]) -> None:
        """Check ``due`` engines now, in this thread; never raises."""
        for entry, engine in due:
            try:
                self.check(entry, engine)
            except Exception as exc:
                self.agent.recorder.count_error("engine_checks", exc)
        try:
            self.check_flask()
        except Exception as exc:
            self.agent.recorder.count_error("engine_checks.flask", exc)

    def check(self, entry: "EngineEntry", engine: Any) -> None:
        from .checks import engine_findings, server_settings

        server: dict[str, Any] | None = None
        if self.agent.config.read_server_settings and engine.dialect.name != "sqlite":
            server = server_settings(engine)
            if server:
                entry.server = server
                entry.revision += 1  # the worker announces the engine again, with it
        for finding in engine_findings(engine, server):
            finding.engine = entry.id
            self.agent.recorder.submit((FINDING, finding.event(time.time())))

    def check_flask(self) -> None:
        """The Flask-SQLAlchemy rules for every Flask app whose extension is alive in
        this process (only if the application imported Flask-SQLAlchemy), once per
        app; each finding is filed under the app's default engine."""
        module = sys.modules.get("flask_sqlalchemy")
        if module is None:
            return
        from .checks.flask_app import apps_of, flask_engines, flask_findings

        extension = getattr(module, "SQLAlchemy", None)
        if extension is None:
            return
        for db in [obj for obj in gc.get_objects() if type(obj) is extension]:
            for app in apps_of(db):
                if any(app is seen for seen in self.apps_checked):
                    continue
                self.apps_checked.append(app)
                engines = flask_engines(app, db)
                default = engines.get(None) or next(iter(engines.values()), None)
                entry = (self.agent.registry.engine_entry(default)
                         if default is not None else None)
                for finding in flask_findings(app, db, engines):
                    finding.engine = entry.id if entry is not None else ""
                    self.agent.recorder.submit((FINDING, finding.event(time.time())))


"""Statement hooks: count and time every statement an engine's cursors execute.

These are *dialect* events (``do_execute``, ``do_executemany``,
``do_execute_no_params``), not connection events. Any connection-level listener
(``before_cursor_execute``, ``engine_connect``, ``handle_error``…) makes SQLAlchemy
join event dispatchers on every new ``Connection``, which alone costs about a third of
a short checkout-and-select; dialect events cost one attribute check. The listener runs
the cursor call itself, exactly as SQLAlchemy would (``dialect.do_execute``), timed,
and returns True as the event's contract asks — it is appended after any other
listener, so one that handles execution itself still goes first. A failing statement
is counted and its exception re-raised unchanged.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from . import ListenerSet

if TYPE_CHECKING:
    from ..sessions import SessionRegistry
    from ..recorder import Recorder
    from ..registry import Registry

STATEMENT = "statement"
STATEMENT_ERROR = "statement_error"


class EngineHooks:
    """Dialect-level execution listeners; each one only records."""

    def __init__(self, registry: "Registry", recorder: "Recorder",
                 sessions: "SessionRegistry | None" = None) -> None:
        self.registry = registry
        #: connections of ORM sessions, to count each session's statements
        self._by_conn = sessions.by_conn if sessions is not None else None
        self.bind(recorder)

    def bind(self, recorder: "Recorder") -> None:
        """Record into ``recorder`` (see PoolHooks.bind)."""
        self.recorder = recorder
        self._queue = recorder.queue
        self._room = recorder.maxlen

    def install(self, listeners: ListenerSet) -> None:
        listeners.listen(Engine, "do_execute", self._do_execute_evt)
        listeners.listen(Engine, "do_executemany", self._do_executemany_evt)
        listeners.listen(Engine, "do_execute_no_params", self._do_execute_no_params_evt)

    def _do_execute_evt(self, cursor: Any, statement: str, parameters: Any,
                        context: Any) -> bool:
        t0 = perf_counter()
        try:
            context.dialect.do_execute(cursor, statement, parameters, context)
        except BaseException:
            self._record(context, statement, perf_counter() - t0, False, failed=True)
            raise
        self._record(context, statement, perf_counter() - t0, False)
        return True

    def _do_executemany_evt(self, cursor: Any, statement: str, parameters: Any,
                            context: Any) -> bool:
        t0 = perf_counter()
        try:
            context.dialect.do_executemany(cursor, statement, parameters, context)
        except BaseException:
            self._record(context, statement, perf_counter() - t0, True, failed=True)
            raise
        self._record(context, statement, perf_counter() - t0, True)
        return True

    def _do_execute_no_params_evt(self, cursor: Any, statement: str, context: Any) -> bool:
        t0 = perf_counter()
        try:
            context.dialect.do_execute_no_params(cursor, statement, context)
        except BaseException:
            self._record(context, statement, perf_counter() - t0, False, failed=True)
            raise
        self._record(context, statement, perf_counter() - t0, False)
        return True

    def _record(self, context: Any, statement: str, seconds: float, executemany: bool,
                failed: bool = False) -> None:
        try:
            engine = context.engine
            entry = self.registry.engines.get(id(engine))
            if entry is None:
                entry = self.registry.engine_entry(engine)  # an engine seen the first time
            by_conn = self._by_conn
            if by_conn:
                session = by_conn.get(id(context.root_connection))
                if session is not None:
                    # written only by the thread using that session
                    session.statements += 1
                    session.last_t = perf_counter()
            item = ((STATEMENT_ERROR, entry) if failed
                    else (STATEMENT, entry, seconds, statement, executemany))
            queue = self._queue
            if len(queue) < self._room:
                queue.append(item)
            else:
                self.recorder.submit(item)
        except Exception as exc:
            self.recorder.count_error("engine.statement", exc)

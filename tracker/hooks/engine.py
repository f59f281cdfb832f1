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

import threading
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from ..detectors import MAX_COUNTED
from ..locations import OFF
from . import ListenerSet

if TYPE_CHECKING:
    from ..detectors import Detectors
    from ..locations import LocationFinder
    from ..sessions import SessionEntry, SessionRegistry
    from ..recorder import Recorder
    from ..registry import Registry

STATEMENT = "statement"
STATEMENT_ERROR = "statement_error"
#: Statement texts whose first location was captured (cleared beyond this bound).
MAX_LOCATED = 5000

_get_ident = threading.get_ident


class EngineHooks:
    """Dialect-level execution listeners; each one only records."""

    def __init__(self, registry: "Registry", recorder: "Recorder",
                 detectors: "Detectors", finder: "LocationFinder",
                 capture_locations: str,
                 sessions: "SessionRegistry | None" = None) -> None:
        self.registry = registry
        self.detectors = detectors
        self._slow = detectors.slow
        self._large_rows = detectors.large_rows
        self._engines = registry.engines  # the same dict for the registry's life
        self.finder = finder
        self._locate = capture_locations != OFF
        self._located: set[str] = set()
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
            self._record(context, cursor, statement, parameters, t0,
                         False, failed=True)
            raise
        self._record(context, cursor, statement, parameters, t0, False)
        return True

    def _do_executemany_evt(self, cursor: Any, statement: str, parameters: Any,
                            context: Any) -> bool:
        t0 = perf_counter()
        try:
            context.dialect.do_executemany(cursor, statement, parameters, context)
        except BaseException:
            self._record(context, cursor, statement, parameters, t0,
                         True, failed=True)
            raise
        self._record(context, cursor, statement, parameters, t0, True)
        return True

    def _do_execute_no_params_evt(self, cursor: Any, statement: str, context: Any) -> bool:
        t0 = perf_counter()
        try:
            context.dialect.do_execute_no_params(cursor, statement, context)
        except BaseException:
            self._record(context, cursor, statement, None, t0, False,
                         failed=True)
            raise
        self._record(context, cursor, statement, None, t0, False)
        return True

    def _record(self, context: Any, cursor: Any, statement: str, parameters: Any,
                t0: float, executemany: bool, failed: bool = False) -> None:
        # the hottest path of the agent: every statement of the application
        now = perf_counter()
        seconds = now - t0
        try:
            engine = context.engine
            entry = self._engines.get(id(engine))
            if entry is None:
                entry = self.registry.engine_entry(engine)  # an engine seen the first time
            session = None
            by_conn = self._by_conn
            if by_conn:
                session = by_conn.get(id(context.root_connection))
                if session is not None:
                    # written only by the thread using that session
                    session.statements += 1
                    session.last_t = now
                    self._in_session(session, entry.id, context, statement, parameters,
                                     executemany)
            if failed:
                item: tuple[Any, ...] = (STATEMENT_ERROR, entry, statement)
            else:
                # drivers report -1 (or nothing) when they do not know, e.g. for a
                # SELECT on sqlite3; psycopg and PyMySQL count the rows they buffered
                rows = cursor.rowcount
                stack = None
                located = self._located
                if statement not in located:
                    # where each statement text is first seen: one stack walk per text
                    if len(located) >= MAX_LOCATED:
                        located.clear()
                    located.add(statement)
                    stack = self.finder.capture() if self._locate else None
                item = (STATEMENT, entry, seconds, statement, executemany, rows, stack)
                if seconds >= self._slow:
                    self.detectors.on_slow(entry.id, session, statement, seconds, rows,
                                           parameters, context)
                if rows >= self._large_rows:
                    self.detectors.on_large(entry.id, session, statement, rows)
            queue = self._queue
            if len(queue) < self._room:
                queue.append(item)
            else:
                self.recorder.submit(item)
        except Exception as exc:
            self.recorder.count_error("engine.statement", exc)

    def _in_session(self, session: "SessionEntry", engine_id: str, context: Any,
                    statement: str, parameters: Any, executemany: bool) -> None:
        """Per-session counts for the detectors; they run only past a threshold."""
        counts = session.stmts
        if counts is None:
            counts = session.stmts = {}
        seen = counts.get(statement)
        detect = self.detectors
        if seen is None:
            if len(counts) < MAX_COUNTED:
                # the first parameters are kept: a repeat compares against them
                counts[statement] = [1, parameters]
        else:
            seen[0] += 1
            # context.executemany: an "insertmanyvalues" batch that SQLAlchemy runs
            # row by row (e.g. RETURNING on SQLite) is still one executemany for the app
            detect.on_repeat(session, engine_id, statement, seen, parameters,
                             executemany or context.executemany)
        if context.is_crud:
            session.txn_writes += 1
        if session.statements == detect.per_session:
            detect.on_many_statements(session, engine_id)
        if session.thread_id != _get_ident():
            detect.on_other_thread(session, engine_id)

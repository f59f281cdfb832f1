"""Statement hooks: count and time every statement an engine's cursors execute.

SQLAlchemy hands every statement to the driver through one of three dialect methods,
``do_execute``, ``do_executemany`` and ``do_execute_no_params``. When no dialect event
listener exists, ``Connection`` calls ``self.dialect.do_execute(...)``; so the agent
wraps those three methods on each registered engine's *dialect instance* (an instance
attribute shadows the class's method, as pool.py does with ``Pool.connect``), and
removes the wrappers on uninstrument. No event is listened to: any dialect event
listener makes SQLAlchemy loop over the dialect's dispatcher on every statement, and
a connection-level one (``before_cursor_execute``…) joins dispatchers on every new
``Connection``; either costs more than the whole recording.

A dialect is wrapped when its engine or pool is registered (the registry's callbacks,
including engines found at ``instrument()``), or when a pool it serves opens a DBAPI
connection. A dialect shared by several engines is wrapped once: the wrapper finds the
engine from the execution context. An instance attribute the application (or another
tool) had already put on the dialect is wrapped in turn and restored afterwards; one
put on top of the agent's wrapper is left alone (the wrapper then only passes through).

The wrapper runs the cursor call itself, exactly as the dialect would, timed. A failing
statement is counted and its exception re-raised unchanged. A listener of the
application on these dialect events still runs first: SQLAlchemy calls the dialect's
method only when no listener handled the statement.
"""

from __future__ import annotations

import threading
import weakref
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy.engine import Dialect
from sqlalchemy.engine.default import DefaultDialect

from ..detectors import MAX_COUNTED
from ..locations import OFF
from ..sessions import FLUSHING, _session_refs
from . import ListenerSet

if TYPE_CHECKING:
    from ..detectors import Detectors
    from ..locations import LocationFinder
    from ..recorder import Recorder
    from ..registry import EngineEntry, PoolEntry, Registry
    from ..sessions import SessionEntry, SessionRegistry

STATEMENT = "statement"
STATEMENT_ERROR = "statement_error"
#: A statement item's stack when its text's first sight found the round's stack walks
#: spent (LOCATE_PER_ROUND): the worker then keeps the text off the tallies, so that a
#: later sight of it takes the queue again and is located
DEFERRED = False
#: Statement texts whose first location was captured (cleared beyond this bound).
MAX_LOCATED = 5000
#: Sampling counters kept (one per engine entry; cleared beyond this bound).
MAX_TICKS = 1000
#: The dialect methods wrapped, in SQLAlchemy 2.0 and 2.1 alike.
METHODS = ("do_execute", "do_executemany", "do_execute_no_params")

_get_ident = threading.get_ident
_MISSING: Any = object()


class _Gone:
    pass


#: a weak reference whose object is gone: an empty engine cache
_NO_ENGINE = (weakref.ref(_Gone()), None)


class EngineHooks:
    """Wrappers of each registered dialect's execute methods; each one only records."""

    def __init__(self, registry: "Registry", recorder: "Recorder",
                 detectors: "Detectors", finder: "LocationFinder",
                 capture_locations: str,
                 sessions: "SessionRegistry | None" = None) -> None:
        self.registry = registry
        self.detectors = detectors
        self._engines = registry.engines  # the same dict for the registry's life
        self.finder = finder
        #: the configured location mode; an engine's ``locations`` switch overrides it
        self.capture_locations = capture_locations
        self._located: set[str] = set()
        #: connections of ORM sessions, to count each session's statements
        self._by_conn = sessions.by_conn if sessions is not None else None
        #: id(dialect) -> (weak reference, [(method, our wrapper, what it shadowed)])
        self._dialects: dict[int, tuple[Any, list[tuple[str, Any, Any]]]] = {}
        self._lock = threading.Lock()
        #: id(engine entry) -> statements seen since the last one sampled
        self._ticks: dict[int, int] = {}
        #: each do_execute wrapper's cache: [(weak reference to the first engine it
        #: served, that engine's entry)]; emptied by uninstall()
        self._engine_caches: list[list[Any]] = []
        self._attached = False
        self.bind(recorder)

    def bind(self, recorder: "Recorder") -> None:
        """Record into ``recorder`` (see PoolHooks.bind)."""
        self.recorder = recorder
        self._queue = recorder.queue
        self._room = recorder.maxlen

    # -- wrapping --------------------------------------------------------------------

    def install(self, listeners: ListenerSet) -> None:
        """Start wrapping dialects as their engines are registered; ``listeners``
        unwraps them all when it removes its listeners."""
        self._attached = True
        listeners.on_remove(self.uninstall)

    def on_new_engine(self, entry: "EngineEntry") -> None:
        """Registry callback: wrap a newly registered engine's dialect."""
        try:
            engine = entry.engine()
            if engine is not None:
                self.wrap(engine.dialect)
        except Exception as exc:
            self.recorder.count_error("engine.wrap", exc)

    def on_new_pool(self, entry: "PoolEntry", pool: Any) -> None:
        """Registry callback: wrap the dialect of a newly registered pool (and of its
        engine, if known)."""
        try:
            self.wrap(getattr(pool, "_dialect", None))
            engine = entry.engine.engine()
            if engine is not None:
                self.wrap(engine.dialect)
        except Exception as exc:
            self.recorder.count_error("engine.wrap", exc)

    def wrap(self, dialect: Any) -> bool:
        """Wrap ``dialect``'s execute methods (once); False if there is nothing to wrap
        (not a dialect, e.g. a pool without an engine) or the agent is detached."""
        if not self._attached or not isinstance(dialect, Dialect):
            return False
        key = id(dialect)
        known = self._dialects.get(key)
        if known is not None and known[0]() is dialect:
            return True
        with self._lock:
            known = self._dialects.get(key)
            if known is not None and known[0]() is dialect:
                return True
            own = dialect.__dict__
            saved = []
            for name in METHODS:
                previous = own.get(name, _MISSING)
                saved.append((name, self._wrapper(dialect, name, previous), previous))
            for name, wrapper, _ in saved:
                setattr(dialect, name, wrapper)

            def forget(ref: Any, key: int = key, dialects: dict[int, Any] = self._dialects
                       ) -> None:
                known = dialects.get(key)
                if known is not None and known[0] is ref:
                    dialects.pop(key, None)

            self._dialects[key] = (weakref.ref(dialect, forget), saved)
        return True

    def uninstall(self) -> None:
        """Remove every wrapper (restoring what each one shadowed)."""
        self._attached = False
        with self._lock:
            dialects = list(self._dialects.values())
            self._dialects.clear()
            for cache in self._engine_caches:
                cache[0] = _NO_ENGINE
            self._engine_caches.clear()
        for ref, saved in dialects:
            dialect = ref()
            if dialect is None:
                continue
            own = dialect.__dict__
            for name, wrapper, previous in saved:
                if own.get(name) is not wrapper:
                    continue  # wrapped again by someone else: ours stays, passing through
                if previous is _MISSING:
                    del own[name]
                else:
                    own[name] = previous
        self._ticks.clear()
        self._located.clear()

    def wrapped(self, dialect: Any) -> bool:
        known = self._dialects.get(id(dialect))
        return known is not None and known[0]() is dialect

    def _wrapper(self, dialect: Any, name: str, previous: Any) -> Callable[..., None]:
        record = self._record
        original = getattr(dialect, name)  # bound: the class's, or the shadowed one
        if name == "do_execute":
            wrapper = self._do_execute_wrapper(dialect, previous, original)
        elif name == "do_executemany":
            def do_executemany(cursor: Any, statement: str, parameters: Any,
                               context: Any = None) -> None:
                t0 = perf_counter()
                try:
                    original(cursor, statement, parameters, context)
                except BaseException:
                    record(context, cursor, statement, parameters, t0, True, True)
                    raise
                record(context, cursor, statement, parameters, t0, True, False)
            wrapper = do_executemany
        else:
            def do_execute_no_params(cursor: Any, statement: str,
                                     context: Any = None) -> None:
                t0 = perf_counter()
                try:
                    original(cursor, statement, context)
                except BaseException:
                    record(context, cursor, statement, None, t0, False, True)
                    raise
                record(context, cursor, statement, None, t0, False, False)
            wrapper = do_execute_no_params
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
        wrapper.__doc__ = getattr(original, "__doc__", None)
        return wrapper

    def _do_execute_wrapper(self, dialect: Any, previous: Any,
                            original: Callable[..., None]) -> Callable[..., None]:
        """The wrapper of ``do_execute``, which runs almost every statement: the common
        case (a known engine, recorded, not the first time its text is seen, not slow,
        not large) is written out here, the rest goes through :meth:`_record`."""
        record = self._record
        # DefaultDialect's own method is one line calling the cursor: called directly,
        # a Python frame less per statement
        direct = previous is _MISSING and (getattr(type(dialect), "do_execute", None)
                                           is DefaultDialect.do_execute)
        engines = self._engines
        by_conn = self._by_conn
        detect = self.detectors
        queue, room = self._queue, self._room
        count_error = self.recorder.count_error
        count_in_session = self._count_in_session
        # The engine most statements of this dialect come from (the first one seen; a
        # dialect is shared only by engine.execution_options() copies and the like):
        # compared by identity, it spares an id() and a dict lookup per statement.
        cache: list[Any] = [_NO_ENGINE]
        self._engine_caches.append(cache)
        new_ref = weakref.ref

        def do_execute(cursor: Any, statement: str, parameters: Any,
                       context: Any = None) -> None:
            t0 = perf_counter()
            try:
                if direct:
                    cursor.execute(statement, parameters)
                else:
                    original(cursor, statement, parameters, context)
            except BaseException:
                record(context, cursor, statement, parameters, t0, False, True)
                raise
            now = perf_counter()
            try:
                connection = context.root_connection
                engine = connection.engine
                ref, entry = cache[0]
                cached = ref()
                if cached is not engine:
                    entry = engines.get(id(engine))
                    if cached is None and entry is not None:
                        cache[0] = (new_ref(engine), entry)  # one store: threads see a pair
                # a text has a tally once the worker has seen it, while the engine's
                # statements are recorded unsampled (tracker/tally.py)
                tally = entry.tally.texts.get(statement) if entry is not None else None
                if tally is None:
                    # first sight of the engine or the text, switched off or sampled
                    record(context, cursor, statement, parameters, t0, False, False, now)
                    return
                session = None
                if by_conn:
                    session = by_conn.get(id(connection))
                    if session is not None:
                        count_in_session(session, entry.id, statement, parameters,
                                         context, now, False)
                seconds = now - t0
                # drivers report -1 (or nothing) when they do not know, e.g. for a
                # SELECT on sqlite3; psycopg and PyMySQL count the rows they buffered
                rows = cursor.rowcount
                if seconds >= detect.slow:
                    detect.on_slow(entry.id, session, statement, seconds, rows,
                                   parameters, context)
                if rows >= detect.large_rows:
                    detect.on_large(entry.id, session, statement, rows)
                durations = tally.durations
                if len(durations) < tally.cap:
                    durations.append(seconds)
                    if rows > 0:
                        tally.rows.append(rows)
                else:  # the worker is behind: the bounded queue takes it
                    item = (STATEMENT, entry, seconds, statement, False, rows, None)
                    if len(queue) < room:
                        queue.append(item)
                    else:
                        self.recorder.submit(item)
            except Exception as exc:
                count_error("engine.statement", exc)

        return do_execute

    # -- recording -------------------------------------------------------------------

    def _record(self, context: Any, cursor: Any, statement: str, parameters: Any,
                t0: float, executemany: bool, failed: bool,
                now: float | None = None) -> None:
        """Record one statement (the do_execute wrapper has the common case inline)."""
        if now is None:
            now = perf_counter()
        try:
            if context is None:
                return  # a bare cursor execution outside any statement context
            connection = context.root_connection
            entry = self._engines.get(id(connection.engine))
            if entry is None:
                if not self._attached:
                    return  # a wrapper someone else's wrapper kept alive
                entry = self.registry.engine_entry(connection.engine)  # seen the first time
            # (the switches' slots read directly: their properties cost a call each)
            if not entry._statements:
                return
            if entry._sample != 1 and self._skip(entry):
                return
            session = None
            by_conn = self._by_conn
            if by_conn:
                session = by_conn.get(id(connection))
                if session is not None:
                    self._count_in_session(session, entry.id, statement, parameters,
                                           context, now, executemany)
            if failed:
                item: tuple[Any, ...] = (STATEMENT_ERROR, entry, statement)
            else:
                seconds = now - t0
                # drivers report -1 (or nothing) when they do not know, e.g. for a
                # SELECT on sqlite3; psycopg and PyMySQL count the rows they buffered
                rows = cursor.rowcount
                stack = None
                if statement not in self._located:
                    # the round's walks spent: no call (values written into the SQL
                    # bring a new text per statement)
                    stack = (self._first_location(entry, statement)
                             if entry.locate_left > 0 else DEFERRED)
                item = (STATEMENT, entry, seconds, statement, executemany, rows, stack)
                detect = self.detectors
                if seconds >= detect.slow:
                    detect.on_slow(entry.id, session, statement, seconds, rows,
                                   parameters, context)
                if rows >= detect.large_rows:
                    detect.on_large(entry.id, session, statement, rows)
            queue = self._queue
            if len(queue) < self._room:
                queue.append(item)
            else:
                self.recorder.submit(item)
        except Exception as exc:
            self.recorder.count_error("engine.statement", exc)

    def _count_in_session(self, session: "SessionEntry", engine_id: str, statement: str,
                          parameters: Any, context: Any, now: float,
                          executemany: bool) -> None:
        """A statement of an ORM session: its per-session counts, for the detectors,
        which run only past a threshold (written only by the thread using that
        session)."""
        session.statements += 1
        session.last_t = now
        counts = session.stmts
        if counts is None:
            first = session.first
            if first is None:
                # most sessions run one statement: no dict for it
                session.first = statement
                session.first_parameters = parameters
            else:
                counts = session.stmts = {first: [1, session.first_parameters, None]}
        detect = self.detectors
        if counts is not None:
            seen = counts.get(statement)
            if seen is None:
                if len(counts) < MAX_COUNTED:
                    # the first parameters are kept: a repeat compares
                    counts[statement] = [1, parameters, None]
            else:
                seen[0] += 1
                detect.on_repeat(session, engine_id, statement, seen, parameters,
                                 context, executemany)
        if context.is_crud:
            session.txn_writes += 1
            if session.state is not FLUSHING:
                # a flush's first write: the session is "flushing" until
                # after_flush_postexec (no before_flush listener)
                ref = _session_refs.get(session.key)  # session.ref() written out
                owner = ref() if ref is not None else session.ref()
                if owner is not None and owner._flushing:
                    session.state = FLUSHING
        if session.statements == detect.per_session:
            detect.on_many_statements(session, engine_id)
        if session.thread_id != _get_ident():
            detect.on_other_thread(session, engine_id)

    def _first_location(self, entry: "EngineEntry", statement: str) -> Any:
        """Where a statement text is first seen: one stack walk per text, at most
        LOCATE_PER_ROUND per engine per round of the worker (the caller queues a text
        seen once they are spent as DEFERRED, to be located at a later sight; its
        shape takes the location of the first of its texts located, tracker/stats.py),
        so an application writing values into its SQL still gets a location per
        shape without a stack walk per statement."""
        mode = entry.locations or self.capture_locations
        if mode == OFF:
            return None
        # (threads may race on the count: a walk or two more in a round, no harm)
        entry.locate_left -= 1
        located = self._located
        if len(located) >= MAX_LOCATED:
            located.clear()
        located.add(statement)
        return self.finder.capture()

    def _skip(self, entry: "EngineEntry") -> bool:
        """Sampling: True for all but one statement in ``entry.sample``."""
        sample = entry.sample
        if sample <= 1:
            return False
        ticks = self._ticks
        key = id(entry)
        tick = ticks.get(key, 0) + 1
        if tick >= sample:
            ticks[key] = 0
            return False
        if len(ticks) >= MAX_TICKS and key not in ticks:
            ticks.clear()
        ticks[key] = tick
        return True

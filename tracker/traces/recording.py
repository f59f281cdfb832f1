"""Recording a trace: the full event stream of a scope, streamed to a JSON Lines file.

While a :class:`Trace` records, class-level listeners (on ``Engine``, ``Pool`` and
``Session``) turn what SQLAlchemy does into events: statements with their timing,
transactions (begin, commit, rollback), flushes with the changes they wrote, pool
checkouts (with the wait, when the agent runs) and checkins, lazy loads, and the
advisor's findings. The listeners exist only while something records: the agent's
default tracking pays nothing for traces.

Hooks only append a tuple to a bounded queue; a writer thread renders and writes the
lines, so memory stays bounded whatever the trace's length. An event that finds the
queue full is dropped and counted (the ``end`` line says how many). Redaction is the
agent's: parameters only when capture is allowed, and then redacted by name; values of
flushed changes masked by the secret words.

The format is described in :mod:`tracker.traces.jsonl`.
"""

from __future__ import annotations

import collections
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from time import perf_counter
from typing import Any

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

from .. import __version__
from ..hooks.pool import pool_of_record
from ..locations import thread_name as _thread_name
from ..registry import _engine_name
from ..protocol import MAX_STRING
from ..redact import DEFAULT_SECRET_WORDS, Redactor
from . import jsonl

#: events held in memory before the writer thread takes them (beyond: dropped)
MAX_QUEUE = 50_000
#: how often the writer thread writes what is queued, in seconds
WRITE_EVERY = 0.2

_active: "weakref.WeakSet[Trace]" = weakref.WeakSet()


class Trace:
    """One recording, to ``path`` (JSON Lines). Use :func:`tracker.record`."""

    def __init__(self, name: str, path: str | os.PathLike[str] | None = None, *,
                 engine: Engine | str | None = None, session: Session | None = None,
                 capture_parameters: bool | None = None,
                 secret_words: tuple[str, ...] | None = None,
                 max_queue: int = MAX_QUEUE) -> None:
        from .. import current_agent

        agent = current_agent()
        self.name = name
        stamp = time.strftime("%Y%m%d-%H%M%S")
        safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in name) or "trace"
        self.path = Path(path) if path is not None else Path(
            "retort-traces") / f"{safe}-{stamp}-{os.getpid()}.jsonl"
        self.agent = agent
        config = agent.config if agent is not None else None
        if capture_parameters is None:
            capture_parameters = config.capture_parameters if config is not None else False
        self.capture_parameters = capture_parameters
        self.redactor = Redactor(secret_words if secret_words is not None else
                                 (config.secret_words if config else DEFAULT_SECRET_WORDS))
        self.engine_name = engine if isinstance(engine, str) or engine is None else None
        self.engine_ref = weakref.ref(engine) if isinstance(engine, Engine) else None
        self.session_ref = weakref.ref(session) if session is not None else None
        self.events = 0
        self.dropped = 0
        self.started: float | None = None
        self.ended: float | None = None
        self._queue: collections.deque = collections.deque()
        self._max = max_queue
        self._listeners: list[tuple[Any, str, Any]] = []
        self._sids: "weakref.WeakKeyDictionary[Session, str]" = weakref.WeakKeyDictionary()
        self._numbered = 0
        self._conn_sid: dict[int, str] = {}
        self._conns: dict[int, int] = {}      # id(connection record) -> "connection #n"
        self._engines: dict[int, str] = {}    # id(engine) -> engine id in the trace
        self._held: dict[int, float] = {}     # id(record) -> perf t0 of its checkout
        self._pools: dict[int, Any] = {}      # id(pool) -> weakref to its engine
        self._flush_t0: dict[int, tuple[float, float, list]] = {}
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._file: Any = None

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> "Trace":
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> "Trace":
        """Open the file, write the header, install the listeners."""
        if self.started is not None:
            return self
        self._file = self._open()
        self.started = time.time()
        self._file.write(jsonl.line(self._header()))
        self._listen(Engine, "before_cursor_execute", self._before_execute)
        self._listen(Engine, "after_cursor_execute", self._after_execute)
        self._listen(Engine, "handle_error", self._error)
        self._listen(Pool, "checkout", self._checkout)
        self._listen(Pool, "checkin", self._checkin)
        self._listen(Session, "after_begin", self._begin)
        self._listen(Session, "after_commit", self._commit)
        self._listen(Session, "after_rollback", self._rollback)
        self._listen(Session, "after_transaction_end", self._transaction_end)
        self._listen(Session, "before_flush", self._before_flush)
        self._listen(Session, "after_flush_postexec", self._after_flush)
        self._listen(Session, "do_orm_execute", self._orm_execute)
        if self.agent is not None:
            self.agent.detectors.taps.append(self._finding)
        self._writer = threading.Thread(target=self._write_loop, name="retort-trace",
                                        daemon=True)
        self._writer.start()
        _active.add(self)
        return self

    def stop(self) -> "Trace":
        """Remove the listeners, write what is queued and the ``end`` line, close."""
        if self.started is None or self.ended is not None:
            return self
        for target, name, fn in self._listeners:
            try:
                event.remove(target, name, fn)
            except Exception:
                pass
        self._listeners.clear()
        if self.agent is not None and self._finding in self.agent.detectors.taps:
            self.agent.detectors.taps.remove(self._finding)
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
        self.ended = time.time()
        self._write_pending()
        self._file.write(jsonl.line({"type": "end", "ts": self.ended, "events": self.events,
                                     "dropped": self.dropped}))
        self._file.close()
        _active.discard(self)
        return self

    def _open(self) -> Any:
        """Where the lines go: the trace file (a subclass may stream them elsewhere)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return open(self.path, "wb")

    def abandon(self) -> None:
        """In a forked child: stop listening and let the parent's file be (the parent
        writes it); nothing is written."""
        for target, name, fn in self._listeners:
            try:
                event.remove(target, name, fn)
            except Exception:
                pass
        self._listeners.clear()
        self._queue.clear()
        self.ended = time.time()
        _active.discard(self)

    def _listen(self, target: Any, name: str, fn: Any) -> None:
        event.listen(target, name, fn)
        self._listeners.append((target, name, fn))

    def _header(self) -> dict[str, Any]:
        scope: dict[str, Any] = {"kind": "process"}
        if self.engine_name or self.engine_ref:
            engine = self.engine_ref() if self.engine_ref else None
            name = self.engine_name or (_engine_name(engine) if engine is not None else "")
            scope = {"kind": "engine", "engine": name}
        if self.session_ref is not None:
            scope = {"kind": "session"}
        return {"type": "header", "format": jsonl.FORMAT, "version": jsonl.VERSION,
                "name": self.name, "started": self.started,
                "process": {"host": socket.gethostname(), "pid": os.getpid(),
                            "app": self.agent.config.app if self.agent else
                            os.path.basename(sys.argv[0] or "python"),
                            "python": sys.version.split()[0],
                            "sqlalchemy": sqlalchemy.__version__, "agent": __version__},
                "scope": scope, "parameters": self.capture_parameters}

    # -- queueing (application threads) ---------------------------------------------------

    def _put(self, item: tuple) -> None:
        if len(self._queue) < self._max:
            self._queue.append(item)
        else:
            self.dropped += 1

    def _wanted_engine(self, engine: Engine) -> bool:
        if self.engine_ref is not None:
            return self.engine_ref() is engine
        if self.engine_name is not None:
            return _engine_name(engine) == self.engine_name
        return True

    def _wanted_session(self, session: Session | None) -> bool:
        return self.session_ref is None or (session is not None
                                            and self.session_ref() is session)

    def _sid(self, session: Session) -> str:
        sid = self._sids.get(session)
        if sid is None:
            entry = self.agent.sessions.get(session) if self.agent is not None else None
            if entry is not None:
                sid = entry.sid
            else:
                self._numbered += 1
                sid = f"t{self._numbered}"
            self._sids[session] = sid
        return sid

    # -- listeners ------------------------------------------------------------------------

    def _before_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                        context: Any, executemany: bool) -> None:
        if context is not None:
            context._retort_trace_t0 = (time.time(), perf_counter())

    def _after_execute(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                       context: Any, executemany: bool) -> None:
        try:
            self._statement(conn, cursor, statement, parameters, context, executemany, None)
        except Exception:
            self.dropped += 1

    def _error(self, ctx: Any) -> None:
        try:
            if ctx.statement is not None and ctx.connection is not None:
                self._statement(ctx.connection, ctx.cursor, ctx.statement, ctx.parameters,
                                ctx.execution_context, False,
                                f"{type(ctx.original_exception).__name__}: "
                                f"{ctx.original_exception}"[:1000])
        except Exception:
            self.dropped += 1

    def _statement(self, conn: Any, cursor: Any, statement: str, parameters: Any,
                   context: Any, executemany: bool, error: str | None) -> None:
        engine = conn.engine
        if not self._wanted_engine(engine):
            return
        sid = self._conn_sid.get(id(conn))
        if self.session_ref is not None and sid is None:
            return
        started = getattr(context, "_retort_trace_t0", None) if context is not None else None
        now = perf_counter()
        ts, dur = (started[0], now - started[1]) if started else (time.time(), 0.0)
        record = getattr(conn._dbapi_connection, "_connection_record", None) \
            if conn._dbapi_connection is not None else None
        rows = -1
        if error is None and cursor is not None:
            try:
                rows = cursor.rowcount
            except Exception:
                rows = -1
        params = None
        if self.capture_parameters and parameters is not None:
            from ..detectors import _bind_names
            params = self.redactor.parameters(parameters, _bind_names(context))
        self._put(("statement", ts, dur, threading.get_ident(), engine, id(record),
                   sid, statement, executemany, rows, params, error))

    def _checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        pool = pool_of_record(record)
        engine = self._engine_of_pool(pool)
        if engine is None or not self._wanted_engine(engine) or self.session_ref is not None:
            return
        now = perf_counter()
        self._held[id(record)] = now
        wait = None
        if self.agent is not None and pool is not None:
            entry = self.agent.registry.pools.get(id(pool))
            t0 = entry.waiters.get(threading.get_ident()) if entry is not None else None
            if t0 is not None:
                wait = now - t0
        self._put(("checkout", time.time(), threading.get_ident(), engine, id(record),
                   wait, _checked_out(pool)))

    def _checkin(self, dbapi_connection: Any, record: Any) -> None:
        t0 = self._held.pop(id(record), None)
        if t0 is None:
            return
        pool = pool_of_record(record)
        engine = self._engine_of_pool(pool)
        if engine is None:
            return
        self._put(("checkin", time.time(), threading.get_ident(), engine, id(record),
                   perf_counter() - t0, _checked_out(pool, returning=True)))

    def _engine_of_pool(self, pool: Any) -> Engine | None:
        if pool is None:
            return None
        if self.agent is not None:
            entry = self.agent.registry.pools.get(id(pool))
            if entry is not None:
                return entry.engine.engine()
        known = self._pools.get(id(pool))
        engine = known() if known is not None else None
        if engine is None or engine.pool is not pool:
            # once per pool: which live engine owns it
            engine = next((e for e in _engines_alive() if e.pool is pool), None)
            if engine is not None:
                self._pools[id(pool)] = weakref.ref(engine)
        return engine

    def _begin(self, session: Session, transaction: Any, connection: Any) -> None:
        if not self._wanted_session(session) or not self._wanted_engine(connection.engine):
            return
        sid = self._sid(session)
        first = not any(s == sid for s in self._conn_sid.values())
        self._conn_sid[id(connection)] = sid
        if first:
            self._put(("transaction", time.time(), threading.get_ident(), sid, "begin"))

    def _end(self, session: Session, phase: str) -> None:
        if not self._wanted_session(session) or session not in self._sids:
            return
        sid = self._sids[session]
        if not any(s == sid for s in self._conn_sid.values()):
            return  # no transaction of ours began (another engine, or before the trace)
        for key in [k for k, s in self._conn_sid.items() if s == sid]:
            del self._conn_sid[key]
        self._put(("transaction", time.time(), threading.get_ident(), sid, phase))

    def _commit(self, session: Session) -> None:
        self._end(session, "commit")

    def _rollback(self, session: Session) -> None:
        self._end(session, "rollback")

    def _transaction_end(self, session: Session, transaction: Any) -> None:
        # The outermost transaction ended: after a commit or rollback (already written:
        # _end finds nothing), or by a close without either ("close": the connection
        # goes back to the pool, which rolls it back). Savepoints have a parent.
        if transaction.parent is None:
            self._end(session, "close")

    def _before_flush(self, session: Session, flush_context: Any, instances: Any) -> None:
        if not self._wanted_session(session):
            return
        try:
            from ..snapshot import pending_change
            changes = []
            for op, objects in (("insert", session.new), ("update", session.dirty),
                                ("delete", session.deleted)):
                for obj in list(objects):
                    change = pending_change(op, sqlalchemy.inspect(obj), self.redactor)
                    if change is not None:
                        changes.append(change)
            self._flush_t0[id(session)] = (time.time(), perf_counter(), changes)
        except Exception:
            self.dropped += 1

    def _after_flush(self, session: Session, flush_context: Any) -> None:
        started = self._flush_t0.pop(id(session), None)
        if started is None:
            return
        ts, t0, changes = started
        self._put(("flush", ts, perf_counter() - t0, threading.get_ident(),
                   self._sid(session), changes))

    def _orm_execute(self, state: Any) -> None:
        loaded_from = getattr(state, "lazy_loaded_from", None)
        if loaded_from is None or not self._wanted_session(state.session):
            return
        try:
            path = state.loader_strategy_path
            prop = path[-1] if path is not None and len(path) else None
            relationship = f"{loaded_from.class_.__name__}.{getattr(prop, 'key', '?')}"
        except Exception:
            relationship = f"{loaded_from.class_.__name__}.?"
        from ..snapshot import identity_of
        self._put(("lazy_load", time.time(), threading.get_ident(), self._sid(state.session),
                   relationship, identity_of(loaded_from)))

    def _finding(self, finding_event: list[Any]) -> None:
        # ["finding", ts, engine_id, rule, severity, session, thread, location, message, evidence]
        if self.session_ref is not None:
            session = self.session_ref()
            if session is None or self._sids.get(session) != finding_event[5]:
                return
        self._put(("finding", finding_event))

    # -- writing (writer thread) ------------------------------------------------------------

    def _write_loop(self) -> None:
        while not self._stop.wait(WRITE_EVERY):
            self._write_pending()

    def _write_pending(self) -> None:
        queue = self._queue
        out = self._file
        while queue:
            item = queue.popleft()
            try:
                for record in self._render(item):
                    out.write(jsonl.line(record))
                    self.events += 1
            except Exception:
                self.dropped += 1
        out.flush()

    def _engine_id(self, engine: Any) -> str:
        key = id(engine)
        known = self._engines.get(key)
        if known is None:
            known = self._engines[key] = f"e{len(self._engines) + 1}"
            self._pending_defs.append({"type": "engine", "id": known,
                                       "name": _engine_name(engine),
                                       "dialect": engine.dialect.name,
                                       "driver": engine.driver,
                                       "url": engine.url.render_as_string(hide_password=True)})
        return known

    def _conn_no(self, record_id: int, engine_id: str) -> int:
        number = self._conns.get(record_id)
        if number is None:
            number = self._conns[record_id] = len(self._conns) + 1
            self._pending_defs.append({"type": "connection", "id": number,
                                       "engine": engine_id})
        return number

    _pending_defs: list[dict[str, Any]]

    def _render(self, item: tuple) -> list[dict[str, Any]]:
        self._pending_defs = []
        kind = item[0]
        if kind == "statement":
            (_, ts, dur, tid, engine, record_id, sid, statement, executemany, rows, params,
             error) = item
            engine_id = self._engine_id(engine)
            record: dict[str, Any] = {
                "type": "statement", "ts": ts, "dur": dur, "tid": tid,
                "thread": _thread_name(tid), "engine": engine_id,
                "conn": self._conn_no(record_id, engine_id), "session": sid,
                "sql": statement[:MAX_STRING], "executemany": executemany, "rows": rows}
            if params is not None:
                record["params"] = params
            if error is not None:
                record["error"] = error
        elif kind in ("checkout", "checkin"):
            _, ts, tid, engine, record_id, seconds, checked_out = item
            engine_id = self._engine_id(engine)
            record = {"type": kind, "ts": ts, "tid": tid, "thread": _thread_name(tid),
                      "engine": engine_id, "conn": self._conn_no(record_id, engine_id),
                      "checked_out": checked_out}
            if seconds is not None:
                record["wait" if kind == "checkout" else "held"] = seconds
        elif kind == "transaction":
            _, ts, tid, sid, phase = item
            record = {"type": "transaction", "ts": ts, "tid": tid,
                      "thread": _thread_name(tid), "session": sid, "phase": phase}
        elif kind == "flush":
            _, ts, dur, tid, sid, changes = item
            record = {"type": "flush", "ts": ts, "dur": dur, "tid": tid,
                      "thread": _thread_name(tid), "session": sid, "changes": changes}
        elif kind == "lazy_load":
            _, ts, tid, sid, relationship, identity = item
            record = {"type": "lazy_load", "ts": ts, "tid": tid, "thread": _thread_name(tid),
                      "session": sid, "relationship": relationship, "identity": identity}
        else:  # finding
            (_, ts, engine_id, rule, severity, sid, thread, location, message,
             evidence) = item[1]
            record = {"type": "finding", "ts": ts, "rule": rule, "severity": severity,
                      "session": sid, "thread": thread, "location": location,
                      "message": message, "evidence": evidence}
        return [*self._pending_defs, record]


def record(name: str, path: str | os.PathLike[str] | None = None, *,
           engine: Engine | str | None = None, session: Session | None = None,
           capture_parameters: bool | None = None) -> Trace:
    """Record what SQLAlchemy does into a JSON Lines trace file::

        with tracker.record("checkout-flow") as trace:
            ...
        print(trace.path)

    ``path``: the file (default ``retort-traces/<name>-<time>-<pid>.jsonl``);
    ``engine`` (an Engine or its name) or ``session`` narrow the scope;
    ``capture_parameters`` defaults to the agent's setting (off without an agent).
    Works without ``tracker.instrument()`` and without a dashboard; findings are
    included when the agent runs. Use as a context manager, or call ``start()`` and
    ``stop()``."""
    return Trace(name, path, engine=engine, session=session,
                 capture_parameters=capture_parameters)


def _engines_alive() -> list[Engine]:
    import gc
    return [obj for obj in gc.get_objects() if issubclass(type(obj), Engine)]


def _checked_out(pool: Any, returning: bool = False) -> int | None:
    """Connections checked out of ``pool``; at a checkin the pool has not taken the
    connection back yet (``returning``): it is not counted."""
    try:
        count = pool.checkedout() if pool is not None else None
    except Exception:
        return None
    if count is not None and returning:
        count = max(0, count - 1)
    return count


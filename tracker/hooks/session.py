"""Session listeners: which sessions are live, their transactions, flushes, commits
and rollbacks, the connection each holds — and the data-loss traps.

Listeners are registered on the ``Session`` class, so every session (plain,
``sessionmaker``, ``scoped_session``, the sync session inside an ``AsyncSession``) is
covered. A session is registered at its first transaction (``after_begin``, when it
takes a connection): sessions that never touch the database cost nothing.

Some things have no event, so the class gets small additions while the agent is
attached (removed by ``uninstrument()``): ``Session.close`` is wrapped, to see what a
session still had unflushed when it was closed; ``Session.__del__`` is defined, to
see the same for a session garbage collected without being closed; and
``Session.merge`` is wrapped, to know that a detached object modified after its session
closed was merged into another one (so its change is written after all).

Commits and transaction ends, which have events, are seen by a wrapper of
``SessionTransaction.close`` instead (see TRANSACTION_CLOSE_WRAPPER), and a flush's
start by the statement hook (its first write), for what the listeners cost; the
``after_begin``, ``after_flush_postexec`` and ``after_rollback`` listeners remain.
"""

from __future__ import annotations

import asyncio
import threading
from asyncio import _get_running_loop  # a C function: cheap in a thread with no loop
import time
import weakref
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm import session as _sa_session
from sqlalchemy.orm import strategies as _strategies

from ..locations import NONE, OFF, describe
from ..protocol import MAX_LIFECYCLE
from ..rules import Finding
from ..sessions import (CLOSED, FLUSHING, IDLE, OWN_REFS, TRANSACTION, SessionEntry,
                        drop_conns)
from ..snapshot import identity_of, same_value
from . import ListenerSet

if TYPE_CHECKING:
    from ..detectors import Detectors
    from ..locations import LocationFinder
    from ..recorder import Recorder
    from ..registry import Registry
    from ..sessions import SessionRegistry

_get_ident = threading.get_ident
_wall = time.time
_ref = weakref.ref

FINDING = "finding"
#: Objects named in a lost-changes finding's evidence.
MAX_EVIDENCE = 10

_PATCHED = "__retort_patched__"
_COMMITTED: Any = getattr(getattr(_sa_session, "SessionTransactionState", None), "COMMITTED",
                          None)


def _names(function: Any) -> tuple[str, ...]:
    """The global and attribute names ``function``'s own body uses (under a decorator)."""
    code = getattr(getattr(function, "__wrapped__", function), "__code__", None)
    return code.co_names if code is not None else ()


#: ``SessionTransaction.close()`` ends every transaction and, last, dispatches
#: ``after_transaction_end``; ``commit()`` sets ``_state`` to COMMITTED, dispatches
#: ``after_commit`` and then closes (SQLAlchemy 2.0 and 2.1). A wrapper of ``close``
#: therefore sees both, at a Python call's cost instead of two event dispatches: ~2,000
#: instructions less per session that commits after a flush (bench orm_insert), the
#: same as the listener for one that only closes. Otherwise the two listeners do it.
TRANSACTION_CLOSE_WRAPPER = (
    _COMMITTED is not None
    and "after_transaction_end" in _names(SessionTransaction.__dict__.get("close"))
    and {"after_commit", "COMMITTED", "close"} <= set(
        _names(SessionTransaction.__dict__.get("commit"))))
# the lazy loader strategy: LazyLoader in SQLAlchemy 2.0, _LazyLoader in 2.1
LazyLoader: Any = (getattr(_strategies, "LazyLoader", None)
                   or getattr(_strategies, "_LazyLoader", None))
_NOTHING: frozenset[int] = frozenset()
#: SessionEntry.log's bound on an unread lifecycle
_LIFECYCLE_BOUND = 4 * MAX_LIFECYCLE


class _Gone:
    pass


def _current_task() -> str | None:
    """The running asyncio task's name, if this thread runs an event loop."""
    if _get_running_loop() is None:
        return None
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return task.get_name() if task is not None else None


class SessionHooks:
    """Class-level ``Session`` listeners; each one only updates its session's entry."""

    def __init__(self, registry: "Registry", sessions: "SessionRegistry",
                 recorder: "Recorder", finder: "LocationFinder",
                 capture_locations: str, detectors: "Detectors") -> None:
        self.registry = registry
        self.detectors = detectors
        self._original_lazyload: Callable[..., Any] | None = None
        self.sessions = sessions
        # the same dicts and counter for the registries' life
        self._by_id = sessions.by_id
        self._by_conn = sessions.by_conn
        self._numbers = sessions.numbers
        #: (weak reference to the engine most sessions use, its entry): compared by
        #: identity, it spares an id() and a dict lookup per transaction
        self._engine_cache: tuple[Any, Any] = (_ref(_Gone()), None)
        self._engines = registry.engines
        self.finder = finder
        self.capture_locations = capture_locations
        self.recorder = recorder
        self._original_close: Callable[..., Any] | None = None
        self._original_merge: Callable[..., Any] | None = None
        self._original_transaction_close: Callable[..., Any] | None = None

    def bind(self, recorder: "Recorder") -> None:
        self.recorder = recorder

    def install(self, listeners: ListenerSet) -> None:
        listeners.listen(Session, "after_begin", self._after_begin)
        listeners.listen(Session, "after_rollback", self._after_rollback)
        listeners.listen(Session, "after_flush_postexec", self._after_flush_postexec)
        # (no before_flush listener: it would make every flush look its dirty objects
        # up twice; the statement hook marks a session "flushing" at its first write)
        self._patch()
        if not self._patch_transaction_close():
            listeners.listen(Session, "after_transaction_end", self._after_transaction_end)
            listeners.listen(Session, "after_commit", self._after_commit)

    def uninstall(self) -> None:
        if Session.__dict__.get(_PATCHED):
            if self._original_close is not None:
                Session.close = self._original_close  # type: ignore[method-assign]
            if self._original_merge is not None:
                Session.merge = self._original_merge  # type: ignore[method-assign]
            try:
                del Session.__del__  # type: ignore[attr-defined]
            except AttributeError:
                pass
            del Session.__retort_patched__  # type: ignore[attr-defined]
            if self._original_lazyload is not None:
                LazyLoader._emit_lazyload = self._original_lazyload  # type: ignore[method-assign]
        if self._original_transaction_close is not None:
            SessionTransaction.close = self._original_transaction_close  # type: ignore[method-assign]
            if _PATCHED in SessionTransaction.__dict__:
                delattr(SessionTransaction, _PATCHED)
        self._original_close = self._original_merge = self._original_lazyload = None
        self._original_transaction_close = None

    def _patch_transaction_close(self) -> bool:
        """Wrap ``SessionTransaction.close`` (see TRANSACTION_CLOSE_WRAPPER); False if
        the listeners must do its work."""
        if not TRANSACTION_CLOSE_WRAPPER or SessionTransaction.__dict__.get(_PATCHED):
            return False
        original = SessionTransaction.close
        ended = self._ended
        hooks = self
        committed_state = _COMMITTED

        def close(transaction: Any, invalidate: bool = False) -> None:
            # after a commit, and only then, close() finds the transaction COMMITTED
            try:
                committed = transaction._state is committed_state
            except Exception:  # nothing the agent reads may raise into the application
                committed = False
            try:
                original(transaction, invalidate)
            except BaseException:
                if committed:  # after_commit had been dispatched; the end was not
                    try:
                        ended(transaction.session, True, False)
                    except Exception as exc:
                        hooks.recorder.count_error("session.after_commit", exc)
                raise
            try:
                root = transaction._parent is None
                if committed or root:
                    ended(transaction.session, committed, root)
                # else a flush's subtransaction, or a savepoint rolled back: nothing to do
            except Exception as exc:
                hooks.recorder.count_error("session.after_transaction_end", exc)

        close.__wrapped__ = original  # type: ignore[attr-defined]
        close.__doc__ = original.__doc__
        self._original_transaction_close = original
        SessionTransaction.close = close  # type: ignore[method-assign]
        setattr(SessionTransaction, _PATCHED, True)
        return True

    def _patch(self) -> None:
        if Session.__dict__.get(_PATCHED) or "__del__" in Session.__dict__:
            return  # another agent instance, or SQLAlchemy grew a __del__: leave it
        original = Session.close
        hooks = self
        by_id = self.sessions.by_id  # the same dict and deque for the registry's life
        closed_maps = self.sessions.closed_maps
        clock = time.time

        def close(session: Session) -> None:
            # on_close() written out for a session holding nothing unflushed
            try:
                identity_map = session.identity_map
                if session._new or session._deleted or identity_map._modified:
                    hooks.on_close(session)
                else:
                    entry = by_id.get(session.hash_key)
                    if entry is not None:
                        if identity_map._dict:
                            closed_maps.append((entry, identity_map, _NOTHING))
                        now = clock()
                        entry.state = CLOSED
                        entry.ended = now
                        entry.end = "closed"
                        lifecycle = entry.lifecycle
                        lifecycle.append((now, "close"))
                        if len(lifecycle) > _LIFECYCLE_BOUND:  # bounded if nobody reads it
                            del lifecycle[:-MAX_LIFECYCLE]
            except Exception as exc:  # never let the agent fail a close
                hooks.recorder.count_error("session.close", exc)
            return original(session)

        def __del__(session: Session) -> None:
            # Most sessions die holding nothing unflushed: three truth tests, and the
            # entry is dropped at once (kept until the worker's next round, the entries
            # of short sessions would outlive two garbage collections and make the
            # full collections come much more often); one the dashboard was shown is
            # queued for the worker to report it ended.
            try:
                if session._new or session._deleted or session.identity_map._modified:
                    hooks.on_collected(session)
                    return
                entry = by_id.pop(session.hash_key, None)
                if entry is not None:
                    if entry.conn is not None:
                        drop_conns(hooks.sessions, entry)
                    if entry.sent is not None or entry.noteworthy:
                        hooks.sessions.gone(entry)
            except Exception:
                pass  # at interpreter exit modules may be half torn down

        original_merge = Session.merge

        def merge(session: Session, instance: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                hooks.sessions.merged.add(instance._sa_instance_state)
            except Exception:
                pass  # not a mapped object: SQLAlchemy raises its own error below
            return original_merge(session, instance, *args, **kwargs)

        close.__wrapped__ = original  # type: ignore[attr-defined]
        close.__doc__ = original.__doc__
        merge.__wrapped__ = original_merge  # type: ignore[attr-defined]
        merge.__doc__ = original_merge.__doc__
        self._original_close = original
        self._original_merge = original_merge
        Session.close = close  # type: ignore[method-assign]
        Session.merge = merge  # type: ignore[method-assign]
        Session.__del__ = __del__  # type: ignore[attr-defined]
        Session.__retort_patched__ = True  # type: ignore[attr-defined]
        self._patch_lazy_loads()

    def _patch_lazy_loads(self) -> None:
        """Wrap the lazy loader's SQL path (private, present in SQLAlchemy 2.0 and
        2.1): a lazy load answered from the identity map never gets there, so only
        loads that cost a SELECT are counted. Without it, N+1 detection is off."""
        original = LazyLoader.__dict__.get("_emit_lazyload") if LazyLoader else None
        if original is None:
            return
        hooks = self

        def _emit_lazyload(loader: Any, session: Session, state: Any, *args: Any,
                           **kwargs: Any) -> Any:
            entry = None
            try:
                entry = hooks.on_lazy_load(loader, session, state)
            except Exception as exc:
                hooks.recorder.count_error("session.lazy_load", exc)
            if entry is None:
                return original(loader, session, state, *args, **kwargs)
            outer, entry.in_lazy = entry.in_lazy, str(loader.parent_property)
            try:
                return original(loader, session, state, *args, **kwargs)
            finally:
                entry.in_lazy = outer

        _emit_lazyload.__wrapped__ = original  # type: ignore[attr-defined]
        self._original_lazyload = original
        LazyLoader._emit_lazyload = _emit_lazyload  # type: ignore[method-assign]

    def on_lazy_load(self, loader: Any, session: Session, state: Any) -> SessionEntry:
        entry = self._entry(session)
        engine_id = entry.engines[-1] if entry.engines else ""
        self.detectors.on_lazy_load(entry, engine_id, loader.parent_property, state)
        return entry

    # -- listeners -------------------------------------------------------------------

    def _entry(self, session: Session) -> SessionEntry:
        # the task is looked up only for a session seen the first time
        entry = self._by_id.get(session.hash_key)
        if entry is None:
            task = _current_task() if _get_running_loop() is not None else None
            entry = self.sessions.entry_for(session, _get_ident(), task)
        return entry

    def _known(self, session: Session) -> SessionEntry | None:
        return self._by_id.get(session.hash_key)

    def _after_begin(self, session: Session, transaction: Any, connection: Any) -> None:
        # once per transaction of every session: no helper calls; a session's first
        # transaction builds its entry here, in one go
        try:
            key = session.hash_key
            entry = self._by_id.get(key)
            engine = connection.engine
            ref, engine_entry = self._engine_cache
            cached = ref()
            if cached is not engine:
                engine_entry = (self._engines.get(id(engine))
                                or self.registry.engine_entry(engine))
                if cached is None:  # the first engine seen (or it is gone)
                    self._engine_cache = (_ref(engine), engine_entry)
            conn_id = id(connection)
            try:
                record_id = id(connection._dbapi_connection._connection_record)
            except AttributeError:
                record_id = id(None)
            now = _wall()
            if entry is None:
                entry = SessionEntry()
                entry.number = next(self._numbers)
                entry.key = key
                if OWN_REFS:
                    entry.ref = _ref(session)  # type: ignore[method-assign]
                entry.kind = type(session).__name__
                entry.created = entry.txn_since = now
                entry.thread_id = _get_ident()
                if _get_running_loop() is not None:  # the task only where a loop runs
                    task = _current_task()
                    if task is not None:
                        entry.task, entry.is_async = task, True
                entry.conn = (conn_id, engine_entry.id, record_id)
                entry.lifecycle = [(now, "begin")]
                entry.state = TRANSACTION
                entry.engines = engine_entry.ids
                entry.last_t = perf_counter()
                self._by_id[key] = entry
                self._by_conn[conn_id] = entry
                return
            state = entry.state
            if state is IDLE or state is CLOSED or entry.txn_since is None:
                # (a flush's first write has set FLUSHING already: a flush writing
                # through a second engine begins a transaction there)
                if state is not FLUSHING:
                    entry.state = TRANSACTION
                entry.txn_since = now
                entry.ended = entry.end = None
                entry.thread_id = _get_ident()
                entry.txn_writes = 0
                # unchecked: every transaction's end logs through log(), which bounds it
                entry.lifecycle.append((now, "begin"))
            engine_id = engine_entry.id
            entry.add_conn(conn_id, engine_id, record_id)
            if engine_id not in entry.engines:
                entry.engines = (*entry.engines, engine_id)
            entry.last_t = perf_counter()
            self._by_conn[conn_id] = entry
        except Exception as exc:
            self.recorder.count_error("session.after_begin", exc)

    def _after_transaction_end(self, session: Session, transaction: Any) -> None:
        try:
            try:
                # what the SessionTransaction.parent property returns (2.0 and 2.1)
                parent = transaction._parent
            except AttributeError:
                parent = transaction.parent
        except Exception as exc:
            self.recorder.count_error("session.after_transaction_end", exc)
            return
        if parent is None:  # else a savepoint or a subtransaction ended
            self._ended(session, False, True)

    def _after_commit(self, session: Session) -> None:
        self._ended(session, True, False)

    def _ended(self, session: Session, committed: bool, root_closed: bool) -> None:
        """A transaction or savepoint was committed (``committed``: after_commit) and/or
        the session's transaction closed (``root_closed``: after_transaction_end of a
        transaction without a parent), in that order."""
        try:
            entry = self._by_id.get(session.hash_key)
            if entry is None:
                return
            if committed:  # a transaction or a savepoint
                entry.commits += 1
                lifecycle = entry.lifecycle  # entry.log("commit") written out
                lifecycle.append((_wall(), "commit"))
                if len(lifecycle) > _LIFECYCLE_BOUND:
                    del lifecycle[:-MAX_LIFECYCLE]
            if not root_closed:
                return  # a savepoint ended: the session's transaction goes on
            conn = entry.conn
            if conn is not None:
                if entry.more_conns:
                    drop_conns(self.sessions, entry)
                else:
                    entry.conn = None
                    by_conn = self._by_conn
                    if by_conn.get(conn[0]) is entry:
                        del by_conn[conn[0]]
            writes = entry.txn_writes
            if writes or entry.state != CLOSED:
                lifecycle = entry.lifecycle
                explicit = bool(lifecycle) and lifecycle[-1][1] in ("commit", "rollback")
                if writes:
                    if not explicit:
                        self._report_not_committed(entry)
                    entry.txn_writes = 0
                if entry.state != CLOSED:
                    entry.state = IDLE
                    if not explicit:
                        entry.log("end")  # ended without commit or rollback
            entry.txn_since = None
        except Exception as exc:
            self.recorder.count_error(
                "session.after_transaction_end" if root_closed else "session.after_commit",
                exc)

    def _after_rollback(self, session: Session) -> None:
        try:
            entry = self._by_id.get(session.hash_key)
            if entry is not None:
                entry.rollbacks += 1
                entry.log("rollback")
        except Exception as exc:
            self.recorder.count_error("session.after_rollback", exc)

    def _after_flush_postexec(self, session: Session, flush_context: Any) -> None:
        try:
            entry = self._by_id.get(session.hash_key)
            if entry is None:
                return
            entry.flushes += 1
            entry.state = TRANSACTION if entry.conn is not None else IDLE
            entry.last_t = perf_counter()
            lifecycle = entry.lifecycle  # entry.log("flush") written out
            lifecycle.append((_wall(), "flush"))
            if len(lifecycle) > _LIFECYCLE_BOUND:
                del lifecycle[:-MAX_LIFECYCLE]
        except Exception as exc:
            self.recorder.count_error("session.after_flush_postexec", exc)

    def _report_not_committed(self, entry: SessionEntry) -> None:
        writes = entry.txn_writes
        self.detectors.report(Finding(
            "transaction-not-committed",
            f"session {entry.sid} ended its transaction without commit after {writes} "
            f"INSERT/UPDATE/DELETE statement{'s' if writes != 1 else ''}: the database "
            f"rolled them back",
            {"writes": writes, "flushes": entry.flushes},
            engine=entry.engines[-1] if entry.engines else "", session=entry.sid))

    # -- close and garbage collection --------------------------------------------------

    def on_close(self, session: Session) -> None:
        """Before ``Session.close()`` runs: report unflushed changes it will discard,
        and hand the objects it detaches to the worker's watch."""
        identity_map = session.identity_map
        modified = identity_map._modified
        lost = (_unflushed(session) if session._new or session._deleted or modified
                else None)
        sessions = self.sessions
        entry = self._by_id.get(session.hash_key)
        if lost is not None:
            if entry is None:
                entry = self._entry(session)
            self._report_lost(entry, lost, "closed")
        if entry is None:
            return
        if identity_map._dict:
            already = frozenset(map(id, modified)) if modified else _NOTHING
            sessions.closed_maps.append((entry, identity_map, already))
        now = time.time()
        entry.state = CLOSED
        entry.txn_since = None
        entry.ended, entry.end = now, "closed"
        lifecycle = entry.lifecycle
        lifecycle.append((now, "close"))
        if len(lifecycle) > _LIFECYCLE_BOUND:  # bounded even if nobody reads it
            del lifecycle[:-MAX_LIFECYCLE]

    def on_collected(self, session: Session) -> None:
        """``Session.__del__``: the session is being garbage collected."""
        lost = _unflushed(session)
        key = session.hash_key
        by_id = self._by_id
        entry = by_id.get(key)
        if lost is not None:
            if entry is None:
                entry = self.sessions.entry_for(session, _get_ident(), None)
            self._report_lost(entry, lost, "collected")
        if entry is None:
            return
        if by_id.get(key) is entry:
            by_id.pop(key, None)
        self.sessions.gone(entry)

    def _report_lost(self, entry: SessionEntry,
                     lost: tuple[int, int, int, list[str]], how: str) -> None:
        new, dirty, deleted, objects = lost
        entry.noteworthy = True
        parts = [f"{count} {label}" for count, label in
                 ((new, "new"), (dirty, "modified"), (deleted, "deleted")) if count]
        verb = "closed" if how == "closed" else "garbage collected without being closed"
        message = (f"session {entry.sid} was {verb} with unflushed changes "
                   f"({', '.join(parts)}): they were never written to the database")
        stack = self.finder.capture() if self.capture_locations != OFF else NONE
        location = describe(stack[:1])[0] if stack else ""
        engine_id = entry.engines[-1] if entry.engines else ""
        rule = "lost-changes-on-close" if how == "closed" else "lost-changes-on-gc"
        evidence = {"new": new, "modified": dirty, "deleted": deleted, "objects": objects,
                    "stack": describe(stack)}
        self.recorder.submit((FINDING, [
            "finding", time.time(), engine_id, rule, "error", entry.sid,
            threading.current_thread().name, location, message, evidence]))


def _unflushed(session: Session) -> tuple[int, int, int, list[str]] | None:
    """(new, modified, deleted, a few objects named) if the session holds changes that
    a flush would write; None if it holds none (the usual case: three len() calls)."""
    new = session._new
    deleted = session._deleted
    identity_map = session.identity_map
    modified = identity_map._modified
    if not (new or deleted or modified):
        return None
    dirty = [state for state in list(modified) if _really_modified(state)]
    if not (new or deleted or dirty):
        return None
    objects: list[str] = []
    for state in list(new)[:MAX_EVIDENCE]:
        objects.append(f"{state.class_.__name__} (new)")
    for state in dirty[:MAX_EVIDENCE - len(objects)]:
        attrs = ", ".join(sorted(state.committed_state)[:5])
        objects.append(f"{state.class_.__name__}#{identity_of(state)} ({attrs})")
    for state in list(deleted)[:MAX_EVIDENCE - len(objects)]:
        objects.append(f"{state.class_.__name__}#{identity_of(state)} (deleted)")
    return len(new), len(dirty), len(deleted), objects


def _really_modified(state: Any) -> bool:
    """Flagged modified with at least one attribute whose value differs."""
    current = state.dict
    return any(not same_value(old, current.get(key, old))
               for key, old in list(state.committed_state.items()))

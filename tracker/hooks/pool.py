"""Pool hooks: connects, checkouts, checkins, invalidations — and who holds what.

Checkouts and checkins are seen by :func:`wrap_connect`, which shadows the public
``Pool.connect()`` and the private ``Pool._return_conn()`` (called by every checkin,
right after the ``checkin`` event) on each pool instance the agent discovers, removed
on uninstrument. SQLAlchemy has no event before a checkout starts and raises the
"QueuePool limit … reached" ``TimeoutError`` without any event, so the wrapper is what
times waits, lists waiting threads and counts timeouts; it also records the checkout
itself, which spares SQLAlchemy's ``checkout`` dispatch (and the retry loop it runs
when any checkout listener exists) on every checkout, and the checkin wrapper spares
the ``checkin`` dispatch.

The rarer events are listeners on the ``Pool`` class (``connect``, ``invalidate``,
``soft_invalidate``, ``close``, ``detach``), so every pool is covered. A pool created
after ``instrument()`` is discovered by its first DBAPI connection (the ``connect``
event, inside its first checkout): that checkout, which runs before the pool is
wrapped, is recorded by the ``connect`` listener. (Should ``Pool._return_conn`` ever
disappear, checkins fall back to a ``checkin`` listener.)
"""

from __future__ import annotations

import threading
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool, SingletonThreadPool
from sqlalchemy.pool import base as _pool_base

from ..locations import ALWAYS, NONE, OFF, PRESSURE
from ..tally import EVENTS_CAP
from . import ListenerSet

if TYPE_CHECKING:
    from ..locations import LocationFinder
    from ..recorder import Recorder
    from ..registry import PoolEntry, Registry

_get_ident = threading.get_ident
_current_thread = threading.current_thread

# Event tuples handed to the worker (first item is the kind).
CONNECT = "connect"
CHECKOUT = "checkout"
CHECKIN = "checkin"
INVALIDATE = "invalidate"
SOFT_INVALIDATE = "soft_invalidate"
CLOSE = "close"
DETACH = "detach"
WAIT = "wait"  # a timed pool.connect() that returned: a checkout and its wait
TIMEOUT = "timeout"

_WRAPPED = "__retort_wrapped__"
#: Checkins are recorded by a wrapper of ``Pool._return_conn`` (private, in SQLAlchemy
#: 2.0 and 2.1), not by a ``checkin`` listener.
CHECKIN_BY_WRAPPER = callable(getattr(Pool, "_return_conn", None))


def _calls_only(method: Any, names: tuple[str, ...]) -> bool:
    """True if ``method``'s body only reads ``names`` (one call: ``Pool.connect`` is
    ``return _ConnectionFairy._checkout(self)``, ``Pool._return_conn`` is
    ``self._do_return_conn(record)`` in SQLAlchemy 2.0 and 2.1)."""
    code = getattr(method, "__code__", None)
    return code is not None and code.co_names == names


#: ``_ConnectionFairy._checkout``, which ``Pool.connect()`` calls, if it does only that:
#: the wrapper then calls it itself (a Python frame less per checkout)
_CHECKOUT: Any = (getattr(getattr(_pool_base, "_ConnectionFairy", None), "_checkout", None)
                  if _calls_only(Pool.connect, ("_ConnectionFairy", "_checkout")) else None)
#: likewise ``Pool._return_conn()`` calls ``self._do_return_conn(record)`` only
_RETURN_DIRECT = _calls_only(getattr(Pool, "_return_conn", None), ("_do_return_conn",))


def pool_of_record(record: Any) -> Pool | None:
    """The pool a connection record belongs to (SQLAlchemy keeps it private)."""
    return getattr(record, "_ConnectionRecord__pool", None)


class PoolHooks:
    """Bound-method listeners on ``Pool``; each one only records."""

    def __init__(self, registry: "Registry", recorder: "Recorder",
                 finder: "LocationFinder", capture_locations: str) -> None:
        self.registry = registry
        self.finder = finder
        #: "always", "pressure" (walk the stack only when half the pool is in use:
        #: the walk is most of the agent's cost per checkout) or "off"; an engine's
        #: ``locations`` switch overrides it for that engine's pools
        self.capture_locations = capture_locations
        self.bind(recorder)

    def bind(self, recorder: "Recorder") -> None:
        """Record into ``recorder`` (a new one after fork). The hot hooks append to its
        deque directly while it has room: a method call less per event."""
        self.recorder = recorder
        self._queue = recorder.queue
        self._room = recorder.maxlen

    def install(self, listeners: ListenerSet) -> None:
        listeners.listen(Pool, "connect", self._connect_evt)
        if not CHECKIN_BY_WRAPPER:
            listeners.listen(Pool, "checkin", self._checkin_evt)
        listeners.listen(Pool, "invalidate", self._invalidate_evt)
        listeners.listen(Pool, "soft_invalidate", self._soft_invalidate_evt)
        listeners.listen(Pool, "close", self._close_evt)
        listeners.listen(Pool, "detach", self._detach_evt)

    def _entry(self, pool: Pool | None) -> "PoolEntry | None":
        if pool is None:
            return None
        entry = self.registry.pools.get(id(pool))
        return entry if entry is not None else self.registry.pool_entry(pool)

    def _mode(self, entry: "PoolEntry") -> str:
        return entry.engine.locations or self.capture_locations

    def _connect_evt(self, dbapi_connection: Any, record: Any) -> None:
        try:
            entry = self._entry(pool_of_record(record))
            if entry is None:
                return
            self.recorder.submit((CONNECT, entry))
            tid = _get_ident()
            if tid not in entry.waiters:
                # a new connection is made inside a checkout; outside the timed
                # pool.connect() (the pool was discovered just now, by this connection)
                # that checkout is recorded here
                holders = entry.holders
                stack = _stack(self._mode(entry), len(holders), entry, self.finder)
                holders[id(record)] = (perf_counter(), tid, stack)
                self.recorder.submit((CHECKOUT, entry))
        except Exception as exc:
            self.recorder.count_error("pool.connect", exc)

    def _checkin_evt(self, dbapi_connection: Any, record: Any) -> None:
        # only without a Pool._return_conn to wrap (see wrap_connect)
        try:
            pool = pool_of_record(record)
            entry = self.registry.pools.get(id(pool)) or self._entry(pool)
            if entry is None:
                return
            holder = entry.holders.pop(id(record), None)
            item = (CHECKIN, entry, perf_counter() - holder[0] if holder is not None else None)
            queue = self._queue
            if len(queue) < self._room:
                queue.append(item)
            else:
                self.recorder.submit(item)
        except Exception as exc:
            self.recorder.count_error("pool.checkin", exc)

    def _invalidate_evt(self, dbapi_connection: Any, record: Any, error: Any) -> None:
        try:
            entry = self._entry(pool_of_record(record))
            if entry is None:
                return
            stack = self.finder.capture() if self._mode(entry) != OFF else NONE
            reason = f"{type(error).__name__}: {error}"[:500] if error is not None else ""
            self.recorder.submit((INVALIDATE, entry, time.time(),
                                  _current_thread().name, stack, reason))
        except Exception as exc:
            self.recorder.count_error("pool.invalidate", exc)

    def _soft_invalidate_evt(self, dbapi_connection: Any, record: Any, error: Any) -> None:
        try:
            entry = self._entry(pool_of_record(record))
            if entry is not None:
                self.recorder.submit((SOFT_INVALIDATE, entry))
        except Exception as exc:
            self.recorder.count_error("pool.soft_invalidate", exc)

    def _close_evt(self, dbapi_connection: Any, record: Any) -> None:
        try:
            entry = self._entry(pool_of_record(record))
            if entry is not None:
                self.recorder.submit((CLOSE, entry))
        except Exception as exc:
            self.recorder.count_error("pool.close", exc)

    def _detach_evt(self, dbapi_connection: Any, record: Any) -> None:
        # a detached connection leaves the pool: it no longer holds a pool slot
        try:
            entry = self._entry(pool_of_record(record))
            if entry is not None:
                entry.holders.pop(id(record), None)
                self.recorder.submit((DETACH, entry))
        except Exception as exc:
            self.recorder.count_error("pool.detach", exc)


def _stack(mode: str, held: int, entry: "PoolEntry", finder: "LocationFinder") -> Any:
    """The checkout's code location, as ``mode`` asks: "pressure" walks the stack only
    when half the pool is already held."""
    if mode == PRESSURE:
        return finder.capture() if held >= entry.pressure_at else NONE
    if mode == ALWAYS:
        return finder.capture()
    return NONE


def wrap_connect(pool: Pool, entry: "PoolEntry", recorder: "Recorder",
                 finder: "LocationFinder", capture_locations: str) -> None:
    """Shadow ``pool.connect`` on this instance to record checkouts, time the wait for
    a connection, list the threads waiting and count checkout timeouts; and
    ``pool._return_conn`` to record checkins."""
    if _WRAPPED in pool.__dict__:
        return
    original: Callable[[], Any] = pool.connect  # bound method of the class
    checkout: Callable[[Pool], Any]
    if (_CHECKOUT is not None and type(pool).connect is Pool.connect
            and "connect" not in pool.__dict__):
        checkout = _CHECKOUT  # what Pool.connect() itself calls
    else:
        def checkout(pool: Pool) -> Any:
            return original()
    waiters = entry.waiters
    holders = entry.holders
    pressure_at = entry.pressure_at
    engine = entry.engine
    # only a SingletonThreadPool hands a checked-out connection out again
    reentrant = isinstance(pool, SingletonThreadPool)
    submit = recorder.submit
    queue, room = recorder.queue, recorder.maxlen
    # the engine's tally lists (tracker/tally.py): never replaced, so kept here
    wait_times, hold_times = engine.tally.waits, engine.tally.holds

    def connect() -> Any:
        tid = _get_ident()
        t0 = perf_counter()
        # a thread that waits long is seen by the worker, which samples its stack
        waiters[tid] = t0
        try:
            fairy = checkout(pool)
        except sa_exc.TimeoutError:
            waiters.pop(tid, None)
            try:
                mode = engine.locations or capture_locations
                stack = finder.capture() if mode != OFF else NONE
                submit((TIMEOUT, entry, time.time(), perf_counter() - t0,
                        _current_thread().name, stack))
            except Exception as exc:  # never let the agent change the error raised
                recorder.count_error("pool.connect.timeout", exc)
            raise
        except BaseException:
            waiters.pop(tid, None)
            raise
        t1 = perf_counter()
        try:
            del waiters[tid]
        except KeyError:  # cleared meanwhile (after a fork)
            pass
        try:
            # _counter > 1: a SingletonThreadPool handing its thread's connection out
            # again (no checkout event either; one checkin when the last one closes)
            if not reentrant or fairy._counter == 1:
                mode = engine.locations or capture_locations
                if mode == PRESSURE:
                    stack = finder.capture() if len(holders) >= pressure_at else NONE
                elif mode == ALWAYS:
                    stack = finder.capture()
                else:
                    stack = NONE
                # the worker turns t1 into wall time and tid into a thread name
                holders[id(fairy._connection_record)] = (t1, tid, stack)
            # the worker counts the wait as the checkout
            if len(wait_times) < EVENTS_CAP:
                wait_times.append(t1 - t0)
            else:
                submit((WAIT, entry, t1 - t0))
        except Exception as exc:
            recorder.count_error("pool.checkout", exc)
        return fairy

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    own = pool.__dict__
    own["connect"] = connect
    if CHECKIN_BY_WRAPPER:
        original_return: Callable[[Any], None] = pool._return_conn
        do_return = original_return
        if (_RETURN_DIRECT and type(pool)._return_conn is Pool._return_conn
                and "_return_conn" not in pool.__dict__):
            # what Pool._return_conn() itself calls: a Python frame less per checkin
            do_return = pool._do_return_conn

        def _return_conn(record: Any) -> None:
            try:
                holder = holders.pop(id(record), None)
                if holder is not None and len(hold_times) < EVENTS_CAP:
                    hold_times.append(perf_counter() - holder[0])
                else:  # a checkout the agent did not see, or the tally is full
                    item = (CHECKIN, entry,
                            perf_counter() - holder[0] if holder is not None else None)
                    if len(queue) < room:
                        queue.append(item)
                    else:
                        submit(item)
            except Exception as exc:
                recorder.count_error("pool.checkin", exc)
            do_return(record)

        _return_conn.__wrapped__ = original_return  # type: ignore[attr-defined]
        own["_return_conn"] = _return_conn
    own[_WRAPPED] = True


def unwrap_connect(pool: Pool) -> None:
    """Undo :func:`wrap_connect` (no-op if the pool was never wrapped)."""
    own = pool.__dict__
    if own.pop(_WRAPPED, None):
        own.pop("connect", None)
        own.pop("_return_conn", None)

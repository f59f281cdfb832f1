"""Pool listeners: connects, checkouts, checkins, invalidations — and who holds what.

Listeners are registered on the ``Pool`` class, so pools created before ``instrument()``
are covered. SQLAlchemy has no event before a checkout starts and raises the "QueuePool
limit … reached" ``TimeoutError`` without any event, so waiting threads, wait times and
checkout timeouts are measured by :func:`wrap_connect`, which shadows the public
``Pool.connect()`` on each pool instance the agent discovers (removed on uninstrument).
"""

from __future__ import annotations

import threading
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import Pool

from ..locations import ALWAYS, NONE, OFF, PRESSURE
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
        #: the walk is most of the agent's cost per checkout) or "off"
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
        listeners.listen(Pool, "checkout", self._checkout_evt)
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

    def _connect_evt(self, dbapi_connection: Any, record: Any) -> None:
        try:
            entry = self._entry(pool_of_record(record))
            if entry is not None:
                self.recorder.submit((CONNECT, entry))
        except Exception as exc:
            self.recorder.count_error("pool.connect", exc)

    def _checkout_evt(self, dbapi_connection: Any, record: Any, fairy: Any) -> None:
        try:
            pool = fairy._pool
            entry = self.registry.pools.get(id(pool)) or self._entry(pool)
            if entry is None:
                return
            tid = _get_ident()
            holders = entry.holders
            mode = self.capture_locations
            if mode == PRESSURE:
                stack = self.finder.capture() if len(holders) >= entry.pressure_at else NONE
            elif mode == ALWAYS:
                stack = self.finder.capture()
            else:
                stack = NONE
            # the worker turns t0 into wall time and tid into a thread name
            holders[id(record)] = (perf_counter(), tid, stack)
            if tid not in entry.waiters:
                # inside a timed pool.connect() the WAIT item counts the checkout:
                # one item per checkout for the worker, not two
                self.recorder.submit((CHECKOUT, entry))
        except Exception as exc:
            self.recorder.count_error("pool.checkout", exc)

    def _checkin_evt(self, dbapi_connection: Any, record: Any) -> None:
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
            stack = self.finder.capture() if self.capture_locations != OFF else NONE
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


def wrap_connect(pool: Pool, entry: "PoolEntry", recorder: "Recorder",
                 finder: "LocationFinder", capture_locations: str) -> None:
    """Shadow ``pool.connect`` on this instance to time the wait for a connection,
    list the threads waiting, and count checkout timeouts."""
    if _WRAPPED in pool.__dict__:
        return
    original: Callable[[], Any] = pool.connect  # bound method of the class
    waiters = entry.waiters
    submit = recorder.submit
    queue, room = recorder.queue, recorder.maxlen

    def connect() -> Any:
        tid = _get_ident()
        t0 = perf_counter()
        # a thread that waits long is seen by the worker, which samples its stack
        waiters[tid] = t0
        try:
            connection = original()
        except sa_exc.TimeoutError:
            waiters.pop(tid, None)
            try:
                stack = finder.capture() if capture_locations != OFF else NONE
                submit((TIMEOUT, entry, time.time(), perf_counter() - t0,
                        _current_thread().name, stack))
            except Exception as exc:  # never let the agent change the error raised
                recorder.count_error("pool.connect.timeout", exc)
            raise
        except BaseException:
            waiters.pop(tid, None)
            raise
        waiters.pop(tid, None)
        item = (WAIT, entry, perf_counter() - t0)
        if len(queue) < room:
            queue.append(item)
        else:
            submit(item)
        return connection

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    pool.__dict__["connect"] = connect
    pool.__dict__[_WRAPPED] = True


def unwrap_connect(pool: Pool) -> None:
    """Undo :func:`wrap_connect` (no-op if the pool was never wrapped)."""
    if pool.__dict__.pop(_WRAPPED, None):
        pool.__dict__.pop("connect", None)

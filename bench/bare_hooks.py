"""Pass-through hooks at the agent's interception points: the floor of its overhead.

The agent sees SQLAlchemy work by being called at a handful of points (docs/agent.md,
"What costs"): per-instance wrappers of ``Pool.connect`` and ``Pool._return_conn``,
per-dialect wrappers of ``do_execute``/``do_executemany``/``do_execute_no_params``, the
``Session`` listeners ``after_begin``, ``after_rollback`` and ``after_flush_postexec``,
and additions to ``Session.close``, ``Session.__del__`` and ``SessionTransaction.close``.

:func:`install` puts hooks at exactly those points that do nothing but pass the call
on. Timing a workload with them against the same workload with nothing installed
measures what being called there costs at all (extra Python frames, SQLAlchemy's
event dispatch, a finalizer per session), before the agent records anything. What
the real agent costs above that floor is its own work, the part a change to the
hooks can shrink. bench/agent_overhead.py runs this as its ``bare`` mode (``--bare``).

Only for benchmarks: nothing here is part of the agent.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import base as _pool_base

_SESSION_EVENTS = ("after_begin", "after_rollback", "after_flush_postexec")
_DIALECT_METHODS = ("do_execute", "do_executemany", "do_execute_no_params")


def _nothing(*args: Any) -> None:
    """A listener that does nothing (SQLAlchemy's dispatch still calls it)."""


class BareHooks:
    """Pass-through hooks on one engine (its pool and dialect) and on the ORM classes,
    removed by :meth:`remove`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.installed = False
        self._originals: dict[str, Any] = {}

    def install(self) -> None:
        """Install every hook (idempotent)."""
        if self.installed:
            return
        self._wrap_pool()
        self._wrap_dialect()
        self._wrap_sessions()
        self.installed = True

    def remove(self) -> None:
        """Remove every hook (idempotent)."""
        if not self.installed:
            return
        own = self.engine.pool.__dict__
        own.pop("connect", None)
        own.pop("_return_conn", None)
        dialect_own = self.engine.dialect.__dict__
        for name in _DIALECT_METHODS:
            dialect_own.pop(name, None)
        for name in _SESSION_EVENTS:
            event.remove(Session, name, _nothing)
        Session.close = self._originals["Session.close"]  # type: ignore[method-assign]
        del Session.__del__  # type: ignore[attr-defined]
        SessionTransaction.close = self._originals["SessionTransaction.close"]  # type: ignore[method-assign]
        self.installed = False

    def _wrap_pool(self) -> None:
        pool = self.engine.pool
        checkout = _pool_base._ConnectionFairy._checkout  # what Pool.connect() calls
        do_return = pool._do_return_conn  # what Pool._return_conn() calls

        def connect() -> Any:
            return checkout(pool)

        def _return_conn(record: Any) -> None:
            do_return(record)

        pool.__dict__["connect"] = connect
        pool.__dict__["_return_conn"] = _return_conn

    def _wrap_dialect(self) -> None:
        dialect = self.engine.dialect
        do_executemany = dialect.do_executemany
        do_execute_no_params = dialect.do_execute_no_params

        def do_execute(cursor: Any, statement: str, parameters: Any,
                       context: Any = None) -> None:
            cursor.execute(statement, parameters)  # DefaultDialect.do_execute's body

        def executemany(cursor: Any, statement: str, parameters: Any,
                        context: Any = None) -> None:
            do_executemany(cursor, statement, parameters, context)

        def execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
            do_execute_no_params(cursor, statement, context)

        own = dialect.__dict__
        own["do_execute"] = do_execute
        own["do_executemany"] = executemany
        own["do_execute_no_params"] = execute_no_params

    def _wrap_sessions(self) -> None:
        for name in _SESSION_EVENTS:
            event.listen(Session, name, _nothing)
        close = self._originals["Session.close"] = Session.close
        transaction_close = self._originals["SessionTransaction.close"] = (
            SessionTransaction.close)

        def session_close(session: Session) -> None:
            return close(session)

        def session_del(session: Session) -> None:
            pass

        def transaction_close_(transaction: Any, invalidate: bool = False) -> None:
            transaction_close(transaction, invalidate)

        Session.close = session_close  # type: ignore[method-assign]
        Session.__del__ = session_del  # type: ignore[attr-defined]
        SessionTransaction.close = transaction_close_  # type: ignore[method-assign]

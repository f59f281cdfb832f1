"""Engine listeners: discover engines as they connect, and time every statement.

Registered on the ``Engine`` class, so engines created before ``instrument()`` are
covered. Per-statement state (the start time) lives on the execution context, as
OpenTelemetry's instrumentation does; ``after_cursor_execute`` is not called for a
failing statement, ``handle_error`` is.
"""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from . import ListenerSet

if TYPE_CHECKING:
    from ..recorder import Recorder
    from ..registry import Registry

STATEMENT = "statement"
STATEMENT_ERROR = "statement_error"
DISPOSE = "dispose"

_T0 = "_retort_t0"


class EngineHooks:
    """Bound-method listeners on ``Engine``; each one only records."""

    def __init__(self, registry: "Registry", recorder: "Recorder") -> None:
        self.registry = registry
        self.recorder = recorder

    def install(self, listeners: ListenerSet) -> None:
        listeners.listen(Engine, "engine_connect", self._engine_connect_evt)
        listeners.listen(Engine, "before_cursor_execute", self._before_cursor_execute_evt)
        listeners.listen(Engine, "after_cursor_execute", self._after_cursor_execute_evt)
        listeners.listen(Engine, "handle_error", self._handle_error_evt)
        listeners.listen(Engine, "engine_disposed", self._engine_disposed_evt)

    def _engine_connect_evt(self, connection: Any) -> None:
        try:
            engine = connection.engine
            if id(engine) not in self.registry.engines:
                self.registry.engine_entry(engine)
            elif id(engine.pool) not in self.registry.pools:  # a new pool after dispose()
                self.registry.engine_entry(engine)
        except Exception as exc:
            self.recorder.count_error("engine.connect", exc)

    def _before_cursor_execute_evt(self, conn: Any, cursor: Any, statement: str,
                                   parameters: Any, context: Any, executemany: bool) -> None:
        if context is not None:
            try:
                setattr(context, _T0, perf_counter())
            except Exception as exc:
                self.recorder.count_error("engine.before_cursor_execute", exc)

    def _after_cursor_execute_evt(self, conn: Any, cursor: Any, statement: str,
                                  parameters: Any, context: Any, executemany: bool) -> None:
        try:
            t0 = getattr(context, _T0, None)
            entry = self.registry.engines.get(id(conn.engine))
            if entry is None:
                entry = self.registry.engine_entry(conn.engine)
            self.recorder.submit((STATEMENT, entry,
                                  perf_counter() - t0 if t0 is not None else 0.0,
                                  statement, executemany))
        except Exception as exc:
            self.recorder.count_error("engine.after_cursor_execute", exc)

    def _handle_error_evt(self, context: Any) -> None:
        try:
            engine = context.engine
            entry = self.registry.engines.get(id(engine)) if engine is not None else None
            if entry is not None:
                self.recorder.submit((STATEMENT_ERROR, entry))
        except Exception as exc:
            self.recorder.count_error("engine.handle_error", exc)

    def _engine_disposed_evt(self, engine: Any) -> None:
        try:
            entry = self.registry.engines.get(id(engine))
            if entry is not None:
                self.recorder.submit((DISPOSE, entry))
        except Exception as exc:
            self.recorder.count_error("engine.disposed", exc)

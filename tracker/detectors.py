"""Runtime rules that need to see every statement or lazy load of a session.

They run in the application's thread, but only on rare branches: the statement hook
keeps one counter per statement text per session, and calls in here only when a
statement repeats, when a count reaches a threshold, or when a statement is slow or
large. A finding is reported once per session and rule (and subject), with the code
location captured at that moment: the hook runs inside the application's call, so the
first frame outside SQLAlchemy and the agent is the line that caused it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from .fingerprint import fingerprint, operation
from .locations import NONE, OFF, describe, thread_name
from .rules import THRESHOLDS, Finding

if TYPE_CHECKING:
    from .locations import LocationFinder
    from .recorder import Recorder
    from .redact import Redactor
    from .sessions import SessionEntry

FINDING = "finding"
SLOW = "slow_statement"
#: Distinct statement texts / parameter sets counted per session (memory bound).
MAX_COUNTED = 1000
#: Longest SQL text put in a finding's evidence.
EVIDENCE_SQL = 500
#: Statement texts whose operation (select, insert…) is remembered (cleared beyond).
MAX_OPERATIONS = 5000


def parameters_key(parameters: Any) -> int:
    """A hash that tells one statement's parameter sets apart: of the tuple itself
    (qmark and format drivers), of a dict's values (named and pyformat drivers: the
    same statement has the same keys; hashing a dict raises, and its repr costs eight
    times as much), or else of the repr (lists, unhashable values)."""
    kind = type(parameters)
    try:
        if kind is tuple:
            return hash(parameters)
        if kind is dict:
            return hash(tuple(parameters.values()))
    except TypeError:  # an unhashable value (a list for an array column…)
        pass
    return hash(repr(parameters))


class Detectors:
    """Thresholds plus the code that turns a crossed threshold into a finding."""

    def __init__(self, thresholds: dict[str, float], recorder: "Recorder",
                 finder: "LocationFinder", capture_locations: str,
                 redactor: "Redactor | None" = None,
                 capture_parameters: bool = False) -> None:
        self.configured = dict(thresholds)
        self.set_thresholds({})
        self.recorder = recorder
        self.finder = finder
        self.locate = capture_locations != OFF
        self.redactor = redactor
        self.capture_parameters = capture_parameters
        #: engine ids whose parameters the dashboard switched off (worker-written)
        self.parameters_off: frozenset[str] = frozenset()
        #: (engine id, session id) -> whether findings are reported; None: all are
        #: (set by the agent when the dashboard switches detectors off somewhere)
        self.enabled: Callable[[str, str], bool] | None = None
        #: functions given each finding event too (traces being recorded)
        self.taps: list[Callable[[list[Any]], None]] = []
        #: statement text -> operation(text): a repeat looks it up instead of parsing
        self._operations: dict[str, str] = {}

    def set_thresholds(self, overrides: dict[str, float]) -> None:
        """Thresholds in force: the defaults, the agent's configuration, then
        ``overrides`` (from the dashboard)."""
        limits = {**THRESHOLDS, **self.configured, **overrides}
        self.n_plus_one = int(limits["n_plus_one"])
        self.repeated = int(limits["repeated_query"])
        self.similar = int(limits["similar_queries"])
        self.row_by_row = int(limits["row_by_row_writes"])
        self.large_rows = int(limits["large_result_rows"])
        self.per_session = int(limits["statements_per_session"])
        self.long_transaction = limits["long_transaction_seconds"]
        self.idle_in_transaction = limits["idle_in_transaction_seconds"]
        self.held = limits["connection_held_seconds"]
        self.slow = limits["slow_statement_seconds"]

    # -- helpers ---------------------------------------------------------------------

    def _stack(self) -> list[Any]:
        return self.finder.capture() if self.locate else NONE

    def report(self, finding: Finding, stack: list[Any] | None = None) -> None:
        """Queue ``finding`` (with the application's stack now, unless given), unless
        the dashboard switched detectors off where it happened."""
        enabled = self.enabled
        if enabled is not None and not enabled(finding.engine or "", finding.session or ""):
            return
        if stack is None:
            stack = self._stack()
        lines = describe(stack)
        if lines and not finding.location:
            finding.location = lines[0]
        if lines:
            finding.evidence.setdefault("stack", lines)
        if not finding.thread:
            finding.thread = threading.current_thread().name
        finding_event = finding.event(time.time())
        self.recorder.submit((FINDING, finding_event))
        for tap in list(self.taps):
            try:
                tap(finding_event)
            except Exception as exc:
                self.recorder.count_error("detectors.tap", exc)

    def parameters_allowed(self, engine_id: str) -> bool:
        """Parameter values of ``engine_id`` may be sent: allowed by the agent's own
        configuration and not switched off from the dashboard."""
        return (self.capture_parameters and self.redactor is not None
                and engine_id not in self.parameters_off)

    def once(self, session: "SessionEntry", key: Any) -> bool:
        """True the first time ``key`` is reported for this session."""
        reported = session.reported
        if reported is None:
            reported = session.reported = set()
        if key in reported:
            return False
        reported.add(key)
        return True

    # -- statements of a session ------------------------------------------------------

    def on_repeat(self, session: "SessionEntry", engine_id: str, statement: str,
                  record: list[Any], parameters: Any, context: Any,
                  executemany: bool = False) -> None:
        """``statement`` ran again in ``session``: ``record`` is [times run so far
        (≥ 2), the parameters of its first run]. ``context`` is its execution context:
        an "insertmanyvalues" batch that SQLAlchemy runs row by row (e.g. RETURNING
        on SQLite) is still one executemany for the application (read only for a
        write: ``context.executemany`` is a property)."""
        seen = record[0]
        if session.in_lazy is not None:
            return  # counted as a lazy load: see on_lazy_load
        operations = self._operations
        op = operations.get(statement)
        if op is None:
            if len(operations) >= MAX_OPERATIONS:
                operations.clear()
            op = operations[statement] = operation(statement)
        if op == "select":
            if seen == self.similar and self.once(session, ("similar", statement)):
                fp = fingerprint(statement)
                self.report(Finding(
                    "similar-queries",
                    f"the same SELECT on {fp.table or 'a table'} ran {seen} times with "
                    f"different parameters in session {session.sid}: fetch the rows "
                    f"in one statement with IN",
                    {"sql": fp.sql[:EVIDENCE_SQL], "fp": fp.fp, "count": seen,
                     "table": fp.table},
                    engine=engine_id, session=session.sid))
            sets = record[2]
            if sets is None:  # its second run: the first run's parameters count too
                sets = record[2] = {}
                self._count_parameters(session, engine_id, statement, record[1], sets)
                record[1] = None
            self._count_parameters(session, engine_id, statement, parameters, sets)
        elif (op in ("insert", "update") and seen == self.row_by_row
              and not (executemany or context.executemany)):
            if self.once(session, ("rows", statement)):
                fp = fingerprint(statement)
                self.report(Finding(
                    "row-by-row-writes",
                    f"{seen} single-row {op.upper()} statements to {fp.table or 'one table'} "
                    f"in session {session.sid}: add the objects and flush once, or "
                    f"execute one statement with a list of parameter sets",
                    {"sql": fp.sql[:EVIDENCE_SQL], "fp": fp.fp, "count": seen,
                     "table": fp.table, "operation": op},
                    engine=engine_id, session=session.sid))

    def _count_parameters(self, session: "SessionEntry", engine_id: str, statement: str,
                          parameters: Any, sets: dict[int, int]) -> None:
        """One more run of ``statement`` with ``parameters``; ``sets`` counts its runs
        by parameter set (in the statement's record of the session)."""
        try:  # most drivers pass a tuple: hashed here, without a call
            key = hash(parameters) if type(parameters) is tuple else parameters_key(
                parameters)
        except TypeError:  # a tuple holding an unhashable value
            key = hash(repr(parameters))
        seen = sets.get(key)
        if seen is None:
            if session.parameter_sets >= MAX_COUNTED:
                return
            session.parameter_sets += 1
            seen = 0
        seen += 1
        sets[key] = seen
        if seen == self.repeated and self.once(session, ("repeated", statement, key)):
            fp = fingerprint(statement)
            evidence = {"sql": fp.sql[:EVIDENCE_SQL], "fp": fp.fp, "count": seen,
                        "table": fp.table}
            if self.parameters_allowed(engine_id):
                evidence["params"] = self.redactor.parameters(parameters, None)
            self.report(Finding(
                "repeated-query",
                f"the same SELECT on {fp.table or 'a table'} with the same parameters ran "
                f"{seen} times in session {session.sid}: run it once and keep the result",
                evidence, engine=engine_id, session=session.sid))

    def on_many_statements(self, session: "SessionEntry", engine_id: str) -> None:
        if self.once(session, "many"):
            self.report(Finding(
                "too-many-statements",
                f"session {session.sid} ran {session.statements} statements: batch the "
                f"repeated ones and load relationships eagerly",
                {"statements": session.statements, "threshold": self.per_session},
                engine=engine_id, session=session.sid))

    def on_other_thread(self, session: "SessionEntry", engine_id: str) -> None:
        if session.thread_id == 0:
            # found already in a transaction when the agent attached: its thread was
            # not seen; the first one that uses it is taken as its own
            session.thread_id = threading.get_ident()
            return
        if self.once(session, "threads"):
            began_in = thread_name(session.thread_id)
            now = threading.current_thread().name
            self.report(Finding(
                "session-multiple-threads",
                f"session {session.sid} began its transaction in thread {began_in} and "
                f"ran a statement in thread {now}: a Session must not be shared by threads",
                {"began_in": began_in, "used_in": now},
                engine=engine_id, session=session.sid))

    # -- one statement ---------------------------------------------------------------

    def on_large(self, engine_id: str, session: "SessionEntry | None", statement: str,
                 rows: int) -> None:
        if operation(statement) != "select":
            return
        sid = session.sid if session is not None else ""
        if session is not None and not self.once(session, ("large", statement)):
            return
        fp = fingerprint(statement)
        limited = " limit " in fp.sql.lower() or " fetch " in fp.sql.lower()
        self.report(Finding(
            "large-result",
            f"a SELECT on {fp.table or 'a table'} returned {rows} rows"
            + ("" if limited else " (no LIMIT)")
            + ": paginate, filter, or stream with yield_per",
            {"sql": fp.sql[:EVIDENCE_SQL], "fp": fp.fp, "rows": rows, "limit": limited,
             "threshold": self.large_rows},
            engine=engine_id, session=sid))

    def on_slow(self, engine_id: str, session: "SessionEntry | None", statement: str,
                seconds: float, rows: int, parameters: Any, context: Any) -> None:
        stack = self._stack()
        lines = describe(stack)
        params = None
        if self.parameters_allowed(engine_id):
            params = self.redactor.parameters(parameters, _bind_names(context))
        fp = fingerprint(statement)
        self.recorder.submit((SLOW, [
            "slow_statement", time.time(), engine_id, fp.fp, fp.sql, seconds, rows,
            session.sid if session is not None else "", threading.current_thread().name,
            lines[0] if lines else "", lines, params]))

    # -- lazy loads ------------------------------------------------------------------

    def on_lazy_load(self, session: "SessionEntry", engine_id: str, prop: Any,
                     state: Any) -> None:
        """A relationship is about to be loaded with SQL for one object."""
        key = str(prop)  # "Order.customer"
        lazy = session.lazy
        if lazy is None:
            lazy = session.lazy = {}
        seen = lazy.get(key, 0) + 1
        if seen > 1 or len(lazy) < MAX_COUNTED:
            lazy[key] = seen
        if seen != self.n_plus_one or not self.once(session, ("lazy", key)):
            return
        parent = prop.parent.class_.__name__
        option = "selectinload" if prop.uselist else "joinedload"
        fix = (f"select({parent}).options({option}({parent}.{prop.key}))")
        self.report(Finding(
            "n-plus-one",
            f"{parent}.{prop.key} was lazily loaded {seen} times in session "
            f"{session.sid}, one SELECT per {parent}: load it with {option}() in the "
            f"query that loads the {parent} objects",
            {"relationship": f"{parent}.{prop.key}", "target": prop.mapper.class_.__name__,
             "collection": bool(prop.uselist), "count": seen, "fix": fix,
             "table": getattr(prop.target, "name", "")},
            engine=engine_id, session=session.sid))


def _bind_names(context: Any) -> Any:
    """The bind parameter names of a positional statement, in order (SQLAlchemy's
    compiled ``positiontup``), so that positional values can be redacted by name."""
    compiled = getattr(context, "compiled", None)
    names = getattr(compiled, "positiontup", None)
    return list(names) if names else None

"""Aggregates owned by the worker thread: per-engine counters and distributions.

Only the worker thread touches these (hooks hand it tuples), so nothing here locks.
"""

from __future__ import annotations

import bisect
from typing import Any

from .fingerprint import Fingerprint, cached
from .locations import describe
from .protocol import HIST_BOUNDS, HIST_BUCKETS

COUNTERS = (
    "connects", "checkouts", "checkins", "invalidations", "soft_invalidations",
    "timeouts", "closes", "detaches", "statements", "statement_errors",
)


def count_into(buckets: list[int], values: list[float], weight: int = 1) -> None:
    """Add ``weight`` to the bucket of each of ``values``: the bucket
    ``bisect_left(HIST_BOUNDS, value)`` (a value equal to a bound goes into the bucket
    that bound closes). Sorts ``values`` in place: then it is one C call per bound
    instead of Python bytecode per value."""
    values.sort()
    below = 0
    for index, bound in enumerate(HIST_BOUNDS):
        upto = bisect.bisect_right(values, bound, below)
        if upto != below:
            buckets[index] += (upto - below) * weight
            below = upto
    if below < len(values):
        buckets[-1] += (len(values) - below) * weight


class Histogram:
    """Cumulative counts of durations (seconds) in the protocol's fixed buckets."""

    __slots__ = ("buckets", "sum", "max")

    def __init__(self) -> None:
        self.buckets = [0] * HIST_BUCKETS
        self.sum = 0.0
        self.max = 0.0

    def add_many(self, values: list[float]) -> None:
        """Add every duration in ``values`` (sorted in place)."""
        if values:
            count_into(self.buckets, values)
            self.sum += sum(values)
            if values[-1] > self.max:
                self.max = values[-1]

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def as_dict(self) -> dict[str, Any]:
        return {"buckets": list(self.buckets), "sum": self.sum, "max": self.max}


#: Fingerprints kept per engine; statements of new shapes beyond it are counted
#: together under OTHER.
MAX_FINGERPRINTS = 500
#: Statement texts whose fingerprint is remembered per engine (cleared beyond it).
MAX_TEXTS = 5000
#: Fingerprints sent per engine per state frame (the rest follow in the next ones).
STATEMENTS_PER_FRAME = 100
OTHER = Fingerprint("other", "(other statements: too many distinct shapes)", "other", "")


class StatementStats:
    """Cumulative figures of one statement shape (fingerprint) on one engine."""

    __slots__ = ("shape", "count", "errors", "total", "max", "rows", "buckets", "stack")

    def __init__(self, shape: Fingerprint) -> None:
        self.shape = shape
        self.count = 0
        self.errors = 0
        self.total = 0.0
        self.max = 0.0
        self.rows = 0
        self.buckets = [0] * HIST_BUCKETS
        self.stack: list[str] = []

    def add_many(self, values: list[float], weight: int = 1) -> None:
        """Count the recorded executions that took ``values`` (sorted in place), each
        standing for ``weight`` of them (sampling)."""
        self.count += len(values) * weight
        self.total += sum(values) * weight
        count_into(self.buckets, values, weight)
        if values[-1] > self.max:
            self.max = values[-1]

    def as_dict(self) -> dict[str, Any]:
        shape = self.shape
        out: dict[str, Any] = {
            "fp": shape.fp, "sql": shape.sql, "op": shape.op, "count": self.count,
            "errors": self.errors, "total": self.total, "max": self.max,
            "rows": self.rows, "buckets": list(self.buckets)}
        if shape.table:
            out["table"] = shape.table
        if self.stack:
            out["location"], out["stack"] = self.stack[0], list(self.stack)
        return out


class EngineStats:
    """Cumulative counters and distributions of one engine since the agent started."""

    __slots__ = ("counters", "statement_time", "wait", "hold", "statements", "by_text",
                 "changed")

    def __init__(self) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.statement_time = 0.0
        self.wait = Histogram()
        self.hold = Histogram()
        #: fingerprint id -> its figures
        self.statements: dict[str, StatementStats] = {}
        #: statement text -> the figures of its fingerprint (a cache)
        self.by_text: dict[str, StatementStats] = {}
        #: fingerprints changed since last sent, in order of change
        self.changed: dict[str, StatementStats] = {}

    def statement(self, text: str) -> StatementStats:
        """The figures ``text`` counts into (created on first sight)."""
        found = self.by_text.get(text)
        if found is not None:
            return found
        shape = cached(text)
        found = self.statements.get(shape.fp)
        if found is None:
            if len(self.statements) >= MAX_FINGERPRINTS:
                shape = OTHER
                found = self.statements.get(OTHER.fp)
            if found is None:
                found = self.statements[shape.fp] = StatementStats(shape)
        if len(self.by_text) >= MAX_TEXTS:
            self.by_text.clear()
        self.by_text[text] = found
        return found

    def take_changed(self) -> list[dict[str, Any]]:
        """Up to STATEMENTS_PER_FRAME changed fingerprints, as protocol dicts."""
        changed = self.changed
        out = []
        for fp in list(changed)[:STATEMENTS_PER_FRAME]:
            out.append(changed.pop(fp).as_dict())
        return out

    def resend_all(self) -> None:
        """A new dashboard connection: every fingerprint is sent again."""
        self.changed = dict(self.statements)

    def counters_dict(self) -> dict[str, Any]:
        return {**self.counters, "statement_time": self.statement_time}


class Batch:
    """What one round of the worker collected for one engine, counted in at its end
    (:meth:`apply`): per item the worker only appends a duration to a list, and the
    counting is done per list, mostly in C."""

    __slots__ = ("stats", "entry", "weight", "waits", "holds", "durations", "rows",
                 "stacks", "deferred")

    def __init__(self, stats: EngineStats, weight: int, entry: Any = None) -> None:
        self.stats = stats
        #: the engine's registry entry (None in tests that need none)
        self.entry = entry
        #: the engine's sampling (the dashboard's "sampling" switch): each recorded
        #: statement stands for ``weight`` of them
        self.weight = weight
        #: a checkout's wait for a connection, each
        self.waits: list[float] = []
        #: a checkin's hold time, each (a checkout the agent saw)
        self.holds: list[float] = []
        #: statement text -> its durations
        self.durations: dict[str, list[float]] = {}
        #: statement text -> rows the driver reported (when it did)
        self.rows: dict[str, int] = {}
        #: (statement text, the stack captured where it was first seen)
        self.stacks: list[tuple[str, Any]] = []
        #: texts seen the first time while the round's stack walks were spent
        #: (tracker/hooks/engine.py DEFERRED): not located yet
        self.deferred: set[str] = set()

    def apply(self) -> None:
        stats, weight = self.stats, self.weight
        counters = stats.counters
        if self.waits:
            counters["checkouts"] += len(self.waits)  # see PoolHooks._checkout_evt
            stats.wait.add_many(self.waits)
        if self.holds:
            counters["checkins"] += len(self.holds)
            stats.hold.add_many(self.holds)
        by_text, changed = stats.by_text, stats.changed
        # the texts of one shape counted together: texts with their values written in
        # are one text per statement, and counting costs per list, not per value
        by_shape: dict[int, tuple[StatementStats, list[float]]] = {}
        for text, values in self.durations.items():
            shape = by_text.get(text) or stats.statement(text)
            known = by_shape.get(id(shape))
            if known is None:
                by_shape[id(shape)] = (shape, values)
            else:
                known[1].extend(values)
        for shape, values in by_shape.values():
            counters["statements"] += len(values) * weight
            stats.statement_time += sum(values) * weight
            shape.add_many(values, weight)
            changed[shape.shape.fp] = shape
        for text, rows in self.rows.items():
            (by_text.get(text) or stats.statement(text)).rows += rows * weight
        for text, stack in self.stacks:
            shape = by_text.get(text) or stats.statement(text)
            if not shape.stack:
                shape.stack = describe(stack)

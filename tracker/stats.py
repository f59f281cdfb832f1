"""Aggregates owned by the worker thread: per-engine counters and distributions.

Only the worker thread touches these (hooks hand it tuples), so nothing here locks.
"""

from __future__ import annotations

import bisect
from typing import Any

from .fingerprint import Fingerprint, cached
from .protocol import HIST_BOUNDS, HIST_BUCKETS

COUNTERS = (
    "connects", "checkouts", "checkins", "invalidations", "soft_invalidations",
    "timeouts", "closes", "detaches", "statements", "statement_errors",
)


class Histogram:
    """Cumulative counts of durations (seconds) in the protocol's fixed buckets."""

    __slots__ = ("buckets", "sum", "max")

    def __init__(self) -> None:
        self.buckets = [0] * HIST_BUCKETS
        self.sum = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(HIST_BOUNDS, seconds)] += 1
        self.sum += seconds
        if seconds > self.max:
            self.max = seconds

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

"""Aggregates owned by the worker thread: per-engine counters and distributions.

Only the worker thread touches these (hooks hand it tuples), so nothing here locks.
"""

from __future__ import annotations

import bisect
from typing import Any

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


class EngineStats:
    """Cumulative counters and distributions of one engine since the agent started."""

    __slots__ = ("counters", "statement_time", "wait", "hold")

    def __init__(self) -> None:
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.statement_time = 0.0
        self.wait = Histogram()
        self.hold = Histogram()

    def counters_dict(self) -> dict[str, Any]:
        return {**self.counters, "statement_time": self.statement_time}

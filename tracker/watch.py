"""Runtime rules about time: what has been open, idle, held or waited for too long.

Checked by the worker at every state frame, from what the hooks keep anyway (session
entries, pool holders and waiters), so they cost the application nothing. Each
finding is reported once per subject (a transaction, a checkout) or, for the pool,
at most once per POOL_REPORT_EVERY seconds per engine.
"""

from __future__ import annotations

import collections
import time
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .locations import describe, thread_name
from .rules import Finding
from .sessions import FLUSHING, TRANSACTION

if TYPE_CHECKING:
    from .agent import Agent
    from .detectors import Detectors
    from .registry import PoolEntry

#: Seconds between two pool-exhausted (or checkout-timeout) findings of one engine.
POOL_REPORT_EVERY = 60.0
#: Holder locations named in a pool finding's evidence.
TOP_HOLDERS = 5


class Watch:
    """Worker-side checks of durations; returns ``finding`` events."""

    def __init__(self, agent: "Agent", detectors: "Detectors") -> None:
        self.agent = agent
        self.detect = detectors
        #: (id(record), t0) of checkouts already reported as held too long
        self.held_reported: set[tuple[int, float]] = set()
        #: (rule, engine id) -> wall time of its last report
        self.pool_reported: dict[tuple[str, str], float] = {}
        #: checkout timeouts per engine since the last timeout finding
        self.timeouts: collections.Counter[str] = collections.Counter()
        #: engine id -> where its last checkout timed out
        self.timeout_at: dict[str, str] = {}

    def check(self, now: float | None = None) -> list[list[Any]]:
        """Findings due now (wall time ``now``)."""
        now = time.time() if now is None else now
        now_perf = perf_counter()
        events: list[list[Any]] = []
        self._sessions(now, now_perf, events)
        live: set[tuple[int, float]] = set()
        for pool_entry in list(self.agent.registry.pools.values()):
            self._holders(pool_entry, now, now_perf, events, live)
            self._waiters(pool_entry, now, events)
        self.held_reported &= live  # forget checkouts that ended
        return events

    # -- sessions --------------------------------------------------------------------

    def _sessions(self, now: float, now_perf: float, events: list[list[Any]]) -> None:
        detect = self.detect
        for entry in list(self.agent.sessions.by_id.values()):
            since = entry.txn_since
            if since is None or entry.state not in (TRANSACTION, FLUSHING):
                continue
            engine_id = entry.engines[-1] if entry.engines else ""
            open_for = now - since
            if open_for >= detect.long_transaction and detect.once(entry, ("long", since)):
                events.append(self._session_finding(entry, engine_id, now, Finding(
                    "long-transaction",
                    f"session {entry.sid}'s transaction has been open for {open_for:.0f} s",
                    {"open_seconds": round(open_for, 1),
                     "threshold": detect.long_transaction,
                     "statements": entry.statements},
                    engine=engine_id, session=entry.sid)))
            last = entry.last_t
            if last is None or not entry.conns:
                continue
            idle_for = now_perf - last
            if idle_for >= detect.idle_in_transaction and detect.once(entry, ("idle", since)):
                events.append(self._session_finding(entry, engine_id, now, Finding(
                    "idle-in-transaction",
                    f"session {entry.sid} has been idle for {idle_for:.0f} s in a "
                    f"transaction, holding a connection",
                    {"idle_seconds": round(idle_for, 1),
                     "threshold": detect.idle_in_transaction,
                     "open_seconds": round(open_for, 1)},
                    engine=engine_id, session=entry.sid)))

    def _session_finding(self, entry: Any, engine_id: str, now: float,
                         finding: Finding) -> list[Any]:
        found = self.agent._session_location(entry)
        if found is not None and found[0]:
            stack, sampled = found
            finding.location = stack[0]
            finding.evidence["stack"] = stack
            finding.evidence["location_is"] = (
                "where its thread is now" if sampled else "where its transaction began")
        finding.thread = thread_name(entry.thread_id)
        return finding.event(now)

    # -- pools -----------------------------------------------------------------------

    def _holders(self, pool_entry: "PoolEntry", now: float, now_perf: float,
                 events: list[list[Any]], live: set[tuple[int, float]]) -> None:
        limit = self.detect.held
        for key, (t0, tid, stack) in list(pool_entry.holders.items()):
            live.add((key, t0))
            held_for = now_perf - t0
            if held_for < limit or (key, t0) in self.held_reported:
                continue
            self.held_reported.add((key, t0))
            lines = _holder_stack(pool_entry, key, t0, stack)
            engine_id = pool_entry.engine.id
            events.append(Finding(
                "connection-held-long",
                f"a connection of engine {pool_entry.engine.name} has been checked out "
                f"for {held_for:.0f} s by thread {thread_name(tid)}",
                {"held_seconds": round(held_for, 1), "threshold": limit, "stack": lines,
                 "location_is": ("where it was checked out" if stack
                                 else "where its thread is now")},
                location=lines[0] if lines else "", engine=engine_id,
                thread=thread_name(tid)).event(now))

    def _waiters(self, pool_entry: "PoolEntry", now: float,
                 events: list[list[Any]]) -> None:
        waiting = len(pool_entry.waiters)
        engine = pool_entry.engine
        timeouts = self.timeouts.pop(engine.id, 0)
        if timeouts:
            rule = "pool-checkout-timeout"
            message = (f"{timeouts} checkout{'s' if timeouts != 1 else ''} of engine "
                       f"{engine.name} timed out waiting for a connection (pool exhausted)")
        elif waiting:
            rule = "pool-exhausted"
            message = (f"{waiting} thread{'s' if waiting != 1 else ''} waited for a "
                       f"connection of engine {engine.name}: every connection was in use")
        else:
            return
        last = self.pool_reported.get((rule, engine.id))
        if last is not None and now - last < POOL_REPORT_EVERY:
            if timeouts:
                self.timeouts[engine.id] += timeouts  # reported with the next one
            return
        self.pool_reported[(rule, engine.id)] = now
        pool = pool_entry.pool_ref()
        by_location: collections.Counter[str] = collections.Counter()
        for key, (t0, _tid, stack) in list(pool_entry.holders.items()):
            lines = _holder_stack(pool_entry, key, t0, stack)
            by_location[lines[0] if lines else "(unknown)"] += 1
        evidence: dict[str, Any] = {
            "waiting": waiting, "checked_out": len(pool_entry.holders),
            "holders_by_location": [[where, count]
                                    for where, count in by_location.most_common(TOP_HOLDERS)],
        }
        if timeouts:
            evidence["timeouts"] = timeouts
        if pool is not None:
            size = getattr(pool, "size", None)
            evidence["pool_size"] = size() if callable(size) else None
            evidence["max_overflow"] = getattr(pool, "_max_overflow", None)
            evidence["timeout"] = getattr(pool, "_timeout", None)
        top = by_location.most_common(1)
        # a timeout is located where the checkout gave up; waiting, at the main holder
        location = (self.timeout_at.pop(engine.id, "") if timeouts
                    else top[0][0] if top else "")
        events.append(Finding(
            rule, message, evidence, location=location, engine=engine.id).event(now))

    def on_timeout(self, engine_id: str, location: str) -> None:
        """A checkout timed out at ``location`` (worker thread, from the TIMEOUT item)."""
        self.timeouts[engine_id] += 1
        if location:
            self.timeout_at[engine_id] = location


def _holder_stack(pool_entry: "PoolEntry", key: int, t0: float, stack: Any) -> list[str]:
    """A holder's stack as text: captured at checkout, else sampled from its thread."""
    return describe(stack) if stack else describe(pool_entry.sampled.get((key, t0)) or [])


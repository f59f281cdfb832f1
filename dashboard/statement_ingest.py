"""Store what agents report about statements: per-fingerprint statistics from state
frames (``ENGINE_STATE.statements``) and slow statements from ``slow_statement``
events. Called by ``ingest`` inside the transaction of the frame being stored, so a
frame that cannot be stored leaves every earlier row as it was.

Statistics are cumulative since the agent's process started and sent only for the
fingerprints that changed: each one replaces its row (engine, fp). An engine keeps
at most STATEMENTS_PER_ENGINE fingerprints (the most recently updated) and
SLOW_STATEMENTS_PER_ENGINE slow statements (the newest), however many the agent
sends.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any, Iterable

from . import conf
from .models import SlowStatement, StatementStat
from .retention import keep_newest
from .session_ingest import when

_BIGINT_MAX = 2**63 - 1

#: columns an upsert rewrites (everything but the identity)
UPDATED = ["sql", "op", "table", "count", "errors", "total", "max", "rows", "buckets",
           "location", "stack", "updated_at"]


def _count(value: int) -> int:
    return min(max(value, 0), _BIGINT_MAX)


def _seconds(value: float) -> float:
    # the protocol admits any JSON number: keep what a column holds and sums make sense of
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def _stack(value: Any) -> list[str]:
    return [str(frame)[:1000] for frame in value[:50]] if isinstance(value, list) else []


def statement(engine_pk: int, stats: dict[str, Any], now: datetime) -> StatementStat:
    """An unsaved row for one validated STATEMENT_STATS entry."""
    return StatementStat(
        engine_id=engine_pk, fp=stats["fp"][:64], sql=stats["sql"], op=stats["op"][:16],
        table=(stats.get("table") or "")[:255], count=_count(stats["count"]),
        errors=_count(stats["errors"]), total=_seconds(stats["total"]),
        max=_seconds(stats["max"]), rows=_count(stats["rows"]),
        buckets=[_count(n) for n in stats["buckets"]],
        location=(stats.get("location") or "")[:1000], stack=_stack(stats.get("stack")),
        updated_at=now)


def store_statements(engine_pk: int, entries: Iterable[dict[str, Any]],
                     now: datetime) -> int:
    """Upsert an engine's changed fingerprints (the last wins for an fp given twice)
    and keep its STATEMENTS_PER_ENGINE most recently updated; returns how many
    fingerprints the frame carried."""
    latest = {entry["fp"][:64]: entry for entry in entries}
    if not latest:
        return 0
    StatementStat.objects.bulk_create(
        [statement(engine_pk, entry, now) for entry in latest.values()],
        update_conflicts=True, unique_fields=["engine", "fp"], update_fields=UPDATED)
    keep_newest(StatementStat.objects.filter(engine_id=engine_pk),
                conf.get("STATEMENTS_PER_ENGINE"), "updated_at")
    return len(latest)


def slow_statement(engine_pk: int, event: dict[str, Any]) -> SlowStatement:
    """An unsaved row for a validated ``slow_statement`` event (see ``event_dict``)."""
    return SlowStatement(
        engine_id=engine_pk, at=when(event["ts"]), fp=event["fp"][:64], sql=event["sql"],
        seconds=_seconds(event["seconds"]), rows=_count(event["rows"]),
        session=event["session"][:32], thread=event["thread"][:200],
        location=event["location"][:1000], stack=_stack(event["stack"]),
        params=event["params"])


def store_slow_statements(rows: list[SlowStatement]) -> None:
    """Store slow statements, keeping the newest SLOW_STATEMENTS_PER_ENGINE of each
    engine."""
    if not rows:
        return
    SlowStatement.objects.bulk_create(rows)
    keep = conf.get("SLOW_STATEMENTS_PER_ENGINE")
    for engine_pk in {row.engine_id for row in rows}:
        keep_newest(SlowStatement.objects.filter(engine_id=engine_pk), keep, "at")


def prune(now: datetime) -> int:
    """Forget the statements of processes disconnected for longer than
    RECENT_PROCESS_SECONDS (the pages no longer show them); returns how many rows."""
    cutoff = now - timedelta(seconds=conf.get("RECENT_PROCESS_SECONDS"))
    gone = dict(engine__process__connected=False, engine__process__last_seen__lt=cutoff)
    stats, _ = StatementStat.objects.filter(**gone).delete()
    slow, _ = SlowStatement.objects.filter(**gone).delete()
    return stats + slow

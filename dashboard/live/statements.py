"""Context and rendering of an engine's statements page: the engine's statements
aggregated by fingerprint across the app's processes (the same engine name and URL
in each), and the slowest of the recent slow statements."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from .. import conf
from ..models import Engine, SlowStatement, StatementStat
from .fragments import percentile
from .sessions import session_pks

#: sort key → (what the header says, the aggregate's value it sorts by, descending)
SORTS: dict[str, str] = {
    "total": "most total time first",
    "count": "most executions first",
    "mean": "slowest on average first",
    "p95": "slowest p95 first",
    "max": "slowest single run first",
    "rows": "most rows first",
    "errors": "most errors first",
}
DEFAULT_SORT = "total"
SLOW_SHOWN = 50


@dataclass(frozen=True)
class StatementFilters:
    sort: str = DEFAULT_SORT

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "StatementFilters":
        sort = query.get("sort")
        return cls(sort=sort if sort in SORTS else DEFAULT_SORT)

    def query(self) -> str:
        return "" if self.sort == DEFAULT_SORT else f"sort={self.sort}"


def siblings(engine: Engine) -> list[Engine]:
    """The engine as every recent process of its app has it: the same name and URL,
    in processes connected or seen within RECENT_PROCESS_SECONDS (and this one)."""
    since = timezone.now() - timedelta(seconds=conf.get("RECENT_PROCESS_SECONDS"))
    return list(Engine.objects.filter(
        process__app_id=engine.process.app_id, name=engine.name, url=engine.url,
    ).filter(Q(process__connected=True) | Q(process__last_seen__gte=since) | Q(pk=engine.pk))
        .select_related("process").order_by("process__host", "process__pid"))


def aggregate(rows: list[StatementStat]) -> list[dict[str, Any]]:
    """Fingerprints summed over engines: count, errors, total, rows and the histogram
    added up; max the largest; SQL and location from the most recently updated row."""
    by_fp: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r.updated_at, r.pk)):
        entry = by_fp.setdefault(row.fp, {
            "fp": row.fp, "count": 0, "errors": 0, "total": 0.0, "max": 0.0, "rows": 0,
            "buckets": [], "processes": 0, "location": "", "stack": []})
        entry["count"] += row.count
        entry["errors"] += row.errors
        entry["total"] += row.total
        entry["rows"] += row.rows
        entry["max"] = max(entry["max"], row.max)
        entry["processes"] += 1
        buckets = entry["buckets"]
        buckets.extend([0] * (len(row.buckets) - len(buckets)))
        for index, n in enumerate(row.buckets):
            buckets[index] += n
        entry.update(sql=row.sql, op=row.op, table=row.table)
        if row.location:
            entry.update(location=row.location, stack=row.stack)
    for entry in by_fp.values():
        entry["mean"] = entry["total"] / entry["count"] if entry["count"] else None
        entry["p95"] = percentile({"buckets": entry["buckets"], "max": entry["max"]}, 0.95)
    return list(by_fp.values())


def statements_context(engine: Engine, filters: StatementFilters) -> dict[str, Any]:
    engines = siblings(engine)
    stats = aggregate(list(StatementStat.objects.filter(engine__in=engines)))
    key = filters.sort
    stats.sort(key=lambda s: (-(s[key] or 0), s["fp"]))
    shown = stats[:conf.get("STATEMENTS_PER_PAGE")]
    slow = list(SlowStatement.objects.filter(engine__in=engines).select_related("engine__process")
                .order_by("-seconds", "-at", "-pk")[:SLOW_SHOWN])
    _link_sessions(slow)
    return {
        "engine": engine,
        "process": engine.process,
        "app": engine.process.app,
        "engines": engines,
        "filters": filters,
        "statements": shown,
        "total_fingerprints": len(stats),
        "total_count": sum(s["count"] for s in stats),
        "total_time": sum(s["total"] for s in stats),
        "sort_label": SORTS[key],
        "sort_links": {name: "?" if name == DEFAULT_SORT else f"?sort={name}" for name in SORTS},
        "slow": slow,
        "ws_query": filters.query(),
    }


def _link_sessions(slow: list[SlowStatement]) -> None:
    pks = session_pks({(row.engine.process_id, row.session) for row in slow if row.session})
    for row in slow:
        row.session_pk = pks.get((row.engine.process_id, row.session))


def statements(engine_pk: int, filters: StatementFilters, *, oob: bool) -> str:
    engine = Engine.objects.select_related("process__app").get(pk=engine_pk)
    return render_to_string("dashboard/partials/statements_live.html",
                            {**statements_context(engine, filters), "oob": oob})

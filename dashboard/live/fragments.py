"""Context and rendering of the live parts of each page. The page views include the
same templates, so the first paint and every live update are the same HTML."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone

from tracker.protocol import HIST_BOUNDS

from django.db.models import Count, Prefetch, Q

from .. import conf
from ..lineage import group_processes
from ..session_ingest import end_sessions_of_silent_processes
from ..models import App, Engine, PoolSample, Process, Toggle, TrackedSession
from . import findings
from .charts import pool_timeline


def overview_context() -> dict[str, Any]:
    """Apps with their processes: every connected one, and those seen within
    RECENT_PROCESS_SECONDS; older ones are counted, not listed."""
    since = timezone.now() - timedelta(seconds=conf.get("RECENT_PROCESS_SECONDS"))
    end_sessions_of_silent_processes(timezone.now())
    recent = Process.objects.filter(Q(connected=True) | Q(last_seen__gte=since))
    apps = list(App.objects.prefetch_related(
        Prefetch("processes", queryset=recent.prefetch_related("engines"), to_attr="recent"),
    ).annotate(
        process_count=Count("processes", distinct=True),
        live_sessions=Count("processes__sessions", distinct=True,
                            filter=Q(processes__sessions__ended_at__isnull=True)),
    ))
    in_force = dict(Toggle.objects.filter(value__isnull=False).values_list("app_id")
                    .annotate(n=Count("pk")).order_by())
    open_findings = findings.open_counts()
    for app in apps:
        app.open_findings = open_findings.get(app.pk, [])
        app.toggle_count = in_force.get(app.pk, 0)
        app.groups = group_processes(app.recent)
    return {"apps": apps, "recent_seconds": conf.get("RECENT_PROCESS_SECONDS")}


def overview(*, oob: bool) -> str:
    return render_to_string("dashboard/partials/overview_live.html",
                            {**overview_context(), "oob": oob})


def percentile(hist: dict[str, Any] | None, q: float) -> float | None:
    """Upper bound (seconds) of the bucket holding the q-quantile; None if empty
    (or above the last bound: then the maximum seen)."""
    if not hist:
        return None
    buckets = hist["buckets"]
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(buckets):
        running += count
        if running >= rank:
            # a bucket's upper bound, but never above the largest value actually seen
            return min(HIST_BOUNDS[index], hist["max"]) if index < len(HIST_BOUNDS) else hist["max"]
    return hist["max"]


def distribution(hist: dict[str, Any] | None) -> dict[str, Any]:
    count = sum(hist["buckets"]) if hist else 0
    return {
        "count": count,
        "mean": (hist["sum"] / count) if count else None,
        "p50": percentile(hist, 0.5),
        "p95": percentile(hist, 0.95),
        "p99": percentile(hist, 0.99),
        "max": hist["max"] if count else None,
    }


def engine_context(engine: Engine) -> dict[str, Any]:
    now = timezone.now()
    state = engine.state or {}
    gauges = state.get("gauges", {})
    received = engine.state_at or now
    lag = (now - received).total_seconds()
    agent_ts = state.get("ts")
    holders = []
    owners = dict(TrackedSession.objects.filter(
        process_id=engine.process_id,
        key__in={h["session"] for h in state.get("holders", []) if h.get("session")},
    ).values_list("key", "pk"))
    for holder in state.get("holders", []):
        # ages from the agent's own clock, advanced by the time since we received them
        age = max(0.0, (agent_ts or holder["since"]) - holder["since"]) + lag
        holders.append({**holder, "age": age, "session_pk": owners.get(holder.get("session"))})
    holders.sort(key=lambda h: -h["age"])
    window = conf.get("TIMELINE_SECONDS")
    start = now - timedelta(seconds=window)
    samples = list(PoolSample.objects.filter(engine=engine, at__gte=start).order_by("at"))
    if samples:
        # a young engine: zoom in on its history (at least a minute) instead of
        # drawing a sliver at the right edge
        start = max(start, min(samples[0].at, now - timedelta(seconds=60)))
    return {
        "engine": engine,
        "process": engine.process,
        "state": state,
        "gauges": gauges,
        "counters": state.get("counters", {}),
        "holders": holders,
        "wait": distribution(state.get("wait")),
        "hold": distribution(state.get("hold")),
        "timeline": pool_timeline(samples, start=start, end=now,
                                  size=gauges.get("size"), capacity=gauges.get("capacity")),
        "timeline_seconds": (now - start).total_seconds(),
        "events": engine.events.all()[:20],
        "state_age": lag if engine.state_at else None,
    }


def engine(pk: int, *, oob: bool) -> str:
    engine = Engine.objects.select_related("process__app").get(pk=pk)
    return render_to_string("dashboard/partials/engine_live.html",
                            {**engine_context(engine), "oob": oob})

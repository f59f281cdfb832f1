"""Context and rendering of the sessions page (an app's live and recently ended ORM
sessions) and of the session page (one session: summary, lifecycle, tracked objects,
pending changes, findings). As in ``fragments``, the page views and the live sockets
render the same templates."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import urlencode

from django.db.models import F, Q
from django.template.loader import render_to_string
from django.utils import timezone

from .. import conf, control
from ..models import (App, Engine, Finding, Process, SessionSnapshot, StatementStat,
                      TrackedSession)
from ..session_ingest import end_sessions_of_silent_processes, when

#: sort key → (what the header says, ORDER BY)
SORTS: dict[str, tuple[str, list[Any]]] = {
    # live sessions first, the oldest open transaction first; then the idle ones
    # (newest first); then ended ones (the latest ended first)
    "transaction": ("oldest open transaction first", [
        F("ended_at").desc(nulls_first=True), F("txn_since").asc(nulls_last=True),
        "-created", "-pk"]),
    "oldest": ("oldest first", ["created", "pk"]),
    "newest": ("newest first", ["-created", "-pk"]),
    "objects": ("most objects first", ["-objects_count", "-created", "-pk"]),
    "pending": ("most pending changes first", [
        (F("new") + F("dirty") + F("deleted")).desc(), "-created", "-pk"]),
    "statements": ("most statements first", ["-statements", "-created", "-pk"]),
    "thread": ("by thread", ["thread", "task", "-created", "-pk"]),
    "process": ("by process", ["process__host", "process__pid", "-created", "-pk"]),
}
DEFAULT_SORT = "transaction"
SHOW = ("all", "live")


def _pk(value: Any) -> int | None:
    text = str(value or "")
    return int(text) if text.isdigit() and len(text) <= 18 else None


@dataclass(frozen=True)
class SessionFilters:
    """What the sessions page shows: its GET parameters, validated."""

    process: int | None = None
    engine: int | None = None
    thread: str = ""
    show: str = "all"
    sort: str = DEFAULT_SORT
    page: int = 1

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "SessionFilters":
        sort = query.get("sort")
        show = query.get("show")
        return cls(process=_pk(query.get("process")), engine=_pk(query.get("engine")),
                   thread=str(query.get("thread") or "")[:200],
                   show=show if show in SHOW else "all",
                   sort=sort if sort in SORTS else DEFAULT_SORT,
                   page=control.page_number(query.get("page")))

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (defaults left out)."""
        filters = replace(self, **changes)
        pairs = [(name, value) for name, value, default in (
            ("process", filters.process, None), ("engine", filters.engine, None),
            ("thread", filters.thread, ""), ("show", filters.show, "all"),
            ("sort", filters.sort, DEFAULT_SORT), ("page", filters.page, 1),
        ) if value != default]
        return urlencode(pairs)

    def sort_link(self, sort: str) -> str:
        return "?" + self.query(sort=sort, page=1)


def idle_after() -> timedelta:
    return timedelta(seconds=conf.get("IDLE_IN_TRANSACTION_SECONDS"))


def describe(session: TrackedSession, engines: Mapping[str, Engine]) -> TrackedSession:
    """Add what the templates show about a session, from its process's clock:
    ``age``, ``txn_for``, ``idle_for``, ``idle_in_transaction``, ``held`` (the engines
    whose connections it holds), ``status``."""
    now = session.process.agent_now()
    summary = session.summary
    end = session.ended_at
    # never negative: our estimate of the agent's clock can lag its reports a little
    session.age = max(0.0, ((end or now) - session.created).total_seconds())
    session.txn_for = (max(0.0, (now - session.txn_since).total_seconds())
                       if session.live and session.txn_since else None)
    session.idle_for = (max(0.0, (now - session.last_activity).total_seconds())
                        if session.live and session.last_activity else None)
    session.idle_in_transaction = (
        session.live and session.state == "transaction" and session.last_activity is not None
        and now - session.last_activity >= idle_after())
    session.held = ([engines[key] for key in summary.get("connections", ()) if key in engines]
                    if session.live else [])
    session.stack = summary.get("stack") or []
    session.sampled = bool(summary.get("sampled"))
    session.status = ("ended" if not session.live else
                      "idle-in-transaction" if session.idle_in_transaction else session.state)
    return session


def _engines_of(process_ids: set[int]) -> dict[int, dict[str, Engine]]:
    by_process: dict[int, dict[str, Engine]] = {pk: {} for pk in process_ids}
    for engine in Engine.objects.filter(process_id__in=process_ids):
        by_process[engine.process_id][engine.key] = engine
    return by_process


def recent_sessions(app: App) -> Any:
    """The app's live sessions and those ended within RECENT_SESSION_SECONDS."""
    end_sessions_of_silent_processes(timezone.now())
    cutoff = timezone.now() - timedelta(seconds=conf.get("RECENT_SESSION_SECONDS"))
    return TrackedSession.objects.filter(process__app=app).filter(
        Q(ended_at__isnull=True) | Q(updated_at__gte=cutoff))


def sessions_context(app: App, filters: SessionFilters) -> dict[str, Any]:
    recent = recent_sessions(app)
    chosen = recent
    if filters.process is not None:
        chosen = chosen.filter(process_id=filters.process)
    if filters.engine is not None:
        chosen = chosen.filter(engines=filters.engine)
    if filters.thread:
        chosen = chosen.filter(Q(thread=filters.thread) | Q(task=filters.thread))
    if filters.show == "live":
        chosen = chosen.filter(ended_at__isnull=True)
    total = chosen.count()
    size = max(1, conf.get("SESSIONS_PER_PAGE"))
    pages = max(1, math.ceil(total / size))
    page = min(filters.page, pages)
    rows = list(chosen.select_related("process").prefetch_related("engines")
                .order_by(*SORTS[filters.sort][1])[(page - 1) * size: page * size])
    # "idle in transaction" is decided on each process's clock: few sessions are in
    # a transaction at once, so count them here rather than in SQL
    in_transaction = [describe(s, {}) for s in recent.filter(
        ended_at__isnull=True, state__in=("transaction", "flushing")).select_related("process")]
    engines = _engines_of({row.process_id for row in rows})
    processes = list(Process.objects.filter(
        Q(pk__in=recent.values("process_id")) | Q(app=app, connected=True)))
    return {
        "app": app,
        "filters": filters,
        "sessions": [describe(row, engines[row.process_id]) for row in rows],
        "total": total,
        "page": page,
        "pages": pages,
        "first_row": (page - 1) * size + 1 if rows else 0,
        "last_row": (page - 1) * size + len(rows),
        "live_count": recent.filter(ended_at__isnull=True).count(),
        "transaction_count": len(in_transaction),
        "idle_count": sum(1 for s in in_transaction if s.idle_in_transaction),
        "ended_count": recent.filter(ended_at__isnull=False).count(),
        "omitted": sum(p.sessions_omitted for p in processes if p.connected),
        "processes": processes,
        "engines": Engine.objects.filter(process__in=processes).select_related("process"),
        "threads": _threads(recent, filters.thread),
        "sort_label": SORTS[filters.sort][0],
        "sort_links": {key: filters.sort_link(key) for key in SORTS},
        "previous_link": "?" + filters.query(page=page - 1) if page > 1 else "",
        "next_link": "?" + filters.query(page=page + 1) if page < pages else "",
        "ws_query": filters.query(page=page),
        "findings": findings_of(Finding.objects.filter(process__app=app)[:50]),
        "idle_seconds": conf.get("IDLE_IN_TRANSACTION_SECONDS"),
        "recent_seconds": conf.get("RECENT_SESSION_SECONDS"),
    }


def _threads(recent: Any, chosen: str) -> list[str]:
    """Thread names and asyncio task names of the listed sessions (and the chosen one)."""
    names = set(recent.values_list("thread", flat=True).distinct()[:500])
    names |= set(recent.exclude(task="").values_list("task", flat=True).distinct()[:500])
    if chosen:
        names.add(chosen)
    return sorted(names)


def session_pks(keys: set[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """(process pk, session key) -> the stored TrackedSession's pk, for those stored."""
    if not keys:
        return {}
    lookup = Q()
    for process_id, key in keys:
        lookup |= Q(process_id=process_id, key=key)
    return {(s["process_id"], s["key"]): s["pk"] for s in
            TrackedSession.objects.filter(lookup).values("process_id", "key", "pk")}


def findings_of(queryset: Any) -> list[Finding]:
    """Findings with ``session_pk`` set where their session is still stored."""
    findings = list(queryset.select_related("process", "engine"))
    pks = session_pks({(f.process_id, f.session) for f in findings if f.session})
    for item in findings:
        item.session_pk = pks.get((item.process_id, item.session))
        evidence = item.evidence if isinstance(item.evidence, dict) else {}
        # free JSON from the agent: only lists are shown as lists
        item.stack = evidence.get("stack") if isinstance(evidence.get("stack"), list) else []
        item.evidence_objects = evidence.get("objects") if isinstance(evidence.get("objects"), list) else []
    return findings


def sessions(app_pk: int, filters: SessionFilters, *, oob: bool) -> str:
    app = App.objects.get(pk=app_pk)
    return render_to_string("dashboard/partials/sessions_live.html",
                            {**sessions_context(app, filters), "oob": oob})


# -- one session ------------------------------------------------------------------

def change_rows(change: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored pending change (see ``session_ingest.ordered_change``) as table rows,
    attributes in the mapper's order. Rows are plain lists and dicts with fixed keys:
    an attribute may be called ``items`` or ``values``, which templates would take for
    methods."""
    rows = [{"kind": "value", "attribute": name, "new": value}
            for name, value in change.get("values", [])]
    rows += [{"kind": "attribute", "attribute": name, "old": pair[0], "new": pair[-1]}
             for name, pair in change.get("attributes", []) if pair]
    rows += [{"kind": "reference", "attribute": name, "old": pair[0], "new": pair[-1]}
             for name, pair in change.get("references", []) if pair]
    rows += [{"kind": "collection", "attribute": name, "added": members.get("added", []),
              "removed": members.get("removed", [])}
             for name, members in change.get("collections", [])]
    return rows


def repeats(session: TrackedSession) -> list[dict[str, Any]]:
    """The session's most repeated statements (``SESSION.repeats``: [fp, count,
    distinct parameter sets or -1]), with each fingerprint's SQL when its engine
    reported it. Entries that are not that shape, or ran once, are left out."""
    entries = [entry for entry in session.summary.get("repeats") or ()
               if isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[0], str)
               and all(isinstance(n, int) and not isinstance(n, bool) for n in entry[1:3])
               and entry[1] > 1]
    sql = dict(StatementStat.objects.filter(
        engine__process_id=session.process_id, fp__in={entry[0] for entry in entries}
    ).values_list("fp", "sql")) if entries else {}
    return [{"fp": fp, "count": count, "distinct": distinct if distinct >= 0 else None,
             "sql": sql.get(fp, "")} for fp, count, distinct, *_ in entries]


def session_context(session: TrackedSession, query: Mapping[str, Any]) -> dict[str, Any]:
    if session.ended_at is None and end_sessions_of_silent_processes(timezone.now()):
        session.refresh_from_db()
    engines = _engines_of({session.process_id})[session.process_id]
    describe(session, engines)
    args = control.snapshot_args(query)
    size = args["limit"]
    snapshot = SessionSnapshot.objects.filter(session=session,
                                              args_key=control.args_key(args)).first()
    data = snapshot.data if snapshot is not None and snapshot.taken_at else None
    summary = session.summary
    lifecycle = [{"at": when(ts), "kind": kind, "detail": detail,
                  "after": ts - session.created.timestamp()}
                 for ts, kind, detail, *_ in (item + ["", ""] for item in
                                              summary.get("lifecycle", []))
                 if isinstance(ts, (int, float))]
    changes = []
    ops = {"insert": 0, "update": 0, "delete": 0}
    for change in (data or {}).get("changes", []):
        ops[change["op"]] = ops.get(change["op"], 0) + 1
        changes.append({**change, "rows": change_rows(change)})
    total = (data or {}).get("total", 0)
    page = args["offset"] // size + 1
    filtered = {name: args[name] for name in ("class", "state") if name in args}
    if "modified" in args:
        filtered["modified"] = "yes" if args["modified"] else "no"

    def page_link(number: int) -> str:
        return "?" + urlencode({**filtered, **({"page": number} if number > 1 else {})})

    pages = max(1, math.ceil(total / size))
    return {
        "session": session,
        "process": session.process,
        "app": session.process.app,
        "summary": summary,
        "engines": [engines[key] for key in summary.get("engines", ()) if key in engines],
        "by_class": sorted(summary.get("by_class", {}).items(), key=lambda kv: (-kv[1], kv[0])),
        "lifecycle": lifecycle,
        "repeats": repeats(session),
        "args": args,
        "snapshot": snapshot,
        "data": data,
        "entities": (data or {}).get("entities", []),
        "changes": changes,
        "ops": ops,
        "waiting": (data is None and session.live and session.process.connected
                    and not (snapshot and snapshot.refusal)),
        "snapshot_seconds": conf.get("SNAPSHOT_SECONDS"),
        "taken_ago": (max(0.0, (session.process.agent_now() - snapshot.taken_at)
                              .total_seconds()) if data is not None else None),
        "page": page,
        "pages": pages,
        "first_row": args["offset"] + 1 if data and data["entities"] else 0,
        "last_row": args["offset"] + len((data or {}).get("entities", [])),
        "previous_link": page_link(page - 1) if page > 1 else "",
        "next_link": page_link(page + 1) if data and page < pages else "",
        "last_link": page_link(pages) if data and page > pages else "",
        "states": control.STATES,
        "filtered": filtered,
        "ws_query": urlencode({**filtered, **({"page": page} if page > 1 else {})}),
        "findings": findings_of(Finding.objects.filter(process=session.process,
                                                       session=session.key)[:100]),
        "idle_seconds": conf.get("IDLE_IN_TRANSACTION_SECONDS"),
    }


def session(pk: int, query: Mapping[str, Any], *, oob: bool) -> str:
    tracked = TrackedSession.objects.select_related("process__app").filter(pk=pk).first()
    if tracked is None:  # pruned while its page was open
        return render_to_string("dashboard/partials/session_gone.html",
                                {"oob": oob, "recent_seconds": conf.get("RECENT_SESSION_SECONDS")})
    return render_to_string("dashboard/partials/session_live.html",
                            {**session_context(tracked, query), "oob": oob})

"""Context and rendering of the traces page of an app (the form that starts a
recording, the upload, the list of traces with their status) and of a trace's page
(its status, then the timeline and tables of ``traces_timeline``). As in
``fragments``, the pages and their live sockets render the same templates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from django.template.loader import render_to_string

from .. import conf, toggles, traces
from ..models import App, AuditLog, Engine, Process, Trace, TrackedSession

#: traces listed on an app's traces page (the newest)
LISTED = 100
#: audit entries about recordings shown on the traces page
RECENT_AUDIT = 10


@dataclass
class FormValues:
    """What the recording form shows (or was posted with)."""

    scope: str = "app"
    name: str = ""
    process: str = ""   # a Process pk, as text
    engine: str = ""
    session: str = ""   # a TrackedSession pk, as text
    seconds: str = str(traces.DEFAULT_SECONDS)

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "FormValues":
        scope = query.get("scope")
        return cls(scope=scope if scope in traces.SCOPES else cls.scope,
                   **{key: str(query.get(key) or "").strip()[:255]
                      for key in ("name", "process", "engine", "session")},
                   seconds=str(query.get("seconds") or cls.seconds).strip()[:20])


def _pk(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


def asked(app: App, values: FormValues) -> traces.Asked:
    """The recording a form asks for; RecordError for what cannot be read."""
    process = None
    if values.process:
        pk = _pk(values.process)
        process = Process.objects.filter(pk=pk, app=app).first() if pk else None
        if process is None:
            raise traces.RecordError(f"unknown process {values.process[:20]!r} of {app.name}")
    session = None
    if values.scope == "session" and values.session:
        pk = _pk(values.session)
        session = (TrackedSession.objects.select_related("process")
                   .filter(pk=pk, process__app=app).first() if pk else None)
        if session is None:
            raise traces.RecordError(f"unknown session {values.session[:20]!r} of {app.name}")
    try:
        seconds = float(values.seconds)
    except ValueError:
        raise traces.RecordError(f"the length is a number of seconds, not "
                                 f"{values.seconds[:20]!r}") from None
    if values.scope == "app":
        process = None
    elif session is not None:
        process = session.process
    return traces.Asked(scope=values.scope, name=values.name, process=process,
                        engine=values.engine if values.scope == "engine" else "",
                        session=session, seconds=seconds)


def choices(app: App) -> dict[str, Any]:
    """What the form offers: the processes a recording can reach, their engines'
    names, their live sessions."""
    processes = list(traces.reachable(app))
    engines = sorted(set(Engine.objects.filter(process__in=processes)
                         .values_list("name", flat=True)))
    sessions = list(TrackedSession.objects.filter(process__in=processes, ended_at__isnull=True)
                    .select_related("process").order_by("process_id", "key")[:200])
    return {"processes": processes, "engines": engines, "sessions": sessions}


def decorate(trace: Trace) -> Trace:
    """What the list and the trace page show of a trace."""
    trace.where = (traces.describe(trace) if trace.scope != "import"
                   else "imported file")
    trace.process_name = (toggles.process_name(trace.process) if trace.process
                          else _header_process(trace.header))
    trace.process_gone = bool(trace.live and trace.process is not None
                              and not trace.process.connected)
    trace.downloadable = trace.records > 0
    return trace


def _header_process(header: dict[str, Any]) -> str:
    process = header.get("process") if isinstance(header, dict) else None
    if not isinstance(process, dict):
        return ""
    return f"{process.get('host', '?')}:{process.get('pid', '?')}"


def listed(app: App) -> list[Trace]:
    traces.expire(app.pk)
    rows = list(Trace.objects.filter(app=app).select_related("process", "started_by",
                                                             "stopped_by")[:LISTED])
    for trace in rows:
        trace.app = app
        decorate(trace)
    return rows


def list_context(app: App, user: Any) -> dict[str, Any]:
    return {"app": app, "traces": listed(app), "can_operate": toggles.can_operate(user),
            "audit": list(AuditLog.objects.filter(app=app, action__startswith="trace.")
                          [:RECENT_AUDIT])}


def traces_context(app: App, user: Any, values: FormValues | None = None,
                   error: str = "", import_error: str = "") -> dict[str, Any]:
    return {**list_context(app, user), "form": values or FormValues(), "error": error,
            "import_error": import_error, "scopes": traces.SCOPES,
            "permission": toggles.PERMISSION, "operators": toggles.OPERATORS,
            "max_seconds": conf.get("TRACE_MAX_SECONDS"),
            "max_bytes": conf.get("TRACE_MAX_BYTES"), **choices(app)}


def traces_html(app_pk: int, user: Any, *, oob: bool) -> str:
    app = App.objects.get(pk=app_pk)
    return render_to_string("dashboard/partials/traces_live.html",
                            {**list_context(app, user), "oob": oob})


def trace_status_context(trace: Trace, user: Any) -> dict[str, Any]:
    decorate(trace)
    return {"trace": trace, "app": trace.app, "can_operate": toggles.can_operate(user)}


def trace_status_html(trace_pk: int, user: Any, *, oob: bool) -> str:
    app_pk = Trace.objects.values_list("app_id", flat=True).get(pk=trace_pk)
    traces.expire(app_pk)
    trace = Trace.objects.select_related("app", "process", "started_by",
                                         "stopped_by").get(pk=trace_pk)
    return render_to_string("dashboard/partials/trace_status.html",
                            {**trace_status_context(trace, user), "oob": oob})

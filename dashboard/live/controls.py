"""Context and rendering of the controls page (an app's toggles and what each process
answered), of its form, of the quick toggles on the engine and session pages, and of
the audit log page. As in ``fragments``, the page and the live socket render the same
templates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from tracker.switches import SCOPES, SWITCHES, Switch

from .. import conf, toggles
from ..models import App, AuditLog, Engine, Process, Toggle, ToggleDelivery, TrackedSession

#: what the page says for each delivery status
STATUS_TEXT = {
    ToggleDelivery.PENDING: "pending",
    ToggleDelivery.APPLIED: "applied",
    ToggleDelivery.REFUSED: "refused",
    "waiting": "not connected: sent when it reconnects",
    "removal-waiting": "not connected: removed when it reconnects",
    "silent": "pending: no news from the process",
}
_SCOPE_ORDER = {scope: index for index, scope in enumerate(SCOPES)}
#: audit entries shown at the bottom of the controls page
RECENT_AUDIT = 10
#: rows of the audit log page
AUDIT_PER_PAGE = 100


def recent_processes(app_id: int):
    """The app's processes the pages list: connected, or seen recently."""
    since = timezone.now() - timedelta(seconds=conf.get("RECENT_PROCESS_SECONDS"))
    return (Process.objects.filter(app_id=app_id)
            .filter(Q(connected=True) | Q(last_seen__gte=since))
            .order_by("-connected", "host", "pid", "pk"))


@dataclass
class Answer:
    """One process's answer to a toggle, as shown."""

    process: Process
    status: str
    reason: str = ""

    @property
    def silent_for(self) -> float:
        """Seconds since the process was last heard of."""
        return max(0.0, (timezone.now() - self.process.last_seen).total_seconds())

    @property
    def text(self) -> str:
        return STATUS_TEXT.get(self.status, self.status)


def _answers(toggle: Toggle, processes: list[Process],
             deliveries: dict[tuple[int, int], ToggleDelivery]) -> list[Answer]:
    if toggle.scope in toggles.PER_PROCESS:
        processes = [toggle.process] if toggle.process else []
    answers = []
    for process in processes:
        delivery = deliveries.get((toggle.pk, process.pk))
        if delivery is not None and delivery.revision == toggle.revision:
            status = delivery.status
            if status == ToggleDelivery.PENDING and process.status == "stale":
                # marked connected, but silent: gone without a goodbye (a dashboard
                # restart), or stuck; it answers if it is still there
                status = "silent"
            answers.append(Answer(process, status, delivery.reason))
        elif toggle.removed:
            # it never had the setting, or will lose it with its next sync
            if delivery is not None and not process.connected:
                answers.append(Answer(process, "removal-waiting"))
        elif not process.connected:
            answers.append(Answer(process, "waiting"))
        else:  # connected before the toggle and never sent it: should not happen
            answers.append(Answer(process, ToggleDelivery.PENDING))
    return answers


def _decorate(toggle: Toggle, answers: list[Answer]) -> Toggle:
    spec = SWITCHES.get(toggle.switch)
    toggle.spec = spec
    toggle.title = spec.title if spec else toggle.switch
    toggle.where = toggles.where(toggle.scope, toggle.target, toggle.process, toggle.app.name)
    toggle.value_text = toggles.value_text(toggle.value)
    toggle.answers = answers
    toggle.counts = {status: sum(1 for a in answers if a.status == status)
                     for status in (ToggleDelivery.PENDING, ToggleDelivery.APPLIED,
                                    ToggleDelivery.REFUSED)}
    return toggle


def toggles_of(app: App) -> tuple[list[Toggle], list[Toggle]]:
    """The app's toggles in force, and those removed recently, each with its
    ``answers`` (one per process it concerns)."""
    processes = list(recent_processes(app.pk))
    since = timezone.now() - timedelta(seconds=conf.get("RECENT_PROCESS_SECONDS"))
    rows = list(Toggle.objects.filter(app=app)
                .filter(Q(value__isnull=False) | Q(updated_at__gte=since))
                .select_related("process", "updated_by"))
    deliveries = {(d.toggle_id, d.process_id): d for d in
                  ToggleDelivery.objects.filter(toggle__in=rows)}
    for toggle in rows:
        toggle.app = app
        _decorate(toggle, _answers(toggle, processes, deliveries))
    rows.sort(key=lambda t: (_SCOPE_ORDER.get(t.scope, 9), t.target, t.switch, t.pk))
    return ([t for t in rows if not t.removed],
            sorted((t for t in rows if t.removed), key=lambda t: t.updated_at, reverse=True))


# -- the form -----------------------------------------------------------------------

@dataclass
class FormValues:
    """What the toggle form shows (or was posted with)."""

    scope: str = "engine"
    switch: str = "statements"
    target: str = ""
    process: str = ""  # a Process pk, as text
    value: str = ""

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "FormValues":
        scope = query.get("scope")
        scope = scope if scope in SCOPES else cls.scope
        switch = query.get("switch")
        allowed = [name for name, spec in SWITCHES.items() if scope in spec.scopes]
        if switch not in allowed:
            switch = allowed[0] if allowed else cls.switch
        return cls(scope=scope, switch=switch,
                   target=str(query.get("target") or "").strip()[:255],
                   process=str(query.get("process") or "").strip()[:20],
                   value=str(query.get("value") or "").strip()[:2000])


def suggestions(app: App) -> dict[str, Any]:
    """What the form offers as targets: engine names, mapped classes seen in
    sessions, live sessions; and the processes."""
    processes = list(recent_processes(app.pk))
    engines = sorted(set(Engine.objects.filter(process__in=processes)
                         .values_list("name", flat=True)))
    classes: set[str] = set()
    sessions = list(TrackedSession.objects.filter(process__in=processes, ended_at__isnull=True)
                    .select_related("process").order_by("process_id", "key")[:200])
    for summary in (TrackedSession.objects.filter(process__in=processes)
                    .values_list("summary", flat=True)[:500]):
        if isinstance(summary, dict) and isinstance(summary.get("by_class"), dict):
            classes.update(str(name) for name in summary["by_class"])
    return {"processes": processes, "engines": engines, "classes": sorted(classes),
            "sessions": sessions}


def form_context(app: App, values: FormValues) -> dict[str, Any]:
    spec: Switch = SWITCHES[values.switch]
    return {"app": app, "form": values, "spec": spec, "scopes": SCOPES,
            "switches": [s for s in SWITCHES.values() if values.scope in s.scopes],
            "needs_target": values.scope not in ("app", "process"),
            "needs_process": values.scope in toggles.PER_PROCESS,
            **suggestions(app)}


def controls_context(app: App, user: Any, values: FormValues | None = None,
                     error: str = "") -> dict[str, Any]:
    in_force, removed = toggles_of(app)
    return {
        "app": app,
        "toggles": in_force,
        "removed": removed,
        "can_operate": toggles.can_operate(user),
        "permission": toggles.PERMISSION,
        "operators": toggles.OPERATORS,
        "error": error,
        "audit": list(AuditLog.objects.filter(app=app, action__startswith="toggle.")
                      [:RECENT_AUDIT]),
        **form_context(app, values or FormValues()),
    }


def controls(app_pk: int, user: Any, *, oob: bool) -> str:
    app = App.objects.get(pk=app_pk)
    in_force, removed = toggles_of(app)
    return render_to_string("dashboard/partials/controls_live.html", {
        "app": app, "toggles": in_force, "removed": removed, "oob": oob,
        "can_operate": toggles.can_operate(user),
        "audit": list(AuditLog.objects.filter(app=app, action__startswith="toggle.")
                      [:RECENT_AUDIT])})


# -- quick toggles ------------------------------------------------------------------

def quick(app: App, scope: str, target: str, switches: tuple[str, ...],
          process: Process | None = None) -> list[dict[str, Any]]:
    """The quick toggles of one engine (by name) or session: per switch, the toggle
    in force there (if any) with its answers."""
    rows = {t.switch: t for t in Toggle.objects.filter(
        app=app, scope=scope, target=target, process=process, switch__in=switches)
        .select_related("process", "updated_by")}
    deliveries = {(d.toggle_id, d.process_id): d for d in
                  ToggleDelivery.objects.filter(toggle__in=rows.values())}
    processes = list(recent_processes(app.pk))
    result = []
    for name in switches:
        toggle = rows.get(name)
        if toggle is not None:
            toggle.app = app
            _decorate(toggle, _answers(toggle, processes, deliveries))
        result.append({"switch": name, "title": SWITCHES[name].title,
                       "toggle": toggle if toggle is not None and not toggle.removed else None})
    return result


#: the quick toggles of each page: engine pages, session pages
QUICK = {"engine": ("statements",), "session": ("snapshots", "detectors")}


def quick_context(app: App, user: Any, scope: str, target: str, process: Process | None,
                  next_url: str) -> dict[str, Any]:
    """The context of the quick toggles partial of an engine (by name) or a session."""
    return {"app": app, "quick": quick(app, scope, target, QUICK[scope], process),
            "quick_scope": scope, "quick_target": target, "quick_process": process,
            "quick_where": toggles.where(scope, target, process, app.name),
            "quick_next": next_url, "can_operate": toggles.can_operate(user)}


def quick_html(app_pk: int, user: Any, scope: str, target: str, process: Process | None,
               next_url: str) -> str:
    """The quick toggles, for the live socket (``hx-swap-oob``)."""
    app = App.objects.get(pk=app_pk)
    return render_to_string("dashboard/partials/quick_toggles.html",
                            {**quick_context(app, user, scope, target, process, next_url),
                             "oob": True})


def audit_context(app: App | None, page: int) -> dict[str, Any]:
    entries = AuditLog.objects.select_related("app")
    if app is not None:
        entries = entries.filter(app=app)
    total = entries.count()
    pages = max(1, -(-total // AUDIT_PER_PAGE))
    page = min(max(page, 1), pages)
    start = (page - 1) * AUDIT_PER_PAGE
    return {"app": app, "entries": list(entries[start:start + AUDIT_PER_PAGE]),
            "total": total, "page": page, "pages": pages}

"""The controls page of an app (its toggles, each process's answer, the form), the one
endpoint that changes a toggle (POST with CSRF; the operator permission; a policy
switch asks for confirmation first), and the audit log page."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from tracker.switches import SWITCHES, SwitchError

from .. import groups, toggles
from ..live import controls
from ..models import App, Process
from .refusal import not_allowed

CONFIRM = "yes"


@require_GET
def app_controls(request: HttpRequest, pk: int) -> HttpResponse:
    app = get_object_or_404(App, pk=pk)
    values = controls.FormValues.from_query(request.GET)
    return render(request, "dashboard/controls.html",
                  controls.controls_context(app, request.user, values))


@require_GET
def toggle_form(request: HttpRequest, pk: int) -> HttpResponse:
    """The form's fields for the scope and switch chosen (htmx swaps them in when
    either changes)."""
    app = get_object_or_404(App, pk=pk)
    values = controls.FormValues.from_query(request.GET)
    return render(request, "dashboard/partials/toggle_fields.html",
                  controls.form_context(app, values))


def _next(request: HttpRequest, app: App) -> str:
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("controls", args=[app.pk])
    return target


def _requested(request: HttpRequest, app: App) -> dict[str, Any]:
    """What the POST asks for: scope, target, switch, process (a Process of the app or
    None), value (parsed from the form's text; None to remove) — raises SwitchError
    for what cannot be read (a process of another app, a value in no known form)."""
    scope = request.POST.get("scope", "")
    switch = request.POST.get("switch", "")
    target = request.POST.get("target", "").strip()
    chosen = request.POST.get("process", "").strip()
    process = None
    if chosen:
        process = (Process.objects.filter(pk=chosen, app=app).first()
                   if chosen.isdigit() and len(chosen) < 19 else None)
        if process is None:
            raise SwitchError(f"unknown process {chosen[:20]!r} of {app.name}")
    remove = request.POST.get("remove") == "1"
    value = None if remove else toggles.parse_value(switch, request.POST.get("value", ""))
    return {"scope": scope, "target": target, "switch": switch, "process": process,
            "value": value}


@require_POST
def toggle_change(request: HttpRequest, pk: int) -> HttpResponse:
    """Set or remove (``remove=1``) one toggle of an app."""
    app = get_object_or_404(App, pk=pk)
    try:
        asked = _requested(request, app)
        error = ""
    except SwitchError as exc:
        asked, error = None, str(exc)
    if not toggles.can_operate(request.user):
        toggles.refuse(app, request.user, **(asked or {
            "scope": request.POST.get("scope", ""), "target": request.POST.get("target", ""),
            "switch": request.POST.get("switch", ""), "value": request.POST.get("value")}))
        return not_allowed(request, app, "controls")
    if not error:
        try:
            toggles.check(app, **asked)
        except SwitchError as exc:
            error = str(exc)
    if error:
        values = controls.FormValues.from_query(request.POST)
        return render(request, "dashboard/controls.html",
                      controls.controls_context(app, request.user, values, error=error),
                      status=400)
    spec = SWITCHES[asked["switch"]]
    if spec.policy and request.POST.get("confirm") != CONFIRM:
        return render(request, "dashboard/controls_confirm.html",
                      _confirmation(app, asked, request))
    change = toggles.change(app, request.user, **asked)
    toggles.send(change.messages, groups.app_controls(app.pk))
    messages.success(request, f"{change.entry.target}: {change.entry.result}.")
    return HttpResponseRedirect(_next(request, app), status=303)


def _confirmation(app: App, asked: dict[str, Any], request: HttpRequest) -> dict[str, Any]:
    spec = SWITCHES[asked["switch"]]
    current = (app.toggles.filter(scope=asked["scope"], target=asked["target"],
                                  switch=asked["switch"], process=asked["process"])
               .values_list("value", flat=True).first())
    stops = asked["value"] is True
    processes = list(controls.recent_processes(app.pk).filter(connected=True))
    if asked["scope"] in toggles.PER_PROCESS:
        processes = [p for p in processes if p.pk == asked["process"].pk]
    return {
        "app": app, "spec": spec, "asked": asked, "stops": stops,
        "where": toggles.where(asked["scope"], asked["target"], asked["process"], app.name),
        "old": toggles.value_text(current), "new": toggles.value_text(asked["value"]),
        "processes": processes, "post": request.POST, "next": _next(request, app),
        "remove": asked["value"] is None,
    }


@require_GET
def audit_log(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    app = get_object_or_404(App, pk=pk) if pk is not None else None
    try:
        page = int(request.GET.get("page", "1"))
    except ValueError:
        page = 1
    return render(request, "dashboard/audit.html", controls.audit_context(app, page))

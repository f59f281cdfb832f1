"""Overview, engine, statements, sessions and session pages: first paint of the same
fragments the live socket pushes afterwards."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from ..live import controls, fragments, sessions, statements
from ..models import App, Engine, TrackedSession


def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", fragments.overview_context())


def engine_detail(request: HttpRequest, pk: int) -> HttpResponse:
    engine = get_object_or_404(Engine.objects.select_related("process__app"), pk=pk)
    app = engine.process.app
    return render(request, "dashboard/engine.html", {
        **fragments.engine_context(engine),
        **controls.quick_context(app, request.user, "engine", engine.name, None,
                                 request.get_full_path())})


def engine_statements(request: HttpRequest, pk: int) -> HttpResponse:
    engine = get_object_or_404(Engine.objects.select_related("process__app"), pk=pk)
    filters = statements.StatementFilters.from_query(request.GET)
    return render(request, "dashboard/statements.html",
                  statements.statements_context(engine, filters))


def app_sessions(request: HttpRequest, pk: int) -> HttpResponse:
    app = get_object_or_404(App, pk=pk)
    filters = sessions.SessionFilters.from_query(request.GET)
    return render(request, "dashboard/sessions.html", sessions.sessions_context(app, filters))


def session_detail(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(TrackedSession.objects.select_related("process__app"), pk=pk)
    context = sessions.session_context(session, request.GET)
    if session.live:
        context.update(controls.quick_context(session.process.app, request.user, "session",
                                              session.key, session.process,
                                              request.get_full_path()))
    return render(request, "dashboard/session.html", context)


"""Overview and engine pages: first paint of the same fragments the live socket
pushes afterwards."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from ..live import fragments
from ..models import Engine


def overview(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/overview.html", fragments.overview_context())


def engine_detail(request: HttpRequest, pk: int) -> HttpResponse:
    engine = get_object_or_404(Engine.objects.select_related("process__app"), pk=pk)
    return render(request, "dashboard/engine.html", fragments.engine_context(engine))

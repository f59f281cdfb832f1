"""The page an operator-only action shows a user without the permission."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from .. import toggles
from ..models import App


def not_allowed(request: HttpRequest, app: App, section: str) -> HttpResponse:
    """403 with the reason and a way back to ``section`` ("controls" or "traces":
    also the name of its URL). The caller has audited the attempt."""
    return render(request, "dashboard/refused.html",
                  {"app": app, "section": section, "reason": toggles.NO_PERMISSION},
                  status=403)

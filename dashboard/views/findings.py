"""The findings page of an app, the actions on its advice (acknowledge, mute, unmute:
POST with CSRF, audited), and the rules pages rendered from ``tracker.rules``."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from tracker.rules import RULES

from .. import advice, groups
from ..live import findings
from ..models import Advice, App


def app_findings(request: HttpRequest, pk: int) -> HttpResponse:
    app = get_object_or_404(App, pk=pk)
    filters = findings.FindingFilters.from_query(request.GET)
    return render(request, "dashboard/findings.html", findings.findings_context(app, filters))


@require_POST
def advice_action(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Acknowledge, mute or unmute one group. htmx gets the group's new HTML; a plain
    form post is sent back to the findings page (or the ``next`` it names)."""
    if action not in advice.ACTIONS:
        raise Http404("no such action")
    try:
        group, _ = advice.change_status(pk, action, request.user)
    except Advice.DoesNotExist:
        raise Http404("no such finding") from None
    # every open findings page and the overview (open counts) show it
    layer = get_channel_layer()
    for name in (groups.app_findings(group.app_id), groups.OVERVIEW):
        async_to_sync(layer.group_send)(name, {"type": groups.CHANGED})
    if request.headers.get("HX-Request") == "true":
        group = Advice.objects.select_related("status_by", "engine", "process").get(pk=pk)
        return render(request, "dashboard/partials/advice.html", {"g": findings.describe(group)})
    target = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("findings", args=[group.app_id])
    return HttpResponseRedirect(target, status=303)


def rules(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard/rules.html", findings.rules_context())


def rule(request: HttpRequest, rule_id: str) -> HttpResponse:
    known = RULES.get(rule_id)
    if known is None:
        raise Http404("no such rule")
    return render(request, "dashboard/rule.html", findings.rule_context(known))

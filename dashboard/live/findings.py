"""Context and rendering of the findings page (an app's advice: findings grouped by
rule, engine and code location, by severity) and of the rules pages (the catalogue of
``tracker.rules``). As in ``fragments``, the page view, the actions' htmx answers and
the live socket render the same templates."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Mapping
from urllib.parse import urlencode

from django.db.models import Count, Sum
from django.template.loader import render_to_string
from django.utils import timezone

from tracker.rules import RULES, SEVERITIES, THRESHOLDS, Rule

from ..models import Advice, App

#: status filter → the statuses it shows ("active": everything but muted)
STATUS_FILTERS: dict[str, tuple[str, ...]] = {
    "active": (Advice.OPEN, Advice.ACKNOWLEDGED),
    Advice.OPEN: (Advice.OPEN,),
    Advice.ACKNOWLEDGED: (Advice.ACKNOWLEDGED,),
    Advice.MUTED: (Advice.MUTED,),
    "all": Advice.STATUSES,
}
DEFAULT_STATUS = "active"
SEVERITY_LABELS = {"error": "Errors", "warning": "Warnings", "info": "Info"}
#: evidence values shown as code
CODE_KEYS = frozenset({"sql", "fix", "code", "statement", "option"})
#: columns of an evidence table shown first (jsonb keeps no key order: the rest are sorted)
LEADING_COLUMNS = ("process", "engine", "name", "session", "thread")
_STATUS_ORDER = {status: index for index, status in enumerate(Advice.STATUSES)}


@dataclass(frozen=True)
class FindingFilters:
    """What the findings page shows: its GET parameters, validated."""

    engine: str = ""     # an engine name; "" for all
    severity: str = ""   # one of SEVERITIES; "" for all
    status: str = DEFAULT_STATUS

    @classmethod
    def from_query(cls, query: Mapping[str, Any]) -> "FindingFilters":
        severity = query.get("severity")
        status = query.get("status")
        return cls(engine=str(query.get("engine") or "")[:255],
                   severity=severity if severity in SEVERITIES else "",
                   status=status if status in STATUS_FILTERS else DEFAULT_STATUS)

    def query(self, **changes: Any) -> str:
        """The query string of these filters with ``changes`` (defaults left out)."""
        filters = replace(self, **changes)
        return urlencode([(name, value) for name, value, default in (
            ("engine", filters.engine, ""), ("severity", filters.severity, ""),
            ("status", filters.status, DEFAULT_STATUS)) if value != default])


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list) and all(not isinstance(v, (list, dict)) for v in value):
        return ", ".join(_text(v) for v in value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _label(name: str) -> str:
    return str(name).replace("_", " ")


def evidence_rows(evidence: Any) -> list[dict[str, Any]]:
    """Evidence (free JSON from the agent) as rows a template shows readably, each
    ``{"label", "kind", ...}``: ``code`` (SQL, a fix), ``stack`` (frames, folded),
    ``list`` (short values), ``table`` (a list of objects), ``map`` (an object) or
    ``text``. Keys sorted (jsonb does not keep their order), the stack last. Rows are
    dicts with fixed keys: an evidence key may be called ``items``."""
    if not isinstance(evidence, dict):
        evidence = {"value": evidence}
    rows = []
    for name in sorted(evidence, key=lambda key: (key == "stack", key)):
        value = evidence[name]
        row: dict[str, Any] = {"label": _label(name), "key": str(name)}
        if name == "stack" and isinstance(value, list):
            row.update(kind="stack", entries=[_text(frame) for frame in value])
        elif isinstance(value, str) and (name in CODE_KEYS or "\n" in value):
            row.update(kind="code", text=value)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            columns = sorted({key for item in value for key in item}, key=lambda key: (
                LEADING_COLUMNS.index(key) if key in LEADING_COLUMNS else len(LEADING_COLUMNS),
                key))
            row.update(kind="table", columns=[_label(c) for c in columns],
                       records=[[_text(item.get(c)) for c in columns] for item in value])
        elif isinstance(value, list):
            row.update(kind="list", entries=[_text(v) for v in value])
        elif isinstance(value, dict):
            row.update(kind="map", entries=[[_label(k), _text(v)] for k, v in sorted(value.items())])
        else:
            row.update(kind="text", text=_text(value))
        rows.append(row)
    return rows


def describe(group: Advice) -> Advice:
    """Add what the templates show about a group: ``rule_info`` (its catalogue entry,
    None for a rule this dashboard does not know), ``title``, ``evidence_rows``,
    ``seen_ago``."""
    now = timezone.now()
    group.rule_info = RULES.get(group.rule)
    group.title = group.rule_info.title if group.rule_info else group.rule
    group.evidence_rows = evidence_rows(group.evidence)
    group.first_ago = max(0.0, (now - group.first_seen).total_seconds())
    group.last_ago = max(0.0, (now - group.last_seen).total_seconds())
    return group


def findings_context(app: App, filters: FindingFilters) -> dict[str, Any]:
    everything = Advice.objects.filter(app=app)
    chosen = everything
    if filters.engine:
        chosen = chosen.filter(engine_name=filters.engine)
    if filters.severity:
        chosen = chosen.filter(severity=filters.severity)
    by_status = dict(chosen.values_list("status").annotate(n=Count("pk")).order_by())
    shown = list(chosen.filter(status__in=STATUS_FILTERS[filters.status])
                 .select_related("status_by", "engine", "process"))
    shown.sort(key=lambda g: (_STATUS_ORDER.get(g.status, 9), -g.last_seen.timestamp(), -g.pk))
    sections: dict[str, list[Advice]] = {severity: [] for severity in SEVERITIES}
    for group in shown:
        sections.setdefault(group.severity, []).append(describe(group))
    engines = sorted(set(everything.exclude(engine_name="")
                         .values_list("engine_name", flat=True).distinct()) |
                     ({filters.engine} if filters.engine else set()))
    return {
        "app": app,
        "filters": filters,
        "sections": [{"severity": severity, "label": SEVERITY_LABELS.get(severity, severity),
                      "groups": groups} for severity, groups in sections.items() if groups],
        "shown": len(shown),
        "counts": {status: by_status.get(status, 0) for status in Advice.STATUSES},
        "hidden_muted": (by_status.get(Advice.MUTED, 0)
                         if Advice.MUTED not in STATUS_FILTERS[filters.status] else 0),
        "muted_link": "?" + filters.query(status="all"),
        "engines": engines,
        "severities": SEVERITIES,
        "statuses": list(STATUS_FILTERS),
        "ws_query": filters.query(),
    }


def findings(app_pk: int, filters: FindingFilters, *, oob: bool) -> str:
    app = App.objects.get(pk=app_pk)
    return render_to_string("dashboard/partials/findings_live.html",
                            {**findings_context(app, filters), "oob": oob})


def open_counts() -> dict[int, list[tuple[str, int, str]]]:
    """Open advice per app by severity: app pk → [(severity, count, "2 errors"), …],
    most severe first."""
    counts: dict[int, dict[str, int]] = {}
    for app_id, severity, n in (Advice.objects.filter(status=Advice.OPEN)
                                .values_list("app_id", "severity")
                                .annotate(n=Count("pk")).order_by()):
        counts.setdefault(app_id, {})[severity] = n
    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    return {app_id: [(severity, n, _counted(severity, n))
                     for severity, n in sorted(by.items(), key=lambda kv: (order.get(kv[0], 9), kv[0]))]
            for app_id, by in counts.items()}


def _counted(severity: str, n: int) -> str:
    if severity in ("error", "warning"):
        return f"{n} {severity}{'s' if n != 1 else ''}"
    return f"{n} {severity}"


# -- the catalogue ------------------------------------------------------------------

def rule_threshold(rule: Rule) -> dict[str, Any] | None:
    if not rule.threshold:
        return None
    return {"name": rule.threshold, "default": THRESHOLDS.get(rule.threshold)}


def rules_context() -> dict[str, Any]:
    order = {severity: index for index, severity in enumerate(SEVERITIES)}
    rules = [{"rule": rule, "threshold": rule_threshold(rule)} for rule in RULES.values()]
    rules.sort(key=lambda r: order.get(r["rule"].severity, 9))  # stable: catalogue order
    return {"rules": rules}


def rule_context(rule: Rule) -> dict[str, Any]:
    seen = (Advice.objects.filter(rule=rule.id).values("app_id", "app__name")
            .annotate(groups=Count("pk"), occurrences=Sum("count")).order_by("app__name"))
    return {"rule": rule, "threshold": rule_threshold(rule), "seen": list(seen)}

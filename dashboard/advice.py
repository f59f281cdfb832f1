"""Advice: an app's findings grouped by (rule, engine, code location), and what users
decide about them.

Every ``finding`` event is stored twice: as an occurrence (``Finding``, the newest
FINDINGS_PER_PROCESS per process) and into its group (``Advice``): count, first and
last seen, the last message and evidence. A muted group still counts, hidden by
default; an acknowledged one that occurs again (after the acknowledgement) is open
again, with the time it reopened. Acknowledge, mute and unmute are written to the
audit log with the user and what came of it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, Iterable

from django.db import IntegrityError, transaction
from django.utils import timezone

from . import conf
from .models import Advice, AuditLog, Engine, Finding, Process
from .retention import keep_newest

#: user actions on a group: action → the status it sets
ACTIONS = {"acknowledge": Advice.ACKNOWLEDGED, "mute": Advice.MUTED, "unmute": Advice.OPEN}


def group_key(rule: str, subject: str, location: str) -> str:
    """The identity of a group within its app: the rule, what it is about (an engine
    name, a database server) and the code location."""
    return hashlib.sha256("\0".join((rule, subject, location)).encode()).hexdigest()


def _last(group: Advice, item: Finding) -> None:
    group.severity = item.severity
    group.message = item.message
    group.evidence = item.evidence
    group.session = item.session
    group.thread = item.thread
    group.process_id = item.process_id
    group.engine_id = item.engine_id


def _upsert(app_id: int, key: str, engine_name: str, items: list[tuple[Finding, datetime]],
            now: datetime) -> Advice:
    """Add occurrences (oldest first, each with its time on our clock) to their group."""
    first, last = items[0], items[-1]
    group = Advice.objects.select_for_update().filter(app_id=app_id, key=key).first()
    if group is None:
        created = Advice(app_id=app_id, key=key, rule=first[0].rule, engine_name=engine_name,
                         location=first[0].location, first_seen=first[1],
                         last_seen=last[1], count=len(items))
        _last(created, last[0])
        try:
            with transaction.atomic():  # another dashboard process may create it first
                created.save()
            return created
        except IntegrityError:
            group = Advice.objects.select_for_update().get(app_id=app_id, key=key)
    group.count += len(items)
    group.first_seen = min(group.first_seen, first[1])
    if last[1] >= group.last_seen:  # a late frame does not move the group back
        group.last_seen = last[1]
        _last(group, last[0])
    if (group.status == Advice.ACKNOWLEDGED and group.status_at is not None
            and last[1] > group.status_at):
        group.status = Advice.OPEN
        group.reopened_at = now
    group.save()
    return group


def record(process_id: int, findings: Iterable[Finding]) -> list[int]:
    """Add a frame's findings of one process to their groups; returns the group pks.
    Runs inside the frame's transaction."""
    findings = list(findings)
    if not findings:
        return []
    now = timezone.now()
    process = Process.objects.only("app_id", "clock_offset").get(pk=process_id)
    offset = timedelta(seconds=process.clock_offset)
    names = dict(Engine.objects.filter(pk__in={f.engine_id for f in findings if f.engine_id})
                 .values_list("pk", "name"))
    groups: dict[str, tuple[str, list[tuple[Finding, datetime]]]] = {}
    for item in sorted(findings, key=lambda f: f.at):
        name = names.get(item.engine_id, "")
        key = group_key(item.rule, name, item.location)
        groups.setdefault(key, (name, []))[1].append((item, item.at + offset))
    pks = [_upsert(process.app_id, key, name, items, now).pk
           for key, (name, items) in groups.items()]
    keep_newest(Advice.objects.filter(app_id=process.app_id), conf.get("ADVICE_PER_APP"),
                "last_seen")
    return sorted(pks)


def describe(group: Advice) -> str:
    """The group in words, for the audit log."""
    where = f" at {group.location}" if group.location else ""
    engine = f" on {group.engine_name}" if group.engine_name else ""
    return f"advice #{group.pk} of {group.app.name}: {group.rule}{where}{engine}"


@transaction.atomic
def change_status(pk: int, action: str, user: Any) -> tuple[Advice, AuditLog]:
    """Acknowledge, mute or unmute group ``pk`` (KeyError for another action,
    Advice.DoesNotExist for an unknown group); audited, with the outcome."""
    wanted = ACTIONS[action]
    group = Advice.objects.select_for_update().select_related("app").get(pk=pk)
    before = group.status
    after = before if action == "unmute" and before != Advice.MUTED else wanted
    if after != before:
        group.status, group.status_by, group.status_at = after, user, timezone.now()
        group.reopened_at = None
        group.save(update_fields=["status", "status_by", "status_at", "reopened_at"])
        result = f"{before} → {after}"
    else:
        result = f"unchanged: already {before}"
    entry = AuditLog.record(
        user, f"advice.{action}", describe(group), app=group.app, result=result,
        details={"advice": group.pk, "rule": group.rule, "engine": group.engine_name,
                 "location": group.location, "count": group.count, "from": before,
                 "to": after})
    return group, entry

"""Store what agents report about ORM sessions: summaries from ``state`` frames,
``snapshot`` replies, ``finding`` events. Called by ``ingest`` inside the transaction
of the frame being stored (``store_snapshot`` and ``store_refusal`` open their own).

A state frame carries only the sessions that changed since the previous frame (all
live ones again after a reconnect), and an ended session once more with ``ended``: so
a session is upserted by (process, key), and one the agent stops mentioning is left
as it was. A session the app reuses after closing it comes back without ``ended``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any, Iterable

from django.db import transaction
from django.utils import timezone

from . import conf, control
from .models import Engine, Finding, Process, SessionSnapshot, TrackedSession
from .retention import keep_newest

log = logging.getLogger("dashboard.agent")

#: how a session ended when the agent did not say: its process went away, or a
#: snapshot found it gone before a state frame said how it ended
DISCONNECTED, GONE, STALE = "disconnected", "gone", "stale"

_INT_MAX, _BIGINT_MAX = 2**31 - 1, 2**63 - 1

#: columns an upsert rewrites (everything but the identity and the engines)
UPDATED = ["kind", "created", "thread", "task", "state", "txn_since", "last_activity",
           "objects_count", "new", "dirty", "deleted", "statements", "flushes", "commits",
           "rollbacks", "location", "ended_at", "end", "summary", "updated_at"]


def when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=dt_timezone.utc)


def _count(value: int, top: int = _INT_MAX) -> int:
    return min(max(value, 0), top)


def columns(summary: dict[str, Any]) -> dict[str, Any]:
    """The TrackedSession columns of one SESSION summary."""
    return {
        "kind": summary["kind"][:200],
        "created": when(summary["created"]),
        "thread": summary["thread"][:200],
        "task": (summary.get("task") or "")[:200],
        "state": summary["state"][:16],
        "txn_since": when(summary.get("txn_since")),
        "last_activity": when(summary.get("last_activity")),
        "objects_count": _count(summary["objects"]),
        "new": _count(summary["new"]),
        "dirty": _count(summary["dirty"]),
        "deleted": _count(summary["deleted"]),
        "statements": _count(summary["statements"], _BIGINT_MAX),
        "flushes": _count(summary["flushes"]),
        "commits": _count(summary["commits"]),
        "rollbacks": _count(summary["rollbacks"]),
        "location": (summary.get("location") or "")[:1000],
        "ended_at": when(summary.get("ended")),
        "end": (summary.get("end") or "")[:16] if summary.get("ended") is not None else "",
        "summary": summary,
    }


def store_sessions(process_id: int, summaries: Iterable[dict[str, Any]],
                   now: datetime) -> list[int]:
    """Upsert session summaries (the last one wins for a key given twice); returns
    the pks of the sessions stored."""
    latest = {summary["id"][:32]: summary for summary in summaries}
    if not latest:
        return []
    TrackedSession.objects.bulk_create(
        [TrackedSession(process_id=process_id, key=key, updated_at=now, **columns(summary))
         for key, summary in latest.items()],
        update_conflicts=True, unique_fields=["process", "key"], update_fields=UPDATED)
    pks = dict(TrackedSession.objects.filter(process_id=process_id, key__in=list(latest))
               .values_list("key", "pk"))
    engines = dict(Engine.objects.filter(process_id=process_id).values_list("key", "pk"))
    # the engines a session used: rewritten whole (an engine not announced yet is
    # linked when the session is next reported)
    through = TrackedSession.engines.through
    through.objects.filter(trackedsession_id__in=list(pks.values())).delete()
    through.objects.bulk_create([
        through(trackedsession_id=pks[key], engine_id=engines[engine_key])
        for key, summary in latest.items()
        for engine_key in dict.fromkeys(summary["engines"]) if engine_key in engines
    ])
    return sorted(pks.values())


def end_sessions(process_id: int, now: datetime) -> list[int]:
    """Mark the process's live sessions ended (its agent went away: nobody will tell
    us how they end); returns their pks."""
    offset = (Process.objects.filter(pk=process_id)
              .values_list("clock_offset", flat=True).first()) or 0.0
    live = TrackedSession.objects.filter(process_id=process_id, ended_at__isnull=True)
    pks = sorted(live.values_list("pk", flat=True))
    live.update(ended_at=now - timedelta(seconds=offset), end=DISCONNECTED, updated_at=now)
    return pks


def end_sessions_of_silent_processes(now: datetime) -> int:
    """End the live sessions of processes silent for more than STALE_AFTER_SECONDS
    (a crashed app, or a dashboard restarted without seeing the disconnect): nothing
    will tell us how those sessions end, and showing them as live (worse, as idle in a
    transaction for ever) would be a lie. If the agent comes back, it reports its
    sessions again and they are live again. Returns how many were ended."""
    silent = now - timedelta(seconds=conf.get("STALE_AFTER_SECONDS"))
    stale = TrackedSession.objects.filter(ended_at__isnull=True, process__last_seen__lt=silent)
    ended = 0
    for process_id, last_seen in (Process.objects.filter(sessions__in=stale).distinct()
                                  .values_list("pk", "last_seen")):
        ended += TrackedSession.objects.filter(process_id=process_id, ended_at__isnull=True
                                               ).update(ended_at=last_seen, end=STALE,
                                                        updated_at=now)
    return ended


def prune_sessions(now: datetime) -> int:
    """Forget sessions (of every process) that ended more than RECENT_SESSION_SECONDS
    ago, with their snapshots; returns how many."""
    cutoff = now - timedelta(seconds=conf.get("RECENT_SESSION_SECONDS"))
    deleted, _ = TrackedSession.objects.filter(ended_at__isnull=False,
                                               updated_at__lt=cutoff).delete()
    return deleted


def finding(process_id: int, engine_pk: int | None, event: dict[str, Any]) -> Finding:
    """An unsaved Finding for a validated ``finding`` event (see ``event_dict``)."""
    evidence = event["evidence"]
    return Finding(
        process_id=process_id, engine_id=engine_pk, session=event["session"][:32],
        rule=event["rule"][:100], severity=event["severity"][:16],
        message=event["message"], thread=event["thread"][:200],
        location=event["location"][:1000],
        evidence=evidence if isinstance(evidence, dict) else {"value": evidence},
        at=when(event["ts"]),
    )


def keep_newest_findings(process_id: int) -> None:
    keep_newest(Finding.objects.filter(process_id=process_id),
                conf.get("FINDINGS_PER_PROCESS"), "at")


def session_pks(process_id: int, keys: Iterable[str]) -> list[int]:
    return sorted(TrackedSession.objects.filter(process_id=process_id, key__in=set(keys))
                  .values_list("pk", flat=True))


def _requested(process_id: int, request: str, key: str) -> tuple[TrackedSession, str, dict] | None:
    """The session a reply's request id names, if it is this process's session
    ``key``; None (logged) otherwise."""
    parsed = control.parse_request_id(request)
    session = None
    if parsed is not None:
        session = (TrackedSession.objects.select_for_update()
                   .filter(pk=parsed[0], process_id=process_id, key=key).first())
    if session is None:
        log.warning("process %s answered %r (session %r): no such request", process_id,
                    request[:200], key[:40])
        return None
    return session, parsed[1], parsed[2]


#: the maps of a CHANGE (attribute -> ...), kept in the agent's (the mapper's) order
CHANGE_MAPS = ("values", "attributes", "references", "collections")


def ordered_change(change: dict[str, Any]) -> dict[str, Any]:
    """A CHANGE with its maps as lists of [attribute, value] pairs: PostgreSQL's jsonb
    does not keep the order of an object's keys, and attributes are shown in order."""
    return {key: [[name, value] for name, value in value.items()]
            if key in CHANGE_MAPS else value for key, value in change.items()}


@transaction.atomic
def store_snapshot(process_id: int, message: dict[str, Any]) -> int | None:
    """Store a ``snapshot`` reply; returns its session's pk, or None when it answers
    no request of ours about this process (nothing is stored then).

    A reply with ``found`` false means the session is gone: it is marked ended (unless
    it is already) and the last snapshot stays for viewing; so it does when the reply's
    summary says the session ended (closed, not yet collected). A reply older than the
    stored snapshot (overtaken by a later one) is dropped.
    """
    requested = _requested(process_id, message["request"], message["session"])
    if requested is None:
        return None
    session, key, args = requested
    now = timezone.now()
    summary = message.get("summary")
    if summary is not None and summary["id"] == session.key:
        store_sessions(process_id, [summary], now)
        session.refresh_from_db()
        if summary.get("ended") is not None:
            # closed but not collected yet: its maps are empty now, and the page
            # shows what it tracked before
            return session.pk
    if not message["found"]:
        if session.ended_at is None:
            session.ended_at, session.end, session.updated_at = when(message["ts"]), GONE, now
            session.save(update_fields=["ended_at", "end", "updated_at"])
        return session.pk
    snapshot, _ = SessionSnapshot.objects.get_or_create(
        session=session, args_key=key, defaults={"args": args, "requested_at": now})
    taken = when(message["ts"])
    if snapshot.taken_at is not None and taken < snapshot.taken_at:
        return session.pk
    snapshot.taken_at = taken
    snapshot.data = {name: message[name] for name in (
        "entities", "total", "offset", "partial", "changes_total")}
    snapshot.data["changes"] = [ordered_change(change) for change in message["changes"]]
    if message.get("error"):
        snapshot.data["error"] = message["error"]
    snapshot.refusal = ""
    snapshot.save(update_fields=["taken_at", "data", "refusal"])
    return session.pk


@transaction.atomic
def store_refusal(process_id: int, ack: dict[str, Any]) -> int | None:
    """An agent refused a snapshot request (an agent without snapshots, say): note
    why on the snapshot, so the page says it instead of waiting. Returns the session
    pk, or None if the ack is not about one of our snapshot requests."""
    parsed = control.parse_request_id(ack["id"])
    if parsed is None or ack["status"] == "applied":
        return None
    session_pk, key, _ = parsed
    snapshot = (SessionSnapshot.objects
                .filter(session_id=session_pk, session__process_id=process_id, args_key=key)
                .first())
    if snapshot is None:
        return None
    snapshot.refusal = (ack.get("reason") or ack["status"])[:1000]
    snapshot.save(update_fields=["refusal"])
    return session_pk

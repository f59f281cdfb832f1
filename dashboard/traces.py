"""Recordings started from the dashboard: which processes a recording reaches, the
``record`` controls that start and stop it, their answers, and the audit.

A recording is asked for an app (every connected process of it), one process, an
engine by name (every connected process of the app that has it, or one process) or
one live session. Each process reached records into a ``Trace`` of its own (one
file per process), the traces of one request sharing ``recording``. The agent gets
a ``record`` control through its process group (``record:<trace pk>:start`` /
``…:stop``, trace id ``<trace pk>``), answers it with an ``ack`` (a refusal fails
the trace, with the agent's reason) and streams the lines back in ``trace`` frames
(``traces_store.store_frame``). Starting and stopping need the operator permission
(``toggles.PERMISSION``) and are audited like toggles (``AuditLog``: ``trace.start``,
``trace.stop``, an agent's refusal ``trace.result``, a refused attempt with its
reason).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from . import conf, groups, traces_store
from .models import App, AuditLog, Process, Trace, TrackedSession
from .toggles import NO_PERMISSION, process_name

RECORD = "record"
SCOPES = ("app", "process", "engine", "session")
#: the form's default length of a recording (the agent's own limit, too)
DEFAULT_SECONDS = 600


class RecordError(ValueError):
    """A recording that cannot be started as asked (the message says why)."""


def trace_id(trace: Trace) -> str:
    """The trace's id on the wire (the agent echoes it in its header and frames)."""
    return str(trace.pk)


def parse_trace_id(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


def where(scope: str, app_name: str, *, process: Process | None = None, engine: str = "",
          session: str = "") -> str:
    """What a recording covers, in words."""
    if scope == "app":
        return f"every process of {app_name}"
    if scope == "process":
        return f"process {process_name(process)}" if process else "a process"
    if scope == "engine":
        return f"engine {engine}" + (f" in {process_name(process)}" if process else "")
    if scope == "session":
        return f"session {session} of {process_name(process)}" if process else \
            f"session {session}"
    return scope


def describe(trace: Trace) -> str:
    return where(trace.scope, trace.app.name, process=trace.process, engine=trace.engine,
                 session=trace.session)


# -- starting -----------------------------------------------------------------------

@dataclass
class Asked:
    """A recording as the form asks for it."""

    scope: str
    name: str
    process: Process | None = None
    engine: str = ""
    session: TrackedSession | None = None
    seconds: float = DEFAULT_SECONDS

    @property
    def words(self) -> str:
        return where(self.scope, "", process=self.process, engine=self.engine,
                     session=self.session.key if self.session else "")


def targets(app: App, asked: Asked) -> list[Process]:
    """The connected processes a recording reaches; RecordError if none, or if what
    it names is not the app's."""
    if asked.scope not in SCOPES:
        raise RecordError(f"unknown scope {asked.scope[:20]!r} (app, process, engine or "
                          "session)")
    if not asked.name.strip():
        raise RecordError("give the recording a name")
    limit = conf.get("TRACE_MAX_SECONDS")
    if not 0 < asked.seconds <= limit:
        raise RecordError(f"a recording lasts more than 0 and at most {limit} seconds "
                          f"(TRACE_MAX_SECONDS), not {asked.seconds:g}")
    if asked.process is not None and asked.process.app_id != app.pk:
        raise RecordError(f"process {process_name(asked.process)} is not a process of "
                          f"{app.name}")
    connected = reachable(app)
    if asked.scope == "app":
        chosen = list(connected)
    elif asked.scope == "process":
        if asked.process is None:
            raise RecordError("choose the process to record")
        chosen = [p for p in connected if p.pk == asked.process.pk]
    elif asked.scope == "engine":
        if not asked.engine:
            raise RecordError("choose the engine to record")
        having = connected.filter(engines__name=asked.engine).distinct()
        if asked.process is not None:
            having = having.filter(pk=asked.process.pk)
        chosen = list(having)
        if not chosen:
            raise RecordError(f"no connected process of {app.name} has an engine named "
                              f"{asked.engine}"
                              + (f" in {process_name(asked.process)}" if asked.process
                                 else ""))
    else:
        session = asked.session
        if session is None:
            raise RecordError("choose the session to record")
        if session.process.app_id != app.pk:
            raise RecordError(f"session {session.key} is not a session of {app.name}")
        if not session.live:
            raise RecordError(f"session {session.key} of {process_name(session.process)} "
                              "has ended")
        chosen = [p for p in connected if p.pk == session.process_id]
    if not chosen:
        raise RecordError(f"nothing to record: no process of {app.name} is connected"
                          if asked.scope == "app" else
                          f"nothing to record: {asked.words} is not connected")
    return chosen


def reachable(app: App):
    """The app's processes a recording can reach: connected, and heard from within
    STALE_AFTER_SECONDS (one marked connected but silent — gone without a goodbye,
    e.g. under a dashboard that was killed — would never answer)."""
    since = timezone.now() - timedelta(seconds=conf.get("STALE_AFTER_SECONDS"))
    return (Process.objects.filter(app=app, connected=True, last_seen__gte=since)
            .order_by("host", "pid", "pk"))


@dataclass
class Started:
    traces: list[Trace]
    entry: AuditLog
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@transaction.atomic
def start(app: App, user: Any, asked: Asked) -> Started:
    """Start a recording for ``user`` (who must be an operator: the caller checks and
    audits a refusal with ``refuse``): one trace per process reached, audited; returns
    the ``record`` controls to send (``toggles.send``). RecordError: nothing stored."""
    processes = targets(app, asked)
    now = timezone.now()
    recording = uuid.uuid4().hex
    session_key = asked.session.key if asked.session else ""
    made = []
    for process in processes:
        trace = Trace.objects.create(
            app=app, process=process, recording=recording, scope=asked.scope,
            engine=asked.engine if asked.scope == "engine" else "",
            session=session_key, name=asked.name.strip()[:200], started_by=user,
            started_at=now, max_seconds=asked.seconds,
            path=traces_store.new_path(app.pk))
        trace.app, trace.process = app, process
        made.append(trace)
    names = [process_name(p) for p in processes]
    covered = where(asked.scope, app.name, process=asked.process, engine=asked.engine,
                    session=session_key)
    entry = AuditLog.record(
        user, "trace.start", f"Recording {asked.name.strip()!r} of {covered}", app=app, result=f"sent to {len(names)} process{'es' if len(names) != 1 else ''}: "
                        + ", ".join(names),
        details={"traces": [t.pk for t in made], "scope": asked.scope,
                 "engine": asked.engine, "session": session_key,
                 "max_seconds": asked.seconds, "processes": names})
    messages = []
    for trace in made:
        args: dict[str, Any] = {"trace": trace_id(trace), "action": "start",
                                "name": trace.name, "max_seconds": trace.max_seconds}
        if trace.engine:
            args["engine"] = trace.engine
        if trace.session:
            args["session"] = trace.session
        messages.append((groups.process(trace.process_id),
                         {"type": groups.CONTROL, "id": f"{RECORD}:{trace.pk}:start",
                          "action": RECORD, "args": args}))
    traces_store.prune(app.pk)
    return Started(traces=made, entry=entry, messages=messages)


def refuse(app: App, user: Any, action: str, what: str,
           reason: str = NO_PERMISSION) -> AuditLog:
    """Audit an attempt to start or stop a recording that was refused."""
    return AuditLog.record(user, f"trace.{action}", what, app=app,
                           result=f"refused: {reason}")


# -- stopping -----------------------------------------------------------------------

def stop_messages(traces: list[Trace]) -> list[tuple[str, dict[str, Any]]]:
    """The ``record`` controls that stop these traces' recordings."""
    return [(groups.process(trace.process_id),
             {"type": groups.CONTROL, "id": f"{RECORD}:{trace.pk}:stop", "action": RECORD,
              "args": {"trace": trace_id(trace), "action": "stop"}})
            for trace in traces if trace.process_id is not None]


@dataclass
class Stopped:
    traces: list[Trace]
    entry: AuditLog
    messages: list[tuple[str, dict[str, Any]]]


@transaction.atomic
def stop(trace: Trace, user: Any) -> Stopped:
    """Stop the recording ``trace`` belongs to (every trace of it still recording),
    for an operator; audited. A trace whose process is not connected fails at once
    (its agent stops by itself at its time limit; nothing it sends later is kept);
    the others complete when their last lines arrive."""
    now = timezone.now()
    # "of": the nullable process is outer-joined, which PostgreSQL cannot lock
    locked = (Trace.objects.select_for_update(of=("self",)).select_related("process", "app")
              .filter(status=Trace.RECORDING).order_by("pk"))
    rows = list(locked.filter(app_id=trace.app_id, recording=trace.recording)
                if trace.recording else locked.filter(pk=trace.pk))
    asked, gone = [], []
    for row in rows:
        row.stopped_by = user
        if row.process is not None and row.process.connected:
            asked.append(row)
            row.save(update_fields=["stopped_by"])
        else:
            gone.append(row)
            row.status, row.stopped_at = Trace.FAILED, now
            row.reason = ("stopped while its process was not connected: the lines it "
                          "recorded since were not received")
            row.save(update_fields=["stopped_by", "status", "stopped_at", "reason"])
    parts = []
    if asked:
        parts.append("asked " + ", ".join(process_name(t.process) for t in asked))
    if gone:
        parts.append("failed (not connected): " + ", ".join(
            process_name(t.process) if t.process else "a process gone" for t in gone))
    entry = AuditLog.record(user, "trace.stop", f"Recording {trace.name!r} of "
                            f"{describe(trace)}", app=trace.app,
                            result="; ".join(parts) or "nothing to stop: it has ended",
                            details={"traces": [t.pk for t in rows],
                                     "processes": [process_name(t.process) for t in rows
                                                   if t.process is not None]})
    return Stopped(traces=rows, entry=entry, messages=stop_messages(asked))


# -- the agent's answers ------------------------------------------------------------

def parse_ack_id(ack_id: str) -> tuple[int, str] | None:
    """(trace pk, start | stop) of ``record:<pk>:<action>``; None otherwise."""
    kind, _, rest = ack_id.partition(":")
    pk, _, action = rest.partition(":")
    if kind != RECORD or action not in ("start", "stop"):
        return None
    number = parse_trace_id(pk)
    return (number, action) if number is not None else None


@transaction.atomic
def store_ack(process_id: int, ack: dict[str, Any]) -> int | None:
    """A process answered a ``record`` control. A refused start fails the trace with
    the agent's reason (audited as ``trace.result``); a refused stop of a trace still
    recording too (the agent has no such recording: it restarted, or it ended and its
    last lines were lost). Returns the app pk whose traces changed, or None."""
    parsed = parse_ack_id(ack["id"])
    if parsed is None:
        return None
    pk, action = parsed
    trace = (Trace.objects.select_for_update(of=("self",)).select_related("app", "process")
             .filter(pk=pk, process_id=process_id).first())
    if trace is None or ack["status"] == "applied" or trace.status != Trace.RECORDING:
        return None
    reason = str(ack.get("reason") or "no reason given")[:2000]
    trace.status, trace.stopped_at = Trace.FAILED, timezone.now()
    trace.reason = f"the agent refused to {action}: {reason}"
    trace.save(update_fields=["status", "stopped_at", "reason"])
    AuditLog.record(trace.stopped_by if action == "stop" else trace.started_by,
                    "trace.result", f"Recording {trace.name!r} of {describe(trace)}",
                    app=trace.app, result=f"refused on {process_name(trace.process)}: "
                                          f"{reason}",
                    details={"trace": trace.pk, "action": action, "reason": reason})
    return trace.app_id


def expire(app_pk: int) -> int:
    """Fail the app's recordings whose end never came: TRACE_END_GRACE_SECONDS after
    their time limit the agent has stopped them for sure (its process died, or the
    connection was lost with their last lines). Returns how many."""
    now = timezone.now()
    grace = timedelta(seconds=conf.get("TRACE_END_GRACE_SECONDS"))
    late = [t.pk for t in Trace.objects.filter(app_id=app_pk, status=Trace.RECORDING)
            if t.started_at + timedelta(seconds=t.max_seconds) + grace < now]
    if not late:
        return 0
    return Trace.objects.filter(pk__in=late, status=Trace.RECORDING).update(
        status=Trace.FAILED, stopped_at=now,
        reason="its end never arrived: the process stopped or lost its connection "
               "before sending its last lines")

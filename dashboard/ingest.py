"""Store validated agent messages. Every function here takes a message that
``tracker.protocol.decode`` already accepted, and writes it in one transaction, so a
frame is stored whole or not at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone as dt_timezone
from typing import Any

from django.db import transaction
from django.utils import timezone

from tracker.protocol import event_dict

from . import advice, capacity, conf, session_ingest, statement_ingest
from .models import AgentToken, Engine, Finding, PoolEvent, PoolSample, Process
from .retention import keep_newest


def _when(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=dt_timezone.utc)


@dataclass
class Stored:
    """What a stored frame changed, for the consumer to tell the pages showing it."""

    engines: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)
    findings: int = 0
    # statement fingerprints and slow statements stored
    statements: int = 0


@transaction.atomic
def register_process(token: AgentToken, hello: dict[str, Any]) -> Process:
    """Create (or, on reconnect, revive) the process a ``hello`` describes."""
    info = hello["process"]
    now = timezone.now()
    process, _ = Process.objects.get_or_create(
        app=token.app, host=info["host"][:255], pid=info["pid"],
        started_at=_when(info["started"]),
        defaults={"last_seen": now},
    )
    process.ppid = info.get("ppid")
    process.argv = info["argv"]
    process.python_version = info["python"][:32]
    process.sqlalchemy_version = info["sqlalchemy"][:32]
    process.agent_version = info["agent"][:32]
    process.connected = True
    process.disconnected_at = None
    process.last_seen = now
    process.connections += 1
    process.save()
    for engine in hello["engines"]:
        upsert_engine(process, engine)
    capacity.check(process.app_id)
    # sessions still live from a connection whose end we never saw (the dashboard
    # restarted): ended until the agent reports them again (it sends every live
    # session on a new connection)
    session_ingest.end_sessions(process.pk, now)
    return process


def upsert_engine(process: Process, info: dict[str, Any]) -> Engine:
    defaults = {
        "name": info["name"][:255],
        "dialect": info["dialect"][:64],
        "driver": info["driver"][:64],
        "url": info["url"][:1000],
        "echo": info["echo"],
        "pool": info["pool"],
        "disposed": info.get("disposed") or 0,
    }
    # the server's settings are read at the engine's first connection, after the
    # hello: an announcement without them keeps what an earlier one said
    if isinstance(info.get("server"), dict):
        defaults["server"] = info["server"]
    # an announcement made when the engine or its pool was already gone says nothing
    # of them: it does not erase what an earlier one said
    if not defaults["dialect"]:
        for name in ("dialect", "driver", "url", "echo"):
            del defaults[name]
    if not defaults["pool"].get("class"):
        del defaults["pool"]
    engine, _ = Engine.objects.update_or_create(process=process, key=info["id"],
                                                defaults=defaults)
    return engine


@transaction.atomic
def store_engine(process_id: int, message: dict[str, Any]) -> int:
    process = Process.objects.get(pk=process_id)
    pk = upsert_engine(process, message["engine"]).pk
    capacity.check(process.app_id)
    return pk


class StateIngest:
    """Stores ``state`` frames of one connection; remembers when it last sampled each
    engine so the history keeps at most one point per POOL_SAMPLE_SECONDS."""

    def __init__(self, process_id: int) -> None:
        self.process_id = process_id
        self.engine_pks: dict[str, int] = {}
        self.last_sample: dict[int, datetime] = {}
        self.last_prune: datetime | None = None

    @transaction.atomic
    def store(self, message: dict[str, Any]) -> Stored:
        """Store one state frame (engines, then sessions); returns what it updated."""
        now = timezone.now()
        process = Process.objects.select_for_update().get(pk=self.process_id)
        agent = message["agent"]
        process.last_seen = now
        process.connected = True
        process.drops = agent["drops"]
        process.events_dropped = sum(agent["drops"].values())
        process.agent_errors = agent["errors"]
        process.queue = agent["queue"]
        process.clock_offset = (now - _when(message["ts"])).total_seconds()
        process.sessions_omitted = message.get("sessions_omitted") or 0
        process.save(update_fields=["last_seen", "connected", "drops", "events_dropped",
                                    "agent_errors", "queue", "clock_offset",
                                    "sessions_omitted"])
        sample_every = timedelta(seconds=conf.get("POOL_SAMPLE_SECONDS"))
        updated = []
        statements = 0
        for state in message["engines"]:
            pk = self._engine_pk(state["id"])
            if pk is None:
                continue  # an engine not announced yet: its state comes again shortly
            # holder ages are computed from the agent's clock: keep its timestamp;
            # statements have their own rows
            kept = {key: value for key, value in state.items() if key != "statements"}
            Engine.objects.filter(pk=pk).update(state={**kept, "ts": message["ts"]},
                                                state_at=now)
            statements += statement_ingest.store_statements(
                pk, state.get("statements") or (), now)
            updated.append(pk)
            last = self.last_sample.get(pk)
            if last is None or now - last >= sample_every:
                gauges = state["gauges"]
                PoolSample.objects.create(
                    engine_id=pk, at=now, checked_out=gauges["checked_out"],
                    idle=gauges.get("idle"), overflow=gauges.get("overflow"),
                    capacity=gauges.get("capacity"), waiting=gauges["waiting"],
                )
                self.last_sample[pk] = now
        sessions = session_ingest.store_sessions(self.process_id,
                                                 message.get("sessions") or (), now)
        if self.last_prune is None or now - self.last_prune > timedelta(seconds=30):
            self.prune(now)
        return Stored(engines=updated, sessions=sessions, statements=statements)

    def prune(self, now: datetime) -> None:
        cutoff = now - timedelta(seconds=conf.get("POOL_HISTORY_SECONDS"))
        PoolSample.objects.filter(engine__process_id=self.process_id, at__lt=cutoff).delete()
        session_ingest.prune_sessions(now)
        statement_ingest.prune(now)
        self.last_prune = now

    def _engine_pk(self, key: str) -> int | None:
        pk = self.engine_pks.get(key)
        if pk is None:
            pk = (Engine.objects.filter(process_id=self.process_id, key=key)
                  .values_list("pk", flat=True).first())
            if pk is not None:
                self.engine_pks[key] = pk
        return pk

    def forget_engine(self, key: str) -> None:
        self.engine_pks.pop(key, None)

    @transaction.atomic
    def store_events(self, message: dict[str, Any]) -> Stored:
        """Store pool events, keeping the newest EVENTS_PER_ENGINE per engine; slow
        statements, the newest SLOW_STATEMENTS_PER_ENGINE per engine; and findings,
        the newest FINDINGS_PER_PROCESS per process, each also counted in its group
        of advice."""
        touched: set[int] = set()
        rows = []
        findings = []
        slow = []
        for raw in message["events"]:
            event = event_dict(raw)
            if event["kind"] == "finding":
                # kept even when its engine is unknown: "" means about no engine
                engine_pk = self._engine_pk(event["engine"]) if event["engine"] else None
                findings.append(session_ingest.finding(self.process_id, engine_pk, event))
                continue
            pk = self._engine_pk(event["engine"])
            if pk is None:
                continue
            if event["kind"] == "slow_statement":
                slow.append(statement_ingest.slow_statement(pk, event))
                continue
            detail = ""
            if event["kind"] == "checkout_timeout":
                detail = f"waited {event['waited']:.3f} s"
            elif event["kind"] == "invalidate":
                detail = str(event["error"])
            rows.append(PoolEvent(
                engine_id=pk, at=_when(event["ts"]), kind=event["kind"],
                thread=str(event.get("thread", ""))[:200],
                location=str(event.get("location", ""))[:1000], detail=detail[:2000],
            ))
            touched.add(pk)
        PoolEvent.objects.bulk_create(rows)
        keep = conf.get("EVENTS_PER_ENGINE")
        for pk in touched:
            keep_newest(PoolEvent.objects.filter(engine_id=pk), keep, "at")
        statement_ingest.store_slow_statements(slow)
        sessions: list[int] = []
        if findings:
            Finding.objects.bulk_create(findings)
            advice.record(self.process_id, findings)
            session_ingest.keep_newest_findings(self.process_id)
            sessions = session_ingest.session_pks(
                self.process_id, (row.session for row in findings if row.session))
        return Stored(engines=sorted(touched), sessions=sessions, findings=len(findings),
                      statements=len(slow))


@transaction.atomic
def mark_disconnected(process_id: int) -> Stored:
    """Mark the process disconnected and its live sessions ended; returns the pks of
    its engines and of those sessions."""
    now = timezone.now()
    Process.objects.filter(pk=process_id).update(connected=False, disconnected_at=now,
                                                 last_seen=now)
    sessions = session_ingest.end_sessions(process_id, now)
    engines = list(Engine.objects.filter(process_id=process_id).values_list("pk", flat=True))
    return Stored(engines=engines, sessions=sessions)

"""What a trace's page shows, read from its file in one pass with bounded memory: a
timeline (a lane per application thread — transactions, flushes and statements as
nested spans, lazy loads as ticks —, a lane per pooled connection — who held it and
what ran on it —, the checked-out count per engine, findings), the table of
statements and the flushes with the changes they wrote (old → new).

Only what the trace holds is shown: parameters appear only where the agent captured
them (already redacted by it), flushed values as it rendered and masked them.
At most TRACE_TIMELINE_SPANS spans are drawn and TRACE_TABLE_ROWS rows listed (the
first ones: the download has everything); the counts cover the whole trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterator

from tracker.rules import RULES
from tracker.traces import jsonl
from tracker.traces.chrome import span_name

from . import conf, traces_store
from .live.sessions import change_rows
from .models import Trace
from .session_ingest import ordered_change

#: sub-rows of a thread lane and of a connection lane
THREAD_ROWS = {"transaction": 0, "flush": 1, "statement": 2, "lazy_load": 2}
CONNECTION_ROWS = {"held": 0, "statement": 1}


@dataclass
class Span:
    kind: str          # transaction | flush | statement | held | lazy_load | finding
    start: float       # seconds from the trace's start
    dur: float
    label: str
    title: str
    row: int = 0
    anchor: str = ""   # the table row it links to
    css: str = ""      # extra classes (error, rollback, open…)
    left: float = 0.0  # percent of the window, set by ``place``
    width: float = 0.0


@dataclass
class Lane:
    key: str
    name: str
    kind: str          # thread | connection | findings
    rows: int
    detail: str = ""
    spans: list[Span] = field(default_factory=list)


@dataclass
class Counter:
    """Checked-out connections of one engine over time (an SVG step line)."""

    engine: str
    points: list[tuple[float, int]] = field(default_factory=list)
    peak: int = 0
    path: str = ""


@dataclass
class Timeline:
    header: dict[str, Any] = field(default_factory=dict)
    lanes: list[Lane] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    statements: list[dict[str, Any]] = field(default_factory=list)
    flushes: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    begin: float = 0.0         # where the window starts, in seconds from the trace's start
    duration: float = 0.0      # seconds the window covers (from the first span drawn to
                               # the end of the last)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    spans_drawn: int = 0
    spans_total: int = 0
    end: dict[str, Any] | None = None
    error: str = ""            # why the file could not be read (to its end)
    parameters: bool = False

    @property
    def clipped(self) -> bool:
        return self.spans_total > self.spans_drawn


def build(trace: Trace) -> Timeline:
    """Read ``trace``'s file and lay it out."""
    timeline = Timeline()
    try:
        header, records = traces_store.read(trace)
    except FileNotFoundError:
        timeline.error = "no line received yet" if trace.live else "its file is missing"
        return timeline
    except (OSError, jsonl.TraceError) as exc:
        timeline.error = str(exc).replace(str(traces_store.file_of(trace)), "the file")
        return timeline
    timeline.header = header
    timeline.parameters = bool(header.get("parameters"))
    try:
        _Reader(timeline, header).read(records)
    except jsonl.TraceError as exc:
        # a recording's last line may be half written while we read
        timeline.error = str(exc).replace(str(traces_store.file_of(trace)), "the file")
    finally:
        records.close()
    return timeline


class _Reader:
    def __init__(self, timeline: Timeline, header: dict[str, Any]) -> None:
        self.t = timeline
        self.start = header["started"]
        self.max_spans = conf.get("TRACE_TIMELINE_SPANS")
        self.max_rows = conf.get("TRACE_TABLE_ROWS")
        self.engines: dict[str, str] = {}
        self.threads: dict[int, Lane] = {}
        self.connections: dict[int, Lane] = {}
        self.findings = Lane("findings", "findings", "findings", 1)
        self.counters: dict[str, Counter] = {}
        self.open_txn: dict[str, tuple[dict[str, Any], int]] = {}  # session -> begin, n
        self.session_last: dict[str, float] = {}  # session -> the end of its last event
        self.session_conn: dict[str, int] = {}    # session -> the connection it last used
        self.checkouts: dict[int, dict[str, Any]] = {}
        self.counts = dict.fromkeys(("statement", "transaction", "flush", "lazy_load",
                                     "finding", "checkout", "checkin", "error",
                                     "rollback", "change"), 0)
        self.last = 0.0            # the end of the latest thing seen
        self.first_drawn: float | None = None  # the start of the earliest span drawn
        self.last_drawn = 0.0      # the end of the latest span drawn

    def read(self, records: Iterator[dict[str, Any]]) -> None:
        for record in records:
            if traces_store.check_record(record):
                continue  # stored traces were checked; skip what a reader cannot use
            kind = record["type"]
            handler = getattr(self, f"_{kind}", None)
            if "ts" in record:
                ends = self._at(record["ts"]) + record.get("dur", 0.0)
                self.last = max(self.last, ends)
                if record.get("session") and kind != "transaction":
                    sid = record["session"]
                    self.session_last[sid] = max(self.session_last.get(sid, ends), ends)
            if handler is not None:
                handler(record)
        for sid in list(self.open_txn):
            self._unended(sid)
        self._finish()

    # -- helpers ------------------------------------------------------------------------

    def _at(self, ts: float) -> float:
        return ts - self.start

    def _thread_lane(self, record: dict[str, Any]) -> Lane:
        tid = record["tid"]
        lane = self.threads.get(tid)
        if lane is None:
            name = record.get("thread") or f"thread {tid}"
            lane = self.threads[tid] = Lane(f"t{tid}", name, "thread", 3, detail=f"tid {tid}")
        return lane

    def _connection_lane(self, conn: int, engine_id: str) -> Lane:
        lane = self.connections.get(conn)
        if lane is None:
            engine = self.engines.get(engine_id, engine_id)
            lane = self.connections[conn] = Lane(f"c{conn}", f"connection #{conn}",
                                                 "connection", 2, detail=engine)
        return lane

    def _draw(self, lane: Lane, span: Span) -> None:
        self.t.spans_total += 1
        if self.t.spans_drawn >= self.max_spans:
            return
        self.t.spans_drawn += 1
        self.last_drawn = max(self.last_drawn, span.start + span.dur)
        if self.first_drawn is None or span.start < self.first_drawn:
            self.first_drawn = span.start
        lane.spans.append(span)

    # -- records ------------------------------------------------------------------------

    def _engine(self, record: dict[str, Any]) -> None:
        self.engines[record["id"]] = record["name"]

    def _connection(self, record: dict[str, Any]) -> None:
        self._connection_lane(record["id"], record["engine"])

    def _statement(self, record: dict[str, Any]) -> None:
        self.counts["statement"] += 1
        number = self.counts["statement"]
        failed = "error" in record
        self.counts["error"] += failed
        start, dur = self._at(record["ts"]), record["dur"]
        engine = self.engines.get(record["engine"], record["engine"])
        name = span_name(record["sql"])
        title = (f"#{number} {name} · {_ms(dur)} · {record['rows']} row(s) · "
                 f"session {record['session'] or '–'} · connection #{record['conn']}\n"
                 f"{record['sql'][:500]}" + (f"\n{record['error']}" if failed else ""))
        css = "error" if failed else ""
        anchor = f"st-{number}"
        self._draw(self._thread_lane(record), Span("statement", start, dur, name, title,
                                              THREAD_ROWS["statement"], anchor, css))
        self._draw(self._connection_lane(record["conn"], record["engine"]),
                   Span("statement", start, dur, name, title, CONNECTION_ROWS["statement"],
                        anchor, css))
        if record["session"]:
            self.session_conn[record["session"]] = record["conn"]
        if len(self.t.statements) < self.max_rows:
            self.t.statements.append({
                "number": number, "anchor": anchor, "at": start, "dur": dur,
                "thread": record.get("thread") or f"thread {record['tid']}",
                "session": record["session"], "conn": record["conn"], "engine": engine,
                "sql": record["sql"], "name": name, "rows": record["rows"],
                "executemany": record["executemany"], "has_params": "params" in record,
                "params": record.get("params"), "error": record.get("error", "")})

    def _transaction(self, record: dict[str, Any]) -> None:
        sid = record["session"]
        if record["phase"] == "begin":
            self.counts["transaction"] += 1
            if sid in self.open_txn:  # the session began again: the last one ended unseen
                self._unended(sid)
            self.open_txn[sid] = (record, self.counts["transaction"])
            self.session_last.pop(sid, None)
            return
        began = self.open_txn.pop(sid, None)
        if record["phase"] == "rollback":
            self.counts["rollback"] += 1
        # "close": ended by the session's close, neither committed nor rolled back by
        # the application (usual for a read-only session; the pool resets it)
        outcome = {"close": "closed without commit or rollback (the pool resets the "
                            "connection)"}.get(record["phase"], record["phase"])
        if began is not None:
            self._txn_span(began[0], self._at(record["ts"]), outcome, record["phase"],
                           began[1])

    def _unended(self, sid: str, closed_at: float | None = None) -> None:
        """A transaction whose commit or rollback the trace does not have: the session
        was closed (a close ends it without either), or it was still open when the
        recording stopped. Drawn up to the return of its connection to the pool when
        that came (the close), else to the session's last event."""
        began, number = self.open_txn.pop(sid)
        if closed_at is not None:
            self._txn_span(began, closed_at, "no commit or rollback in the trace: ended "
                                             "when the session returned its connection "
                                             "(closed)", "open", number)
            return
        end = max(self._at(began["ts"]), self.session_last.get(sid, 0.0))
        self._txn_span(began, end, "no commit or rollback in the trace (the session was "
                                   "closed, or the recording stopped first); drawn to its "
                                   "last event", "open", number)

    def _txn_span(self, began: dict[str, Any], end: float, outcome: str, css: str,
                  number: int) -> None:
        start = self._at(began["ts"])
        sid = began["session"]
        self._draw(self._thread_lane(began), Span(
            "transaction", start, max(0.0, end - start), f"transaction {sid}",
            f"transaction of session {sid} · {_ms(end - start)} · {outcome}",
            THREAD_ROWS["transaction"], css=css))

    def _flush(self, record: dict[str, Any]) -> None:
        self.counts["flush"] += 1
        number = self.counts["flush"]
        changes = record["changes"]
        self.counts["change"] += len(changes)
        start, dur = self._at(record["ts"]), record["dur"]
        ops = _ops(changes)
        anchor = f"fl-{number}"
        self._draw(self._thread_lane(record), Span(
            "flush", start, dur, f"flush {record['session']}",
            f"flush #{number} of session {record['session']} · {_ms(dur)} · {ops}",
            THREAD_ROWS["flush"], anchor))
        if len(self.t.flushes) < self.max_rows:
            self.t.flushes.append({
                "number": number, "anchor": anchor, "at": start, "dur": dur,
                "session": record["session"],
                "thread": record.get("thread") or f"thread {record['tid']}", "ops": ops,
                "changes": [{"op": c["op"], "class": c["class"],
                             "identity": c.get("identity") or "",
                             "rows": change_rows(ordered_change(c))} for c in changes]})

    def _lazy_load(self, record: dict[str, Any]) -> None:
        self.counts["lazy_load"] += 1
        self._draw(self._thread_lane(record), Span(
            "lazy_load", self._at(record["ts"]), 0.0, "",
            f"lazy load {record['relationship']} of {record.get('identity') or '?'} "
            f"(session {record['session']})", THREAD_ROWS["lazy_load"]))

    def _finding(self, record: dict[str, Any]) -> None:
        self.counts["finding"] += 1
        if len(self.t.findings) < self.max_rows:
            self.t.findings.append({**record, "at": self._at(record["ts"]),
                                    "known": record["rule"] in RULES})
        self._draw(self.findings, Span(
            "finding", self._at(record["ts"]), 0.0, record["rule"],
            f"{record['severity']}: {record['rule']}\n{record['message'][:500]}"
            + (f"\n{record['location']}" if record.get("location") else ""),
            0, css=record["severity"] if record["severity"] in ("error", "warning", "info")
            else ""))

    def _checkout(self, record: dict[str, Any]) -> None:
        self.counts["checkout"] += 1
        self._connection_lane(record["conn"], record["engine"])
        self.checkouts[record["conn"]] = record
        self._count(record)

    def _checkin(self, record: dict[str, Any]) -> None:
        self.counts["checkin"] += 1
        lane = self._connection_lane(record["conn"], record["engine"])
        out = self.checkouts.pop(record["conn"], None)
        end = self._at(record["ts"])
        for sid in [sid for sid in self.open_txn if self.session_conn.get(sid) == record["conn"]]:
            self._unended(sid, closed_at=end)
        held = record.get("held")
        start = end - held if isinstance(held, (int, float)) else (
            self._at(out["ts"]) if out is not None else None)
        if start is not None:
            holder = self.threads.get(record["tid"])
            # the lane's name was read while the thread ran; a checkin's may come after
            # the thread ended ("thread 1234…")
            who = holder.name if holder is not None else (
                record.get("thread") or (out or {}).get("thread") or "?")
            wait = (out or {}).get("wait")
            self._draw(lane, Span("held", start, max(0.0, end - start), f"held by {who}",
                                  f"held by {who} for {_ms(end - start)}"
                                  + (f" (waited {_ms(wait)} for it)"
                                     if isinstance(wait, (int, float)) else ""),
                                  CONNECTION_ROWS["held"]))
        self._count(record)

    def _count(self, record: dict[str, Any]) -> None:
        checked_out = record.get("checked_out")
        if checked_out is None:
            return
        engine = self.engines.get(record["engine"], record["engine"])
        counter = self.counters.get(engine)
        if counter is None:
            counter = self.counters[engine] = Counter(engine)
        counter.peak = max(counter.peak, checked_out)
        if len(counter.points) < self.max_spans:
            counter.points.append((self._at(record["ts"]), checked_out))

    def _end(self, record: dict[str, Any]) -> None:
        self.t.end = record
        self.last = max(self.last, self._at(record["ts"]))

    # -- layout -------------------------------------------------------------------------

    def _finish(self) -> None:
        t = self.t
        # from the first span drawn to the end of the last one: the time before the
        # first event (a recording waiting for the app) is left out
        begin = self.first_drawn or 0.0
        window = max(self.last_drawn - begin, 1e-6)
        t.begin, t.duration = begin, window
        lanes = list(self.threads.values())  # in the order they first appear
        lanes += [self.connections[number] for number in sorted(self.connections)]
        if self.findings.spans:
            lanes.append(self.findings)
        for lane in lanes:
            for span in lane.spans:
                span.left = round(min(100.0, max(0.0, (span.start - begin) / window * 100)),
                                  4)
                span.width = round(min(100.0 - span.left, span.dur / window * 100), 4)
        t.lanes = lanes
        for counter in self.counters.values():
            counter.path = _step_path(counter.points, begin, window, max(counter.peak, 1))
        t.counters = list(self.counters.values())
        t.ticks = _ticks(begin, window)
        t.counts = self.counts


def _ms(seconds: float) -> str:
    from .templatetags.retort import duration

    return duration(seconds)


def _ops(changes: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for change in changes:
        counts[change["op"]] = counts.get(change["op"], 0) + 1
    return ", ".join(f"{n} {op}{'s' if n != 1 else ''}" for op, n in counts.items()) \
        or "nothing written"


def _ticks(begin: float, window: float) -> list[tuple[float, str]]:
    """Axis ticks: (percent, time since the trace's start) at a round step, 4 to 10
    of them."""
    raw = window / 8
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    ticks = []
    index = math.ceil(begin / step - 1e-9)
    while index * step <= (begin + window) * (1 + 1e-9) and len(ticks) < 12:
        at = index * step
        ticks.append((round((at - begin) / window * 100, 4), _ms(at) if at else "0"))
        index += 1
    return ticks


def _step_path(points: list[tuple[float, int]], begin: float, window: float,
               peak: int) -> str:
    """An SVG path (viewBox 0 0 1000 100) stepping through ``points``."""
    if not points:
        return ""
    def y(count: int) -> float:
        return round(100 - count / peak * 96, 2)

    out, level = [], 0
    out.append(f"M0 {y(0)}")
    for at, count in points:
        x = round(min(1000.0, max(0.0, (at - begin) / window * 1000)), 2)
        out.append(f"H{x} V{y(count)}")
        level = count
    out.append(f"H1000 V{y(level)}")
    return " ".join(out)

"""Recordings started from the dashboard: the ``record`` control starts or stops a
trace whose lines are streamed to the dashboard in ``trace`` frames instead of a file.

Lines wait in a bounded outbox until the worker sends them (beyond the bound they are
dropped, and the ``end`` line counts them). A recording stops by itself after
``max_seconds`` or ``max_records``, so one forgotten in the dashboard cannot run for
ever.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

import orjson

from ..protocol import MAX_FRAME_BYTES, ProtocolError, control_args
from .recording import Trace

if TYPE_CHECKING:
    from ..agent import Agent

#: lines kept for sending while the dashboard is away (beyond: dropped, counted)
MAX_OUTBOX = 100_000
MAX_SECONDS = 600.0
MAX_RECORDS = 1_000_000
#: room kept in a frame for its envelope
FRAME_MARGIN = 4096


class _Outbox:
    """A file-like sink for a trace's lines."""

    def __init__(self, limit: int) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.limit = limit
        self.dropped = 0
        self.closed = False

    def write(self, line: bytes) -> None:
        if len(self.lines) < self.limit:
            self.lines.append(line)
        else:
            self.dropped += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class StreamedTrace(Trace):
    """A trace whose lines go to the dashboard."""

    def __init__(self, trace_id: str, name: str, *, max_seconds: float, max_records: int,
                 **scope: Any) -> None:
        super().__init__(name, path="-", **scope)
        self.trace_id = trace_id
        self.max_seconds = max_seconds
        self.max_records = max_records
        self.seq = 0
        self.stop_reason = ""

    def _open(self) -> _Outbox:
        return _Outbox(MAX_OUTBOX)

    def _header(self) -> dict[str, Any]:
        return {**super()._header(), "trace": self.trace_id}


class RemoteTraces:
    """The agent's dashboard-started recordings (worker thread only)."""

    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.active: dict[str, StreamedTrace] = {}
        self.finished: list[StreamedTrace] = []

    def control(self, args: dict[str, Any], request: str) -> tuple[str, str]:
        """``record`` control: start or stop one recording."""
        try:
            control_args("record", args)
        except ProtocolError as exc:
            return "refused", str(exc)
        trace_id, action = args["trace"], args["action"]
        if action == "stop":
            trace = self.active.pop(trace_id, None)
            if trace is None:
                return "refused", f"no recording {trace_id} in this process"
            trace.stop_reason = "stopped from the dashboard"
            trace.stop()
            self.finished.append(trace)
            return "applied", ""
        if action != "start":
            return "refused", f"unknown record action {action!r} (start or stop)"
        if trace_id in self.active:
            return "applied", "already recording"
        scope: dict[str, Any] = {}
        if args.get("engine"):
            scope["engine"] = args["engine"]
        if args.get("session"):
            entry = self.agent.sessions.find(args["session"])
            session = entry.ref() if entry is not None else None
            if session is None:
                return "refused", f"no live session {args['session']} in this process"
            scope["session"] = session
        trace = StreamedTrace(trace_id, args.get("name") or trace_id,
                              max_seconds=float(args.get("max_seconds") or MAX_SECONDS),
                              max_records=int(args.get("max_records") or MAX_RECORDS),
                              **scope)
        trace.start()
        self.active[trace_id] = trace
        return "applied", ""

    def frames(self) -> list[dict[str, Any]]:
        """``trace`` messages to send now: new lines of every recording, and the last
        ones of recordings that ended (by request or by their limits)."""
        now = time.time()
        for trace_id, trace in list(self.active.items()):
            over = ("time limit" if now - (trace.started or now) > trace.max_seconds else
                    "record limit" if trace.events >= trace.max_records else "")
            if over:
                trace.stop_reason = f"stopped at its {over}"
                trace.stop()
                self.finished.append(self.active.pop(trace_id))
        messages: list[dict[str, Any]] = []
        for trace in list(self.active.values()) + self.finished:
            messages.extend(self._drain(trace, final=trace in self.finished))
        self.finished = [t for t in self.finished if t._file.lines]
        return messages

    def _drain(self, trace: StreamedTrace, final: bool) -> list[dict[str, Any]]:
        lines = trace._file.lines
        messages = []
        budget = MAX_FRAME_BYTES - FRAME_MARGIN
        while lines:
            batch: list[Any] = []
            size = 0
            while lines and (not batch or size + len(lines[0]) < budget):
                line = lines.popleft()
                size += len(line) + 1
                batch.append(orjson.loads(line))
            trace.seq += 1
            message: dict[str, Any] = {"t": "trace", "trace": trace.trace_id,
                                       "seq": trace.seq, "records": batch}
            if final and not lines:
                message["end"] = True
                if trace.stop_reason:
                    message["reason"] = trace.stop_reason
            messages.append(message)
        return messages

    def stop_all(self) -> None:
        for trace in self.active.values():
            trace.stop_reason = "the process stopped"
            trace.stop()
            self.finished.append(trace)
        self.active.clear()

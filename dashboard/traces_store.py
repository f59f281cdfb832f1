"""Trace files: where they live, what a record must hold, appending the lines an agent
streams (``trace`` frames), importing an uploaded file, and pruning.

A trace is one JSON Lines file in the agent's own format (``tracker.traces.jsonl``):
the exporters of ``tracker.traces`` read it as it is. Memory stays bounded: a frame
(at most ``tracker.protocol.MAX_FRAME_BYTES``) is written as it comes, an upload is
checked line by line. Disk stays bounded: TRACE_MAX_BYTES per trace (a recording
beyond it is stopped and marked truncated; a larger upload is refused) and
TRACES_PER_APP traces per app.

Nothing of a record that is not what the format says is stored: the protocol checks
a frame's envelope, :func:`check_record` each record in it (the fields the exporters
and the timeline read, with their types).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tracker.traces import jsonl

from . import conf
from .models import Trace

NUM = (int, float)
STR = (str,)
OPT_STR = (str, type(None))
OPT_NUM = (int, float, type(None))
OPT_INT = (int, type(None))
ANY = object
#: per record type, the fields read by the exporters and the timeline (optional ones
#: end with "?"); other fields are kept as they are (readers ignore them)
FIELDS: dict[str, dict[str, Any]] = {
    "header": {"format": STR, "version": (int,), "name": STR, "started": NUM,
               "process": (dict,), "scope?": (dict,), "parameters?": (bool,)},
    "engine": {"id": STR, "name": STR, "dialect?": STR, "driver?": STR, "url?": OPT_STR},
    "connection": {"id": (int,), "engine": STR},
    "statement": {"ts": NUM, "dur": NUM, "tid": (int,), "thread": OPT_STR, "engine": STR,
                  "conn": (int,), "session": OPT_STR, "sql": STR, "executemany": (bool,),
                  "rows": (int,), "params?": ANY, "error?": STR},
    "transaction": {"ts": NUM, "tid": (int,), "thread": OPT_STR, "session": STR,
                    "phase": STR},
    "flush": {"ts": NUM, "dur": NUM, "tid": (int,), "thread": OPT_STR, "session": STR,
              "changes": (list,)},
    "checkout": {"ts": NUM, "tid": (int,), "thread": OPT_STR, "engine": STR, "conn": (int,),
                 "checked_out?": OPT_INT, "wait?": OPT_NUM},
    "checkin": {"ts": NUM, "tid": (int,), "thread": OPT_STR, "engine": STR, "conn": (int,),
                "checked_out?": OPT_INT, "held?": OPT_NUM},
    "lazy_load": {"ts": NUM, "tid": (int,), "thread": OPT_STR, "session": STR,
                  "relationship": STR, "identity": OPT_STR},
    "finding": {"ts": NUM, "rule": STR, "severity": STR, "session": OPT_STR,
                "thread": OPT_STR, "location": OPT_STR, "message": STR, "evidence?": ANY},
    "end": {"ts": NUM, "events": (int,), "dropped": (int,)},
}
PHASES = ("begin", "commit", "rollback", "close")
PROCESS_FIELDS = {"host": STR, "pid": (int,), "app": STR, "python": STR}
CHANGE_FIELDS = {"op": STR, "class": STR, "identity": OPT_STR}


def check_record(record: Any) -> str:
    """Why ``record`` is not a trace record this dashboard stores ("" if it is)."""
    if not isinstance(record, dict):
        return "not an object"
    kind = record.get("type")
    spec = FIELDS.get(kind) if isinstance(kind, str) else None
    if spec is None:
        return f"unknown record type {str(kind)[:40]!r}"
    problem = _fields(record, spec)
    if problem:
        return f"{kind}: {problem}"
    if kind == "header":
        if record["format"] != jsonl.FORMAT or record["version"] != jsonl.VERSION:
            return (f"header: not a {jsonl.FORMAT} version {jsonl.VERSION} "
                    f"({str(record['format'])[:40]!r} version {record['version']})")
        problem = _fields(record["process"], PROCESS_FIELDS)
        if problem:
            return f"header.process: {problem}"
    elif kind == "transaction" and record["phase"] not in PHASES:
        return f"transaction: unknown phase {record['phase'][:20]!r}"
    elif kind == "flush":
        for index, change in enumerate(record["changes"]):
            problem = (_fields(change, CHANGE_FIELDS) if isinstance(change, dict)
                       else "not an object")
            if problem:
                return f"flush: change {index + 1}: {problem}"
    return ""


def _fields(value: dict[str, Any], spec: dict[str, Any]) -> str:
    for name, types in spec.items():
        optional = name.endswith("?")
        key = name.rstrip("?")
        if key not in value:
            if optional:
                continue
            return f"{key} missing"
        if types is ANY:
            continue
        item = value[key]
        if isinstance(item, bool) and bool not in types:
            return f"{key} has the wrong type (bool)"
        if not isinstance(item, types):
            return f"{key} has the wrong type ({type(item).__name__})"
    return ""


# -- files --------------------------------------------------------------------------

def directory() -> Path:
    """Where trace files are written (TRACES_DIR, or RETORT_DATA_DIR/traces)."""
    configured = conf.get("TRACES_DIR")
    return Path(configured) if configured else Path(settings.DATA_DIR) / "traces"


def file_of(trace: Trace) -> Path:
    return directory() / trace.path


def new_path(app_pk: int) -> str:
    """A fresh file name for a trace of the app (relative to the traces directory)."""
    return f"app-{app_pk}/{uuid.uuid4().hex}.jsonl"


def read(trace: Trace) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The trace's header and its other records, read lazily (``jsonl.read``); raises
    TraceError (or OSError) when the file is missing or holds no trace yet."""
    return jsonl.read(file_of(trace))


def delete_file(trace: Trace) -> None:
    if trace.path:
        try:
            file_of(trace).unlink()
        except FileNotFoundError:
            pass


def prune(app_pk: int) -> int:
    """Keep the newest TRACES_PER_APP traces of an app (those recording are kept
    whatever their age); deletes the others, and their files with them (a post_delete
    receiver in models). Returns how many."""
    keep = conf.get("TRACES_PER_APP")
    old = list(Trace.objects.filter(app_id=app_pk).exclude(status=Trace.RECORDING)
               .order_by("-created_at", "-pk").values_list("pk", flat=True)[keep:])
    Trace.objects.filter(pk__in=old).delete()
    return len(old)


# -- frames from agents -------------------------------------------------------------

@dataclass
class Stored:
    """What storing a ``trace`` frame did."""

    app_pk: int | None = None       # the app whose traces page changed
    refusal: str = ""               # a malformed record: refuse the frame (nothing stored)
    stop: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # to send


def store_frame(process_id: int, message: dict[str, Any]) -> Stored:
    """Append a ``trace`` frame's records to its trace's file, in ``seq`` order.

    - A frame for a trace of another process, an unknown trace or one not recording
      any more is ignored (nothing stored).
    - A record the format does not allow refuses the whole frame (``refusal``).
    - A ``seq`` already stored is a duplicate (ignored, counted); a ``seq`` beyond the
      next counts the frames in between as lost (``gaps``) and is appended. The first
      frame stored must begin with the header, or the trace fails.
    - The ``end`` frame completes the trace (its reason and the agent's dropped
      count kept); beyond TRACE_MAX_BYTES the trace is truncated, completed, and the
      agent asked to stop (``stop``).
    """
    from . import traces

    records = message["records"]
    for index, record in enumerate(records):
        problem = check_record(record)
        if problem:
            return Stored(refusal=f"trace {message['trace'][:20]}, seq {message['seq']}, "
                                  f"record {index + 1}: {problem}"[:500])
    trace_pk = traces.parse_trace_id(message["trace"])
    if trace_pk is None:
        return Stored()
    with transaction.atomic():
        trace = (Trace.objects.select_for_update()
                 .filter(pk=trace_pk, process_id=process_id).first())
        if trace is None or trace.status != Trace.RECORDING:
            return Stored()
        now = timezone.now()
        result = Stored(app_pk=trace.app_id)
        seq = message["seq"]
        if seq <= trace.seq:
            trace.duplicates += 1
            trace.save(update_fields=["duplicates"])
            return result
        if trace.seq == 0 and not (records and records[0]["type"] == "header"):
            _fail(trace, now, "the beginning of the trace (its header) never arrived: "
                              f"the first frame received was number {seq}")
            return result
        if records and records[0]["type"] == "header" and trace.seq == 0:
            if records[0].get("trace") not in (None, message["trace"]):
                return Stored(refusal=f"trace {message['trace'][:20]}: its header names "
                                      f"another trace")
            trace.header = records[0]
        trace.gaps += seq - trace.seq - 1
        trace.seq = seq
        trace.last_frame_at = now
        try:
            written, over = _append(trace, records)
        except OSError as exc:
            _fail(trace, now, f"the trace file could not be written: {exc}"[:1000])
            result.stop = traces.stop_messages([trace])
            return result
        trace.records += written
        if over:
            trace.truncated = True
            trace.reason = (f"truncated at {conf.get('TRACE_MAX_BYTES')} bytes "
                            f"(TRACE_MAX_BYTES): {over} later record"
                            f"{'s' if over != 1 else ''} of that frame and everything after "
                            f"it were not stored; the recording was stopped")
            result.stop = traces.stop_messages([trace])
            _complete(trace, now)
        elif message.get("end"):
            end = records[-1] if records and records[-1]["type"] == "end" else None
            if end is not None:
                trace.dropped = end["dropped"]
            trace.reason = _end_reason(trace, message.get("reason", ""))
            _complete(trace, now)
        trace.save()
        return result


def _append(trace: Trace, records: list[dict[str, Any]]) -> tuple[int, int]:
    """Write the records that fit under TRACE_MAX_BYTES; (written, left out)."""
    limit = conf.get("TRACE_MAX_BYTES")
    path = file_of(trace)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "ab") as out:
        if out.tell() != trace.bytes:
            # lines of a frame whose row update never committed (a database error):
            # the file holds exactly what the row counts
            out.truncate(trace.bytes)
        for record in records:
            line = jsonl.line(record)
            if trace.bytes + len(line) > limit:
                return written, len(records) - written
            out.write(line)
            trace.bytes += len(line)
            written += 1
    return written, 0


def _end_reason(trace: Trace, reason: str) -> str:
    parts = [reason] if reason else []
    if trace.gaps:
        parts.append(f"{trace.gaps} frame{'s' if trace.gaps != 1 else ''} of lines never "
                     f"arrived (lost while the agent reconnected): the trace has gaps")
    if trace.dropped:
        parts.append(f"the agent dropped {trace.dropped} event"
                     f"{'s' if trace.dropped != 1 else ''} (its queue was full)")
    return "; ".join(parts)


def _complete(trace: Trace, now) -> None:
    trace.status = Trace.COMPLETE
    trace.stopped_at = now


def _fail(trace: Trace, now, reason: str) -> None:
    trace.status = Trace.FAILED
    trace.stopped_at = now
    trace.reason = reason
    trace.save()


# -- uploads ------------------------------------------------------------------------

class BadTrace(ValueError):
    """An uploaded file that is not a trace this dashboard can store (the message
    says why, naming the file as the user called it)."""


def import_file(app_pk: int, upload: Any, user: Any) -> Trace:
    """Store an uploaded JSON Lines trace as an ``imported`` trace of the app.

    The file is copied to the traces directory in pieces, then read with
    ``tracker.traces.jsonl.read`` and every record checked (:func:`check_record`);
    on any error the copy is deleted, nothing is stored, and BadTrace says why."""
    name = os.path.basename(getattr(upload, "name", "") or "trace.jsonl")[:200]
    limit = conf.get("TRACE_MAX_BYTES")
    if upload.size > limit:
        raise BadTrace(f"{name}: {upload.size} bytes is more than this dashboard "
                           f"stores per trace ({limit} bytes, TRACE_MAX_BYTES)")
    relative = new_path(app_pk)
    path = directory() / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as out:
            _copy(upload.chunks(), out)
        header, count, end = _check_file(path, name)
        started = header["started"]
        trace = Trace.objects.create(
            app_id=app_pk, scope="import", name=str(header["name"])[:200] or name,
            started_by=user, started_at=_when(started),
            stopped_at=_when(end["ts"]) if end else None, status=Trace.IMPORTED,
            records=count, bytes=path.stat().st_size, path=relative, header=header,
            dropped=end["dropped"] if end else 0,
            reason=f"imported from {name}" + ("" if end else
                                              " (it has no end line: cut short?)"))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    prune(app_pk)
    return trace


def _copy(chunks: Iterable[bytes], out: IO[bytes]) -> None:
    for chunk in chunks:
        out.write(chunk)


def _check_file(path: Path, name: str) -> tuple[dict[str, Any], int, dict[str, Any] | None]:
    """(header, lines, end record or None) of a stored upload; BadTrace if any
    line is not a trace record."""
    try:
        header, records = jsonl.read(path)
    except jsonl.TraceError as exc:
        raise BadTrace(str(exc).replace(str(path), name)) from None
    try:
        problem = check_record(header)
        if problem:
            raise BadTrace(f"{name}: line 1: {problem}")
        count, end = 1, None
        for record in records:
            count += 1
            problem = check_record(record)
            if problem:
                raise BadTrace(f"{name}: line {count}: {problem}")
            end = record if record["type"] == "end" else None
    except jsonl.TraceError as exc:
        raise BadTrace(str(exc).replace(str(path), name)) from None
    finally:
        records.close()  # the file, when a bad line stopped the reading early
    for what, value in (("header.started", header["started"]),
                        ("end.ts", end["ts"] if end else 0)):
        try:
            _when(value)
        except (OverflowError, ValueError, OSError):
            raise BadTrace(f"{name}: {what} is not a time ({value!r})") from None
    return header, count, end


def _when(epoch: float):
    from datetime import datetime, timezone as dt_timezone

    return datetime.fromtimestamp(epoch, tz=dt_timezone.utc)

"""Export a trace as OpenTelemetry OTLP/JSON (an ``ExportTraceServiceRequest``), ready
to POST to a collector's ``/v1/traces`` or to load into a backend.

Spans follow the database semantic conventions: a statement is a CLIENT span named
``{db.operation.name} {db.collection.name}`` with ``db.system.name``,
``db.query.text``, ``db.operation.name``, ``db.collection.name``, ``db.namespace``,
``server.address`` / ``server.port`` and ``db.response.returned_rows``; a failed one
has status ERROR and ``error.type``. Each session transaction is one trace: an
INTERNAL root span ``transaction s3`` whose children are its statements and flushes;
lazy loads and findings are span events on it. Statements outside a transaction of a
recorded session are traces of their own.

As OTLP/JSON requires, trace and span ids are lowercase hex, times are nanoseconds as
strings, and enum values are numbers. Ids are derived from the trace itself, so one
trace always exports to the same document.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator
from urllib.parse import urlsplit

import orjson

from .. import __version__
from ..fingerprint import operation, table_of
from .chrome import Batch, span_name

SPAN_KIND_INTERNAL, SPAN_KIND_CLIENT = 1, 3
STATUS_CODE_ERROR = 2

#: SQLAlchemy dialect name -> db.system.name
DB_SYSTEMS = {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mariadb",
              "sqlite": "sqlite", "oracle": "oracle.db", "mssql": "microsoft.sql_server"}


def _ns(seconds: float) -> str:
    return str(int(round(seconds * 1_000_000_000)))


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


class _Ids:
    """Deterministic ids: a hash of the trace's identity and a counter."""

    def __init__(self, seed: str) -> None:
        self.seed = seed
        self.count = 0

    def make(self, size: int) -> str:
        self.count += 1
        return hashlib.sha256(f"{self.seed}:{self.count}".encode()).hexdigest()[:size * 2]


def to_otlp(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The OTLP/JSON document (a dict to dump as JSON) of a trace."""
    document = _envelope(header)
    document["resourceSpans"][0]["scopeSpans"][0]["spans"] = list(otlp_spans(header, records))
    return document


def write_otlp(header: dict[str, Any], records: Iterable[dict[str, Any]], out: Any) -> None:
    """Write the OTLP/JSON document to the binary file ``out`` span by span."""
    for chunk in iter_otlp(header, records):
        out.write(chunk)


def iter_otlp(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """The bytes ``write_otlp`` writes, piece by piece (for a streamed HTTP response:
    only the transactions open at a time are held in memory)."""
    head = orjson.dumps(_envelope(header))
    marker = b'"spans":[]'
    before, after = head.split(marker)
    yield before + b'"spans":[\n'
    first = True
    for span in otlp_spans(header, records):
        yield (b"" if first else b",\n") + orjson.dumps(span)
        first = False
    yield b"\n]" + after + b"\n"


def _envelope(header: dict[str, Any]) -> dict[str, Any]:
    process = header["process"]
    resource = [_attr("service.name", process["app"]), _attr("process.pid", process["pid"]),
                _attr("host.name", process["host"]),
                _attr("process.runtime.version", process["python"])]
    return {"resourceSpans": [{
        "resource": {"attributes": resource},
        "scopeSpans": [{"scope": {"name": "retort-tracker", "version": __version__},
                        "spans": []}]}]}


def otlp_spans(header: dict[str, Any],
               records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The spans, one by one (a transaction's span when it ends)."""
    process = header["process"]
    ids = _Ids(f"{process['host']}:{process['pid']}:{header['started']}:{header['name']}")
    engines: dict[str, dict[str, Any]] = {}
    spans = Batch()
    roots: dict[str, dict[str, Any]] = {}   # session -> its open transaction span
    end_ts = header["started"]

    def root_for(sid: str | None) -> dict[str, Any] | None:
        return roots.get(sid) if sid is not None else None

    for record in records:
        yield from spans.take()
        kind = record["type"]
        if record.get("ts") is not None:
            end_ts = max(end_ts, record["ts"] + record.get("dur", 0.0))
        if kind == "engine":
            engines[record["id"]] = record
        elif kind == "transaction":
            sid = record["session"]
            if record["phase"] == "begin":
                roots[sid] = {"traceId": ids.make(16), "spanId": ids.make(8),
                              "name": f"transaction {sid}", "kind": SPAN_KIND_INTERNAL,
                              "startTimeUnixNano": _ns(record["ts"]),
                              "attributes": [_attr("retort.session", sid),
                                             _attr("thread.name", record["thread"]),
                                             _attr("thread.id", record["tid"])],
                              "events": []}
                continue
            span = roots.pop(sid, None)
            if span is None:
                continue
            span["endTimeUnixNano"] = _ns(record["ts"])
            span["attributes"].append(_attr("retort.outcome", record["phase"]))
            if record["phase"] == "rollback":
                span["status"] = {"code": STATUS_CODE_ERROR, "message": "rolled back"}
            spans.append(span)
        elif kind == "statement":
            spans.append(_statement_span(record, engines.get(record["engine"], {}),
                                         root_for(record["session"]), ids))
        elif kind == "flush":
            root = root_for(record["session"])
            span = {"traceId": root["traceId"] if root else ids.make(16),
                    "spanId": ids.make(8), "name": f"flush {record['session']}",
                    "kind": SPAN_KIND_INTERNAL, "startTimeUnixNano": _ns(record["ts"]),
                    "endTimeUnixNano": _ns(record["ts"] + record["dur"]),
                    "attributes": [_attr("retort.session", record["session"]),
                                   _attr("retort.changes", len(record["changes"]))],
                    "events": [{"name": f"{change['op']} {change['class']}",
                                "timeUnixNano": _ns(record["ts"]),
                                "attributes": [_attr("retort.identity", change["identity"])]}
                               for change in record["changes"]]}
            if root:
                span["parentSpanId"] = root["spanId"]
            spans.append(span)
        elif kind in ("lazy_load", "finding"):
            root = root_for(record.get("session"))
            if root is None:
                continue
            if kind == "lazy_load":
                root["events"].append({"name": f"lazy load {record['relationship']}",
                                       "timeUnixNano": _ns(record["ts"]),
                                       "attributes": [_attr("retort.identity",
                                                            record["identity"])]})
            else:
                root["events"].append({"name": f"finding {record['rule']}",
                                       "timeUnixNano": _ns(record["ts"]),
                                       "attributes": [_attr("retort.severity",
                                                            record["severity"]),
                                                      _attr("retort.message",
                                                            record["message"])]})
    for span in roots.values():  # still open when the recording stopped
        span["endTimeUnixNano"] = _ns(end_ts)
        span["attributes"].append(_attr("retort.outcome", "still open at the end"))
        spans.append(span)
    yield from spans.take()


def _statement_span(record: dict[str, Any], engine: dict[str, Any],
                    root: dict[str, Any] | None, ids: _Ids) -> dict[str, Any]:
    sql = record["sql"]
    dialect = engine.get("dialect", "")
    attributes = [_attr("db.system.name", DB_SYSTEMS.get(dialect, dialect or "other_sql")),
                  _attr("db.query.text", sql)]
    op = operation(sql)
    if op != "other":
        attributes.append(_attr("db.operation.name", op.upper()))
    table = table_of(sql)
    if table:
        attributes.append(_attr("db.collection.name", table))
    url = engine.get("url")
    if url:
        parts = urlsplit(url)
        database = parts.path.lstrip("/")
        if database:
            attributes.append(_attr("db.namespace", database))
        if parts.hostname:
            attributes.append(_attr("server.address", parts.hostname))
        try:
            port = parts.port
        except ValueError:
            port = None
        if port:
            attributes.append(_attr("server.port", port))
    if record["rows"] >= 0:
        attributes.append(_attr("db.response.returned_rows", record["rows"]))
    attributes.append(_attr("thread.name", record["thread"]))
    params = record.get("params")
    if isinstance(params, dict):
        attributes.extend(_attr(f"db.query.parameter.{name}", value)
                          for name, value in params.items())
    elif isinstance(params, list) and params and not isinstance(params[0], (list, dict)):
        attributes.extend(_attr(f"db.query.parameter.{index}", value)
                          for index, value in enumerate(params))
    span: dict[str, Any] = {
        "traceId": root["traceId"] if root else ids.make(16), "spanId": ids.make(8),
        "name": span_name(sql), "kind": SPAN_KIND_CLIENT,
        "startTimeUnixNano": _ns(record["ts"]),
        "endTimeUnixNano": _ns(record["ts"] + record["dur"]), "attributes": attributes}
    if root:
        span["parentSpanId"] = root["spanId"]
    if "error" in record:
        span["status"] = {"code": STATUS_CODE_ERROR, "message": record["error"]}
        attributes.append(_attr("error.type", record["error"].split(":", 1)[0]))
    return span

"""Export a trace to the Chrome Trace Event format (JSON object form), which Perfetto
(ui.perfetto.dev) and chrome://tracing open.

Tracks: one per application thread (transactions, flushes and statements as nested
spans, lazy loads as instants), one per pooled connection (who held it, and the
statements it ran), counters of checked-out connections per engine, and findings as
process-wide instants. Times are microseconds from the trace's start.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import orjson

#: thread ids of connection tracks start here (well above real thread ids' low bits
#: would be ambiguous; Perfetto only needs them distinct within the process)
CONNECTION_TRACK = 1 << 48


def _us(seconds: float) -> float:
    return round(seconds * 1_000_000, 3)


def span_name(sql: str) -> str:
    """``SELECT retort_order``: the operation and its first table, for a span's name."""
    from ..fingerprint import operation, table_of
    op = operation(sql)
    if op == "other":
        words = sql.split(None, 1)
        return words[0].upper() if words else "SQL"
    op = op.upper()
    table = table_of(sql)
    return f"{op} {table}" if table else op


def to_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The Chrome trace (a dict to dump as JSON) of a trace's header and records."""
    return {"traceEvents": list(chrome_events(header, records)), **_trailer(header)}


def write_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]], out: Any) -> None:
    """Write the Chrome trace to the binary file ``out``, event by event (memory stays
    bounded by the transactions open at a time, not by the trace's length)."""
    for chunk in iter_chrome(header, records):
        out.write(chunk)


def iter_chrome(header: dict[str, Any], records: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    """The bytes ``write_chrome`` writes, piece by piece (for a streamed HTTP
    response: nothing but the open transactions is held in memory)."""
    yield b'{"traceEvents":[\n'
    first = True
    for item in chrome_events(header, records):
        yield (b"" if first else b",\n") + orjson.dumps(item)
        first = False
    yield b"\n]," + orjson.dumps(_trailer(header))[1:] + b"\n"


def _trailer(header: dict[str, Any]) -> dict[str, Any]:
    return {"displayTimeUnit": "ms",
            "otherData": {"format": "retort-trace", "name": header["name"],
                          "started": header["started"]}}


def chrome_events(header: dict[str, Any],
                  records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The trace events, one by one."""
    start = header["started"]
    pid = header["process"]["pid"]
    out = Batch()
    out.append({"ph": "M", "pid": pid, "name": "process_name",
                "args": {"name": f"{header['process']['app']} (pid {pid}): {header['name']}"}})
    engines: dict[str, dict[str, Any]] = {}
    named_threads: set[int] = set()
    open_txn: dict[str, dict[str, Any]] = {}
    end_ts = start

    def thread_track(record: dict[str, Any]) -> int:
        tid = record["tid"]
        if tid not in named_threads:
            named_threads.add(tid)
            out.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name",
                        "args": {"name": record.get("thread") or f"thread {tid}"}})
        return tid

    for record in records:
        yield from out.take()
        kind = record["type"]
        ts = record.get("ts")
        if ts is not None:
            end_ts = max(end_ts, ts + record.get("dur", 0.0))
        if kind == "engine":
            engines[record["id"]] = record
        elif kind == "connection":
            engine = engines.get(record["engine"], {}).get("name", record["engine"])
            out.append({"ph": "M", "pid": pid, "tid": CONNECTION_TRACK + record["id"],
                        "name": "thread_name",
                        "args": {"name": f"connection #{record['id']} ({engine})"}})
            out.append({"ph": "M", "pid": pid, "tid": CONNECTION_TRACK + record["id"],
                        "name": "thread_sort_index", "args": {"sort_index": 1000 + record["id"]}})
        elif kind == "statement":
            args = {"sql": record["sql"], "rows": record["rows"], "session": record["session"],
                    "connection": record["conn"], "executemany": record["executemany"]}
            for key in ("params", "error"):
                if key in record:
                    args[key] = record[key]
            span = {"ph": "X", "pid": pid, "name": span_name(record["sql"]),
                    "cat": "statement", "ts": _us(ts - start), "dur": _us(record["dur"]),
                    "args": args}
            out.append({**span, "tid": thread_track(record)})
            out.append({**span, "tid": CONNECTION_TRACK + record["conn"]})
        elif kind == "transaction":
            sid = record["session"]
            if record["phase"] == "begin":
                open_txn[sid] = record
                continue
            began = open_txn.pop(sid, None)
            if began is None:
                continue
            out.append({"ph": "X", "pid": pid, "tid": thread_track(began),
                        "name": f"transaction {sid}", "cat": "transaction",
                        "ts": _us(began["ts"] - start), "dur": _us(ts - began["ts"]),
                        "args": {"session": sid, "outcome": record["phase"]}})
        elif kind == "flush":
            out.append({"ph": "X", "pid": pid, "tid": thread_track(record),
                        "name": f"flush {record['session']}", "cat": "flush",
                        "ts": _us(ts - start), "dur": _us(record["dur"]),
                        "args": {"session": record["session"],
                                 "changes": record["changes"]}})
        elif kind in ("checkout", "checkin"):
            conn = record["conn"]
            args = {"thread": record.get("thread"), "engine": record["engine"]}
            for key in ("wait", "held"):
                if key in record:
                    args[key] = record[key]
            out.append({"ph": "i", "s": "t", "pid": pid, "tid": CONNECTION_TRACK + conn,
                        "name": f"{kind} by {record.get('thread')}", "cat": "pool",
                        "ts": _us(ts - start), "args": args})
            if kind == "checkin" and "held" in record:
                out.append({"ph": "X", "pid": pid, "tid": CONNECTION_TRACK + conn,
                            "name": f"held by {record.get('thread')}", "cat": "pool",
                            "ts": _us(ts - record["held"] - start),
                            "dur": _us(record["held"]), "args": args})
            if record.get("checked_out") is not None:
                engine = engines.get(record["engine"], {}).get("name", record["engine"])
                out.append({"ph": "C", "pid": pid, "name": f"checked out: {engine}",
                            "cat": "pool", "ts": _us(ts - start),
                            "args": {"checked_out": record["checked_out"]}})
        elif kind == "lazy_load":
            out.append({"ph": "i", "s": "t", "pid": pid, "tid": thread_track(record),
                        "name": f"lazy load {record['relationship']}", "cat": "lazy_load",
                        "ts": _us(ts - start),
                        "args": {"session": record["session"],
                                 "identity": record["identity"]}})
        elif kind == "finding":
            out.append({"ph": "i", "s": "p", "pid": pid, "tid": 0,
                        "name": f"{record['severity']}: {record['rule']}", "cat": "finding",
                        "ts": _us(ts - start),
                        "args": {"message": record["message"], "session": record["session"],
                                 "location": record["location"]}})
        elif kind == "end":
            end_ts = max(end_ts, record["ts"])
    for sid, began in open_txn.items():  # still open when the recording stopped
        out.append({"ph": "X", "pid": pid, "tid": began["tid"], "name": f"transaction {sid}",
                    "cat": "transaction", "ts": _us(began["ts"] - start),
                    "dur": _us(end_ts - began["ts"]),
                    "args": {"session": sid, "outcome": "still open at the end"}})
    yield from out.take()


class Batch(list):
    """What was made while reading one record, handed on before the next (so an
    export streams)."""

    def take(self) -> list[dict[str, Any]]:
        items = list(self)
        self.clear()
        return items

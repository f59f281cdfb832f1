"""Trace records (tracker.traces.jsonl) for the dashboard's trace tests: one
transaction of session s1 on worker-1 — a SELECT, a flush renaming Customer 1 from
'Ann' to 'Annie' (its UPDATE), a commit — with the checkout and checkin of
connection #1."""

from __future__ import annotations

import copy
from typing import Any

from .conftest import HOST, MASKED_URL, PID, STARTED

TID = 140_000_001
SELECT = "SELECT customer.id, customer.name FROM customer WHERE customer.id = %(pk)s"
UPDATE = "UPDATE customer SET name=%(name)s WHERE customer.id = %(customer_id)s"


def header(trace: str | None = None, **overrides: Any) -> dict[str, Any]:
    record = {"type": "header", "format": "retort-trace", "version": 1, "name": "checkout",
              "started": STARTED,
              "process": {"host": HOST, "pid": PID, "app": "shop", "python": "3.11.7",
                          "sqlalchemy": "2.1.9", "agent": "0.1.0"},
              "scope": {"kind": "process"}, "parameters": False, **overrides}
    if trace is not None:
        record["trace"] = trace
    return record


def _at(seconds: float) -> float:
    return STARTED + seconds


BODY: list[dict[str, Any]] = [
    {"type": "engine", "id": "e1", "name": "postgresql/shop", "dialect": "postgresql",
     "driver": "psycopg", "url": MASKED_URL},
    {"type": "connection", "id": 1, "engine": "e1"},
    {"type": "checkout", "ts": _at(1.0), "tid": TID, "thread": "worker-1", "engine": "e1",
     "conn": 1, "checked_out": 1},
    {"type": "transaction", "ts": _at(1.0), "tid": TID, "thread": "worker-1",
     "session": "s1", "phase": "begin"},
    {"type": "statement", "ts": _at(1.25), "dur": 0.002, "tid": TID, "thread": "worker-1",
     "engine": "e1", "conn": 1, "session": "s1", "sql": SELECT, "executemany": False,
     "rows": 1},
    {"type": "lazy_load", "ts": _at(1.3), "tid": TID, "thread": "worker-1",
     "session": "s1", "relationship": "Order.customer", "identity": "1"},
    {"type": "flush", "ts": _at(1.5), "dur": 0.004, "tid": TID, "thread": "worker-1",
     "session": "s1", "changes": [{"op": "update", "class": "Customer", "identity": "1",
                                   "attributes": {"name": ["'Ann'", "'Annie'"],
                                                  "password_hash": ["••••••", "••••••"]}}]},
    {"type": "statement", "ts": _at(1.501), "dur": 0.001, "tid": TID, "thread": "worker-1",
     "engine": "e1", "conn": 1, "session": "s1", "sql": UPDATE, "executemany": False,
     "rows": 1},
    {"type": "transaction", "ts": _at(2.0), "tid": TID, "thread": "worker-1",
     "session": "s1", "phase": "commit"},
    {"type": "checkin", "ts": _at(2.0), "tid": TID, "thread": "worker-1", "engine": "e1",
     "conn": 1, "checked_out": 0, "held": 1.0},
]


def body() -> list[dict[str, Any]]:
    return copy.deepcopy(BODY)


def end(events: int = len(BODY), dropped: int = 0) -> dict[str, Any]:
    return {"type": "end", "ts": _at(2.5), "events": events, "dropped": dropped}


def trace_msg(trace: str, seq: int, records: list[dict[str, Any]], *, last: bool = False,
              reason: str | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"t": "trace", "trace": trace, "seq": seq, "records": records}
    if last:
        message["end"] = True
    if reason is not None:
        message["reason"] = reason
    return message

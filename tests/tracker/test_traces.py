"""Traces: recording to JSON Lines, and the Chrome and OTLP exports (the OTLP parsed by
the official protobuf definitions), with redaction in every format."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import tracker
from tests.tracker.scenario import Customer, Order, seed
from tracker.traces import jsonl
from tracker.traces.chrome import CONNECTION_TRACK, to_chrome
from tracker.traces.otlp import to_otlp


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'trace.db'}")
    seed(engine)
    yield engine
    engine.dispose()


def _scenario(engine) -> str:
    """Read, lazy-load, change, add, delete, commit; then a rolled-back session.
    Returns the first session's id in the trace."""
    with Session(engine) as session:
        orders = session.scalars(sa.select(Order).order_by(Order.id)).all()
        names = [order.customer.name for order in orders]          # lazy loads
        assert names == ["Ann", "Ann", "Bob"]
        ann = orders[0].customer
        ann.name, ann.password_hash = "Annie", "new-secret-hash"   # an update, one masked
        session.add(Customer(name="Dana", email="d@example.com", password_hash="h-dana"))
        session.delete(orders[2])
        session.commit()
    with Session(engine) as session:
        session.get(Order, 1).note = "never written"
        session.flush()
        session.rollback()
    return ""


def _record(engine, tmp_path, **kwargs) -> tuple[dict, list[dict]]:
    path = tmp_path / "t.jsonl"
    with tracker.record("checkout-flow", path, **kwargs) as trace:
        _scenario(engine)
    assert trace.path == path
    header, records = jsonl.read(path)
    return header, list(records)


def test_jsonl_holds_the_full_event_stream(engine, tmp_path):
    header, records = _record(engine, tmp_path)
    assert (header["format"], header["version"], header["name"]) == (
        "retort-trace", 1, "checkout-flow")
    assert header["scope"] == {"kind": "process"} and header["parameters"] is False
    kinds = [r["type"] for r in records]
    assert kinds[-1] == "end" and records[-1]["dropped"] == 0
    assert records[-1]["events"] == len(records) - 1
    assert kinds.count("engine") == 1 and kinds.count("connection") == 1
    engine_def = records[kinds.index("engine")]
    assert {k: engine_def[k] for k in ("id", "name", "dialect", "driver")} == {
        "id": "e1", "name": "sqlite/trace.db", "dialect": "sqlite", "driver": "pysqlite"}
    txns = [(r["session"], r["phase"]) for r in records if r["type"] == "transaction"]
    assert txns == [("t1", "begin"), ("t1", "commit"), ("t2", "begin"), ("t2", "rollback")]
    lazy = [(r["relationship"], r["identity"]) for r in records if r["type"] == "lazy_load"]
    assert lazy == [("Order.customer", "1"), ("Order.customer", "3")]  # Ann once, then Bob
    flushes = [r for r in records if r["type"] == "flush"]
    assert [[(c["op"], c["class"]) for c in f["changes"]] for f in flushes] == [
        [("insert", "Customer"), ("update", "Customer"), ("delete", "Order")],
        [("update", "Order")]]
    update = flushes[0]["changes"][1]
    assert update["attributes"] == {"name": ["'Ann'", "'Annie'"],
                                    "password_hash": ["••••••", "••••••"]}
    assert flushes[0]["changes"][0]["values"]["password_hash"] == "••••••"
    statements = [r for r in records if r["type"] == "statement"]
    assert [s["sql"].split()[0] for s in statements] == [
        "SELECT", "SELECT", "SELECT", "UPDATE", "INSERT", "DELETE", "SELECT", "UPDATE"]
    assert all(s["engine"] == "e1" and s["conn"] == 1 and s["dur"] >= 0 for s in statements)
    assert [s["session"] for s in statements] == ["t1"] * 6 + ["t2"] * 2
    assert all("params" not in s for s in statements)
    assert not (set().union(*map(set, records)) & {"new-secret-hash", "h-dana"})
    text = (tmp_path / "t.jsonl").read_text()
    assert "new-secret-hash" not in text and "h-dana" not in text
    checkouts = [r for r in records if r["type"] in ("checkout", "checkin")]
    assert [(r["type"], r["checked_out"]) for r in checkouts] == [
        ("checkout", 1), ("checkin", 0), ("checkout", 1), ("checkin", 0)]


def test_a_transaction_ended_by_close_is_written_as_close(engine, tmp_path):
    path = tmp_path / "close.jsonl"
    with tracker.record("close", path):
        with Session(engine) as reader:       # read-only: closed, never committed
            reader.scalars(sa.select(Order)).all()
        with Session(engine) as writer:       # committed, with a savepoint inside
            with writer.begin_nested():
                writer.get(Order, 1).note = "kept"
            writer.commit()
        with Session(engine) as failed:       # rolled back
            failed.scalars(sa.select(Order)).all()
            failed.rollback()
    _, records = jsonl.read(path)
    phases = [(r["session"], r["phase"]) for r in records if r["type"] == "transaction"]
    assert phases == [("t1", "begin"), ("t1", "close"), ("t2", "begin"), ("t2", "commit"),
                      ("t3", "begin"), ("t3", "rollback")]


def test_parameters_only_when_allowed_and_redacted(engine, tmp_path):
    header, records = _record(engine, tmp_path, capture_parameters=True)
    assert header["parameters"] is True
    insert = next(r for r in records if r["type"] == "statement"
                  and r["sql"].startswith("INSERT"))
    # positional values named from the compiled statement, secrets masked
    assert insert["params"] == {"name": "'Dana'", "email": "'d@example.com'",
                                "password_hash": "••••••"}
    update = next(r for r in records if r["type"] == "statement"
                  and r["sql"].startswith("UPDATE retort_customer"))
    assert update["params"] == {"name": "'Annie'", "password_hash": "••••••",
                                "retort_customer_id": "1"}


def test_session_scope_records_only_that_session(engine, tmp_path):
    with Session(engine) as other, Session(engine) as mine:
        with tracker.record("one", tmp_path / "s.jsonl", session=mine):
            other.execute(sa.select(Customer)).all()
            mine.get(Order, 2).note = "gift"
            mine.commit()
    header, records = jsonl.read(tmp_path / "s.jsonl")
    records = list(records)
    assert header["scope"] == {"kind": "session"}
    # records are written as events complete: a flush after its statements
    assert [(r["type"], r.get("phase") or r.get("sql", "")[:6]) for r in records
            if r["type"] in ("statement", "transaction", "flush")] == [
        ("transaction", "begin"), ("statement", "SELECT"), ("statement", "UPDATE"),
        ("flush", ""), ("transaction", "commit")]


def test_findings_are_in_the_trace_when_the_agent_runs(engine, tmp_path):
    with tracker.instrument(run_worker=False, url=None, thresholds={"n_plus_one": 2}):
        header, records = _record(engine, tmp_path)
    findings = [(r["rule"], r["session"]) for r in records if r["type"] == "finding"]
    assert ("n-plus-one", records[[r["type"] for r in records].index("transaction")]
            ["session"]) in findings
    # with the agent, sessions are named as on the dashboard (s1…), not t1…
    assert all(r["session"].startswith("s") for r in records if r["type"] == "transaction")


def test_a_full_queue_drops_and_counts(engine, tmp_path):
    trace = tracker.record("tiny", tmp_path / "tiny.jsonl")
    trace._max = 3
    with trace:
        trace._write_loop = lambda: None  # nothing drained while we work
        with Session(engine) as session:
            session.scalars(sa.select(Customer)).all()
            for i in range(5):
                session.get(Order, 1).note = f"n{i}"
                session.flush()
            session.commit()
    header, records = jsonl.read(tmp_path / "tiny.jsonl")
    records = list(records)
    assert records[-1]["dropped"] > 0
    assert records[-1]["events"] == len(records) - 1


# -- exports ------------------------------------------------------------------------------

def test_chrome_trace_has_thread_and_connection_tracks_spans_and_counters(engine, tmp_path):
    header, records = _record(engine, tmp_path)
    chrome = to_chrome(header, records)
    events = chrome["traceEvents"]
    assert json.loads(json.dumps(chrome)) == chrome  # plain JSON
    pid = header["process"]["pid"]
    names = {(e["tid"], e["args"]["name"]) for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    main = threading.get_ident()
    assert names == {(main, "MainThread"),
                     (CONNECTION_TRACK + 1, "connection #1 (sqlite/trace.db)")}
    assert all(e["pid"] == pid for e in events)
    spans = [e for e in events if e["ph"] == "X"]
    assert all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    txns = [e for e in spans if e["cat"] == "transaction"]
    assert [(e["name"], e["args"]["outcome"], e["tid"]) for e in txns] == [
        ("transaction t1", "commit", main), ("transaction t2", "rollback", main)]
    statements = [e for e in spans if e["cat"] == "statement"]
    assert len(statements) == 16  # 8 statements, each on its thread and its connection
    assert {e["name"] for e in statements} == {
        "SELECT retort_order", "SELECT retort_customer", "INSERT retort_customer",
        "UPDATE retort_customer", "DELETE retort_order", "UPDATE retort_order"}
    # nesting: each statement of t1 on the thread lies inside the t1 transaction span
    t1 = txns[0]
    inside = [e for e in statements if e["tid"] == main and e["args"]["session"] == "t1"]
    assert len(inside) == 6
    assert all(t1["ts"] <= e["ts"] and e["ts"] + e["dur"] <= t1["ts"] + t1["dur"] + 1
               for e in inside)
    counters = [e["args"]["checked_out"] for e in events if e["ph"] == "C"]
    assert counters == [1, 0, 1, 0]
    assert [e["name"] for e in events if e.get("cat") == "lazy_load"] == [
        "lazy load Order.customer", "lazy load Order.customer"]
    flush = next(e for e in spans if e["cat"] == "flush")
    assert flush["args"]["changes"][1]["attributes"]["password_hash"] == ["••••••"] * 2
    assert "new-secret-hash" not in json.dumps(chrome)


def _otlp_message(document: dict):
    """Parse OTLP/JSON with the official protobuf definitions. OTLP/JSON writes ids as
    hex where protobuf's JSON mapping expects base64: convert them as the spec says."""
    from google.protobuf import json_format
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest)

    def convert(value):
        if isinstance(value, dict):
            return {k: (base64.b64encode(bytes.fromhex(v)).decode()
                        if k in ("traceId", "spanId", "parentSpanId") else convert(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return json_format.Parse(json.dumps(convert(document)), ExportTraceServiceRequest())


def test_otlp_parses_with_the_official_definitions(engine, tmp_path):
    header, records = _record(engine, tmp_path, capture_parameters=True)
    document = to_otlp(header, records)
    message = _otlp_message(document)
    (resource_spans,) = message.resource_spans
    attributes = {a.key: a.value for a in resource_spans.resource.attributes}
    assert attributes["service.name"].string_value == header["process"]["app"]
    spans = list(resource_spans.scope_spans[0].spans)
    roots = [s for s in spans if s.name.startswith("transaction")]
    assert [(s.name, s.kind, s.status.code) for s in roots] == [
        ("transaction t1", 1, 0), ("transaction t2", 1, 2)]
    children = [s for s in spans if s.parent_span_id == roots[0].span_id]
    assert all(s.trace_id == roots[0].trace_id for s in children)
    statements = [s for s in children if s.kind == 3]  # CLIENT
    assert [s.name for s in statements] == [
        "SELECT retort_order", "SELECT retort_customer", "SELECT retort_customer",
        "UPDATE retort_customer", "INSERT retort_customer", "DELETE retort_order"]
    first = {a.key: a.value for a in statements[0].attributes}
    assert first["db.system.name"].string_value == "sqlite"
    assert first["db.operation.name"].string_value == "SELECT"
    assert first["db.collection.name"].string_value == "retort_order"
    assert first["db.query.text"].string_value.startswith("SELECT retort_order.id")
    assert all(s.end_time_unix_nano >= s.start_time_unix_nano > 0 for s in spans)
    assert [e.name for e in roots[0].events] == ["lazy load Order.customer"] * 2
    insert = {a.key: a.value for a in statements[4].attributes}
    assert insert["db.query.parameter.password_hash"].string_value == "••••••"
    assert insert["db.query.parameter.name"].string_value == "'Dana'"
    assert "new-secret-hash" not in json.dumps(document) and "h-dana" not in json.dumps(
        document)
    # the same trace always exports to the same document
    assert to_otlp(*jsonl.read(tmp_path / "t.jsonl")) == document


def test_export_command_streams_every_format(engine, tmp_path):
    _record(engine, tmp_path)
    trace = tmp_path / "t.jsonl"
    for fmt in ("chrome", "otlp", "jsonl"):
        done = subprocess.run([sys.executable, "-m", "tracker", "export", str(trace),
                               "--format", fmt], capture_output=True, text=True,
                              cwd=Path(tracker.__file__).parent.parent, timeout=60)
        assert done.returncode == 0, done.stderr
        out = Path(done.stdout.split("wrote ", 1)[1].strip())
        if fmt == "chrome":
            header, records = jsonl.read(trace)
            assert json.loads(out.read_text()) == to_chrome(header, records)
        elif fmt == "otlp":
            header, records = jsonl.read(trace)
            assert json.loads(out.read_text()) == to_otlp(header, records)
            _otlp_message(json.loads(out.read_text()))
        else:
            assert out.read_text() == trace.read_text()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header", "format": "retort-trace", "version": 9}\n')
    done = subprocess.run([sys.executable, "-m", "tracker", "export", str(bad)],
                          capture_output=True, text=True,
                          cwd=Path(tracker.__file__).parent.parent, timeout=60)
    assert (done.returncode, done.stderr) == (
        2, f"python -m tracker export: {bad}: trace format version 9 is not supported "
           f"(this version reads 1)\n")


def test_run_trace_records_each_process_of_the_command(tmp_path):
    script = tmp_path / "forking.py"
    script.write_text(
        "import os, sqlalchemy as sa\n"
        f"engine = sa.create_engine('sqlite:///{tmp_path / 'f.db'}')\n"
        "with engine.connect() as conn:\n"
        "    conn.exec_driver_sql('select 1 as parent').all()\n"
        "pid = os.fork()\n"
        "with engine.connect() as conn:\n"
        "    conn.exec_driver_sql('select 2 as ' + ('child' if pid == 0 else 'parent_again')).all()\n"
        "if pid:\n"
        "    os.waitpid(pid, 0)\n"
        "    print(pid)\n")
    root = Path(tracker.__file__).parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "tracker", "run", "--trace", str(tmp_path / "t-{pid}.jsonl"),
         "--", sys.executable, str(script)],
        capture_output=True, text=True, cwd=root, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    child = int(done.stdout.strip())
    files = sorted(tmp_path.glob("t-*.jsonl"))
    assert [f.name for f in files] == sorted([f"t-{child}.jsonl", files[0].name
                                              if files[0].name != f"t-{child}.jsonl"
                                              else files[1].name])
    by_pid = {}
    for path in files:
        header, records = jsonl.read(path)
        by_pid[header["process"]["pid"]] = [r["sql"] for r in records
                                            if r["type"] == "statement"]
    assert by_pid.pop(child) == ["select 2 as child"]
    assert list(by_pid.values()) == [["select 1 as parent", "select 2 as parent_again"]]

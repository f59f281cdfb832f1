"""Recordings started from the dashboard: the ``record`` control and the ``trace``
frames that carry the lines back."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.tracker.scenario import Order, seed
from tracker import protocol
from tracker.traces import remote


def _frames(agent) -> list[dict]:
    """The trace frames due now, each checked by the protocol as the dashboard will."""
    frames = agent.remote_traces.frames()
    return [protocol.decode(protocol.encode(frame)) for frame in frames]


def _record(agent, **args):
    return agent.controls["record"](args, "trace:1")


def test_start_stream_and_stop(agent, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    seed(engine)
    assert _record(agent, trace="7", action="start", name="checkout") == ("applied", "")
    assert _record(agent, trace="7", action="start") == ("applied", "already recording")
    with Session(engine) as session:
        session.get(Order, 1).note = "x"
        session.commit()
    time.sleep(0.5)  # the trace's writer hands the lines over
    first = _frames(agent)
    assert [f["seq"] for f in first] == [1] and "end" not in first[0]
    records = first[0]["records"]
    assert records[0]["type"] == "header" and records[0]["trace"] == "7"
    assert records[0]["name"] == "checkout"
    assert [r["type"] for r in records[1:] if r["type"] in ("transaction", "flush")] == [
        "transaction", "flush", "transaction"]
    assert _record(agent, trace="7", action="stop") == ("applied", "")
    last = _frames(agent)
    assert [(f["seq"], f.get("end"), f.get("reason")) for f in last] == [
        (2, True, "stopped from the dashboard")]
    assert last[0]["records"][-1]["type"] == "end"
    assert _frames(agent) == []
    assert _record(agent, trace="7", action="stop") == (
        "refused", "no recording 7 in this process")
    engine.dispose()


def test_refusals_and_limits(agent, monkeypatch):
    assert _record(agent, trace="8", action="pause") == (
        "refused", "unknown record action 'pause' (start or stop)")
    assert _record(agent, trace="8", action="start", session="s404") == (
        "refused", "no live session s404 in this process")
    assert agent.controls["record"]({"action": "start"}, "trace:x") == (
        "refused", "control record.trace: missing")
    assert _record(agent, trace="9", action="start", max_seconds=0.01) == ("applied", "")
    time.sleep(0.05)
    frames = _frames(agent)
    assert frames[-1]["end"] is True and frames[-1]["reason"] == "stopped at its time limit"
    assert agent.remote_traces.active == {}


def test_big_batches_are_split_below_the_frame_limit(agent, monkeypatch, tmp_path):
    monkeypatch.setattr(remote, "FRAME_MARGIN", protocol.MAX_FRAME_BYTES - 20_000)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'big.db'}")
    assert _record(agent, trace="10", action="start") == ("applied", "")
    with engine.connect() as conn:
        for i in range(200):
            conn.exec_driver_sql(f"select {i}, '{'x' * 200}'").all()
    assert _record(agent, trace="10", action="stop") == ("applied", "")
    frames = _frames(agent)
    assert len(frames) > 1
    assert all(len(protocol.encode(f)) < 21_000 for f in frames)
    statements = [r for f in frames for r in f["records"] if r["type"] == "statement"]
    assert [s["sql"][:10] for s in statements[:2]] == ["select 0, ", "select 1, "]
    assert len(statements) == 200
    engine.dispose()

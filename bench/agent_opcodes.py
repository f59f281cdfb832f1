"""The agent's own bytecode per operation, hook by hook: exact and in seconds.

Why
    Wall-clock ratios (``agent_overhead.py``) scatter by several per cent on these
    machines, and instruction counts (``agent_instructions.py``) take minutes and move
    with CPython's type-cache layout. Neither says *which hook* an operation's cost is
    in. This bench counts the bytecode instructions the agent's own functions execute
    per operation, with ``sys.settrace`` and per-opcode events, split by function. The
    count is exact: the same code and workload give the same figure on any machine,
    so a change to a hook shows up as a change in its line, however small.

What it measures
    The workloads of ``agent_overhead.py`` (plus ``orm_bulk_insert``: a new session
    per row, ``bulk_insert_mappings`` of one row, commit, never closed, as in
    SQLAlchemy's ``single_inserts`` suite). For each, after a warm-up with the agent
    on, ``--ops`` operations run under the tracer: the application thread's share.
    Then what they queued is handed to the worker's aggregation, also traced: the
    worker's share (``Worker.process``; its periodic rounds are not per operation and
    are left out). Only frames of code under ``tracker/`` are counted; SQLAlchemy's
    bytecode, and what the agent costs it (type-cache misses, dispatch), is not.

How to run it (a few seconds)::

    .venv/bin/python bench/agent_opcodes.py
    .venv/bin/python bench/agent_opcodes.py --workloads orm_insert --ops 500 --json out.json

How to read it
    Per workload: opcodes per operation in the application thread, then in the
    worker; below, each function of the agent with its opcodes and calls per
    operation. As a scale, one bytecode costs 10 to 60 CPU instructions, and one ORM
    operation here costs SQLAlchemy 700,000 to 1,100,000.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import agent_overhead as bench  # noqa: E402
from sqlalchemy import Engine, select  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

import tracker  # noqa: E402

#: Frames counted: code whose file lies in the agent's package.
AGENT_DIR = str(Path(tracker.__file__).resolve().parent)
WARMUP = 200


def orm_bulk_insert(engine: Engine, ops: int, start: int) -> None:
    """New Session per row, ``bulk_insert_mappings`` of one dict, commit (no close)."""
    for i in range(start, start + ops):
        session = Session(engine)
        session.bulk_insert_mappings(bench.Customer, [
            {"name": f"new {i}", "description": f"inserted {i}"}])
        session.commit()


def orm_select_one_session(engine: Engine, ops: int, start: int) -> None:
    """One Session for every lookup, as in SQLAlchemy's ``short_selects`` suite: the
    same SELECT again and again with a new id (per-session counting and the repeat
    detectors at work)."""
    with Session(engine) as session:
        for i in range(start, start + ops):
            session.scalars(select(bench.Customer).where(
                bench.Customer.id == bench._seed_id(i))).first()


WORKLOADS: dict[str, tuple[Callable[[Engine, int, int], None], bool]] = {
    **{w.name: (w.run, w.inserts) for w in bench.WORKLOADS},
    "orm_bulk_insert": (orm_bulk_insert, True),
    "orm_select_one_session": (orm_select_one_session, False),
}


class OpcodeCounter:
    """A ``sys.settrace`` tracer counting opcodes and calls per agent function."""

    def __init__(self) -> None:
        self.opcodes: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()

    def __call__(self, frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        if not code.co_filename.startswith(AGENT_DIR):
            return None  # SQLAlchemy's or the bench's frame: not traced further
        name = code.co_qualname
        self.calls[name] += 1
        frame.f_trace_opcodes = True
        opcodes = self.opcodes

        def local(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                opcodes[name] += 1
            return local
        return local

    def run(self, function: Callable[[], Any]) -> None:
        sys.settrace(self)
        try:
            function()
        finally:
            sys.settrace(None)


def measure(name: str, engine: Engine, ops: int) -> dict[str, Any]:
    """Opcodes per operation of one workload, application thread and worker."""
    run, inserts = WORKLOADS[name]
    tracker.uninstrument()
    bench.restore_event_flags()
    # no worker thread: its aggregation is run (and counted) below, on this thread
    tracker.instrument(url=None, run_worker=False)
    agent = tracker.current_agent()
    try:
        if inserts:
            bench.reset_inserts(engine)
        run(engine, WARMUP, 0)
        agent.worker.process(agent.recorder.drain())
        app, worker = OpcodeCounter(), OpcodeCounter()
        app.run(lambda: run(engine, ops, WARMUP))
        items = agent.recorder.drain()
        worker.run(lambda: agent.worker.process(items))
        errors = agent.recorder.errors
    finally:
        tracker.uninstrument()
        bench.restore_event_flags()
    if errors:
        raise SystemExit(f"{name}: the agent counted {errors} internal errors")
    return {
        "workload": name,
        "app": sum(app.opcodes.values()) / ops,
        "worker": sum(worker.opcodes.values()) / ops,
        "queued": len(items) / ops,
        "functions": sorted(
            ({"function": f, "opcodes": n / ops, "calls": app.calls[f] / ops}
             for f, n in app.opcodes.items()),
            key=lambda row: -row["opcodes"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; "
                     f"known: {', '.join(WORKLOADS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="retort-opcodes-") as tmp:
        engine = bench.make_engine(Path(tmp) / "bench.db")
        for name in names:
            result = measure(name, engine, args.ops)
            results.append(result)
            print(f"{name}: {result['app']:.1f} opcodes/op in the application thread, "
                  f"{result['worker']:.1f} in the worker "
                  f"({result['queued']:.1f} items queued/op)")
            for row in result["functions"]:
                print(f"  {row['opcodes']:8.1f}  {row['calls']:4.1f} calls  "
                      f"{row['function']}")
        engine.dispose()
    if args.json:
        Path(args.json).write_text(json.dumps({"ops": args.ops, "results": results},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much slower does SQLAlchemy work get when Retort's agent is attached?

What it measures
    Short, connection-heavy SQLAlchemy workloads on a temporary file SQLite database
    (default pool, i.e. ``QueuePool`` in SQLAlchemy 2.x), modelled on the
    ``short_selects`` and ``single_inserts`` suites of SQLAlchemy's
    ``examples/performance``: many tiny operations, each with its own pool checkout
    and checkin, which is where the agent's hooks (the ``Pool.connect`` and
    ``Pool._return_conn`` wrappers with the checkout's stack walk, the statement
    wrappers on the dialect, the session listeners) cost the most relative to the work.

    Each workload runs with the agent off and with it on, side by side in one
    process. "On" is ``tracker.instrument(url=None)``: every hook installed and the
    worker thread running, draining and aggregating, but no dashboard to send to.
    "Off" is ``tracker.uninstrument()`` plus one repair: SQLAlchemy leaves the
    ``_has_events`` flag of ``Engine`` (or ``Dialect``) switched on once a listener was
    ever added to that class, and the bench switches it back off so that "off" costs
    what a process that never ran the agent costs (see :func:`restore_event_flags`; a
    note is printed when this was needed). The engine is created before the agent,
    so it is found by ``instrument()``'s discovery of existing engines.

How it runs
    The machine is assumed noisy, so runs are interleaved: for each of ``--rounds``
    rounds, for each workload, one run with the agent off and one with it on, the
    order alternating between workloads and rounds. Every workload is warmed up once
    in both modes before the rounds start. Before each timed run (after the agent was
    switched and a ``gc.collect()``), the workload itself runs busy for 0.3 s in every
    mode, and with the agent on until its worker has also completed a round: the
    steady state, and no idle CPU right before the timing (see :func:`heat`). An 'on'
    run's time includes the CPU time the worker spends right after it on what it
    recorded (:func:`worker_after`): the application pays for it (the GIL), though a
    short run ends before the worker's next round.

How to run it
    From the repository root (about 50 s on a 2-core machine with the defaults)::

        .venv/bin/python bench/agent_overhead.py
        .venv/bin/python bench/agent_overhead.py --rounds 11 --ops 2000 --json out.json

    ``--budget 1.05`` sets the pass mark; the exit status is 0 for PASS, 1 for FAIL.

    ``--url ws://127.0.0.1:8123/ws/agent/ --token T`` streams the 'on' runs to a real
    dashboard, as in production: the worker then also builds and sends state frames
    (sessions, findings) every 0.5 s. Each 'on' run waits for its fresh agent to be
    welcomed before timing. A dashboard for it::

        RETORT_DATA_DIR=/tmp/bench-dash .venv/bin/python manage.py demo --no-app \
            --port 8123 --password bench-pass-123 &
        RETORT_DATA_DIR=/tmp/bench-dash .venv/bin/python manage.py \
            create_agent_token retort-bench --quiet

How to read it
    One line per workload: the median time per operation (µs) with the agent off
    and on, then ``ratio``, the median over rounds of the per-round ratio on/off
    (1.030 = 3 % slower with the agent), then every round's ratio. A ratio is taken
    within a round, so a slow phase of the machine affects both of its sides; widely
    scattered per-round ratios mean the machine was busy, so rerun with more rounds
    before trusting a verdict near the budget. ``overall`` is the geometric mean of
    the workload ratios, compared with ``--budget`` (default 1.05: 5 % slower).
    Compare ratios, not µs, across machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import sqlalchemy
from sqlalchemy import (Engine, String, create_engine, delete, event, insert, literal_column,
                        select)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracker  # noqa: E402  (after the path tweak so the repo's package is used)
from bare_hooks import BareHooks  # noqa: E402  (bench/, the script's own folder)

#: Rows present for the select workloads; inserted rows above this are removed again.
SEED_ROWS = 10_000
#: Defaults chosen so that a full run takes roughly 30-60 s on a 2-core machine.
DEFAULT_ROUNDS = 7
DEFAULT_OPS = 1_000
DEFAULT_BUDGET = 1.05
#: Untimed operations run right before each timed run (after the agent is switched).
PRE_WARMUP_OPS = 200


# -- schema ------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(255))


CUSTOMER = Customer.__table__
SELECT_CORE = select(CUSTOMER.c.id, CUSTOMER.c.name, CUSTOMER.c.description).where(
    CUSTOMER.c.id == sqlalchemy.bindparam("id"))
INSERT_CORE = insert(CUSTOMER)
#: Distinct statement texts of core_select_many_texts: an application runs dozens to
#: hundreds of texts per engine, not the one or two of the other workloads.
MANY_TEXTS = 64
SELECTS_MANY = [
    select(CUSTOMER.c.id, CUSTOMER.c.name, literal_column(str(k)).label("k")).where(
        CUSTOMER.c.id == sqlalchemy.bindparam("id"))
    for k in range(MANY_TEXTS)]


def _fast_sqlite(dbapi_connection: Any, connection_record: Any) -> None:
    # Inserts commit once per operation: on a file database each commit would fsync,
    # and the disk's latency noise would swamp the microseconds being measured. The
    # bench measures Python-side cost, so durability is switched off per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.execute("PRAGMA journal_mode=MEMORY")
    cursor.close()


def make_engine(path: Path) -> Engine:
    """A file SQLite engine with its default pool (QueuePool), seeded for selects."""
    engine = create_engine(f"sqlite:///{path}")
    event.listen(engine, "connect", _fast_sqlite)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(INSERT_CORE, [
            {"name": f"customer {i}", "description": f"customer number {i}"}
            for i in range(1, SEED_ROWS + 1)
        ])
    return engine


def reset_inserts(engine: Engine) -> None:
    """Remove the rows insert workloads added, so every run starts from the seed."""
    with engine.begin() as conn:
        conn.execute(delete(CUSTOMER).where(CUSTOMER.c.id > SEED_ROWS))


# -- workloads: each performs ``ops`` operations ------------------------------------


def _ids(ops: int, start: int) -> range:
    return range(start, start + ops)


def _seed_id(i: int) -> int:
    return i % SEED_ROWS + 1


def orm_get(engine: Engine, ops: int, start: int) -> None:
    """New Session per lookup, ``session.get(Customer, id)``."""
    for i in _ids(ops, start):
        with Session(engine) as session:
            session.get(Customer, _seed_id(i))


def orm_select(engine: Engine, ops: int, start: int) -> None:
    """New Session per lookup, ``select(Customer).where(Customer.id == id)``."""
    for i in _ids(ops, start):
        with Session(engine) as session:
            session.scalars(select(Customer).where(Customer.id == _seed_id(i))).first()


def core_select_conn_per_op(engine: Engine, ops: int, start: int) -> None:
    """``with engine.connect()`` per lookup, one Core select each."""
    for i in _ids(ops, start):
        with engine.connect() as conn:
            conn.execute(SELECT_CORE, {"id": _seed_id(i)}).first()


def core_select_one_conn(engine: Engine, ops: int, start: int) -> None:
    """One connection for all lookups: statement hooks only, one checkout."""
    with engine.connect() as conn:
        for i in _ids(ops, start):
            conn.execute(SELECT_CORE, {"id": _seed_id(i)}).first()


def core_select_many_texts(engine: Engine, ops: int, start: int) -> None:
    """One connection, one select per lookup, cycling through MANY_TEXTS texts."""
    with engine.connect() as conn:
        for i in _ids(ops, start):
            conn.execute(SELECTS_MANY[i % MANY_TEXTS], {"id": _seed_id(i)}).first()


def core_select_literal(engine: Engine, ops: int, start: int) -> None:
    """One connection, the id written into the SQL: a new statement text every time,
    as in an application that formats its values into its queries."""
    with engine.connect() as conn:
        for i in range(start, start + ops):
            conn.exec_driver_sql(
                f"SELECT id, name, description FROM customer WHERE id = {_seed_id(i)}"
            ).first()


def orm_insert(engine: Engine, ops: int, start: int) -> None:
    """New Session per insert: add one Customer, commit."""
    for i in _ids(ops, start):
        with Session(engine) as session:
            session.add(Customer(name=f"new {i}", description=f"inserted {i}"))
            session.commit()


def core_insert(engine: Engine, ops: int, start: int) -> None:
    """``with engine.begin()`` per insert, one Core insert each."""
    for i in _ids(ops, start):
        with engine.begin() as conn:
            conn.execute(INSERT_CORE, {"name": f"new {i}", "description": f"inserted {i}"})


@dataclass(frozen=True)
class Workload:
    name: str
    run: Callable[[Engine, int, int], None]
    inserts: bool = False


WORKLOADS: tuple[Workload, ...] = (
    Workload("orm_get", orm_get),
    Workload("orm_select", orm_select),
    Workload("core_select_conn_per_op", core_select_conn_per_op),
    Workload("core_select_one_conn", core_select_one_conn),
    Workload("core_select_many_texts", core_select_many_texts),
    Workload("core_select_literal", core_select_literal),
    Workload("orm_insert", orm_insert, inserts=True),
    Workload("core_insert", core_insert, inserts=True),
)


# -- agent switching and timing -----------------------------------------------------


@dataclass
class AgentErrors:
    """Internal errors the agent counted during 'on' runs (should stay 0)."""

    count: int = 0
    first: str | None = None

    def collect(self) -> None:
        agent = tracker.current_agent()
        if agent is not None and agent.recorder.errors:
            self.count += agent.recorder.errors
            self.first = self.first or agent.recorder.first_error


#: Classes on which SQLAlchemy sets ``_has_events = True`` when a listener is added
#: to them (Engine for connection events, Dialect for dialect events such as
#: ``do_execute``), with the value each had before the agent ever ran (read at import).
_EVENT_FLAGS: dict[type, bool] = {cls: cls._has_events for cls in (Engine, Dialect)}
#: Names of the classes whose flag ``uninstrument()`` was seen to leave switched on.
leftover_event_flags: set[str] = set()


def restore_event_flags() -> None:
    """Make 'off' the state of a process the agent never touched.

    Adding a listener to the ``Engine`` class sets ``Engine._has_events = True`` (a
    dialect event such as ``do_execute`` sets ``Dialect._has_events``); removing the
    listener does not reset the flag, so after ``uninstrument()`` SQLAlchemy keeps running its
    event dispatch with nobody listening: for Engine, a joined dispatcher per
    Connection and a call per event point, a large cost; for Dialect, a loop over an
    empty listener list per statement. Leaving that would make 'off' slower than a
    process that never ran the agent and understate the ratio. The bench adds no
    listener to these classes itself, so their original values are restored here.
    """
    for cls, original in _EVENT_FLAGS.items():
        if cls._has_events != original:
            leftover_event_flags.add(f"{cls.__name__}._has_events")
            cls._has_events = original


#: (url, token) of a dashboard the 'on' runs stream to; None: no dashboard (--url)
DASHBOARD: tuple[str, str] | None = None
#: Seconds an 'on' run waits for the fresh agent to be welcomed by the dashboard.
CONNECT_TIMEOUT = 10.0


#: The pass-through hooks of the 'bare' mode (--bare), made for the bench's engine.
BARE: BareHooks | None = None


def set_mode(mode: str, errors: AgentErrors) -> None:
    """Switch to ``mode``: "off", "bare" (pass-through hooks at the agent's
    interception points, bench/bare_hooks.py) or "on" (see :func:`set_agent`)."""
    if BARE is not None:
        BARE.remove()
    set_agent(mode == "on", errors)
    if mode == "bare":
        assert BARE is not None
        BARE.install()


def set_agent(on: bool, errors: AgentErrors) -> None:
    """Off: uninstrument. On: a fresh agent (worker running; streaming to DASHBOARD
    when set, connected before this returns), so that every 'on' run starts from the
    same state."""
    errors.collect()
    tracker.uninstrument()
    restore_event_flags()
    if not on:
        return
    if DASHBOARD is None:
        tracker.instrument(url=None)
    else:
        tracker.instrument(url=DASHBOARD[0], token=DASHBOARD[1], app="retort-bench")
    if not tracker.is_instrumented():
        raise SystemExit("tracker.instrument() did not attach (RETORT_ENABLED=0?)")
    if DASHBOARD is not None:
        transport = tracker.current_agent().worker.transport
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not transport.connected:
            if time.monotonic() > deadline:
                raise SystemExit(f"the agent did not connect to {DASHBOARD[0]} within "
                                 f"{CONNECT_TIMEOUT:.0f} s (token? see the dashboard log)")
            time.sleep(0.02)


#: Time a fresh agent's first moments too (--cold), instead of its steady state.
COLD = False
#: Seconds wait_round() waits for a worker's round before giving up.
SETTLE_TIMEOUT = 5.0
#: Seconds of the workload itself that run, busy, right before each timed run, in
#: every mode (see :func:`heat`).
HEAT_SECONDS = 0.3
#: Operations per call of the workload while heating.
HEAT_CHUNK = 50


def heat(run_chunk: Callable[[], None]) -> None:
    """Run ``run_chunk`` (a short stretch of the workload about to be timed) again and
    again, busy, for HEAT_SECONDS, and with the agent on (not ``--cold``) until its
    worker has also completed a whole round that began after the heating did.

    Why busy: on these virtual machines a CPU that sat idle runs slower for the next
    tens of milliseconds (measured: 100 ``orm_get`` operations right after a 0.3 s
    sleep took 20-55% longer than without it; the effect fades over 30-60 ms of
    work). Waiting idle for the worker's round right before an 'on' run, as this bench
    once did, charged the agent for that. Now every mode runs the same busy stretch
    right before its timed run; the 'on' runs' stretch lasts until the worker has
    seen the workload's statement texts and given them their tallies
    (tracker/tally.py), the state an application's agent reaches a quarter of a
    second after it first runs a statement."""
    agent = tracker.current_agent()
    worker = agent.worker if agent is not None and not COLD else None
    target = worker.rounds + 2 if worker is not None else 0  # as Worker.wait_round
    deadline = time.perf_counter() + HEAT_SECONDS
    give_up = time.perf_counter() + SETTLE_TIMEOUT
    while True:
        run_chunk()
        now = time.perf_counter()
        if now < deadline:
            continue
        if worker is None or worker.rounds >= target:
            return
        if not worker.alive or now > give_up:
            no_round()


def wait_round(worker: Any) -> None:
    """Wait for a whole round of ``worker`` (Worker.wait_round), or stop the bench."""
    if not worker.wait_round(SETTLE_TIMEOUT):
        no_round()


def no_round() -> None:
    """Stop the bench: the agent's worker did not complete a round in time."""
    raise SystemExit(f"the agent's worker did not complete a round in "
                     f"{SETTLE_TIMEOUT:.0f} s")


def timed_run(engine: Engine, workload: Workload, ops: int, start: int) -> float:
    """Seconds for ``ops`` operations, after a full collection and the busy warm-up of
    :func:`heat` (``--cold``: a short warm-up only, the agent fresh); with the agent
    on, plus the CPU time its worker spends after the run on what the run recorded
    (see :func:`worker_after`)."""
    if workload.inserts:
        reset_inserts(engine)
    gc.collect()
    if COLD:
        workload.run(engine, min(PRE_WARMUP_OPS, ops), start)
    else:
        heat(lambda: workload.run(engine, HEAT_CHUNK, start))
    t0 = time.perf_counter()
    workload.run(engine, ops, start)
    return time.perf_counter() - t0 + worker_after()


def worker_after() -> float:
    """The worker's CPU time (seconds) for its round right after a run: a run of a few
    tens of milliseconds usually ends before the worker's next round (every 0.25 s)
    takes what it recorded, yet the application pays for that round all the same (the
    worker holds the GIL while it works). Counted here so that work the hooks leave
    to the worker is not free, less what the same wait costs with nothing recorded
    (its rounds' fixed cost, ~0.1 ms each); 0 with the agent off."""
    agent = tracker.current_agent()
    if agent is None:
        return 0.0
    worker = agent.worker
    spent = []
    for _ in range(2):  # the run's rounds, then as many idle ones
        before = worker.cpu_seconds()
        wait_round(worker)
        after = worker.cpu_seconds()
        if before is None or after is None:
            return 0.0
        spent.append(after - before)
    return max(0.0, spent[0] - spent[1])


@dataclass
class Result:
    name: str
    off: list[float] = field(default_factory=list)  # seconds per run
    on: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)  # only with --bare

    def ratios(self, mode: str = "on") -> list[float]:
        """Per round, the run in ``mode`` over the run with the agent off."""
        return [run / off for run, off in zip(getattr(self, mode), self.off)]

    def ratio(self, mode: str = "on") -> float:
        return statistics.median(self.ratios(mode))

    def us_per_op(self, ops: int, mode: str) -> float:
        return statistics.median(getattr(self, mode)) / ops * 1e6


def check_agent_attached(engine: Engine) -> None:
    """Fail loudly if 'on' would not measure anything: engine unknown, pool unwrapped."""
    agent = tracker.current_agent()
    if agent is None or id(engine) not in agent.registry.engines:
        raise SystemExit("the agent did not discover the benchmark's engine")
    if "connect" not in engine.pool.__dict__:
        raise SystemExit("the agent did not wrap the pool's connect()")


def warm_up(engine: Engine, ops: int, errors: AgentErrors, modes: tuple[str, ...],
            workloads: tuple[Workload, ...] = WORKLOADS) -> None:
    """One untimed run of every workload in every mode."""
    for mode in modes:
        set_mode(mode, errors)
        if mode == "on":
            check_agent_attached(engine)
        for workload in workloads:
            if workload.inserts:
                reset_inserts(engine)
            workload.run(engine, ops, 0)


def bench(engine: Engine, rounds: int, ops: int, errors: AgentErrors,
          progress: Callable[[str], None],
          modes: tuple[str, ...] = ("off", "on"),
          workloads: tuple[Workload, ...] = WORKLOADS) -> list[Result]:
    """Per round and workload one run in each mode; the order is reversed from one
    workload to the next and from round to round (so each mode goes first as often)."""
    results = [Result(w.name) for w in workloads]
    for r in range(rounds):
        t_round = time.perf_counter()
        for w, (workload, result) in enumerate(zip(workloads, results)):
            order = modes if (r + w) % 2 == 0 else modes[::-1]
            for mode in order:
                set_mode(mode, errors)
                seconds = timed_run(engine, workload, ops, start=r * ops)
                getattr(result, mode).append(seconds)
        set_mode("off", errors)
        progress(f"round {r + 1}/{rounds} done in {time.perf_counter() - t_round:.1f} s")
    return results


# -- report -------------------------------------------------------------------------


def format_table(results: list[Result], ops: int, bare: bool = False) -> str:
    width = max(len(r.name) for r in results)
    bare_header = f" {'bare µs/op':>10} | {'bare':>6} |" if bare else ""
    header = (f"{'workload':<{width}} | {'off µs/op':>10} |{bare_header} {'on µs/op':>10} | "
              f"{'ratio':>6} | per-round ratios")
    lines = [header, "-" * len(header)]
    for r in results:
        spread = " ".join(f"{x:.3f}" for x in r.ratios())
        bare_cells = (f" {r.us_per_op(ops, 'bare'):>10.1f} | {r.ratio('bare'):>6.3f} |"
                      if bare else "")
        lines.append(f"{r.name:<{width}} | {r.us_per_op(ops, 'off'):>10.1f} |{bare_cells} "
                     f"{r.us_per_op(ops, 'on'):>10.1f} | {r.ratio():>6.3f} | {spread}")
    return "\n".join(lines)


def to_json(results: list[Result], args: argparse.Namespace, overall: float,
            passed: bool, errors: AgentErrors, elapsed: float) -> dict[str, Any]:
    return {
        "benchmark": "agent_overhead",
        "rounds": args.rounds,
        "dashboard": args.url,
        "cold": args.cold,
        "ops": args.ops,
        "budget": args.budget,
        "overall_ratio": overall,
        "passed": passed,
        "elapsed_s": elapsed,
        "agent_errors": errors.count,
        "event_flags_left_on_by_uninstrument": sorted(leftover_event_flags),
        "environment": {
            "python": platform.python_version(),
            "sqlalchemy": sqlalchemy.__version__,
            "tracker": tracker.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "bare_overall_ratio": (statistics.geometric_mean([r.ratio("bare") for r in results])
                               if args.bare else None),
        "workloads": {
            r.name: {
                "off_us_per_op": r.us_per_op(args.ops, "off"),
                "on_us_per_op": r.us_per_op(args.ops, "on"),
                "ratio": r.ratio(),
                "round_ratios": r.ratios(),
                "off_s": r.off,
                "on_s": r.on,
                **({"bare_us_per_op": r.us_per_op(args.ops, "bare"),
                    "bare_ratio": r.ratio("bare"), "bare_round_ratios": r.ratios("bare"),
                    "bare_s": r.bare} if args.bare else {}),
            }
            for r in results
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Retort agent overhead on SQLAlchemy work: agent off vs on, interleaved.")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"off/on pairs per workload (default {DEFAULT_ROUNDS})")
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS,
                        help=f"operations per workload run (default {DEFAULT_OPS})")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the results as JSON to PATH")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET,
                        help=f"largest acceptable overall ratio (default {DEFAULT_BUDGET})")
    parser.add_argument("--url", help="stream the 'on' runs to this dashboard "
                        "(ws://127.0.0.1:8000/ws/agent/); default: no dashboard")
    parser.add_argument("--token", default=os.environ.get("RETORT_TOKEN", ""),
                        help="the agent token for --url (default: $RETORT_TOKEN)")
    parser.add_argument("--workloads", help="comma-separated names (default: all of "
                        + ", ".join(w.name for w in WORKLOADS) + ")")
    parser.add_argument("--cold", action="store_true",
                        help="time each fresh agent from its start, without waiting for "
                        "its worker's first round (statements take the path of a "
                        "text's first sight until then)")
    parser.add_argument("--bare", action="store_true",
                        help="also time a third mode, 'bare': pass-through hooks at the "
                        "agent's interception points (bench/bare_hooks.py), the floor "
                        "of what any agent hooked there costs")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.ops < 1:
        parser.error("--rounds and --ops must be at least 1")
    if args.url and not args.token:
        parser.error("--url needs --token (or RETORT_TOKEN)")
    if args.workloads:
        known = {w.name for w in WORKLOADS}
        wanted = [name.strip() for name in args.workloads.split(",") if name.strip()]
        unknown = sorted(set(wanted) - known)
        if unknown or not wanted:
            parser.error(f"unknown workload(s): {', '.join(unknown) or '(none)'}")
        args.workloads = wanted
    return args


def main(argv: list[str] | None = None) -> int:
    global DASHBOARD, BARE, COLD
    args = parse_args(argv)
    COLD = args.cold
    modes = ("off", "bare", "on") if args.bare else ("off", "on")
    workloads = tuple(w for w in WORKLOADS if not args.workloads or w.name in args.workloads)
    DASHBOARD = (args.url, args.token) if args.url else None
    started = time.perf_counter()
    errors = AgentErrors()
    print(f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
          f"tracker {tracker.__version__}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds x {len(workloads)} workloads x {args.ops} ops, "
          f"{', '.join(modes)}{' (cold agent)' if args.cold else ''}; "
          f"dashboard: {args.url or 'none'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="retort-bench-") as tmp:
        engine = make_engine(Path(tmp) / "bench.db")
        print(f"engine: {engine.url} pool={type(engine.pool).__name__}", flush=True)
        BARE = BareHooks(engine) if args.bare else None
        try:
            warm_up(engine, min(args.ops, 1_000), errors, modes, workloads)
            results = bench(engine, args.rounds, args.ops, errors,
                            lambda line: print(line, flush=True), modes, workloads)
        finally:
            set_mode("off", errors)
            engine.dispose()
    elapsed = time.perf_counter() - started
    overall = statistics.geometric_mean([r.ratio() for r in results])
    passed = overall <= args.budget
    print()
    print(format_table(results, args.ops, args.bare))
    print()
    if leftover_event_flags:
        print(f"note: uninstrument() left {', '.join(sorted(leftover_event_flags))} = True "
              "(SQLAlchemy's event dispatch stays on after the agent is gone);\n      the "
              "bench resets such flags after each uninstrument() so that 'off' is a clean "
              "baseline")
    if errors.count:
        print(f"warning: the agent counted {errors.count} internal error(s); "
              f"first: {errors.first}")
    print(f"elapsed: {elapsed:.1f} s")
    if args.bare:
        floor = statistics.geometric_mean([r.ratio("bare") for r in results])
        print(f"bare hooks (the floor): {floor:.3f}; the agent's own work above it: "
              f"{overall / floor:.3f}")
    print(f"overall: {overall:.3f} (budget {args.budget:.3f}) {'PASS' if passed else 'FAIL'}")
    if args.json is not None:
        args.json.write_text(json.dumps(
            to_json(results, args, overall, passed, errors, elapsed), indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

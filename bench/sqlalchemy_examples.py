"""The agent's overhead on SQLAlchemy's own performance suites (``examples/performance``).

DESIGN.md names SQLAlchemy's ``examples/performance`` as the yardstick for the 5 %
budget. This bench runs those suites, unchanged, with the agent off and on:

    .venv/bin/python bench/sqlalchemy_examples.py
    .venv/bin/python bench/sqlalchemy_examples.py --suites short_selects,single_inserts \\
        --rounds 7 --num 2000 --json out.json

Where the suites come from
    They are not part of SQLAlchemy's wheel, so the sdist of the *installed* SQLAlchemy
    version is downloaded from the package index (``pip download``) once, into
    ``var/bench/`` (ignored by git), and its ``examples/performance`` package is
    imported from there. ``--examples DIR`` points at an unpacked SQLAlchemy source
    tree instead. Nothing of it is copied into this repository.

How it runs
    Each suite runs in a process of its own (the suites share one ``Profiler`` class
    whose test list is global). In that process the suite's ``setup_once`` runs once;
    then for each of ``--rounds`` rounds, for each test of the suite, one timed run with
    the agent off and one with it on, in an order that alternates between tests and
    rounds. Before every timed run, outside the timing, the test itself runs with n=50
    again and again for 0.3 s, busy, with the suite's ``setup`` (which recreates its
    tables) and a ``gc.collect()`` before each of these stretches and once more right
    before the timed run. With the agent on the stretches go on until its worker has
    completed a round, so the agent is timed in its steady state, as in an
    application that has run for a quarter of a second (``--cold`` times each fresh
    agent from its start instead); in both modes the CPU is busy right up to the timed
    run (an idle CPU runs slower for the next tens of milliseconds on these machines:
    bench/agent_overhead.py ``heat``). A run with the agent on also
    counts the CPU time its worker spends right after the run on what the run recorded
    (bench/agent_overhead.py ``worker_after``). "Off" and "on" are those of
    bench/agent_overhead.py: ``tracker.uninstrument()`` with SQLAlchemy's leftover event
    flags reset, and ``tracker.instrument(url=None)`` (default tracking, worker running,
    no dashboard). The database is a SQLite file in ``/dev/shm`` when it exists (no disk
    latency in single_inserts' commits), else in the temporary directory; ``--dburl``
    runs the suites against another database.

How to read it
    One line per test: median seconds per run off and on, the median of the per-round
    ratios on/off, and every round's ratio. Each suite gets the geometric mean of its
    tests' ratios, and ``overall`` is the geometric mean over all tests, compared with
    ``--budget`` (default 1.05). The exit status is 0 for PASS, 1 for FAIL.

What the suites do (SQLAlchemy's own descriptions, summarised)
    short_selects: select one row by primary key, ``num`` times, ORM and Core, in one
    session or connection; single_inserts: one insert per transaction (a new Session
    or ``engine.begin()`` each time), ORM, Core and raw DBAPI; bulk_inserts,
    bulk_updates and large_resultsets: many rows per statement. bench/agent_overhead.py
    is the harsher case: a new Session for every single-row select.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "var" / "bench"
SUITES = ("short_selects", "single_inserts", "bulk_inserts", "bulk_updates",
          "large_resultsets")
#: Default ``num`` per suite: about 0.1-0.5 s per timed run on a 2-core machine.
DEFAULT_NUM = {"short_selects": 2000, "single_inserts": 2000, "bulk_inserts": 20000,
               "bulk_updates": 20000, "large_resultsets": 100000}
DEFAULT_ROUNDS = 5
DEFAULT_BUDGET = 1.05


def examples_dir(version: str) -> Path:
    """An unpacked SQLAlchemy ``version`` source tree (downloaded once)."""
    target = CACHE / f"sqlalchemy-{version}"
    if (target / "examples" / "performance" / "__init__.py").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        # the sdist of SQLAlchemy only: with ":all:", pip would build the tools its
        # metadata step needs (Cython) from source too, for minutes
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", "sqlalchemy", "-d", tmp, f"sqlalchemy=={version}"],
                       check=True)
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        (source,) = [p for p in Path(tmp).iterdir() if p.is_dir()]
        source.rename(target)
    return target


# -- one suite, in its own process ------------------------------------------------------


#: Operations a test runs untimed right before each timed run (after the setup).
WARM_NUM = 50


def run_suite(suite: str, source: Path, dburl: str, num: int, rounds: int,
              cold: bool = False) -> None:
    """Print one JSON line per timed run: {"test", "on", "seconds"}."""
    sys.path.insert(0, str(ROOT / "bench"))
    import agent_overhead as switch  # the same off/on switching (puts ROOT on the path)

    switch.COLD = cold

    # first on the path: this repository has an ``examples`` package of its own
    sys.path.insert(0, str(source))

    module = importlib.import_module(f"examples.performance.{suite}")
    profiler = module.Profiler
    tests = list(profiler.tests)
    errors = switch.AgentErrors()
    if profiler._setup_once:
        profiler._setup_once(dburl, False, num)

    def setup() -> None:
        # a collection first: some tests leave a Session unclosed, in a reference
        # cycle, and on a server database its open transaction would block the DROP
        gc.collect()
        if profiler._setup:
            profiler._setup(dburl, False, num)

    def timed(test: Any, on: bool, seed: int, record: bool) -> None:
        switch.set_agent(on, errors)
        random.seed(seed)

        def stretch() -> None:
            setup()  # the suite's setup between stretches (test_flush_pk_given's ids)
            test(min(WARM_NUM, num))

        # short runs of the test, busy, right up to the timing, in both modes (no idle
        # CPU before the timed run); with the agent on, until its worker has completed
        # a round: it has seen the test's statements, as in an application that has
        # run a while (bench/agent_overhead.py heat)
        if cold:  # one short run only: the agent is timed fresh
            stretch()
        else:
            switch.heat(stretch)
        setup()  # without the warm-up's rows
        random.seed(seed)  # the same sample of ids in both modes
        t0 = time.perf_counter()
        test(num)
        seconds = time.perf_counter() - t0 + switch.worker_after()
        if record:
            print(json.dumps({"test": test.__name__, "on": on, "seconds": seconds}),
                  flush=True)

    runnable = []
    for t, test in enumerate(tests):  # warm-up: each test once in both modes
        try:
            timed(test, False, t, record=False)
        except Exception as exc:
            # some tests suit only some drivers (single_inserts' raw DBAPI tests read
            # cursor.lastrowid, which psycopg 3 does not have): left out, and said so
            print(json.dumps({"skipped": test.__name__,
                              "reason": f"{type(exc).__name__}: {exc}"[:200]}), flush=True)
            continue
        timed(test, True, t, record=False)  # failing only with the agent: a bug, raised
        runnable.append(test)
    tests = runnable
    for r in range(rounds):
        for t, test in enumerate(tests):
            for on in ((False, True) if (r + t) % 2 == 0 else (True, False)):
                timed(test, on, r * 1000 + t, record=True)
    switch.set_agent(False, errors)
    print(json.dumps({"errors": errors.count, "first_error": errors.first}), flush=True)


# -- the report -------------------------------------------------------------------------


def collect(suite: str, source: Path, dburl: str, num: int, rounds: int,
            cold: bool = False) -> tuple[dict[str, dict[bool, list[float]]], int,
                                         str | None, list[str]]:
    """Run ``suite`` in a child process; its timings per test and mode, the agent's
    internal errors, and the tests left out because they fail without the agent."""
    command = [sys.executable, __file__, "--child", suite, "--examples", str(source),
               "--dburl", dburl, "--num", str(num), "--rounds", str(rounds)]
    if cold:
        command.append("--cold")
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{suite} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    timings: dict[str, dict[bool, list[float]]] = {}
    errors, first = 0, None
    skipped: list[str] = []
    for line in done.stdout.splitlines():
        if not line.startswith("{"):
            continue  # the suite's own prints
        row = json.loads(line)
        if "errors" in row:
            errors, first = row["errors"], row["first_error"]
            continue
        if "skipped" in row:
            skipped.append(f"{row['skipped']} ({row['reason']})")
            continue
        timings.setdefault(row["test"], {False: [], True: []})[row["on"]].append(
            row["seconds"])
    return timings, errors, first, skipped


def ratios(modes: dict[bool, list[float]]) -> list[float]:
    return [on / off for off, on in zip(modes[False], modes[True])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", default=",".join(SUITES),
                        help=f"comma-separated, of: {', '.join(SUITES)}")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--num", type=int, help="the suites' n (default: per suite)")
    parser.add_argument("--dburl", help="default: a SQLite file in /dev/shm or /tmp")
    parser.add_argument("--examples", type=Path,
                        help="an unpacked SQLAlchemy source tree (default: download it)")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET)
    parser.add_argument("--json", type=Path, metavar="PATH")
    parser.add_argument("--cold", action="store_true",
                        help="time each fresh agent from its start (see "
                        "bench/agent_overhead.py --cold)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        run_suite(args.child, args.examples, args.dburl, args.num, args.rounds, args.cold)
        return 0

    import sqlalchemy

    sys.path.insert(0, str(ROOT))
    import tracker

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = sorted(set(suites) - set(SUITES))
    if unknown:
        parser.error(f"unknown suite(s): {', '.join(unknown)}")
    source = args.examples or examples_dir(sqlalchemy.__version__)
    print(f"Python {platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}, "
          f"tracker {tracker.__version__}, {os.cpu_count()} CPUs; {args.rounds} rounds"
          f"{', cold agent' if args.cold else ''}; "
          f"examples from {source}", flush=True)
    started = time.perf_counter()
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="retort-examples-",
                                     dir=shm if shm.is_dir() else None) as tmp:
        report: dict[str, Any] = {}
        left_out: list[str] = []
        every: list[float] = []
        width = 44
        print(f"\n{'suite / test':<{width}} | {'off s':>7} | {'on s':>7} | {'ratio':>6} | "
              "per-round ratios")
        for suite in suites:
            dburl = args.dburl or f"sqlite:///{tmp}/{suite}.db"
            num = args.num or DEFAULT_NUM[suite]
            timings, errors, first, skipped = collect(suite, source, dburl, num,
                                                      args.rounds, args.cold)
            suite_ratios = []
            print(f"{suite} (n={num})")
            for test in skipped:
                print(f"  left out, it fails without the agent too: {test}")
                left_out.append(f"{suite}.{test}")
            for test, modes in timings.items():
                each = ratios(modes)
                ratio = statistics.median(each)
                suite_ratios.append(ratio)
                print(f"  {test:<{width - 2}} | {statistics.median(modes[False]):>7.3f} | "
                      f"{statistics.median(modes[True]):>7.3f} | {ratio:>6.3f} | "
                      + " ".join(f"{x:.3f}" for x in each), flush=True)
                report[f"{suite}.{test}"] = {"off_s": modes[False], "on_s": modes[True],
                                             "ratio": ratio}
            every += suite_ratios
            print(f"  {'suite (geometric mean)':<{width - 2}} | {'':>7} | {'':>7} | "
                  f"{statistics.geometric_mean(suite_ratios):>6.3f} |")
            if errors:
                print(f"  warning: the agent counted {errors} internal error(s); "
                      f"first: {first}")
    overall = statistics.geometric_mean(every)
    passed = overall <= args.budget
    print(f"\nelapsed: {time.perf_counter() - started:.0f} s")
    print(f"overall: {overall:.3f} over {len(every)} tests (budget {args.budget:.3f}) "
          f"{'PASS' if passed else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps({"overall": overall, "passed": passed,
                                         "tests": report, "left_out": left_out}, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

"""The agent's overhead counted in CPU instructions (valgrind's callgrind), not seconds.

Why
    Wall-clock ratios on these virtual machines scatter by ±20 % between rounds, far
    more than the 5 % budget being checked. Callgrind counts the instructions a run
    executes; for the same binary, inputs and environment the count repeats, whatever
    else the machine does. Instructions are not time (cache misses and GIL hand-offs
    are not in them), so this complements ``agent_overhead.py``; it does not replace it.

What it measures
    The workloads of ``agent_overhead.py``. For each workload and each mode (agent off,
    agent on) a child process runs the workload under callgrind twice, with ``--small``
    and ``--large`` operations after the same warm-up; the difference divided by the
    difference in operations is the cost of one operation, free of start-up and
    set-up. ``--separate-threads=yes`` splits the count per thread: the application
    thread (what the user waits for) and the agent's worker thread (run beside it,
    sharing the GIL) are reported apart. Under valgrind the wall clock runs ~50 times
    slower, so the worker's timed wake-ups are inflated; its figure is an upper bound.

How to run it (about 5 minutes on 2 cores; runs two children at a time)::

    .venv/bin/python bench/agent_instructions.py
    .venv/bin/python bench/agent_instructions.py --workloads orm_get,core_insert

How to read it
    ``app instr/op`` with the agent off and on, and their ratio (1.050 = 5 % more
    instructions in the application's thread); ``worker instr/op`` is the worker's
    share per operation. ``overall`` is the geometric mean of the app-thread ratios.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP = 300


def child(workload: str, on: bool, ops: int) -> None:
    """Run inside valgrind: set up, warm up, run ``ops`` operations, stop."""
    sys.path.insert(0, str(HERE))
    import agent_overhead as bench  # noqa: PLC0415  (only the child needs it)
    import tracker  # noqa: PLC0415

    run = {w.name: w.run for w in bench.WORKLOADS}[workload]
    with tempfile.TemporaryDirectory() as tmp:
        engine = bench.make_engine(Path(tmp) / "bench.db")
        if on:
            tracker.instrument(url=None)
        run(engine, WARMUP, 0)
        run(engine, ops, 10 * WARMUP)
        if on:
            tracker.uninstrument()
        engine.dispose()


def count(workload: str, on: bool, ops: int) -> tuple[int, int]:
    """(application-thread, other-threads) instructions of one child run."""
    with tempfile.TemporaryDirectory() as out:
        prefix = os.path.join(out, "cg")
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={prefix}.%p", sys.executable, __file__, "--child",
             workload, "on" if on else "off", str(ops)],
            env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{workload} ({'on' if on else 'off'}, {ops} ops) failed:\n"
                               + done.stderr[-2000:])
        totals: list[int] = []
        # with --separate-threads, one file per thread: cg.<pid>-01 (the main thread),
        # -02…; a file without the suffix holds no counts
        threads = [p for p in Path(out).iterdir() if _thread_no(p.name)]
        for path in sorted(threads, key=lambda p: _thread_no(p.name)):
            match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            totals.append(int(match.group(1)) if match else 0)
    return totals[0], sum(totals[1:])


def _thread_no(name: str) -> int:
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else 0


def per_op(workload: str, on: bool, small: int, large: int) -> tuple[float, float]:
    (app_s, other_s), (app_l, other_l) = (count(workload, on, small),
                                          count(workload, on, large))
    ops = large - small
    return (app_l - app_s) / ops, (other_l - other_s) / ops


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "on", int(sys.argv[4]))
        return 0
    sys.path.insert(0, str(HERE))
    import agent_overhead as bench  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in bench.WORKLOADS))
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    args = parser.parse_args()
    names = args.workloads.split(",")
    jobs = [(name, on) for name in names for on in (False, True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(jobs, pool.map(
            lambda job: per_op(job[0], job[1], args.small, args.large), jobs)))
    print(f"{'workload':<24}| app instr/op off |  on      | ratio | worker instr/op")
    ratios = []
    for name in names:
        (off, _), (on, worker) = results[(name, False)], results[(name, True)]
        ratio = on / off
        ratios.append(ratio)
        print(f"{name:<24}| {off:>16,.0f} | {on:>8,.0f} | {ratio:.3f} | {worker:>10,.0f}")
    overall = math.exp(sum(map(math.log, ratios)) / len(ratios))
    print(f"overall (app thread): {overall:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

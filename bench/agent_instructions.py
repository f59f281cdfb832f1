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

Memory layout
    A count repeats exactly only for the same environment: CPython's type attribute
    cache is indexed by the *addresses* of attribute names, so where the heap starts
    (which moves with the size of the environment and of the arguments) changes how
    often it misses: a workload's count moves by up to 3 %, in either mode, and the
    agent's ratio by as much. Each count is therefore run
    in a fixed minimal environment padded to ``--layouts`` different sizes; the
    figures shown are medians over those layouts, the ratio the median of the layouts'
    ratios (each layout's figures are printed with ``--verbose``). Now and then one
    layout's run of the agent comes out hundreds of thousands of instructions per
    operation off (below or above), for reasons not pinned down (thread timing under
    valgrind); the median leaves such a run out, ``--verbose`` shows it.

Type-cache misses
    The layout's effect is nearly all in one place: lookups of a type's attribute that
    its cache misses go to ``find_name_in_mro`` (CPython's walk of the class's MRO).
    Their cost (``callgrind_annotate --inclusive``) moves between layouts by tens of
    thousands of instructions per ORM operation, in either mode, while everything else
    repeats to ~1,000. The column ``excl. misses`` is the ratio of the counts without
    it: the agent's own work, steady from layout to layout, good for comparing two
    versions of the hooks. It leaves out the misses the agent's own lookups cause, so
    the plain ratio stays the figure for the budget.

How to run it (about 4 minutes per layout on 2 cores; runs two children at a time)::

    .venv/bin/python bench/agent_instructions.py
    .venv/bin/python bench/agent_instructions.py --workloads orm_get,core_insert --layouts 2

How to read it
    ``app instr/op`` with the agent off and on (medians over the layouts), and their
    ratio (1.050 = 5 % more instructions in the application's thread); ``excl.
    misses`` the same ratio without type-cache misses (see above); ``worker
    instr/op`` is the worker's share per operation. ``overall`` is the geometric mean
    of the app-thread ratios.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
WARMUP = 300


def child(workload: str, on: bool, ops: int, db: str) -> None:
    """Run inside valgrind: set up, warm up, run ``ops`` operations, exit at once."""
    sys.path.insert(0, str(HERE))
    import agent_overhead as bench  # noqa: PLC0415  (only the child needs it)
    import tracker  # noqa: PLC0415

    run = {w.name: w.run for w in bench.WORKLOADS}[workload]
    engine = bench.make_engine(Path(db))
    if on:
        tracker.instrument(url=None)
    run(engine, WARMUP, 0)
    # A full collection now, in both modes: otherwise the garbage of the set-up (the
    # seeding, the agent's discovery) can bring one during the small run and not the
    # large one, or the reverse, which is hundreds of millions of instructions.
    gc.collect()
    run(engine, ops, 10 * WARMUP)
    # No uninstrument(), dispose() or interpreter teardown: what they cost depends on
    # how far the worker thread got (what is left in the queue and the registries to
    # free), not on the operations; counted, they made the small and the large run
    # differ by hundreds of millions of instructions from one run to the next.
    os._exit(0)


#: Environment paddings (bytes) of the layouts, in order.
PADDINGS = (0, 37, 150, 301, 555, 1021)


def count(workload: str, on: bool, ops: int, layout: int = 0) -> tuple[int, int, int]:
    """(application-thread, other-threads, application-thread type-cache misses)
    instructions of one child run."""
    with tempfile.TemporaryDirectory() as out:
        prefix = os.path.join(out, "cg")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent",
               "PYTHONHASHSEED": "0", "RETORT_BENCH_PAD": "x" * PADDINGS[layout]}
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={prefix}.%p", sys.executable, __file__, "--child",
             workload, "on" if on else "off", str(ops), os.path.join(out, "bench.db")],
            env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{workload} ({'on' if on else 'off'}, {ops} ops) failed:\n"
                               + done.stderr[-2000:])
        totals: list[int] = []
        # with --separate-threads, one file per thread: cg.<pid>-01 (the main thread),
        # -02…; a file without the suffix holds no counts
        threads = sorted((p for p in Path(out).iterdir() if _thread_no(p.name)),
                         key=lambda p: _thread_no(p.name))
        for path in threads:
            match = re.search(r"^(?:summary|totals): (\d+)", path.read_text(), re.M)
            totals.append(int(match.group(1)) if match else 0)
        misses = _type_cache_misses(threads[0])
    return totals[0], sum(totals[1:]), misses


def _type_cache_misses(path: Path) -> int:
    """Instructions spent in ``find_name_in_mro`` and below (its inclusive cost)."""
    done = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                           str(path)], capture_output=True, text=True)
    found = [int(match.group(1).replace(",", "")) for match in re.finditer(
        r"^\s*([\d,]+) \([^)]*\)\s+\S+:find_name_in_mro(?:'\d+)? ", done.stdout, re.M)]
    return max(found, default=0)


def _thread_no(name: str) -> int:
    match = re.search(r"-(\d+)$", name)
    return int(match.group(1)) if match else 0


def per_op(workload: str, on: bool, small: int, large: int,
           layout: int = 0) -> tuple[float, float, float]:
    """(application thread, other threads, application thread without type-cache
    misses) instructions per operation."""
    (app_s, other_s, miss_s), (app_l, other_l, miss_l) = (
        count(workload, on, small, layout), count(workload, on, large, layout))
    ops = large - small
    return ((app_l - app_s) / ops, (other_l - other_s) / ops,
            ((app_l - miss_l) - (app_s - miss_s)) / ops)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "on", int(sys.argv[4]), sys.argv[5])
        return 0
    sys.path.insert(0, str(HERE))
    import agent_overhead as bench  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(w.name for w in bench.WORKLOADS))
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--layouts", type=int, default=3,
                        help=f"environment sizes averaged over (1-{len(PADDINGS)})")
    parser.add_argument("--verbose", action="store_true", help="print each layout's figures")
    args = parser.parse_args()
    names = args.workloads.split(",")
    layouts = range(max(1, min(args.layouts, len(PADDINGS))))
    jobs = [(name, on, layout) for name in names for layout in layouts for on in (False, True)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(jobs, pool.map(
            lambda job: per_op(job[0], job[1], args.small, args.large, job[2]), jobs)))
    print(f"{'workload':<24}| app instr/op off |  on      | ratio | excl. misses "
          f"| worker instr/op")
    ratios, steady_ratios = [], []
    for name in names:
        off = statistics.median(results[(name, False, layout)][0] for layout in layouts)
        on = statistics.median(results[(name, True, layout)][0] for layout in layouts)
        worker = statistics.median(results[(name, True, layout)][1] for layout in layouts)
        # the median of the layouts' ratios: one odd layout cannot move it
        ratio = statistics.median(results[(name, True, layout)][0]
                                  / results[(name, False, layout)][0] for layout in layouts)
        steady = statistics.median(results[(name, True, layout)][2]
                                   / results[(name, False, layout)][2] for layout in layouts)
        ratios.append(ratio)
        steady_ratios.append(steady)
        print(f"{name:<24}| {off:>16,.0f} | {on:>8,.0f} | {ratio:.3f} | {steady:>12.3f} "
              f"| {worker:>10,.0f}")
        if args.verbose:
            for layout in layouts:
                (off_l, _, off_steady), (on_l, _, on_steady) = (
                    results[(name, False, layout)], results[(name, True, layout)])
                print(f"  layout {layout} (+{PADDINGS[layout]:>4} B)    | {off_l:>16,.0f} | "
                      f"{on_l:>8,.0f} | {on_l / off_l:.3f} | {on_steady / off_steady:>12.3f} "
                      f"| (excl. misses: {off_steady:,.0f} / {on_steady:,.0f})")
    overall = statistics.geometric_mean(ratios)
    steady_overall = statistics.geometric_mean(steady_ratios)
    print(f"overall (app thread): {overall:.3f} (excl. type-cache misses: "
          f"{steady_overall:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

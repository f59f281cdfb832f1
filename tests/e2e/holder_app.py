"""A tiny instrumented application driven by commands on stdin, for end-to-end tests.

    hold N      check out N more connections (kept open by the main thread)
    release N   check N of them back in
    work N      run N short statements, each on its own checkout
    status      just answer

Every command is answered with one line: ``ok <pool.status()>``.
"""

from __future__ import annotations

import sys
import time

import sqlalchemy as sa

import tracker

held: list[sa.Connection] = []


def hold_connections(engine: sa.Engine, count: int) -> None:
    for _ in range(count):
        held.append(engine.connect())


def release_connections(count: int) -> None:
    for _ in range(count):
        held.pop().close()


def do_work(engine: sa.Engine, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        with engine.connect() as conn:
            conn.execute(sa.text("select 1")).scalar()
    return time.perf_counter() - start


def main() -> None:
    engine = sa.create_engine(f"sqlite:///{sys.argv[1]}", pool_size=5, max_overflow=0)
    # every checkout located: the test checks the holders' code lines
    tracker.instrument(state_interval=0.2, backoff_initial=0.2, backoff_max=1.0,
                       capture_locations="always")
    with engine.connect():
        pass  # the engine shows up with its pool at once
    print("ready", flush=True)
    for line in sys.stdin:
        command, *args = line.split() or ["status"]
        extra = ""
        if command == "hold":
            hold_connections(engine, int(args[0]))
        elif command == "release":
            release_connections(int(args[0]))
        elif command == "work":
            extra = f" elapsed={do_work(engine, int(args[0])):.3f}"
        print(f"ok {engine.pool.status()}{extra}", flush=True)


if __name__ == "__main__":
    main()

"""Command line of the demo shop: ``python -m examples.demo_shop [options]``.

Prints ``engine.pool.status()`` every 5 seconds (to compare with the dashboard), stops
cleanly and exits 0 on Ctrl-C / SIGTERM or after ``--duration`` seconds. A second
Ctrl-C exits at once (status 1).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime
from types import FrameType
from typing import Callable

from sqlalchemy import Engine

import tracker

from . import db
from .traffic import Shop, Traffic

log = logging.getLogger("demo_shop")

STATUS_EVERY = 5.0  # seconds between two pool status lines
STOP_TIMEOUT = 2.0  # seconds the worker threads get to finish on shutdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.demo_shop",
        description="A small SQLAlchemy web-shop simulation to watch with Retort.")
    parser.add_argument(
        "--db", metavar="URL",
        help="SQLAlchemy database URL (default: $DEMO_DATABASE_URL, else "
             "sqlite:///var/demo_shop.sqlite3 under the repository root)")
    parser.add_argument(
        "--duration", type=_positive_float, metavar="SECONDS",
        help="stop after this many seconds (default: run until Ctrl-C / SIGTERM)")
    parser.add_argument(
        "--threads", type=_positive_int, default=6, metavar="N",
        help="number of web worker threads (default: 6)")
    parser.add_argument(
        "--seed", type=int, metavar="N",
        help="random seed for the traffic (default: different every run)")
    parser.add_argument(
        "-v", "--verbose", action="store_true",
        help="log every request, not only reports, bursts and errors")
    return parser.parse_args(argv)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def configure_output(verbose: bool, on_broken_pipe: Callable[[], None]) -> None:
    """Compact log lines on stdout, the same stream as the status lines, so the two
    interleave in order; line buffering because we usually run under a pipe (the
    dashboard reads our output) where Python would otherwise buffer whole blocks."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    handler = _StdoutHandler(on_broken_pipe)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)-5s %(threadName)-15s %(message)s",
        datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("demo_shop").setLevel(logging.DEBUG if verbose else logging.INFO)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stdout handler that treats a closed pipe as "nobody is listening any more"
    instead of printing a logging traceback for every following line."""

    def __init__(self, on_broken_pipe: Callable[[], None]) -> None:
        super().__init__(sys.stdout)
        self._on_broken_pipe = on_broken_pipe

    def handleError(self, record: logging.LogRecord) -> None:
        if isinstance(sys.exc_info()[1], BrokenPipeError):
            self._on_broken_pipe()
        else:
            super().handleError(record)


def stdout_gone(stop: threading.Event) -> None:
    """Whoever read our output (usually the dashboard) has gone: point stdout at
    /dev/null so no later write fails (not even the interpreter's final flush), and
    stop the demo, as a command-line tool would on SIGPIPE."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    stop.set()


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM set the stop flag (the main loop then shuts down cleanly).

    A second Ctrl-C while stopping exits at once; a SIGTERM while stopping is ignored,
    because ``manage.py demo`` sends one right after the Ctrl-C that reached the whole
    terminal's process group, and that must not turn a clean stop into an abrupt one.
    """

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            if signum == signal.SIGINT:
                os._exit(1)
            return
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


def print_status(shop: Shop) -> None:
    """One line: timestamp, ``pool.status()`` verbatim, then the demo's own counters.
    A closed stdout stops the demo (see :func:`stdout_gone`)."""
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    counts = shop.stats.snapshot()
    summary = " ".join(f"{key}={counts.get(key, 0)}" for key in
                       ("requests", "orders", "reports", "timeouts", "errors"))
    try:
        print(f"{stamp} [pool] {shop.engine.pool.status()} | {summary}", flush=True)
    except BrokenPipeError:
        stdout_gone(shop.stop)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    configure_output(args.verbose, lambda: stdout_gone(stop))
    install_signal_handlers(stop)

    url = db.resolve_database_url(args.db)
    try:
        engine = db.make_engine(url)
    except Exception as exc:  # malformed URL, missing driver, in-memory SQLite
        log.error("cannot create the engine: %s", exc)
        return 2

    # Attach the Retort agent. RETORT_URL / RETORT_TOKEN come from the environment (set
    # by `manage.py demo`); without RETORT_URL the agent only collects locally. Leaving
    # the with-block uninstruments, which flushes the last frames (bounded by the
    # agent's flush_timeout) — unless something else had instrumented first.
    with tracker.instrument(app=os.environ.get("RETORT_APP") or "demo-shop") as agent:
        target = os.environ.get("RETORT_URL")
        log.info("Retort agent %s", f"reporting to {target}" if agent and target
                 else "collecting locally only (RETORT_URL not set)" if agent
                 else "disabled")
        try:
            return run_shop(engine, args, stop)
        finally:
            engine.dispose()


def run_shop(engine: Engine, args: argparse.Namespace, stop: threading.Event) -> int:
    """Prepare the database, run the traffic until stopped, report. Returns the exit code."""
    log.info("database %s (pool_size=%d max_overflow=%d pool_timeout=%.0fs)",
             engine.url.render_as_string(hide_password=True), db.POOL_SIZE,
             db.MAX_OVERFLOW, db.POOL_TIMEOUT)
    try:
        db.create_schema(engine)
        db.seed(engine)
        catalogue = db.load_catalogue(engine)
    except Exception as exc:  # database down, wrong credentials, no permission…
        log.error("cannot prepare the database: %s", exc)
        return 2
    log.info("%d customers, %d products in %d categories", len(catalogue.customer_ids),
             len(catalogue.product_ids), len(catalogue.categories))

    shop = Shop(engine, catalogue, stop)
    traffic = Traffic(shop, args.threads, args.seed)
    traffic.start()
    log.info("started %d web threads, report-1 and burst-scheduler%s", args.threads,
             f"; stopping after {args.duration:g} s" if args.duration else
             "; Ctrl-C to stop")

    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    next_status = started + STATUS_EVERY
    while not stop.is_set():
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            log.info("duration reached, stopping")
            break
        wake = next_status if deadline is None else min(next_status, deadline)
        stop.wait(max(0.0, wake - now))
        if time.monotonic() >= next_status and not stop.is_set():
            print_status(shop)
            next_status += STATUS_EVERY

    stuck = traffic.stop(STOP_TIMEOUT)
    if stuck:
        log.warning("threads still busy at exit: %s", ", ".join(stuck))
    print_status(shop)
    log.info("stopped after %.1f s", time.monotonic() - started)
    return 0

if __name__ == "__main__":
    sys.exit(main())

"""Command line of the demo shop: ``python -m examples.demo_shop [options]``.

Prints ``engine.pool.status()`` every 5 seconds (to compare with the dashboard), stops
cleanly and exits 0 on Ctrl-C / SIGTERM or after ``--duration`` seconds. A second
Ctrl-C exits at once.
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


def configure_output(verbose: bool) -> None:
    """Compact log lines on stdout, the same stream as the status lines, so the two
    interleave in order; line buffering because we usually run under a pipe (the
    dashboard reads our output) where Python would otherwise buffer whole blocks."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(levelname)-5s %(threadName)-15s %(message)s",
        datefmt="%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("demo_shop").setLevel(logging.DEBUG if verbose else logging.INFO)


def install_signal_handlers(stop: threading.Event) -> None:
    """Ctrl-C and SIGTERM set the stop flag (the main loop then shuts down); a second
    one while stopping exits immediately."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            os._exit(1)
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


def print_status(shop: Shop) -> None:
    """One line: timestamp, ``pool.status()`` verbatim, then the demo's own counters."""
    stamp = datetime.now().strftime("%H:%M:%S.%f")[:-3]
    counts = shop.stats.snapshot()
    summary = " ".join(f"{key}={counts.get(key, 0)}" for key in
                       ("requests", "orders", "reports", "timeouts", "errors"))
    print(f"{stamp} [pool] {shop.engine.pool.status()} | {summary}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_output(args.verbose)
    stop = threading.Event()
    install_signal_handlers(stop)

    url = db.resolve_database_url(args.db)
    try:
        engine = db.make_engine(url)
    except Exception as exc:  # bad URL, missing driver, in-memory SQLite
        log.error("cannot create the engine for %s: %s", url, exc)
        return 2

    # Attach the Retort agent. RETORT_URL / RETORT_TOKEN come from the environment (set
    # by `manage.py demo`); without RETORT_URL the agent only collects locally.
    agent = tracker.instrument(app=os.environ.get("RETORT_APP") or "demo-shop")
    target = os.environ.get("RETORT_URL")
    log.info("Retort agent %s", f"reporting to {target}" if agent and target
             else "collecting locally only (RETORT_URL not set)" if agent
             else "disabled")

    log.info("database %s (pool_size=%d max_overflow=%d pool_timeout=%.0fs)",
             engine.url.render_as_string(hide_password=True), db.POOL_SIZE,
             db.MAX_OVERFLOW, db.POOL_TIMEOUT)
    try:
        db.create_schema(engine)
        db.seed(engine)
        catalogue = db.load_catalogue(engine)
    except Exception as exc:
        log.error("cannot prepare the database: %s", exc)
        engine.dispose()
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
    engine.dispose()
    tracker.uninstrument()  # flushes the last frames to the dashboard (bounded)
    log.info("stopped after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

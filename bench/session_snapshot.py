"""How long the agent takes to snapshot a big session (the session page's data).

A session tracks ``--objects`` customers (default 100,000) loaded from SQLite, of which
``--modified`` have changes; the bench times, on the calling thread (the worker's work):

- ``page``: one page of 100 entities plus every pending change (what the session page
  asks for about once a second while someone views it);
- ``page_filtered``: the same, filtered to modified objects;
- ``last_page``: the page at the end (the whole map is walked to count and reach it);
- ``summary``: the per-state summary (lengths; the per-class count is cached);
- ``by_class``: the per-class count, redone every 2 s (10 s above 20,000 objects);
- ``frame``: encoding the snapshot reply to a protocol frame.

Run: ``.venv/bin/python bench/session_snapshot.py [--objects 100000] [--repeat 7]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tracker  # noqa: E402
from tracker import protocol  # noqa: E402
from tracker.sessions import _by_class  # noqa: E402


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str] = mapped_column(sa.String(200))
    password: Mapped[str] = mapped_column(sa.String(200))


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--modified", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    path = Path(tempfile.mkdtemp()) / "snapshot.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(Customer), [
            {"name": f"customer {i}", "email": f"c{i}@example.com", "password": "x"}
            for i in range(args.objects)])

    handle = tracker.instrument(url=None, run_worker=False)
    agent = handle.agent
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute",
                    lambda *a: statements.append(a[2]))
    with Session(engine) as session:
        start = time.perf_counter()
        customers = session.execute(sa.select(Customer)).scalars().all()
        load = time.perf_counter() - start
        for customer in customers[: args.modified]:
            customer.name += " (changed)"
        sid = agent.sessions.get(session).sid
        before = len(statements)

        def snapshot(**extra: Any) -> dict[str, Any]:
            return agent._snapshot_control({"session": sid, **extra}, "bench")[2][0]

        results = {
            "page": timed(lambda: snapshot(limit=100), args.repeat),
            "page_filtered": timed(lambda: snapshot(limit=100, modified=True), args.repeat),
            "last_page": timed(lambda: snapshot(offset=args.objects - 100, limit=100),
                               args.repeat),
            "summary": timed(lambda: agent.session_summaries(everything=True), args.repeat),
            "by_class": timed(lambda: _by_class(session), args.repeat),
        }
        reply = results["page"][1]
        frame_time, frame = timed(lambda: protocol.encode(reply), args.repeat)
        assert len(statements) == before, "a snapshot emitted SQL"
        assert reply["total"] == args.objects and reply["changes_total"] == args.modified

    print(f"session of {args.objects:,} objects ({args.modified} modified), "
          f"loaded by the app in {load:.2f} s")
    for name, (seconds, _) in results.items():
        print(f"{name:<14} {seconds * 1000:8.1f} ms")
    print(f"{'frame':<14} {frame_time * 1000:8.1f} ms  ({len(frame):,} bytes)")
    tracker.uninstrument()
    engine.dispose()


if __name__ == "__main__":
    main()

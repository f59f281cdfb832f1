"""A plain Python program using SQLAlchemy, started without any agent; it is
attached by pid. Driven by commands on stdin, each answered with one line
``ok <pool.status()>``:

    status      just answer
    work N      run N short statements, each on its own checkout
    add NAME    add a row in the held session (it stays in its transaction)
    commit      commit the held session (it then holds no connection)

At start it creates its table, checks out one connection it keeps (a report being
written, say) and opens a session whose transaction stays open; then prints
``ready <pid>``.
"""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))


def main() -> None:
    engine = sa.create_engine(f"sqlite:///{sys.argv[1]}", pool_size=4, max_overflow=1)
    Base.metadata.create_all(engine)
    report = engine.connect()
    report.execute(sa.text("select count(*) from jobs")).scalar()
    session = Session(engine)
    jobs = [Job(name="first")]  # kept: the identity map holds objects weakly
    session.add(jobs[0])
    session.flush()  # in a transaction, holding a second connection
    print(f"ready {os.getpid()}", flush=True)
    for line in sys.stdin:
        command, *args = line.split() or ["status"]
        if command == "work":
            for _ in range(int(args[0])):
                with engine.connect() as conn:
                    conn.execute(sa.text("select 1")).scalar()
        elif command == "add":
            jobs.append(Job(name=args[0]))
            session.add(jobs[-1])
            session.flush()
        elif command == "commit":
            session.commit()
        print(f"ok {engine.pool.status()}", flush=True)
    report.close()
    session.close()


if __name__ == "__main__":
    main()

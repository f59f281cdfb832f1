"""An instrumented application with ORM sessions, driven by commands on stdin.

    changes     open a session and make the scenario's changes (unflushed; kept open)
    idle        open another session that reads one row and stays in its transaction
    statements  just answer (with the count)
    commit      commit and close the changes session
    discard     close the changes session without committing (the agent reports
                lost-changes-on-close)

Every command is answered with one line: ``ok statements=<n> session=<sid> pid=<pid>``
where n counts every statement the database received (the app's own listener) and sid
is the agent's id of the changes session.
"""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

import tracker
from tests.tracker.scenario import Customer, make_changes, seed

statements: list[str] = []
sessions: dict[str, Session] = {}


def open_idle_transaction(engine: sa.Engine) -> None:
    session = Session(engine)
    sessions["idle"] = session
    session.get(Customer, 3)  # begins a transaction that nobody ends


def discard_changes() -> None:
    sessions["changes"].close()  # the changes are lost: nothing was flushed


def main() -> None:
    engine = sa.create_engine(sys.argv[1])
    seed(engine)
    handle = tracker.instrument(state_interval=0.2, backoff_initial=0.2, backoff_max=1.0,
                                capture_locations="always")
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement))
    print("ready", flush=True)
    sid = ""
    for line in sys.stdin:
        command = line.strip() or "statements"
        if command == "changes":
            session = sessions["changes"] = Session(engine, autoflush=False)
            objects = make_changes(session)
            sessions["objects"] = objects  # type: ignore[assignment]
            sid = handle.agent.sessions.get(session).sid
        elif command == "idle":
            open_idle_transaction(engine)
        elif command == "commit":
            sessions["changes"].commit()
            sessions["changes"].close()
        elif command == "discard":
            discard_changes()
        print(f"ok statements={len(statements)} session={sid} pid={os.getpid()}", flush=True)


if __name__ == "__main__":
    main()

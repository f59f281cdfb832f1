"""An instrumented application for the controls end-to-end test, driven by commands on
stdin (the scenario's Customer and Order tables, on the SQLite file named by argv[1]).

    query        read through an ORM session (one SELECT)
    rename NAME  rename customer 1 and commit
    add NAME     add a customer and commit

Every command is answered with one line:
``ok statements=<n> writes=<what this command wrote> name=<customer 1's name in the
database> customers=<rows in the database> pid=<pid>``, where n counts every statement
the database received (the app's own listener) and writes lists the INSERT / UPDATE /
DELETE statements of this command on the customer table ("-" for none).
"""

from __future__ import annotations

import os
import sys

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

import tracker
from tests.tracker.scenario import Customer, seed

statements: list[str] = []


def main() -> None:
    engine = sa.create_engine(f"sqlite:///{sys.argv[1]}")
    seed(engine)
    tracker.instrument(state_interval=0.2, backoff_initial=0.2, backoff_max=1.0)
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *rest: statements.append(statement))
    print("ready", flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        before = len(statements)
        with Session(engine) as session:
            if command == "query":
                session.scalars(sa.select(Customer).where(Customer.id == 3)).all()
            elif command == "rename":
                session.get(Customer, 1).name = argument
                session.commit()
            elif command == "add":
                session.add(Customer(name=argument))
                session.commit()
        after = len(statements)
        writes = [s.split()[0] for s in statements[before:after]
                  if s.split()[0] in ("INSERT", "UPDATE", "DELETE") and "retort_customer" in s]
        with engine.connect() as conn:  # what the database holds (not counted above)
            name = conn.execute(sa.text("select name from retort_customer where id = 1")).scalar()
            rows = conn.execute(sa.text("select count(*) from retort_customer")).scalar()
        print(f"ok statements={after} writes={','.join(writes) or '-'} name={name} "
              f"customers={rows} pid={os.getpid()}", flush=True)


if __name__ == "__main__":
    main()

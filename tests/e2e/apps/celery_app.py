"""A Celery application whose task writes through SQLAlchemy (engine and sessionmaker
made at import, in the worker's main process, before it forks its pool).

    E2E_CELERY_DB       the SQLite file (tables created by init_db())
    E2E_CELERY_BROKER   broker and result backend (default redis://127.0.0.1:6379/12)

Task ``apps.celery_app.record(name)``: adds an event row, returns how many rows
there are and the pid of the pool process that ran it. It knows nothing of the agent.
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from celery import Celery
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

BROKER = os.environ.get("E2E_CELERY_BROKER", "redis://127.0.0.1:6379/12")

app = Celery("e2e", broker=BROKER, backend=BROKER)
app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
                task_acks_late=False)

engine = sa.create_engine(f"sqlite:///{os.environ['E2E_CELERY_DB']}")
Sessions = sessionmaker(engine)


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))


@app.task(name="apps.celery_app.record")
def record(name: str) -> dict:
    with Sessions.begin() as session:
        session.add(Event(name=name))
        session.flush()
        count = session.scalar(sa.select(sa.func.count(Event.id)))
    return {"count": count, "pid": os.getpid()}


def init_db() -> None:
    Base.metadata.create_all(engine)


if __name__ == "__main__":
    init_db()

"""The pytest plugin, run on a small test module in a separate pytest process."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]

APP_TESTS = '''
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "author"
    id: Mapped[int] = mapped_column(primary_key=True)
    books: Mapped[list["Book"]] = relationship()


class Book(Base):
    __tablename__ = "book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("author.id"))


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Author(books=[Book()]) for _ in range(6)])
        session.commit()
    yield engine
    engine.dispose()


def test_lazy_loop(retort, engine):
    with Session(engine) as session:
        assert sum(len(a.books) for a in session.scalars(sa.select(Author))) == 6  # lazy


def test_eager(retort, engine):
    with Session(engine) as session:
        stmt = sa.select(Author).options(selectinload(Author.books))
        assert sum(len(a.books) for a in session.scalars(stmt)) == 6


LEAKED = []


def test_leak(retort, engine):
    LEAKED.append(engine.connect())  # kept, never closed


def test_lost_write(retort, engine):
    session = Session(engine)
    session.add(Author())
    session.close()  # lost


@pytest.mark.retort(allow=["n-plus-one"])
def test_allowed(retort, engine):
    with Session(engine) as session:
        assert sum(len(a.books) for a in session.scalars(sa.select(Author))) == 6


def test_unguarded(engine):
    with Session(engine) as session:
        assert sum(len(a.books) for a in session.scalars(sa.select(Author))) == 6
'''


def _line(marker: str) -> int:
    return next(number for number, line in enumerate(APP_TESTS.splitlines(), 0)
                if marker in line)


def _plugin_args() -> list[str]:
    """Load the plugin explicitly unless its entry point is installed (pip install .)."""
    names = {ep.name for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "retort" in names else ["-p", "tracker.pytest_plugin"]


def test_guard_fails_n_plus_one_leaks_and_lost_writes(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider",
                                           "-p", "no:django")
    outcomes = result.parseoutcomes()
    # a guard fails at teardown: the test itself passed, its teardown errors
    assert (outcomes.get("passed"), outcomes.get("errors")) == (6, 3), result.stdout.str()
    text = result.stdout.str()
    assert ("[warning] n-plus-one: Author.books was lazily loaded 5 times in session s2, "
            "one SELECT per Author: load it with selectinload() in the query that loads "
            "the Author objects") in text
    assert f"test_app.py:{_line('# lazy')} in <genexpr>" in text
    assert "select(Author).options(selectinload(Author.books))" in text
    assert ("[warning] connection-held-long: the test left a connection of engine "
            in text) and f"test_app.py:{_line('# kept, never closed')} in test_leak" in text
    assert "[error] lost-changes-on-close: session s2 was closed with unflushed changes (1 new)" in text
    assert f"test_app.py:{_line('# lost')} in test_lost_write" in text


def test_every_test_guarded_with_the_option(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_subprocess(*_plugin_args(), "-p", "no:cacheprovider",
                                           "-p", "no:django", "--retort",
                                           "-k", "unguarded or eager")
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors")) == (2, 1), result.stdout.str()
    assert "test_unguarded" in result.stdout.str()

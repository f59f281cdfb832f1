"""Change-tracking policies (tracker.policies) on SQLite and PostgreSQL, asserting the
exact statements each flush or query emits."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import ForeignKey, String, create_engine, event, select
from sqlalchemy.orm import (DeclarativeBase, Mapped, Session, mapped_column, relationship,
                            selectinload)

from tracker import policies
from tracker.policies import NO_TRACKING, NoTrackingError

from .. import services


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "pol_customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    orders: Mapped[list["Order"]] = relationship(back_populates="customer",
                                                 cascade="all, delete-orphan")


class Order(Base):
    __tablename__ = "pol_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("pol_customer.id"))
    total: Mapped[int]
    customer: Mapped[Customer] = relationship(back_populates="orders")


class AuditRow(Base):
    __tablename__ = "pol_audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(String(50))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'policies.db'}")
    else:
        services.require("postgresql")
        engine = create_engine(services.POSTGRES_URL)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Customer(id=1, name="ada", orders=[Order(id=10, total=5),
                                                            Order(id=11, total=7)]),
                         Customer(id=2, name="bob"), AuditRow(id=1, note="first")])
        session.commit()
    yield engine
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(autouse=True)
def no_conventions():
    yield
    policies.ignore_classes(())
    policies._rules.clear()


@pytest.fixture
def statements(engine):
    """Each statement the engine runs from now on, as "VERB table"."""
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        verb = statement.split(None, 1)[0].upper()
        table = re.search(r"\b(pol_\w+)", statement)
        seen.append(f"{verb} {table.group(1) if table else ''}".strip())

    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def _names(engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(select(Customer.id, Customer.name)).all())


def test_ignored_object_is_not_updated_and_keeps_its_values(engine, statements):
    with Session(engine) as session:
        ada, bob = session.get(Customer, 1), session.get(Customer, 2)
        policies.ignore_changes(ada)
        ada.name = "changed"
        bob.name = "robert"
        statements.clear()
        session.flush()
        assert statements == ["UPDATE pol_customer"]  # bob's only
        # still tracked, with what the application set, and not reloaded
        assert session.identity_map.get(session.identity_key(Customer, (1,))) is ada
        assert ada.name == "changed"
        assert ada in session
        session.commit()
    assert _names(engine) == {1: "ada", 2: "robert"}


def test_track_changes_again_writes_later_changes(engine, statements):
    with Session(engine, expire_on_commit=False) as session:
        ada = session.get(Customer, 1)
        policies.ignore_changes(ada)
        ada.name = "ignored"
        session.flush()
        policies.track_changes(ada)
        ada.name = "written"
        statements.clear()
        session.commit()
        assert statements == ["UPDATE pol_customer"]
    assert _names(engine)[1] == "written"


def test_ignored_new_object_is_not_inserted_and_ignored_delete_not_deleted(engine, statements):
    with Session(engine) as session:
        note = AuditRow(id=2, note="new")
        session.add(note)
        policies.ignore_changes(note)
        bob = session.get(Customer, 2)
        session.delete(bob)
        policies.ignore_changes(bob)
        statements.clear()
        session.commit()
        assert statements == []
        assert note not in session
        assert bob in session
    with Session(engine) as session:
        assert session.scalars(select(AuditRow.id)).all() == [1]
        assert session.get(Customer, 2).name == "bob"


def test_convention_rule_and_class_names(engine, statements):
    remove = policies.ignore_changes_when(lambda obj: isinstance(obj, AuditRow))
    with Session(engine) as session:
        note, order = session.get(AuditRow, 1), session.get(Order, 10)
        note.note, order.total = "edited", 50
        statements.clear()
        session.commit()
        assert statements == ["UPDATE pol_order"]
    remove()
    policies.ignore_classes({"Order"})
    with Session(engine) as session:
        note, order = session.get(AuditRow, 1), session.get(Order, 10)
        note.note, order.total = "edited", 60
        session.add(Order(id=12, customer_id=2, total=1))
        statements.clear()
        session.commit()
        assert statements == ["UPDATE pol_audit"]
    policies.ignore_classes({f"{__name__}.Order"})  # a qualified name works too
    with Session(engine) as session:
        session.get(Order, 10).total = 70
        statements.clear()
        session.commit()
        assert statements == []
    policies.ignore_classes(())
    with Session(engine) as session:
        assert session.get(Order, 10).total == 50  # the first, unignored, write
        assert session.get(Order, 12) is None
        assert session.get(AuditRow, 1).note == "edited"


def test_a_failing_rule_counts_as_not_ignored(engine, statements):
    def broken(obj):
        raise RuntimeError("bug in a convention")

    policies.ignore_changes_when(broken)
    with Session(engine) as session:
        session.get(Customer, 2).name = "robert"
        statements.clear()
        session.commit()
        assert statements == ["UPDATE pol_customer"]


def test_no_tracking_session_keeps_nothing_and_refuses_add(engine, statements):
    with policies.no_tracking(Session(engine)) as session:
        customers = session.scalars(
            select(Customer).options(selectinload(Customer.orders)).order_by(Customer.id)
        ).all()
        assert [c.name for c in customers] == ["ada", "bob"]
        assert [o.total for o in customers[0].orders] == [5, 7]  # eager-loaded in time
        assert len(session.identity_map) == 0
        assert customers[0] not in session
        assert statements == ["SELECT pol_customer", "SELECT pol_order"]
        with pytest.raises(NoTrackingError) as raised:
            session.add(Customer(id=3, name="cy"))
        assert str(raised.value).startswith(
            "cannot add Customer to a no-tracking session: it keeps no objects")
        customers[0].name = "changed"  # detached: nothing to write
        statements.clear()
        session.commit()
        assert statements == []


def test_no_tracking_sessions_from_a_factory(engine):
    from sqlalchemy.orm import sessionmaker

    policies.no_tracking(Session())  # installs the listeners
    factory = sessionmaker(engine, info={NO_TRACKING: True})
    with factory() as session:
        assert session.get(Customer, 1).name == "ada"
        assert len(session.identity_map) == 0


def test_no_tracking_query_in_a_tracking_session(engine, statements):
    policies.no_tracking(Session())  # installs the listeners
    with Session(engine) as session:
        tracked = session.get(Customer, 1)
        assert len(session.identity_map) == 1
        rows = session.scalars(select(Order).order_by(Order.id)
                               .execution_options(**{NO_TRACKING: True})).all()
        assert [o.total for o in rows] == [5, 7]
        assert len(session.identity_map) == 1  # no growth
        assert rows[0] not in session
        # an object it already tracked stays tracked, and is the one returned
        again = session.scalars(select(Customer).where(Customer.id == 1)
                                .execution_options(**{NO_TRACKING: True})).one()
        assert again is tracked and tracked in session
        # per execution, too
        session.execute(select(AuditRow), execution_options={NO_TRACKING: True}).all()
        assert len(session.identity_map) == 1
        # and the same query without the option is tracked
        kept = session.scalars(select(Order)).all()
        assert len(kept) == 2 and len(session.identity_map) == 3

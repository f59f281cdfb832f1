"""The session scenario shared by agent and end-to-end tests: customers with orders;
load some rows, modify two attributes, add one object, delete one, change a collection."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "retort_customer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    email: Mapped[str | None] = mapped_column(sa.String(200))
    password_hash: Mapped[str | None] = mapped_column(sa.String(200))
    orders: Mapped[list["Order"]] = relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "retort_order"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("retort_customer.id"))
    total: Mapped[Decimal] = mapped_column(sa.Numeric(10, 2))
    note: Mapped[str | None] = mapped_column(sa.String(200))
    customer: Mapped[Customer | None] = relationship(back_populates="orders")


def seed(engine: sa.Engine) -> None:
    """Fresh tables: Ann (orders 1, 2), Bob (order 3), Cy (no orders)."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    # ids from the database's own sequence (fresh tables: 1, 2, 3), so that later
    # inserts get the next ones on PostgreSQL too
    with Session(engine) as session:
        ann = Customer(name="Ann", email="ann@example.com", password_hash="h-ann")
        bob = Customer(name="Bob", email="bob@example.com", password_hash="h-bob")
        cy = Customer(name="Cy", email=None, password_hash=None)
        for customer in (ann, bob, cy):
            session.add(customer)
            session.flush()
        for customer, total, note in ((ann, "10.50", "first"), (ann, "20.00", None),
                                      (bob, "7.25", "gift")):
            session.add(Order(customer=customer, total=Decimal(total), note=note))
            session.flush()
        assert [ann.id, bob.id, cy.id] == [1, 2, 3]
        session.commit()


def make_changes(session: Session) -> dict[str, object]:
    """The scenario's changes, unflushed (autoflush off on the loads that follow)."""
    ann = session.get(Customer, 1)
    bob = session.get(Customer, 2)
    assert ann is not None and bob is not None
    orders = list(ann.orders)  # the application's own lazy load, before any change
    first = next(order for order in orders if order.id == 1)
    ann.name = "Annie"                                  # two attributes modified
    ann.email = "annie@example.com"
    dana = Customer(name="Dana", email="dana@example.com", password_hash="h-dana")
    session.add(dana)                                   # one object added
    session.delete(bob)                                 # one object deleted
    ann.orders.remove(first)                            # a collection changed:
    extra = Order(total=Decimal("5.00"), note="extra")  # one member out, one in
    ann.orders.append(extra)
    return {"ann": ann, "bob": bob, "dana": dana, "first": first, "extra": extra}

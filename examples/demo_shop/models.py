"""The shop's ORM models: customers place orders made of order lines, each for a product.

Prices are stored as integer cents rather than ``Numeric``: exact on every backend and
no "Decimal is not supported natively" warnings from SQLite. Timestamps are naive UTC
(``DateTime`` without time zone) so that SQLite, PostgreSQL and MySQL all store and
compare them the same way.

Table names carry a ``demo_shop_`` prefix because the demo may be pointed at a shared
database (e.g. the ``test`` database of a local PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """The current time as naive UTC (what the ``DateTime`` columns hold)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of the demo's models (its own metadata, nothing else in it)."""


class Customer(Base):
    """Someone who buys things."""

    __tablename__ = "demo_shop_customer"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    # unique: makes seeding idempotent even if two demo processes start at once
    email: Mapped[str] = mapped_column(String(200), unique=True)
    city: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    # Plain lazy="select": reading ``customer.orders`` emits its own SELECT, which is
    # exactly the lazy-load traffic the demo wants to show.
    orders: Mapped[list[Order]] = relationship(
        back_populates="customer", order_by="Order.id")

    def __repr__(self) -> str:
        return f"<Customer {self.id} {self.email}>"


class Product(Base):
    """Something for sale, with the stock left in the warehouse."""

    __tablename__ = "demo_shop_product"

    id: Mapped[int] = mapped_column(primary_key=True)
    sku: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    category: Mapped[str] = mapped_column(String(40), index=True)
    price_cents: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer, default=0)

    def __repr__(self) -> str:
        return f"<Product {self.id} {self.sku}>"


class Order(Base):
    """One checkout by a customer; its total is the sum of its lines."""

    __tablename__ = "demo_shop_order"

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("demo_shop_customer.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="paid")
    total_cents: Mapped[int] = mapped_column(Integer, default=0)
    # indexed: the nightly report filters on it
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)

    customer: Mapped[Customer] = relationship(back_populates="orders")
    lines: Mapped[list[OrderLine]] = relationship(
        back_populates="order", cascade="all, delete-orphan", order_by="OrderLine.id")

    def __repr__(self) -> str:
        return f"<Order {self.id} customer={self.customer_id}>"


class OrderLine(Base):
    """A quantity of one product within an order, at the price paid then."""

    __tablename__ = "demo_shop_order_line"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("demo_shop_order.id"), index=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("demo_shop_product.id"), index=True)
    quantity: Mapped[int] = mapped_column(Integer)
    # copied from the product at order time: later price changes don't rewrite history
    unit_price_cents: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="lines")
    product: Mapped[Product] = relationship()

    def __repr__(self) -> str:
        return f"<OrderLine {self.id} order={self.order_id} product={self.product_id}>"

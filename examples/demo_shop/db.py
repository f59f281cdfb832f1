"""Engine creation, schema and seed data for the demo shop."""

from __future__ import annotations

import dataclasses
import logging
import os
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Base, Customer, Order, OrderLine, Product, utcnow

log = logging.getLogger("demo_shop.db")

#: The repository root (this file is ``<root>/examples/demo_shop/db.py``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Where the default SQLite database lives; ``var/`` is git-ignored.
DEFAULT_SQLITE_PATH = REPO_ROOT / "var" / "demo_shop.sqlite3"

# Pool settings are deliberately small so that a handful of threads can exhaust the
# pool: the point of the demo is to make waiting and timeouts visible.
POOL_SIZE = 5
MAX_OVERFLOW = 2
POOL_TIMEOUT = 2.0  # seconds a checkout may wait before "QueuePool limit … reached"

SEED_CUSTOMERS = 300
SEED_PRODUCTS_PER_CATEGORY = 30
SEED_ORDERS = 400

CATEGORIES = ("books", "coffee", "garden", "kitchen", "music", "outdoor", "tea", "toys")
_FIRST = ("Ada", "Alan", "Barbara", "Claude", "Dennis", "Edsger", "Frances", "Grace",
          "Guido", "Hedy", "Ivan", "Joan", "Ken", "Linus", "Margaret", "Niklaus",
          "Radia", "Shafi", "Tim", "Whitfield")
_LAST = ("Allen", "Bosch", "Cerf", "Dijkstra", "Engelbart", "Floyd", "Goldberg",
         "Hopper", "Iverson", "Johnson", "Knuth", "Lamport", "Liskov", "Moore",
         "Naur", "Perlman", "Ritchie", "Sutherland", "Thompson", "Wirth")
_CITIES = ("Amsterdam", "Berlin", "Lisbon", "Lyon", "Madrid", "Oslo", "Prague",
           "Tallinn", "Turin", "Vienna")
_ADJECTIVES = ("Classic", "Deluxe", "Everyday", "Handmade", "Organic", "Pocket",
               "Small-batch", "Travel", "Vintage", "Wild")
_NOUNS = {
    "books": ("Atlas", "Cookbook", "Novel", "Poetry Collection", "Field Guide"),
    "coffee": ("Espresso Beans", "Filter Blend", "Cold Brew Kit", "Grinder", "Mug"),
    "garden": ("Trowel", "Seed Box", "Watering Can", "Planter", "Gloves"),
    "kitchen": ("Chef Knife", "Skillet", "Cutting Board", "Whisk", "Dutch Oven"),
    "music": ("Vinyl Record", "Ukulele", "Harmonica", "Songbook", "Metronome"),
    "outdoor": ("Tent", "Headlamp", "Backpack", "Water Bottle", "Hammock"),
    "tea": ("Green Tea", "Teapot", "Chai Blend", "Matcha Whisk", "Oolong"),
    "toys": ("Puzzle", "Kite", "Wooden Train", "Board Game", "Yo-yo"),
}


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The ids the traffic picks from, read once at start (they never change)."""

    customer_ids: tuple[int, ...]
    product_ids: tuple[int, ...]
    categories: tuple[str, ...]


def resolve_database_url(cli_value: str | None) -> str:
    """``--db`` wins, then ``DEMO_DATABASE_URL``, then the SQLite file under ``var/``."""
    if cli_value:
        return cli_value
    from_env = os.environ.get("DEMO_DATABASE_URL", "").strip()
    if from_env:
        return from_env
    return f"sqlite:///{DEFAULT_SQLITE_PATH}"


def make_engine(url: str) -> Engine:
    """An engine with the demo's small QueuePool, tuned for the given backend.

    Raises ``ValueError`` for an in-memory SQLite URL: it cannot be shared between
    threads through a QueuePool (each connection would be a different empty database).
    """
    parsed = make_url(url)
    options: dict[str, Any] = {
        "pool_size": POOL_SIZE,
        "max_overflow": MAX_OVERFLOW,
        "pool_timeout": POOL_TIMEOUT,
    }
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite:
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise ValueError("the demo needs a file database, not in-memory SQLite "
                             "(e.g. sqlite:///var/demo_shop.sqlite3)")
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Connections move between threads through the pool, hence check_same_thread;
        # timeout=30 makes a writer wait for the write lock instead of failing at once.
        options["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        # A network database may drop idle connections (restart, firewall, failover):
        # test each one at checkout rather than hand a dead one to a request.
        options["pool_pre_ping"] = True

    engine = create_engine(url, **options)
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    """WAL lets readers run while one thread writes (the default rollback journal
    locks the whole file for the duration of every write), and NORMAL synchronous is
    the usual companion setting for WAL. foreign_keys is off by default in SQLite."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_schema(engine: Engine) -> None:
    """Create the shop's tables that do not exist yet (never alters or drops)."""
    Base.metadata.create_all(engine)


def seed(engine: Engine) -> bool:
    """Fill an empty shop with customers, products and some order history.

    Idempotent: does nothing when customers exist. Returns True if it seeded. The data
    comes from a fixed random seed, so every fresh database looks the same.
    """
    with Session(engine) as session:
        if session.scalar(select(func.count()).select_from(Customer)):
            return False
        rng = random.Random(20240601)
        customers = _make_customers(rng)
        products = _make_products(rng)
        session.add_all(customers)
        session.add_all(products)
        session.add_all(_make_orders(rng, customers, products))
        try:
            session.commit()
        except IntegrityError:
            # another demo process seeded the same rows first (unique email / sku)
            session.rollback()
            log.info("seed data already written by another process")
            return False
    log.info("seeded %d customers, %d products and %d orders",
             len(customers), len(products), SEED_ORDERS)
    return True


def _make_customers(rng: random.Random) -> list[Customer]:
    customers = []
    for number in range(1, SEED_CUSTOMERS + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        customers.append(Customer(
            name=f"{first} {last}",
            email=f"{first}.{last}.{number}@example.com".lower(),
            city=rng.choice(_CITIES),
            created_at=utcnow() - timedelta(days=rng.randint(1, 900)),
        ))
    return customers


def _make_products(rng: random.Random) -> list[Product]:
    products = []
    for category in CATEGORIES:
        for number in range(1, SEED_PRODUCTS_PER_CATEGORY + 1):
            products.append(Product(
                sku=f"{category[:3].upper()}-{number:04d}",
                name=f"{rng.choice(_ADJECTIVES)} {rng.choice(_NOUNS[category])}",
                category=category,
                price_cents=rng.randrange(299, 15000, 10),
                stock=rng.randint(20, 200),
            ))
    return products


def _make_orders(rng: random.Random, customers: list[Customer],
                 products: list[Product]) -> list[Order]:
    """Order history spread over the last three days (relationships set by object, so
    the unit of work inserts parents first and fills in the foreign keys)."""
    orders = []
    for _ in range(SEED_ORDERS):
        order = Order(customer=rng.choice(customers), status="shipped",
                      created_at=utcnow() - timedelta(minutes=rng.randint(5, 3 * 24 * 60)))
        for product in rng.sample(products, rng.randint(1, 4)):
            order.lines.append(OrderLine(product=product, quantity=rng.randint(1, 3),
                                         unit_price_cents=product.price_cents))
        order.total_cents = sum(line.quantity * line.unit_price_cents for line in order.lines)
        orders.append(order)
    return orders


def load_catalogue(engine: Engine) -> Catalogue:
    """Read the customer and product ids once, so workers can pick without a query."""
    with Session(engine) as session:
        customer_ids = tuple(session.scalars(select(Customer.id).order_by(Customer.id)))
        product_ids = tuple(session.scalars(select(Product.id).order_by(Product.id)))
        categories = tuple(session.scalars(
            select(Product.category).distinct().order_by(Product.category)))
    if not customer_ids or not product_ids:
        raise RuntimeError("the shop has no customers or products (seeding failed?)")
    return Catalogue(customer_ids, product_ids, categories)

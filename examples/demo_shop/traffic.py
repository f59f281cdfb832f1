"""The demo's workload: named threads doing what a small web shop's database sees.

Each kind of work is its own function (``browse_products``, ``view_customer_orders``,
``place_order``, ``restock_product``, ``nightly_report``, ``purge_old_orders``,
``burst_request``) because the dashboard names the application code that checked a
connection out as ``file:line in function``: one function per kind of request keeps
that location meaningful.

Every request opens its own ``Session`` and closes it at the end, like a request-scoped
session in a web framework. Errors never kill a thread: :func:`run_request` turns a
checkout timeout into a logged "503" and any other error into a logged 500.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

from .db import MAX_OVERFLOW, POOL_SIZE, Catalogue
from .models import Customer, Order, OrderLine, Product, utcnow

log = logging.getLogger("demo_shop.traffic")

#: Extra threads per traffic burst: more than pool_size + max_overflow (5 + 2), so
#: some of them must wait for a connection and some of those give up.
BURST_SIZE = 12
#: Seconds between bursts (the first one comes sooner, so short runs see one).
BURST_INTERVAL = (20.0, 40.0)
FIRST_BURST_AFTER = (8.0, 15.0)
#: Seconds between two nightly reports, and how long one keeps its connection.
REPORT_INTERVAL = (15.0, 30.0)
REPORT_HOLD = (4.0, 8.0)
#: The purge after each report keeps this many most recent orders, so that a demo
#: left running for days does not grow its database (and its lazy loads) forever.
KEEP_ORDERS = 20_000
#: The web threads' request mix (relative weights).
WEB_MIX: dict[str, int] = {
    "browse_products": 45,
    "view_customer_orders": 25,
    "place_order": 20,
    "restock_product": 10,
    "update_customer_city": 3,
}
#: One in this many customer updates hits the bug that returns before the commit.
FORGOTTEN_COMMIT_EVERY = 4
#: The price editor's rounds: how often, and how long its changes stay unflushed.
PRICE_EDIT_INTERVAL = (6.0, 12.0)
PRICE_EDIT_HOLD = (5.0, 9.0)
LOW_STOCK = 25


class Stats:
    """Thread-safe counters, printed with each pool status line."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def bump(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class Shop:
    """What every worker needs: the engine, a session factory, the catalogue ids, the
    shared stop flag and the counters."""

    def __init__(self, engine: Engine, catalogue: Catalogue, stop: threading.Event) -> None:
        self.engine = engine
        # expire_on_commit=False: a request may still read what it just committed
        # (e.g. the new order's id for the log line) without another SELECT.
        self.Session: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        self.catalogue = catalogue
        self.stop = stop
        self.stats = Stats()

    def pause(self, seconds: float) -> bool:
        """Sleep, but wake at once on shutdown. True if the demo is stopping."""
        return self.stop.wait(seconds)


# -- the requests ------------------------------------------------------------------------

def browse_products(shop: Shop, rng: random.Random) -> None:
    """A category page sorted by popularity, then one product page with "recently
    bought by" (a three-table join)."""
    category = rng.choice(shop.catalogue.categories)
    with shop.Session() as session:
        sold = (
            select(OrderLine.product_id, func.sum(OrderLine.quantity).label("sold"))
            .join(Product, Product.id == OrderLine.product_id)
            .where(Product.category == category)
            .group_by(OrderLine.product_id)
            .subquery()
        )
        page = session.execute(
            select(Product, func.coalesce(sold.c.sold, 0).label("sold"))
            .outerjoin(sold, sold.c.product_id == Product.id)
            .where(Product.category == category)
            .order_by(func.coalesce(sold.c.sold, 0).desc(), Product.name)
            .limit(12)
        ).all()
        if not page:
            return
        product = rng.choice(page).Product
        buyers = session.scalars(
            select(Customer.name)
            .join(Order, Order.customer_id == Customer.id)
            .join(OrderLine, OrderLine.order_id == Order.id)
            .where(OrderLine.product_id == product.id)
            .order_by(Order.id.desc())
            .limit(5)
        ).all()
        render(shop, rng)  # the template renders while the session is still open
    log.debug("browsed %s: %d products, %s bought by %d", category, len(page),
              product.sku, len(buyers))


def view_customer_orders(shop: Shop, rng: random.Random) -> None:
    """The "my orders" page: the customer, then lazy loads — their orders, each recent
    order's lines and each line's product (the classic N+1 pattern)."""
    customer_id = rng.choice(shop.catalogue.customer_ids)
    with shop.Session() as session:
        customer = session.get(Customer, customer_id)
        if customer is None:
            return
        orders = customer.orders  # lazy load: SELECT … FROM demo_shop_order
        items = 0
        for order in orders[-5:]:
            for line in order.lines:  # lazy load per order
                items += line.quantity
                _ = line.product.name  # lazy load per product not yet in the session
        render(shop, rng)
    log.debug("customer %d: %d orders, %d items in the last five", customer_id,
              len(orders), items)


def place_order(shop: Shop, rng: random.Random) -> None:
    """Checkout: reserve stock with conditional UPDATEs, insert the order and its lines,
    commit. Products out of stock are left out; no stock at all means no order."""
    customer_id = rng.choice(shop.catalogue.customer_ids)
    wanted = {pid: rng.randint(1, 3)
              for pid in rng.sample(shop.catalogue.product_ids, rng.randint(1, 4))}
    with shop.Session() as session:
        prices = dict(session.execute(
            select(Product.id, Product.price_cents).where(Product.id.in_(wanted))).all())
        order = Order(customer_id=customer_id, status="paid", created_at=utcnow())
        # Always in product id order: two concurrent checkouts then lock rows in the same
        # order and cannot deadlock each other on PostgreSQL/MySQL.
        for product_id in sorted(wanted):
            quantity = wanted[product_id]
            reserved = session.execute(
                update(Product)
                .where(Product.id == product_id, Product.stock >= quantity)
                .values(stock=Product.stock - quantity)
                .execution_options(synchronize_session=False)
            ).rowcount
            if reserved:
                order.lines.append(OrderLine(product_id=product_id, quantity=quantity,
                                             unit_price_cents=prices[product_id]))
        if not order.lines:
            session.rollback()
            shop.stats.bump("out_of_stock")
            log.debug("customer %d: everything out of stock, no order", customer_id)
            return
        order.total_cents = sum(line.quantity * line.unit_price_cents
                                for line in order.lines)
        session.add(order)
        session.commit()
    shop.stats.bump("orders")
    log.debug("order %d for customer %d: %d lines, %.2f", order.id, customer_id,
              len(order.lines), order.total_cents / 100)


def restock_product(shop: Shop, rng: random.Random) -> None:
    """Back office: pick one of the lowest-stock products and add a delivery to it."""
    with shop.Session() as session:
        low = session.scalars(
            select(Product).where(Product.stock < LOW_STOCK)
            .order_by(Product.stock, Product.id).limit(5)
        ).all()
        if not low:
            return
        product = rng.choice(low)
        delivered = rng.randint(50, 150)
        # An SQL expression, not Python arithmetic: concurrent checkouts may change the
        # stock between our SELECT and this UPDATE.
        product.stock = Product.stock + delivered
        session.commit()
    shop.stats.bump("restocks")
    log.debug("restocked %s with %d", product.sku, delivered)


def update_customer_city(shop: Shop, rng: random.Random) -> None:
    """A profile update with a bug: when the "address check" fails, it returns early,
    and the session closes with the change unflushed: it is silently lost (the agent
    reports it as a lost-changes-on-close finding)."""
    customer_id = rng.choice(shop.catalogue.customer_ids)
    with shop.Session() as session:
        customer = session.get(Customer, customer_id)
        if customer is None:
            return
        customer.city = rng.choice(CITIES)
        if rng.randrange(FORGOTTEN_COMMIT_EVERY) == 0:
            shop.stats.bump("lost_updates")
            return  # the bug: no commit on this path
        session.commit()


def price_editor(shop: Shop, rng: random.Random) -> None:
    """A back-office user editing prices: one long-lived session whose changes (a few
    prices, one new product draft, one product withdrawn) stay pending for seconds
    before being saved — what the session page's pending changes show live."""
    with shop.Session() as session:
        while not shop.stop.is_set():
            products = session.scalars(select(Product).order_by(func.random()).limit(20)).all()
            for product in products[:3]:
                product.price_cents = max(99, product.price_cents + rng.choice((-50, 50, 100)))
            draft = Product(sku=f"DRAFT-{rng.randrange(10**9)}", name="Draft product",
                            category="drafts", price_cents=1999, stock=0)
            session.add(draft)
            withdrawn = next((p for p in products[3:] if p.category == "drafts"), None)
            if withdrawn is not None:
                session.delete(withdrawn)
            if shop.pause(rng.uniform(*PRICE_EDIT_HOLD)):
                session.rollback()
                return
            session.commit()
            shop.stats.bump("price_edits")
            if shop.pause(rng.uniform(*PRICE_EDIT_INTERVAL)):
                return


CITIES = ("Lyon", "Porto", "Ghent", "Graz", "Turku", "Bergen", "Split", "Cork")


def nightly_report(shop: Shop, rng: random.Random) -> None:
    """The slow report: aggregates over the last 24 hours, then keeps its transaction
    and connection open for seconds while it "renders" — the kind of long holder that
    starves a small pool."""
    hold = rng.uniform(*REPORT_HOLD)
    since = utcnow() - timedelta(hours=24)
    started = time.perf_counter()
    with shop.Session() as session:
        # Check the connection out now and keep it for the whole report.
        session.connection()
        by_category = session.execute(
            select(Product.category,
                   func.count(func.distinct(Order.id)).label("orders"),
                   func.sum(OrderLine.quantity * OrderLine.unit_price_cents).label("revenue"))
            .join(OrderLine, OrderLine.product_id == Product.id)
            .join(Order, Order.id == OrderLine.order_id)
            .where(Order.created_at >= since)
            .group_by(Product.category)
            .order_by(func.sum(OrderLine.quantity * OrderLine.unit_price_cents).desc())
        ).all()
        best = session.execute(
            select(Customer.name, func.sum(Order.total_cents).label("spent"))
            .join(Order, Order.customer_id == Customer.id)
            .where(Order.created_at >= since)
            .group_by(Customer.id, Customer.name)
            .order_by(func.sum(Order.total_cents).desc())
            .limit(1)
        ).first()
        cut_short = shop.pause(hold)  # "rendering the PDF", connection still checked out
        session.commit()
    held = time.perf_counter() - started
    revenue = sum(row.revenue or 0 for row in by_category) / 100
    shop.stats.bump("reports")
    log.info("nightly report: %d categories, %.2f revenue in 24 h, best customer %s; "
             "held a connection %.1f s%s", len(by_category), revenue,
             best.name if best else "-", held, " (cut short by shutdown)" if cut_short else "")


def purge_old_orders(shop: Shop, rng: random.Random) -> None:
    """Housekeeping after the report: keep only the most recent orders. One short
    transaction (on SQLite a long one would block every writer)."""
    with shop.Session() as session:
        newest = session.scalar(select(func.max(Order.id)))
        if newest is None or newest <= KEEP_ORDERS:
            return
        cutoff = newest - KEEP_ORDERS
        session.execute(delete(OrderLine).where(OrderLine.order_id <= cutoff)
                        .execution_options(synchronize_session=False))
        purged = session.execute(delete(Order).where(Order.id <= cutoff)
                                 .execution_options(synchronize_session=False)).rowcount
        session.commit()
    if purged:
        log.info("purged %d old orders (keeping the last %d)", purged, KEEP_ORDERS)


def burst_request(shop: Shop, rng: random.Random) -> None:
    """One request of a traffic burst: a quick query, then a slow upstream call (a
    payment provider, say) made while the session still holds its connection."""
    with shop.Session() as session:
        session.scalar(select(func.count()).select_from(Product)
                       .where(Product.stock < LOW_STOCK))
        shop.pause(rng.uniform(1.0, 3.0))
        session.commit()


def render(shop: Shop, rng: random.Random) -> None:
    """Template rendering time, spent while the request's connection is checked out."""
    shop.pause(rng.uniform(0.01, 0.12))


# -- error handling shared by all workers ------------------------------------------------

Request = Callable[[Shop, random.Random], None]


def run_request(shop: Shop, request: Request, rng: random.Random) -> str:
    """Run one request and never raise. Returns "ok", "timeout" or "error".

    A checkout timeout is what a web app answers with 503 Service Unavailable; any other
    error is a 500. Both are logged and counted; the thread carries on.
    """
    name = request.__name__
    shop.stats.bump("requests")
    try:
        request(shop, rng)
        return "ok"
    except sa_exc.TimeoutError as exc:
        shop.stats.bump("timeouts")
        log.warning("503 %s: %s", name, _first_line(exc))
        return "timeout"
    except sa_exc.SQLAlchemyError as exc:
        shop.stats.bump("errors")
        log.error("500 %s: %s: %s", name, type(exc).__name__, _first_line(exc))
        return "error"
    except Exception:
        shop.stats.bump("errors")
        log.exception("500 %s: unexpected error", name)
        return "error"


def _first_line(exc: BaseException) -> str:
    """The error's message without SQLAlchemy's "(Background on this error …)" tail."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" (Background on this error")[0]


# -- the threads -------------------------------------------------------------------------

_REQUESTS: dict[str, Request] = {
    "browse_products": browse_products,
    "view_customer_orders": view_customer_orders,
    "place_order": place_order,
    "restock_product": restock_product,
    "update_customer_city": update_customer_city,
}


def web_worker(shop: Shop, rng: random.Random) -> None:
    """A web server thread: one request after another, with think time between."""
    names = list(WEB_MIX)
    weights = [WEB_MIX[name] for name in names]
    while not shop.stop.is_set():
        request = _REQUESTS[rng.choices(names, weights)[0]]
        run_request(shop, request, rng)
        if shop.pause(rng.uniform(0.05, 0.4)):
            break


def report_worker(shop: Shop, rng: random.Random) -> None:
    """The scheduler of the nightly report (compressed: every 15-30 s)."""
    while not shop.pause(rng.uniform(*REPORT_INTERVAL)):
        run_request(shop, nightly_report, rng)
        if not shop.stop.is_set():
            run_request(shop, purge_old_orders, rng)


class Traffic:
    """Starts the workers and stops them; also runs the burst scheduler."""

    def __init__(self, shop: Shop, web_threads: int, seed: int | None) -> None:
        self.shop = shop
        self.web_threads = web_threads
        self.seed = seed
        self.threads: list[threading.Thread] = []
        self._bursts: list[threading.Thread] = []
        self._bursts_lock = threading.Lock()

    def rng(self, name: str) -> random.Random:
        """One generator per thread (``random.Random`` is not meant to be shared), made
        reproducible from ``--seed`` and the thread's name."""
        return random.Random(f"{self.seed}:{name}") if self.seed is not None else random.Random()

    def _spawn(self, name: str, target: Callable[..., Any], *args: Any) -> threading.Thread:
        # daemon: should a thread ever hang in the database, exit must not wait for it
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        return thread

    def start(self) -> None:
        for number in range(1, self.web_threads + 1):
            name = f"web-{number}"
            self.threads.append(self._spawn(name, web_worker, self.shop, self.rng(name)))
        self.threads.append(self._spawn("report-1", report_worker, self.shop,
                                        self.rng("report-1")))
        self.threads.append(self._spawn("price-editor", run_request, self.shop,
                                        price_editor, self.rng("price-editor")))
        self.threads.append(self._spawn("burst-scheduler", self._burst_scheduler,
                                        self.rng("burst-scheduler")))

    def _burst_scheduler(self, rng: random.Random) -> None:
        delay = rng.uniform(*FIRST_BURST_AFTER)
        number = 0
        while not self.shop.pause(delay):
            number += 1
            self.traffic_burst(number, rng)
            delay = rng.uniform(*BURST_INTERVAL)

    def traffic_burst(self, number: int, rng: random.Random) -> None:
        """Start BURST_SIZE short-lived request threads, wait for them, log the outcome."""
        log.info("traffic burst #%d: %d extra requests (pool capacity %d+%d)", number,
                 BURST_SIZE, POOL_SIZE, MAX_OVERFLOW)
        outcomes: Counter[str] = Counter()
        outcomes_lock = threading.Lock()

        def one_request(request_rng: random.Random) -> None:
            outcome = run_request(self.shop, burst_request, request_rng)
            with outcomes_lock:
                outcomes[outcome] += 1

        threads = []
        for index in range(1, BURST_SIZE + 1):
            name = f"burst-{number}-{index:02d}"
            thread = self._spawn(name, one_request, self.rng(name))
            threads.append(thread)
            with self._bursts_lock:
                self._bursts.append(thread)
            if self.shop.pause(rng.uniform(0.0, 0.05)):  # users don't arrive in lockstep
                break
        for thread in threads:
            thread.join()
        with self._bursts_lock:
            self._bursts = [t for t in self._bursts if t.is_alive()]
        log.info("traffic burst #%d done: %d served, %d timed out (503), %d failed",
                 number, outcomes["ok"], outcomes["timeout"], outcomes["error"])

    def stop(self, timeout: float) -> list[str]:
        """Set the stop flag and join every thread within ``timeout`` seconds in total.
        Returns the names of threads still running (they are daemons)."""
        self.shop.stop.set()
        deadline = time.monotonic() + timeout
        with self._bursts_lock:
            everyone = self.threads + self._bursts
        for thread in everyone:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.name for thread in everyone if thread.is_alive()]


"""Demo shop: a small SQLAlchemy 2.x web-shop simulation to watch with Retort.

Run it with ``python -m examples.demo_shop [--db URL] [--duration SECONDS]`` from the
repository root (the dashboard's ``manage.py demo`` does exactly that). It creates and
seeds its own tables, attaches the Retort agent with ``tracker.instrument()`` and then
produces a steady, realistic mix of database traffic from named threads:

* ``web-N`` threads browse the catalogue, show a customer's orders (lazy loads), place
  orders and restock products;
* ``report-1`` runs a slow "nightly report" that keeps its connection for seconds;
* ``burst-scheduler`` fires a traffic burst every 20-40 s: more short-lived threads than
  the pool can serve, so threads queue for a connection and some checkouts time out
  (logged as a 503, the way a web app would answer).

Modules: :mod:`.models` (ORM classes), :mod:`.db` (engine, schema, seed data),
:mod:`.traffic` (the workers) and :mod:`.__main__` (command line, start and stop).
"""

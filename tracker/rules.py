"""The advisor's catalogue: every rule the agent (or the dashboard) can report.

A finding names one of these rules by id. The catalogue is the one source of a rule's
title, severity, explanation and fix: the agent's ``check`` command prints from it, the
dashboard renders its findings and its per-rule docs pages from it, and
``docs/findings.md`` lists the same ids (a test keeps them in step).

Severities: ``error`` (data is lost or the app fails), ``warning`` (it will hurt under
load or in production), ``info`` (worth knowing).

Thresholds that decide when a runtime rule fires are in :data:`THRESHOLDS`; the agent
takes overrides from ``instrument(thresholds={...})`` or ``RETORT_THRESHOLDS``.
"""

from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)  # most severe first
CONFIG, RUNTIME = "config", "runtime"


@dataclass(frozen=True)
class Rule:
    """One rule of the catalogue."""

    id: str
    severity: str
    kind: str          # CONFIG (read from settings) or RUNTIME (seen in what the app does)
    title: str
    why: str           # why it matters, in two or three sentences
    fix: str           # what to do, one paragraph
    fix_code: str = ""  # a Python (or config) snippet showing the fix
    threshold: str = ""  # the THRESHOLDS key that decides when it fires, if any

    @property
    def docs_anchor(self) -> str:
        return f"docs/findings.md#{self.id}"


#: Default thresholds of the runtime rules (names are stable: they are configuration).
THRESHOLDS: dict[str, float] = {
    # the same relationship lazily loaded (with SQL) this many times in one session
    "n_plus_one": 5,
    # the same SQL with the same parameters this many times in one session
    "repeated_query": 3,
    # the same SQL (any parameters) this many times in one session, outside lazy loads
    "similar_queries": 10,
    # single-row INSERT or UPDATE statements to one table in one session
    "row_by_row_writes": 20,
    # rows returned by one SELECT
    "large_result_rows": 1000,
    # statements in one session
    "statements_per_session": 100,
    # seconds a transaction stays open
    "long_transaction_seconds": 30,
    # seconds a session sits in a transaction, holding a connection, doing nothing
    "idle_in_transaction_seconds": 5,
    # seconds a connection stays checked out
    "connection_held_seconds": 30,
    # seconds a statement runs before it is reported as slow
    "slow_statement_seconds": 0.5,
}


_RULES: tuple[Rule, ...] = (
    # -- configuration -------------------------------------------------------------
    Rule(
        "flask-track-modifications", WARNING, CONFIG,
        "Flask-SQLAlchemy tracks every model change (SQLALCHEMY_TRACK_MODIFICATIONS)",
        "With modification tracking on, Flask-SQLAlchemy records every object inserted, "
        "updated or deleted in each session so that it can send the models_committed and "
        "before_models_committed signals. It costs memory and time on every flush, for "
        "nothing if no code listens to those signals.",
        "If nobody is connected to the signals (the finding lists the receivers), turn it "
        "off. If a receiver depends on them, keep it on or move that code to SQLAlchemy's "
        "own session events (after_commit, before_flush).",
        'app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False',
    ),
    Rule(
        "flask-ignored-config-key", WARNING, CONFIG,
        "A Flask-SQLAlchemy setting is ignored by this version",
        "Flask-SQLAlchemy 3 no longer reads SQLALCHEMY_POOL_SIZE, SQLALCHEMY_POOL_TIMEOUT, "
        "SQLALCHEMY_POOL_RECYCLE, SQLALCHEMY_MAX_OVERFLOW, SQLALCHEMY_NATIVE_UNICODE and "
        "similar keys. The application believes its pool is configured, but the engine "
        "runs on SQLAlchemy's defaults.",
        "Move the values into SQLALCHEMY_ENGINE_OPTIONS (the finding shows the configured "
        "value beside the one the engine really uses).",
        'app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {\n'
        '    "pool_size": 10, "max_overflow": 5, "pool_timeout": 10, "pool_recycle": 280,\n'
        "}",
    ),
    Rule(
        "flask-record-queries", WARNING, CONFIG,
        "Flask-SQLAlchemy records every query (SQLALCHEMY_RECORD_QUERIES)",
        "Query recording keeps every statement of a request with its parameters and stack "
        "in memory. It is meant for debugging and slows every statement in production.",
        "Enable it only in development or tests.",
        'app.config["SQLALCHEMY_RECORD_QUERIES"] = app.debug',
    ),
    Rule(
        "mysql-pool-recycle", WARNING, CONFIG,
        "pool_recycle is unset or not below the MySQL/MariaDB server's wait_timeout",
        "The server closes connections idle longer than wait_timeout. A pooled connection "
        "older than that fails on its next use with 'MySQL server has gone away' (2006) "
        "or 'Lost connection' (2013).",
        "Set pool_recycle below the server's wait_timeout (and consider pool_pre_ping=True "
        "as well).",
        'engine = create_engine(url, pool_recycle=280, pool_pre_ping=True)  # wait_timeout 300',
    ),
    Rule(
        "no-pre-ping", INFO, CONFIG,
        "No pool_pre_ping on a network database",
        "Without pre-ping, a pooled connection the server or a proxy closed (restart, "
        "failover, idle timeout) is handed to the application and its first statement "
        "fails.",
        "Enable pool_pre_ping: one cheap round trip per checkout, and dead connections are "
        "replaced transparently.",
        "engine = create_engine(url, pool_pre_ping=True)",
    ),
    Rule(
        "sqlite-memory-pool", WARNING, CONFIG,
        "An in-memory SQLite database without StaticPool",
        "Each connection to sqlite:// (':memory:') is a different, empty database. With "
        "any pool but StaticPool, another thread or a replaced connection sees no tables "
        "and no data.",
        "Share one connection across threads with StaticPool.",
        "from sqlalchemy.pool import StaticPool\n"
        'engine = create_engine("sqlite://", poolclass=StaticPool,\n'
        '                       connect_args={"check_same_thread": False})',
    ),
    Rule(
        "sqlite-file-pool", WARNING, CONFIG,
        "A file SQLite database on a pool unsuitable for threads",
        "StaticPool hands one connection to every thread at once and SingletonThreadPool "
        "keeps one connection per thread without bound; with several threads, a file "
        "database needs a real pool.",
        "Use the default QueuePool (SQLAlchemy 2.x) for file databases.",
        'engine = create_engine("sqlite:///app.db")  # QueuePool by default',
    ),
    Rule(
        "echo-on", WARNING, CONFIG,
        "Engine echo is on",
        "echo=True logs every statement (and with 'debug' every row) through logging, at "
        "a large cost per statement in production.",
        "Turn echo off and use logging configuration when you need SQL logs.",
        "engine = create_engine(url, echo=False)",
    ),
    Rule(
        "pool-exceeds-max-connections", ERROR, CONFIG,
        "Pools can open more connections than the server allows",
        "pool_size + max_overflow, times the processes running the app, is above the "
        "server's max_connections. Under load, connections are refused ('too many "
        "connections') instead of waiting in the pool.",
        "Lower pool_size/max_overflow, run fewer processes, raise max_connections, or put "
        "a pooler (PgBouncer, ProxySQL) in front of the server.",
        "engine = create_engine(url, pool_size=5, max_overflow=5)",
    ),
    Rule(
        "metadata-naming-convention", INFO, CONFIG,
        "MetaData has no naming convention for constraints",
        "Unnamed constraints get database-generated names that differ between databases "
        "and environments; migrations (Alembic) then cannot drop or alter them reliably.",
        "Give the MetaData a naming convention before creating tables.",
        "class Base(DeclarativeBase):\n"
        "    metadata = MetaData(naming_convention={\n"
        '        "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",\n'
        '        "ck": "ck_%(table_name)s_%(constraint_name)s",\n'
        '        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",\n'
        '        "pk": "pk_%(table_name)s"})',
    ),
    # -- runtime: statements ---------------------------------------------------------
    Rule(
        "n-plus-one", WARNING, RUNTIME,
        "N+1 lazy loads of a relationship",
        "The same relationship was lazily loaded one object at a time, one SELECT per "
        "object, in one session: N objects cost N+1 round trips where one or two would do.",
        "Load the relationship eagerly in the query that loads the objects: selectinload "
        "for collections, joinedload (or selectinload) for many-to-one.",
        "stmt = select(Order).options(selectinload(Order.items))",
        "n_plus_one",
    ),
    Rule(
        "repeated-query", WARNING, RUNTIME,
        "The same query, with the same parameters, repeated in one session",
        "Each repetition is a round trip for a result the session already had.",
        "Run it once and keep the result, or use session.get() for primary-key lookups "
        "(answered from the identity map).",
        "customer = session.get(Customer, customer_id)  # no SQL when already loaded",
        "repeated_query",
    ),
    Rule(
        "similar-queries", WARNING, RUNTIME,
        "The same query run many times with different parameters in one session",
        "A loop issuing one SELECT per item pays one round trip per item.",
        "Fetch all the rows in one statement with IN, then look them up in memory.",
        "rows = session.scalars(select(Customer).where(Customer.id.in_(ids))).all()",
        "similar_queries",
    ),
    Rule(
        "row-by-row-writes", WARNING, RUNTIME,
        "Many single-row INSERT or UPDATE statements to one table",
        "One statement per row pays one round trip per row; executemany (and SQLAlchemy's "
        "insertmanyvalues) sends them in batches.",
        "Add the objects and flush once, or pass a list of parameter sets to one execute().",
        "session.add_all(customers)\nsession.flush()\n"
        "# Core: conn.execute(insert(customer), [{...}, {...}])",
        "row_by_row_writes",
    ),
    Rule(
        "large-result", WARNING, RUNTIME,
        "A SELECT returned a very large result",
        "Every row is transferred and, in the ORM, turned into an object held by the "
        "session: memory and time grow with the table.",
        "Paginate, filter, or stream with yield_per; select only the columns you need.",
        "for row in session.execute(stmt.execution_options(yield_per=500)):\n    ...",
        "large_result_rows",
    ),
    Rule(
        "too-many-statements", WARNING, RUNTIME,
        "Too many statements in one session",
        "A unit of work that needs this many round trips is usually loading row by row.",
        "Look at the session's statements by fingerprint: batch the repeated ones, load "
        "relationships eagerly.",
        "stmt = select(Order).options(selectinload(Order.items), joinedload(Order.customer))",
        "statements_per_session",
    ),
    Rule(
        "long-transaction", WARNING, RUNTIME,
        "A transaction stayed open for a long time",
        "A long transaction holds a pooled connection and database locks, and (on "
        "PostgreSQL) keeps vacuum from cleaning up.",
        "Keep transactions short: do slow work (HTTP calls, file I/O) outside them.",
        "with Session(engine) as session, session.begin():\n    ...  # only database work here",
        "long_transaction_seconds",
    ),
    Rule(
        "idle-in-transaction", WARNING, RUNTIME,
        "A session is idle in a transaction, holding a connection",
        "The session began a transaction, then did nothing for seconds without committing "
        "or closing: its connection is lost to the pool meanwhile.",
        "Commit or close the session as soon as its database work is done.",
        "with Session(engine) as session:\n    ...\n    session.commit()",
        "idle_in_transaction_seconds",
    ),
    Rule(
        "transaction-not-committed", ERROR, RUNTIME,
        "Flushed changes were rolled back: the transaction ended without commit",
        "The session flushed INSERT/UPDATE/DELETE statements, then its transaction ended "
        "without commit() (close() or garbage collection rolls it back). The writes "
        "succeeded and were silently discarded.",
        "Commit after the writes; with sessionmaker use Session.begin().",
        "with Session.begin() as session:   # commits when the block succeeds\n"
        "    session.add(order)",
    ),
    Rule(
        "session-multiple-threads", ERROR, RUNTIME,
        "One session used from several threads in the same transaction",
        "A Session is not thread-safe: concurrent use corrupts its identity map and "
        "unit of work, and interleaves statements on one connection.",
        "Give each thread its own session (a sessionmaker per call, or scoped_session).",
        "Session = scoped_session(sessionmaker(engine))  # one session per thread",
    ),
    Rule(
        "pool-checkout-timeout", ERROR, RUNTIME,
        "Pool exhausted: a checkout timed out (QueuePool limit reached)",
        "Every connection was checked out for longer than pool_timeout, so a request "
        "failed with TimeoutError. Either the pool is too small for the concurrency or "
        "connections are held too long (look at who holds them).",
        "Release connections sooner (close sessions, commit early); then size the pool "
        "to the real concurrency.",
        "engine = create_engine(url, pool_size=20, max_overflow=10, pool_timeout=10)",
    ),
    Rule(
        "pool-exhausted", WARNING, RUNTIME,
        "Threads waited for a pooled connection",
        "All connections were in use and threads queued for one: requests slow down "
        "before they start failing with checkout timeouts.",
        "Find the holders (the engine page lists them with their code location); release "
        "connections sooner, or enlarge the pool.",
        "engine = create_engine(url, pool_size=20, max_overflow=10)",
    ),
    Rule(
        "connection-held-long", WARNING, RUNTIME,
        "A connection has been checked out for a long time",
        "A connection checked out and never returned is a leak: the pool shrinks by one "
        "until it is exhausted.",
        "Use connections and sessions as context managers so that they are always "
        "returned.",
        "with engine.connect() as conn:\n    conn.execute(stmt)",
        "connection_held_seconds",
    ),
    # -- runtime: data-loss traps (the session issue) --------------------------------
    Rule(
        "lost-changes-on-close", ERROR, RUNTIME,
        "A session was closed with unflushed changes",
        "close() discards new, modified and deleted objects that were never flushed and "
        "committed: nothing reaches the database, and no error is raised.",
        "Commit before the session ends.",
        "with Session(engine) as session:\n    customer.name = \"Annie\"\n"
        "    session.commit()",
    ),
    Rule(
        "lost-changes-on-gc", ERROR, RUNTIME,
        "A session was garbage collected with unflushed changes",
        "A session dropped without close() loses its pending changes when collected.",
        "Use the session as a context manager and commit.",
        "with Session(engine) as session:\n    ...\n    session.commit()",
    ),
    Rule(
        "detached-modification", WARNING, RUNTIME,
        "An object was modified after its session closed",
        "A detached object's changes are never written unless it is merged into (or added "
        "to) a session.",
        "Change it inside a session, or merge it into one and commit.",
        "with Session(engine) as session:\n    session.merge(customer)\n    session.commit()",
    ),
)

#: Every rule by id, in catalogue order.
RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}


def rule(rule_id: str) -> Rule | None:
    """The rule with this id, or None (an agent newer than this catalogue)."""
    return RULES.get(rule_id)


def parse_thresholds(raw: str) -> dict[str, float]:
    """``"n_plus_one=3,slow_statement_seconds=0.2"`` → a dict; ValueError naming the
    bad part (unknown name or not a number)."""
    out: dict[str, float] = {}
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in THRESHOLDS:
            known = ", ".join(THRESHOLDS)
            raise ValueError(f"unknown threshold {name!r} in {part!r} (known: {known})")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"threshold {name}={value!r} is not a number") from None
    return out


@dataclass
class Finding:
    """One occurrence of a rule, as the agent reports it (a ``finding`` event)."""

    rule: str
    message: str
    evidence: dict
    location: str = ""      # "path/to/file.py:42 in function" of the application code
    engine: str = ""        # the agent's engine id, "" when no engine is concerned
    session: str = ""       # the session id ("s12"), "" when no session is concerned
    thread: str = ""
    severity: str = ""      # "" means the rule's own severity

    def __post_init__(self) -> None:
        if not self.severity:
            known = RULES.get(self.rule)
            self.severity = known.severity if known is not None else WARNING

    def event(self, ts: float) -> list:
        """The ``finding`` event array of the wire protocol."""
        return ["finding", ts, self.engine, self.rule, self.severity, self.session,
                self.thread, self.location, self.message, self.evidence]

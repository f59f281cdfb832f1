"""The engine rules: decided from one engine's URL, pool and flags (and, for MySQL's
``pool_recycle``, the server's ``wait_timeout`` when it was read).

Every finding's evidence carries ``url`` (password masked), ``dialect`` and ``pool``
(the pool class), the values that decided it, and two keys that describe the fix for
*this* engine: ``fix_options`` (the ``create_engine()`` keywords to set) and
``fix_remove`` (keywords to drop), plus ``fix_code``, the resulting line. The Flask
checks rewrite ``fix_code`` as ``SQLALCHEMY_ENGINE_OPTIONS`` for the engines they own.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool, SingletonThreadPool, StaticPool

from ..rules import ERROR, WARNING, Finding
from . import render

#: Dialects that run inside the process: no server, no network, nothing to ping.
IN_PROCESS_DIALECTS = frozenset({"sqlite"})
MYSQL_DIALECTS = frozenset({"mysql", "mariadb"})
#: The MySQL and MariaDB default for wait_timeout, in seconds.
MYSQL_DEFAULT_WAIT_TIMEOUT = 28800


def sync_engine(engine: Any) -> Engine:
    """The ``Engine`` itself, or the one behind an ``AsyncEngine``."""
    return getattr(engine, "sync_engine", engine)


def masked_url(engine: Any) -> str:
    """The engine's URL with the password shown as ``***``."""
    return sync_engine(engine).url.render_as_string(hide_password=True)


def engine_findings(engine: Any, server: Mapping[str, Any] | None = None) -> list[Finding]:
    """Every engine rule's finding for ``engine`` (an ``Engine`` or ``AsyncEngine``).

    ``server`` is what :func:`tracker.checks.server_settings` read from the engine's
    database (``wait_timeout``, ``max_connections``…), or None/``{}`` when it was not
    read; rules that need a server value then say it is unknown or stay silent. The
    findings have no ``location`` and no ``engine`` id: the caller knows both (the
    agent its engine id, the ``check`` command where the engine was defined) and sets
    them. Runs no SQL and never connects.
    """
    engine = sync_engine(engine)
    server = server or {}
    found = []
    for check in ENGINE_CHECKS:
        finding = check(engine, server)
        if finding is not None:
            found.append(finding)
    return found


def _evidence(engine: Engine, **values: Any) -> dict[str, Any]:
    return {"url": masked_url(engine), "dialect": engine.dialect.name,
            "pool": type(engine.pool).__name__, **values}


def _with_fix(evidence: dict[str, Any], options: Mapping[str, Any],
              remove: tuple[str, ...] = (), comment: str = "") -> dict[str, Any]:
    # keep classes out of the evidence (it goes over the wire as JSON): names only
    evidence["fix_options"] = {key: value.__name__ if isinstance(value, type) else value
                               for key, value in options.items()}
    evidence["fix_remove"] = list(remove)
    evidence["fix_code"] = render.imports_for(options) + render.create_engine_code(
        evidence["url"], options, comment)
    return evidence


def _keeps_connections(engine: Engine) -> bool:
    # NullPool opens and closes a connection per checkout: nothing is pooled, so
    # nothing can go stale between uses.
    return not isinstance(engine.pool, NullPool)


def check_mysql_pool_recycle(engine: Engine, server: Mapping[str, Any]) -> Finding | None:
    """mysql-pool-recycle: a MySQL/MariaDB pool whose connections can outlive the
    server's ``wait_timeout``. Unset: warning (naming wait_timeout when known); set but
    not below a known wait_timeout: error (a warning with pool_pre_ping, which turns
    the failure into a reconnect at checkout); below it, or set with wait_timeout
    unknown: nothing."""
    if engine.dialect.name not in MYSQL_DIALECTS or not _keeps_connections(engine):
        return None
    recycle = int(getattr(engine.pool, "_recycle", -1))
    pre_ping = bool(getattr(engine.pool, "_pre_ping", False))
    wait_timeout = server.get("wait_timeout")
    if not isinstance(wait_timeout, int) or isinstance(wait_timeout, bool):
        wait_timeout = None
    url = masked_url(engine)
    evidence = _evidence(engine, pool_recycle=recycle, wait_timeout=wait_timeout,
                         pre_ping=pre_ping)
    if server.get("error"):
        evidence["server_error"] = server["error"]
    if pre_ping:  # the stale connection is caught at checkout, at a price
        effect = ("is closed by the server, and pool_pre_ping has to replace it at "
                  "checkout (a failed round trip and a reconnect)")
    else:
        effect = ("is closed by the server and fails on its next use ('MySQL server has "
                  "gone away')")
    if recycle < 0:
        if wait_timeout is None:
            reason = (f"; {server['error']}" if server.get("error")
                      else ": not read")
            options = {"pool_recycle": suggested_recycle(MYSQL_DEFAULT_WAIT_TIMEOUT)}
            message = (
                f"pool_recycle is not set on {url}, so pooled connections are kept "
                f"however long they sit idle; the server's wait_timeout is unknown "
                f"(server settings{reason}). A connection idle longer than wait_timeout "
                f"(MySQL's default is {MYSQL_DEFAULT_WAIT_TIMEOUT} s) {effect}. Set "
                f"pool_recycle below the server's wait_timeout (SELECT @@wait_timeout).")
        else:
            options = {"pool_recycle": suggested_recycle(wait_timeout)}
            message = (
                f"pool_recycle is not set on {url}, so pooled connections are kept "
                f"however long they sit idle, and the server's wait_timeout is "
                f"{wait_timeout} s: a connection idle longer than that {effect}. Set "
                f"pool_recycle={options['pool_recycle']}.")
        if not pre_ping:
            options["pool_pre_ping"] = True
        return Finding("mysql-pool-recycle", message, _with_fix(evidence, options))
    if wait_timeout is None or recycle < wait_timeout:
        return None
    options = {"pool_recycle": suggested_recycle(wait_timeout)}
    if not pre_ping:
        options["pool_pre_ping"] = True
    message = (
        f"pool_recycle={recycle} on {url} is not below the server's wait_timeout of "
        f"{wait_timeout} s: a connection idle for {wait_timeout} s {effect}, before the "
        f"pool recycles it at {recycle} s. Set pool_recycle={options['pool_recycle']}.")
    # without pre-ping the application gets the error; with it, only a reconnect
    return Finding("mysql-pool-recycle", message, _with_fix(evidence, options),
                   severity=WARNING if pre_ping else ERROR)


def suggested_recycle(wait_timeout: int) -> int:
    """A pool_recycle safely below ``wait_timeout``: 10% below it, at most 300 s below."""
    return max(1, wait_timeout - min(300, max(1, wait_timeout // 10)))


def check_pre_ping(engine: Engine, server: Mapping[str, Any]) -> Finding | None:
    """no-pre-ping: a pool of network connections handed out without a liveness check."""
    if engine.dialect.name in IN_PROCESS_DIALECTS or not _keeps_connections(engine):
        return None
    if getattr(engine.pool, "_pre_ping", False):
        return None
    pool = type(engine.pool).__name__
    message = (
        f"pool_pre_ping is off on {masked_url(engine)} ({pool}): a pooled connection "
        f"that the server or a proxy closed (restart, failover, idle timeout) is handed "
        f"to the application and its first statement fails. Set pool_pre_ping=True.")
    evidence = _evidence(engine, pre_ping=False)
    return Finding("no-pre-ping", message, _with_fix(evidence, {"pool_pre_ping": True}))


MEMORY, SHARED_MEMORY, FILE = "memory", "shared memory", "file"


def sqlite_kind(engine: Engine) -> str | None:
    """``"memory"``: a database private to each connection (``sqlite://``,
    ``:memory:``, a ``mode=memory`` URI); ``"shared memory"``: a ``mode=memory`` URI
    with ``cache=shared`` (one database while a connection holds it open); ``"file"``;
    None for other dialects."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return None
    if (url.database or "") in ("", ":memory:"):
        return MEMORY
    query = {key: str(value).lower() for key, value in url.query.items()}
    if query.get("mode") == "memory":
        return SHARED_MEMORY if query.get("cache") == "shared" else MEMORY
    return FILE


def check_sqlite_memory_pool(engine: Engine, server: Mapping[str, Any]) -> Finding | None:
    """sqlite-memory-pool: an in-memory SQLite database on any pool but StaticPool."""
    if sqlite_kind(engine) != MEMORY or isinstance(engine.pool, StaticPool):
        return None
    pool = type(engine.pool).__name__
    url = masked_url(engine)
    message = (
        f"{url} is an in-memory SQLite database on {pool}: each connection is a "
        f"different, empty database, so another thread (or a replaced connection) sees "
        f"no tables and no data. Use poolclass=StaticPool with "
        f"connect_args={{'check_same_thread': False}}.")
    options = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    return Finding("sqlite-memory-pool", message, _with_fix(_evidence(engine), options))


def check_sqlite_file_pool(engine: Engine, server: Mapping[str, Any]) -> Finding | None:
    """sqlite-file-pool: a file SQLite database on StaticPool or SingletonThreadPool."""
    if sqlite_kind(engine) != FILE:
        return None
    pool = engine.pool
    if isinstance(pool, StaticPool):
        how = "one connection is shared by every thread at once"
    elif isinstance(pool, SingletonThreadPool):
        how = "each thread gets its own connection, never bounded or returned"
    else:
        return None
    name = type(pool).__name__
    message = (
        f"{masked_url(engine)} is a file SQLite database on {name}: {how}. Drop "
        f"poolclass={name} and use the default QueuePool.")
    evidence = _with_fix(_evidence(engine), {}, remove=("poolclass",),
                         comment="no poolclass: QueuePool is the default")
    return Finding("sqlite-file-pool", message, evidence)


def check_echo(engine: Engine, server: Mapping[str, Any]) -> Finding | None:
    """echo-on: ``echo=True`` or ``echo="debug"``."""
    echo = engine.echo
    if not echo:
        return None
    what = "every statement and every row" if echo == "debug" else "every statement"
    message = (
        f"echo={echo!r} on {masked_url(engine)}: {what} is logged, at a large cost per "
        f"statement. Set echo=False and configure the 'sqlalchemy.engine' logger when "
        f"you need SQL logs.")
    evidence = _evidence(engine, echo=echo if isinstance(echo, (bool, str)) else str(echo))
    return Finding("echo-on", message, _with_fix(evidence, {"echo": False}))


#: The engine rules, in the order their findings are listed.
ENGINE_CHECKS: tuple[Callable[[Engine, Mapping[str, Any]], Finding | None], ...] = (
    check_mysql_pool_recycle,
    check_pre_ping,
    check_sqlite_memory_pool,
    check_sqlite_file_pool,
    check_echo,
)

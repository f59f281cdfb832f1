"""Read the server settings the configuration rules need, without being seen.

The query runs on a raw DBAPI connection taken from the engine's own pool
(``engine.raw_connection()``), never through ``Connection.execute``: the application's
``before_cursor_execute`` / ``after_execute`` listeners, its statement logging and the
agent's own statement hooks do not see it. The pool does see one checkout (and, on a
fresh pool, one connect: the application's ``connect`` listeners run as for any
connection). The connection goes back to the pool rolled back; an ``AsyncEngine``'s
connection is discarded instead, since it belongs to the event loop that read it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable

from sqlalchemy.engine import Engine

from .engine import MYSQL_DIALECTS, sync_engine

#: Seconds to wait for the server before giving up (the read continues in the
#: background and its connection returns to the pool when it ends).
DEFAULT_TIMEOUT = 5.0
#: Longest "error" text returned.
MAX_ERROR = 200

_PG_SETTINGS = ("max_connections", "idle_in_transaction_session_timeout", "server_version")
#: pg_settings units of time, in seconds
_PG_UNITS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}


def server_settings(engine: Any, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """What the database server behind ``engine`` (an ``Engine`` or ``AsyncEngine``)
    says about itself; never raises.

    - MySQL / MariaDB: ``wait_timeout`` (seconds, as the pool's connections see it:
      the session value), ``max_connections``, ``version`` (``VERSION()``);
    - PostgreSQL: ``max_connections``, ``idle_in_transaction_session_timeout``
      (seconds, 0 = disabled), ``version`` (``server_version``);
    - SQLite and other dialects: ``{}`` (nothing to read).

    On any failure (server down, no privilege, ``timeout`` seconds passed) the result
    is ``{"error": "<ExceptionType>: <first line>"}``.
    """
    try:
        engine = sync_engine(engine)
        name = engine.dialect.name
        if name in MYSQL_DIALECTS:
            reader = _read_mysql
        elif name == "postgresql":
            reader = _read_postgresql
        else:
            return {}
        return _read_in_thread(engine, reader, timeout)
    except Exception as exc:  # never into the caller (the agent runs this too)
        return {"error": short_error(exc)}


def short_error(exc: BaseException) -> str:
    """``"OperationalError: (2003, "Can't connect…")"``: type and first line, bounded."""
    text = str(exc).strip().splitlines()
    line = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    return line if len(line) <= MAX_ERROR else line[:MAX_ERROR - 1] + "…"


def _read_in_thread(engine: Engine, reader: Callable[[Any], dict[str, Any]],
                    timeout: float) -> dict[str, Any]:
    # A thread of its own: a pool checkout or a connect can block far longer than the
    # caller (the agent's worker, a CI step) should wait, and an AsyncEngine needs an
    # event loop of its own whatever the caller runs in.
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            if engine.dialect.is_async:
                outcome["value"] = asyncio.run(_read_async(engine, reader))
            else:
                outcome["value"] = _read_sync(engine, reader)
        except BaseException as exc:  # reported, never raised
            outcome["error"] = short_error(exc)

    thread = threading.Thread(target=work, name="retort-server-settings", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return {"error": f"TimeoutError: no answer from the server within {timeout:g} s"}
    if "error" in outcome:
        return {"error": outcome["error"]}
    return dict(outcome["value"])


def _read_sync(engine: Engine, reader: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    connection = engine.raw_connection()
    try:
        return reader(connection)
    finally:
        try:
            connection.rollback()  # leave nothing open, whatever reset_on_return says
        finally:
            connection.close()     # back to the pool


async def _read_async(engine: Engine, reader: Callable[[Any], dict[str, Any]]
                      ) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import AsyncEngine

    async with AsyncEngine(engine).connect() as connection:
        try:
            # run_sync: the adapted DBAPI cursor needs SQLAlchemy's greenlet context;
            # .connection is the pooled DBAPI connection (no Connection.execute)
            return await connection.run_sync(lambda conn: reader(conn.connection))
        finally:
            # bound to this short-lived event loop: never back into the pool
            await connection.invalidate()


def _read_mysql(connection: Any) -> dict[str, Any]:
    cursor = connection.cursor()
    try:
        cursor.execute("SELECT @@wait_timeout, @@max_connections, VERSION()")
        wait_timeout, max_connections, version = cursor.fetchone()
    finally:
        cursor.close()
    return {"wait_timeout": int(wait_timeout), "max_connections": int(max_connections),
            "version": _text(version)}


def _read_postgresql(connection: Any) -> dict[str, Any]:
    cursor = connection.cursor()
    try:
        names = ", ".join(f"'{name}'" for name in _PG_SETTINGS)
        cursor.execute(f"SELECT name, setting, unit FROM pg_settings WHERE name IN ({names})")
        rows = cursor.fetchall()
    finally:
        cursor.close()
    settings = {_text(name): (_text(setting), unit) for name, setting, unit in rows}
    out: dict[str, Any] = {}
    if "max_connections" in settings:
        out["max_connections"] = int(settings["max_connections"][0])
    if "idle_in_transaction_session_timeout" in settings:
        value, unit = settings["idle_in_transaction_session_timeout"]
        seconds = int(value) * _PG_UNITS.get(_text(unit or "ms"), 0.001)
        out["idle_in_transaction_session_timeout"] = (
            int(seconds) if float(seconds).is_integer() else seconds)
    if "server_version" in settings:
        out["version"] = settings["server_version"][0]
    return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, (bytes, bytearray)) else str(value)

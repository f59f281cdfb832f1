"""What the agent knows about: engines and their pools, held by weak reference.

Hooks look entries up by ``id()`` of the engine or pool (a dict lookup, no weakref
allocation on the hot path); a ``weakref.finalize`` removes an entry when its object
is collected, so ids are never confused with a later object's.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from typing import Any, Callable, Sequence

from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from .tally import Tally


class PoolEntry:
    """Live facts about one pool, written by hooks with atomic dict operations only."""

    __slots__ = ("engine", "pool_ref", "holders", "waiters", "pressure_at", "sampled",
                 "__weakref__")

    def __init__(self, engine: "EngineEntry", pool: Pool) -> None:
        self.engine = engine
        self.pool_ref = weakref.ref(pool)
        #: id(connection record) -> (perf_counter at checkout, thread id, captured stack)
        self.holders: dict[int, tuple[float, int, Sequence[Any]]] = {}
        #: thread id -> perf t0 for threads inside pool.connect()
        self.waiters: dict[int, float] = {}
        #: with locations captured "under pressure", a checkout walks the stack only
        #: when this many connections are already held (half the pool)
        self.pressure_at = pressure_threshold(pool)
        #: (id(record), perf t0) -> stack sampled by the worker for a holder without
        #: a checkout location (worker-only)
        self.sampled: dict[tuple[int, float], list[Any]] = {}


def pressure_threshold(pool: Pool) -> int:
    """Half the pool's size (at least 1); 4 for pools without a size (NullPool...)."""
    size = getattr(pool, "size", None)
    try:
        value = size() if callable(size) else size
    except Exception:
        value = None
    if isinstance(value, int) and value > 0:
        return max(1, value // 2)
    return 4


#: First sights of statement texts located (stack walked) per engine per worker round
#: (0.25 s): 256 a second, ~1% of a core at their usual 10-40 µs.
LOCATE_PER_ROUND = 64


class EngineEntry:
    """One engine (or, for a pool used without an engine, that pool alone)."""

    __slots__ = ("id", "ids", "name", "engine_ref", "created", "disposed", "pool_id",
                 "revision", "server", "_statements", "_sample", "locations", "tally",
                 "locate_left", "__weakref__")

    def __init__(self, engine_id: str, name: str, engine: Engine | None) -> None:
        self.id = engine_id
        #: ``(id,)``: the engines of a session that used only this one (no tuple built
        #: per session)
        self.ids = (engine_id,)
        self.name = name
        self.engine_ref = weakref.ref(engine) if engine is not None else None
        self.created = time.time()
        self.disposed = 0
        #: id() of the pool last seen on the engine: a new one means engine.dispose()
        self.pool_id: int | None = None
        #: bumped whenever what engine_info() reports changes (adoption, new pool)
        self.revision = 0
        #: the server's settings, once read (tracker/engine_checks.py)
        self.server: dict[str, Any] | None = None
        #: durations the hot hooks append for the worker (tracker/tally.py)
        self.tally = Tally()
        # Runtime switches (tracker/switches.py), set by the worker from the dashboard's
        # toggles and read by the hooks:
        self._statements = True
        self._sample = 1
        #: checkout code locations for this engine's pools ("always", "pressure",
        #: "off"); None: the agent's configured mode
        self.locations: str | None = None
        #: statement texts whose first sight may still walk the stack this round of
        #: the worker (which resets it to LOCATE_PER_ROUND): an application that
        #: makes a new text per statement (values written into the SQL) would
        #: otherwise pay a stack walk per statement
        self.locate_left = LOCATE_PER_ROUND

    @property
    def statements(self) -> bool:
        """Record this engine's statements at all."""
        return self._statements

    @statements.setter
    def statements(self, on: bool) -> None:
        self._statements = on
        if not on:
            self.tally.unpublish()  # the statement hook then takes its slow path

    @property
    def sample(self) -> int:
        """Record one statement in ``sample`` (1: all); the worker weighs each by it."""
        return self._sample

    @sample.setter
    def sample(self, every: int) -> None:
        self._sample = every
        if every != 1:
            self.tally.unpublish()  # the statement hook then takes its slow path

    def engine(self) -> Engine | None:
        return self.engine_ref() if self.engine_ref is not None else None


class Registry:
    """Engines and pools seen by the agent, and the callback run on a new engine."""

    def __init__(self, on_new_engine: Callable[[EngineEntry], None],
                 on_new_pool: Callable[[PoolEntry, Pool], None]) -> None:
        self.engines: dict[int, EngineEntry] = {}
        self.pools: dict[int, PoolEntry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._on_new_engine = on_new_engine
        self._on_new_pool = on_new_pool
        #: every engine entry ever made, until the worker has taken the last of its
        #: tally after its engine and pools are gone (appended here, pruned by the
        #: worker only)
        self.tallied: list[EngineEntry] = []

    def engine_entry(self, engine: Engine) -> EngineEntry:
        """The entry for ``engine``, registering it (and its current pool) if new."""
        entry = self.engines.get(id(engine))
        if entry is None:
            with self._lock:
                entry = self.engines.get(id(engine))
                announce = entry is None
                if entry is None:
                    entry = self._adopt_anonymous(engine)
                    if entry is None:
                        entry = EngineEntry(f"e{next(self._ids)}", _engine_name(engine),
                                            engine)
                        self.tallied.append(entry)
                    self.engines[id(engine)] = entry
                    weakref.finalize(engine, self.engines.pop, id(engine), None)
            if announce:
                self._on_new_engine(entry)
        pool = engine.pool
        self.pool_entry(pool, entry)
        if entry.pool_id is None:
            entry.pool_id = id(pool)
        return entry

    def _adopt_anonymous(self, engine: Engine) -> EngineEntry | None:
        # The engine's first checkout reaches the pool hooks before engine_connect
        # names the engine: the entry made for its pool then becomes the engine's.
        pool_entry = self.pools.get(id(engine.pool))
        if pool_entry is None or pool_entry.engine.engine_ref is not None:
            return None
        entry = pool_entry.engine
        entry.engine_ref = weakref.ref(engine)
        entry.name = _engine_name(engine)
        entry.revision += 1
        return entry

    def pool_entry(self, pool: Pool, engine: EngineEntry | None = None) -> PoolEntry:
        """The entry for ``pool``; a pool never seen through an engine gets its own."""
        entry = self.pools.get(id(pool))
        if entry is not None:
            return entry
        if engine is None:
            engine = self._engine_for_pool(pool)
        with self._lock:
            entry = self.pools.get(id(pool))
            if entry is not None:
                return entry
            entry = PoolEntry(engine, pool)
            self.pools[id(pool)] = entry
            weakref.finalize(pool, self.pools.pop, id(pool), None)
        self._on_new_pool(entry, pool)
        return entry

    def _engine_for_pool(self, pool: Pool) -> EngineEntry:
        # A checkout can reach us before the engine_connect event that names the
        # engine; find the engine that owns the pool, if we know it.
        for entry in list(self.engines.values()):
            engine = entry.engine()
            if engine is not None and engine.pool is pool:
                return entry
        with self._lock:
            entry = EngineEntry(f"e{next(self._ids)}", f"pool {type(pool).__name__}", None)
            self.tallied.append(entry)
        self._on_new_engine(entry)
        return entry

    def engines_by_pool(self) -> list[EngineEntry]:
        """The engine entries the known pools belong to (anonymous ones included)."""
        return [pool_entry.engine for pool_entry in list(self.pools.values())]

    def live_engines(self) -> list[tuple[EngineEntry, Engine | None]]:
        """Every engine with its entry, and pools whose engine is not known yet
        (reported under a provisional name until the engine is found)."""
        entries = {id(entry): entry for entry in list(self.engines.values())}
        for entry in self.engines_by_pool():
            if entry.engine_ref is None:
                entries.setdefault(id(entry), entry)
        return [(entry, entry.engine()) for entry in entries.values()]

    def clear(self) -> None:
        with self._lock:
            self.engines.clear()
            self.pools.clear()
            self.tallied.clear()


def _engine_name(engine: Engine) -> str:
    url = engine.url
    database = url.database or ""
    if url.get_backend_name() == "sqlite":
        database = database.rsplit("/", 1)[-1] or ":memory:"
    host = f"@{url.host}" if url.host else ""
    return f"{url.get_backend_name()}{host}/{database}" if database else url.get_backend_name()


def engine_info(entry: EngineEntry, engine: Engine | None, pool: Pool | None) -> dict[str, Any]:
    """The engine's configuration as sent in ``hello``/``engine`` (password masked)."""
    info: dict[str, Any] = {
        "id": entry.id,
        "name": entry.name,
        "dialect": "",
        "driver": "",
        "url": "",
        "echo": False,
        "pool": {"class": type(pool).__name__ if pool is not None else "", "recycle": -1,
                 "pre_ping": False},
        "created": entry.created,
        "disposed": entry.disposed,
    }
    if entry.server:
        info["server"] = dict(entry.server)
    if engine is not None:
        info.update(
            dialect=engine.dialect.name,
            driver=engine.dialect.driver,
            url=engine.url.render_as_string(hide_password=True),
            echo=bool(engine.echo),
        )
    if pool is not None:
        info["pool"].update(_pool_config(pool))
    return info


def _pool_config(pool: Pool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "class": type(pool).__name__,
        "recycle": int(getattr(pool, "_recycle", -1)),
        "pre_ping": bool(getattr(pool, "_pre_ping", False)),
    }
    # size(), timeout() and _max_overflow exist on QueuePool and its subclasses only
    for name in ("size", "timeout"):
        method = getattr(pool, name, None)
        if callable(method):
            config[name] = method()
    max_overflow = getattr(pool, "_max_overflow", None)
    if isinstance(max_overflow, int):
        config["max_overflow"] = max_overflow
    use_lifo = getattr(getattr(pool, "_pool", None), "use_lifo", None)
    if isinstance(use_lifo, bool):
        config["use_lifo"] = use_lifo
    reset = getattr(pool, "_reset_on_return", None)
    if reset is not None:
        config["reset_on_return"] = str(getattr(reset, "name", reset))
    return config

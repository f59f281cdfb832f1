"""``pool-exceeds-max-connections``: the rule only the dashboard can check, because it
needs every process of an app at once.

Each connected process's engines that point to one database server can open up to
``pool_size + max_overflow`` connections each; if their sum is above the server's
``max_connections`` (read by the agents that may, ENGINE_INFO ``server``), the app
can be refused connections under load. Equal is within the limit: no advice.

Servers are told apart by the masked URL's dialect, host and port (the database
name does not matter: ``max_connections`` is the whole server's). A local host
(``localhost``, a Unix socket) is a different server on every machine. Pools without
a size (NullPool, StaticPool, SingletonThreadPool) are not counted; a pool with
unlimited overflow (``max_overflow=-1``) makes the sum unbounded.

Checked when a process says hello or announces an engine (that is when its pools and
the server's settings become known). The group's count grows each time the evidence
changes (another process, other pool sizes), not on every check.
"""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from tracker.rules import RULES

from .advice import group_key
from .models import Advice, Engine

RULE = "pool-exceeds-max-connections"
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433,
                 "oracle": 1521}
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def server_of(engine: Engine) -> str | None:
    """``postgresql://db.internal:5432``, or None for SQLite and unreadable URLs."""
    try:
        url = make_url(engine.url)
    except (ArgumentError, ValueError):
        return None
    backend = url.get_backend_name()
    if backend == "sqlite":
        return None
    host = url.host or ""
    if host in LOCAL_HOSTS:
        host = f"{host or 'localhost'} on {engine.process.host}"
    port = url.port or DEFAULT_PORTS.get(backend)
    return f"{backend}://{host}" + (f":{port}" if port else "")


def max_connections(engine: Engine) -> int | None:
    value = (engine.server or {}).get("max_connections")
    if isinstance(value, bool):
        return None
    try:
        number = int(value)  # MySQL's SHOW VARIABLES answers strings
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def capacity(engine: Engine) -> int | None | bool:
    """pool_size + max_overflow; None when the pool has no size; True if unbounded."""
    pool = engine.pool or {}
    size, overflow = pool.get("size"), pool.get("max_overflow", 0)
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    if not isinstance(overflow, int) or isinstance(overflow, bool):
        overflow = 0
    return True if overflow < 0 else size + overflow


def evaluate(engines: list[Engine]) -> dict[str, Any] | None:
    """The evidence for one server's engines if they exceed its max_connections,
    else None."""
    # the newest report of the server's settings (a restart may have changed them)
    limits = [(engine.pk, max_connections(engine)) for engine in engines]
    limits = [limit for limit in limits if limit[1] is not None]
    if not limits:
        return None
    limit = max(limits)[1]
    processes: dict[int, dict[str, Any]] = {}
    unbounded = False
    for engine in sorted(engines, key=lambda e: (e.process.host, e.process.pid, e.key)):
        room = capacity(engine)
        if room is None:
            continue
        entry = processes.setdefault(engine.process_id, {
            "process": f"{engine.process.host}:{engine.process.pid}", "engines": [],
            "capacity": 0})
        entry["engines"].append(f"{engine.name} (pool_size {engine.pool['size']}, "
                                f"max_overflow {engine.pool.get('max_overflow', 0)})")
        if room is True or entry["capacity"] == "unbounded":
            entry["capacity"] = "unbounded"
            unbounded = True
        else:
            entry["capacity"] += room
    if not processes:
        return None
    total = None if unbounded else sum(p["capacity"] for p in processes.values())
    if total is not None and total <= limit:
        return None
    return {"max_connections": limit, "total": "unbounded" if total is None else total,
            "processes": list(processes.values())}


def check(app_id: int) -> list[int]:
    """Check every server the app's connected processes use; create or update the
    group of each that exceeds. Returns the pks of the groups that changed."""
    engines = list(Engine.objects.filter(process__app_id=app_id, process__connected=True)
                   .select_related("process"))
    servers: dict[str, list[Engine]] = {}
    for engine in engines:
        server = server_of(engine)
        if server is not None:
            servers.setdefault(server, []).append(engine)
    changed = []
    for server, members in sorted(servers.items()):
        evidence = evaluate(members)
        if evidence is not None:
            group = _report(app_id, server, members, {"server": server, **evidence})
            if group is not None:
                changed.append(group.pk)
    return changed


def _message(evidence: dict[str, Any]) -> str:
    count = len(evidence["processes"])
    processes = f"{count} process{'es' if count != 1 else ''}"
    if evidence["total"] == "unbounded":
        return (f"{processes} can open an unbounded number of connections to "
                f"{evidence['server']} (max_overflow=-1), whose max_connections is "
                f"{evidence['max_connections']}")
    return (f"{processes} can open {evidence['total']} connections to {evidence['server']} "
            f"(pool_size + max_overflow of each engine), above its max_connections of "
            f"{evidence['max_connections']}")


@transaction.atomic
def _report(app_id: int, server: str, engines: list[Engine],
            evidence: dict[str, Any]) -> Advice | None:
    now = timezone.now()
    key = group_key(RULE, server, "")
    engine = min(engines, key=lambda e: e.pk)
    group = Advice.objects.select_for_update().filter(app_id=app_id, key=key).first()
    if group is None:
        group = Advice(app_id=app_id, key=key, rule=RULE, engine_name=engine.name,
                       severity=RULES[RULE].severity, first_seen=now, last_seen=now,
                       count=0)
    elif group.evidence == evidence:
        return None  # nothing new: the same processes with the same pools
    group.count += 1
    group.last_seen = now
    group.engine_id = engine.pk
    group.evidence = evidence
    group.message = _message(evidence)
    if group.status == Advice.ACKNOWLEDGED:
        group.status, group.reopened_at = Advice.OPEN, now
    try:
        with transaction.atomic():
            group.save()
    except IntegrityError:  # another dashboard process created it meanwhile
        return None
    return group


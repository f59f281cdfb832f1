"""Live ORM sessions: the registry the session hooks write and the worker reads.

Nothing here keeps a session alive: an entry holds a weak reference to its session.
Hooks (application threads) only touch their own session's entry; the worker builds
summaries from the entries and from cheap reads of the session (lengths of its maps),
and watches objects of closed sessions for modifications that will never be written.
"""

from __future__ import annotations

import collections
import itertools
import time
import weakref
from time import perf_counter
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import session as _sa_session

from .protocol import MAX_LIFECYCLE, MAX_SESSIONS
from .fingerprint import cached
from .locations import thread_name
from .snapshot import identity_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

IDLE, TRANSACTION, FLUSHING, CLOSED = "idle", "transaction", "flushing", "closed"
_ref = weakref.ref
_wall = time.time
#: SQLAlchemy's weak references to the live sessions, by ``Session.hash_key`` (a
#: WeakValueDictionary's ``data``, in SQLAlchemy 2.0 and 2.1): SessionEntry.ref()
#: looks a session up there rather than each entry making a weak reference of its own
_found = getattr(getattr(_sa_session, "_sessions", None), "data", None)
#: without it (another SQLAlchemy), each entry gets its own weak reference
OWN_REFS = not isinstance(_found, dict)
_session_refs: dict[int, Any] = {} if OWN_REFS else _found
#: an unread lifecycle is cut back to MAX_LIFECYCLE beyond this length
_LIFECYCLE_BOUND = 4 * MAX_LIFECYCLE

#: Per-class counts are recounted at most this often (seconds): small sessions…
BY_CLASS_EVERY = 2.0
#: …and sessions tracking more than BIG_SESSION objects (a count walks the map).
BY_CLASS_EVERY_BIG = 10.0
BIG_SESSION = 20_000
#: Objects of a closed session watched for detached modifications, and for how long.
MAX_WATCHED = 20_000
#: Repeated statements listed in a session summary.
MAX_REPEATS = 10
WATCH_SECONDS = 600.0
#: A detached object seen modified is reported if it is still not merged into a
#: session this many seconds later.
DETACHED_GRACE = 1.0


class SessionEntry:
    """What the agent knows about one session. Written by the thread using the session
    (hooks) and read by the worker; fields are replaced whole or changed with single
    atomic operations (dict item, deque append).

    Created for every session that begins a transaction, on the application's thread,
    without an ``__init__`` (a Python ``__init__`` costs more than setting the fields
    from the caller): :func:`new_entry` or the ``after_begin`` hook set what differs
    between sessions; the rest are these class defaults.
    """

    number = 0
    key = 0                         # the session's hash_key (its key in by_id)
    kind = "Session"
    created = 0.0
    thread_id = 0
    thread = ""
    task: str | None = None
    is_async = False
    engines: tuple[str, ...] = ()   # engine ids the session used (latest last)
    state = IDLE
    txn_since: float | None = None
    last_t: float | None = None     # perf_counter of its last activity
    statements = 0
    flushes = 0
    commits = 0
    rollbacks = 0
    ended: float | None = None
    end: str | None = None
    sent: Any = None                # what the worker last sent (to send changes only)
    noteworthy = False              # it has a finding: shown even if it never was live
    by_class: dict[str, int] = {}   # replaced, never mutated
    by_class_at = 0.0
    # for the detectors (tracker/detectors.py), created on first use:
    first: str | None = None        # the first statement's text and parameters, kept
    first_parameters: Any = None    # here until a second one makes ``stmts``
    #: text -> [runs, parameters of its first run (until its second), runs by
    #: parameter set (a dict from the second run of a SELECT on, else None)]
    stmts: "dict[str, list[Any]] | None" = None
    parameter_sets = 0              # parameter sets counted in all of stmts (bound)
    lazy: "dict[str, int] | None" = None               # relationship -> SQL lazy loads
    reported: "set[Any] | None" = None                 # findings already reported
    in_lazy: str | None = None      # the relationship being lazily loaded now
    txn_writes = 0                  # INSERT/UPDATE/DELETE in its current transaction
    gone = False                    # out of by_id, queued in ``ended`` for the worker
    # the connections of its open transaction, written by the hooks: most sessions
    # have one, kept as one tuple (no dict per transaction); both replaced whole
    #: (id(Connection), engine id, id(connection record)) of the first, or None
    conn: tuple[int, str, int] | None = None
    #: id(Connection) -> (engine id, id(connection record)) of any others
    more_conns: "dict[int, tuple[str, int]] | None" = None
    # set on every entry (no class default: each has its own):
    #: (time, kind) oldest first; trimmed to MAX_LIFECYCLE by the worker
    lifecycle: list[tuple[float, str]]

    @property
    def sid(self) -> str:
        return f"s{self.number}"

    @property
    def conns(self) -> dict[int, tuple[str, int]]:
        """id(Connection) -> (engine id, id(connection record)) for its open
        transaction (a copy: for readers)."""
        conn, more = self.conn, self.more_conns
        conns = {conn[0]: (conn[1], conn[2])} if conn is not None else {}
        if more:
            conns.update(more)
        return conns

    def add_conn(self, conn_id: int, engine_id: str, record_id: int) -> None:
        """One more connection for its transaction (by the thread using the session)."""
        conn = self.conn
        if conn is None or conn[0] == conn_id:
            self.conn = (conn_id, engine_id, record_id)
        else:
            more = dict(self.more_conns or ())
            more[conn_id] = (engine_id, record_id)
            self.more_conns = more

    def ref(self) -> "Session | None":
        """The session, or None once it is gone: SQLAlchemy's own weak reference to it
        is looked up (without one, the entry is given a weak reference of its own,
        which shadows this method)."""
        ref = _session_refs.get(self.key)
        return ref() if ref is not None else None

    def log(self, kind: str) -> None:
        lifecycle = self.lifecycle
        lifecycle.append((_wall(), kind))
        if len(lifecycle) > _LIFECYCLE_BOUND:  # bounded even if nobody reads it
            del lifecycle[:-MAX_LIFECYCLE]


def new_entry(number: int, session: "Session", key: int, thread_id: int,
              task: str | None, now: float) -> SessionEntry:
    """The entry of a session seen the first time outside a transaction's begin."""
    entry = SessionEntry()
    entry.number = number
    entry.key = key
    if OWN_REFS:
        entry.ref = _ref(session)  # type: ignore[method-assign]
    entry.kind = type(session).__name__
    entry.created = now
    entry.thread_id = thread_id
    if task is not None:
        entry.task, entry.is_async = task, True
    entry.lifecycle = []
    return entry


class SessionRegistry:
    """Live sessions by ``Session.hash_key`` (a number SQLAlchemy never gives twice in
    a process, unlike ``id()``), and sessions' connections by ``id(Connection)`` (so a
    statement is attributed to its session)."""

    def __init__(self) -> None:
        self.by_id: dict[int, SessionEntry] = {}
        self.by_conn: dict[int, SessionEntry] = {}
        #: entries of sessions that ended (collected, or replaced by a new session that
        #: got the same id), for the worker to report once
        self.ended: collections.deque[SessionEntry] = collections.deque(maxlen=10_000)
        #: (entry, identity map, ids of states already modified) of closed sessions,
        #: for the worker to start watching
        self.closed_maps: collections.deque[tuple[SessionEntry, Any, frozenset[int]]] = (
            collections.deque(maxlen=1000))
        #: states of objects passed to Session.merge(): their detached changes are
        #: written by the session they were merged into
        self.merged: "weakref.WeakSet[Any]" = weakref.WeakSet()
        #: session numbers (next() on a count is atomic)
        self.numbers = itertools.count(1)

    def entry_for(self, session: "Session", thread_id: int, task: str | None,
                  now: float | None = None) -> SessionEntry:
        """The entry of ``session``, created on first sight (``now``: its wall time)."""
        key = session.hash_key
        entry = self.by_id.get(key)
        if entry is not None:
            return entry
        entry = new_entry(next(self.numbers), session, key, thread_id, task,
                          time.time() if now is None else now)
        self.by_id[key] = entry
        return entry

    def gone(self, entry: SessionEntry) -> None:
        """Queue the entry of a session that died (already out of ``by_id``) for the
        worker to report it ended."""
        mark_ended(entry, "collected")
        entry.gone = True
        self.ended.append(entry)

    def get(self, session: "Session") -> SessionEntry | None:
        return self.by_id.get(session.hash_key)

    def find(self, sid: str) -> SessionEntry | None:
        for entry in list(self.by_id.values()):
            if entry.sid == sid:
                return entry
        return None

    def clear(self) -> None:
        self.by_id.clear()
        self.by_conn.clear()
        self.ended.clear()
        self.closed_maps.clear()
        self.merged.clear()


class SessionReporter:
    """Worker side: summaries of changed sessions for state frames, and the watch for
    objects modified after their session closed."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        #: (sid, weakref to InstanceState, deadline) of objects of closed sessions
        self.watched: collections.deque[tuple[str, Any, float]] = collections.deque()
        #: watched object -> when it was first seen modified
        self.modified_since: dict[Any, float] = {}

    def forget_sent(self) -> None:
        """A new dashboard connection: every live session is sent again."""
        for entry in list(self.registry.by_id.values()):
            if entry.sent is not None:
                # matches no fingerprint, so it is sent again; not None, which means
                # "never shown" (an ended session never shown is skipped)
                entry.sent = ()

    def summaries(self, locate: Any = None) -> tuple[list[dict[str, Any]], int]:
        """Summaries of the sessions that changed since last sent (ended ones once
        more, with ``ended``), oldest open transaction first; and how many changed
        sessions were left out because of MAX_SESSIONS."""
        registry = self.registry
        now_perf, now_wall = perf_counter(), time.time()
        out: list[tuple[float, dict[str, Any], SessionEntry]] = []
        live: dict[int, int] = {}  # id(entry) -> its key in by_id
        for key, entry in list(registry.by_id.items()):
            session = entry.ref()
            if session is None:
                # collected without our __del__ hook seeing it (should not happen)
                if registry.by_id.get(key) is entry:
                    registry.by_id.pop(key, None)
                mark_ended(entry, "collected")
                registry.ended.append(entry)
                continue
            summary = self.summary(entry, session, now_perf, now_wall, locate)
            session = None
            if summary is not None:
                out.append((entry.txn_since or now_wall + 1, summary, entry))
                live[id(entry)] = key
        while registry.ended:
            entry = registry.ended.popleft()
            drop_conns(registry, entry)
            if entry.sent is None and not entry.noteworthy:
                continue  # began and ended between two state frames: never shown live
            summary = self.summary(entry, None, now_perf, now_wall, locate)
            if summary is not None:
                out.append((entry.txn_since or now_wall + 1, summary, entry))
        out.sort(key=lambda item: item[0])
        sent = out[:MAX_SESSIONS]
        for _, summary, entry in sent:
            entry.sent = _fingerprint(summary)
            key = live.get(id(entry))
            if key is not None and not entry.gone and registry.by_id.get(key) is not entry:
                # its session died meanwhile, its __del__ seeing it not shown yet:
                # shown now, so it is reported ended next round
                registry.gone(entry)
        return [summary for _, summary, _ in sent], max(0, len(out) - MAX_SESSIONS)

    def summary(self, entry: SessionEntry, session: "Session | None", now_perf: float,
                now_wall: float, locate: Any = None,
                force: bool = False) -> dict[str, Any] | None:
        """One session's summary; None if nothing changed since it was last sent."""
        counts = _counts(session) if session is not None else (0, 0, 0, 0)
        if session is not None:
            autoflush, expire = bool(session.autoflush), bool(session.expire_on_commit)
            if counts[0] and (now_wall - entry.by_class_at >= (
                    BY_CLASS_EVERY if counts[0] <= BIG_SESSION else BY_CLASS_EVERY_BIG)):
                entry.by_class = _by_class(session)
                entry.by_class_at = now_wall
            elif not counts[0]:
                entry.by_class = {}
        else:
            autoflush = expire = True
            entry.by_class = {}
        if not entry.thread:
            entry.thread = thread_name(entry.thread_id)
        last = (now_wall - (now_perf - entry.last_t)) if entry.last_t is not None else None
        summary: dict[str, Any] = {
            "id": entry.sid,
            "kind": entry.kind,
            "async": entry.is_async,
            "created": entry.created,
            "thread": entry.thread,
            "thread_id": entry.thread_id,
            "task": entry.task,
            "engines": list(entry.engines),
            "state": entry.state,
            "txn_since": entry.txn_since,
            "last_activity": last,
            "autoflush": autoflush,
            "expire_on_commit": expire,
            "objects": counts[0],
            "by_class": dict(entry.by_class),
            "new": counts[1],
            "dirty": counts[2],
            "deleted": counts[3],
            "connections": [engine_id for engine_id, _ in list(entry.conns.values())],
            "statements": entry.statements,
            "flushes": entry.flushes,
            "commits": entry.commits,
            "rollbacks": entry.rollbacks,
            "lifecycle": [[ts, kind, ""] for ts, kind in _trimmed(entry)],
            "ended": entry.ended,
            "end": entry.end,
        }
        repeats = _repeats(entry)
        if repeats:
            summary["repeats"] = repeats
        if locate is not None and (entry.conn is not None or entry.more_conns):
            found = locate(entry)
            if found is not None:
                stack, sampled = found
                if stack:
                    summary["location"], summary["stack"] = stack[0], stack
                    if sampled:
                        summary["sampled"] = True
        if not force and entry.sent == _fingerprint(summary):
            return None
        return summary

    # -- detached modifications ------------------------------------------------------

    def watch_closed(self, now: float) -> None:
        """Start watching the objects of sessions closed since the last round."""
        closed = self.registry.closed_maps
        while closed:
            entry, identity_map, already = closed.popleft()
            sid = entry.sid
            try:
                states = list(identity_map._dict.values())
            except RuntimeError:
                continue
            for state in states:
                if id(state) in already:
                    continue
                self.watched.append((sid, weakref.ref(state), now + WATCH_SECONDS))
            while len(self.watched) > MAX_WATCHED:
                self.watched.popleft()

    def detached_changes(self, now: float) -> list[tuple[str, str, str, list[str]]]:
        """(sid, class, identity, attributes) of watched objects modified while
        detached and still not merged after DETACHED_GRACE seconds (a modify-then-merge
        is the correct way, not a finding); those and the expired, collected,
        re-attached or merged ones stop being watched."""
        found = []
        merged = self.registry.merged
        keep: collections.deque[tuple[str, Any, float]] = collections.deque()
        for sid, ref, deadline in self.watched:
            state = ref()
            if state is None or deadline < now or state.session_id is not None:
                continue
            if state in merged:
                continue
            if state.modified:
                seen = self.modified_since.setdefault(ref, now)
                if now - seen < DETACHED_GRACE:
                    keep.append((sid, ref, deadline))
                    continue
                self.modified_since.pop(ref, None)
                obj = state.obj()
                name = type(obj).__name__ if obj is not None else state.class_.__name__
                found.append((sid, name, identity_of(state),
                              sorted(state.committed_state)))
                continue
            keep.append((sid, ref, deadline))
        self.watched = keep
        live = {ref for _, ref, _ in keep}
        for ref in [ref for ref in self.modified_since if ref not in live]:
            del self.modified_since[ref]
        return found


def _trimmed(entry: SessionEntry) -> list[tuple[float, str]]:
    """The entry's lifecycle, cut to its last MAX_LIFECYCLE items (worker side: the
    hooks only append)."""
    lifecycle = entry.lifecycle
    excess = len(lifecycle) - MAX_LIFECYCLE
    if excess > 0:
        del lifecycle[:excess]
    return list(lifecycle)


def _repeats(entry: SessionEntry) -> list[list[Any]]:
    """[fingerprint id, runs, distinct parameter sets (-1: not counted)] of the
    session's statements that ran more than once, most runs first (at most 10)."""
    stmts = entry.stmts
    if not stmts:
        return []
    try:
        runs = sorted(((record[0], text, len(record[2] or ()))
                       for text, record in list(stmts.items()) if record[0] > 1),
                      reverse=True)[:MAX_REPEATS]
    except RuntimeError:  # changed while copied: next frame
        return []
    return [[cached(text).fp, count, distinct or -1] for count, text, distinct in runs]


def _counts(session: "Session") -> tuple[int, int, int, int]:
    """objects, new, dirty (flagged modified), deleted — lengths only: atomic reads."""
    identity_map = session.identity_map
    return (len(identity_map._dict), len(session._new), len(identity_map._modified),
            len(session._deleted))


def _by_class(session: "Session") -> dict[str, int]:
    """Objects per mapped class, from the identity keys (no object is touched)."""
    counts: dict[str, int] = {}
    for _ in range(3):
        try:
            keys = list(session.identity_map._dict)
            break
        except RuntimeError:  # the application changed the map while we copied it
            continue
    else:
        return {}
    for key in keys:
        name = key[0].__name__
        counts[name] = counts.get(name, 0) + 1
    for state in list(session._new):
        name = state.class_.__name__
        counts[name] = counts.get(name, 0) + 1
    return counts


def _fingerprint(summary: dict[str, Any]) -> tuple[Any, ...]:
    # last_activity moves with every statement, which statements already shows
    return tuple(value if not isinstance(value, (list, dict)) else repr(value)
                 for key, value in summary.items() if key != "last_activity")


def mark_ended(entry: SessionEntry, how: str) -> None:
    """Record that the session ended (once): when, how, and in its lifecycle."""
    if entry.ended is None:
        entry.ended = time.time()
        entry.end = how
        entry.state = CLOSED
        entry.log(how)


def drop_conns(registry: SessionRegistry, entry: SessionEntry) -> None:
    """Forget the connections of the entry's transaction (and their by_conn items)."""
    by_conn = registry.by_conn
    conn, more = entry.conn, entry.more_conns
    entry.conn = entry.more_conns = None
    if conn is not None and by_conn.get(conn[0]) is entry:
        by_conn.pop(conn[0], None)
    for key in more or ():
        if by_conn.get(key) is entry:
            by_conn.pop(key, None)

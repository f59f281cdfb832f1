"""The wire protocol between the agent and the dashboard.

This module is the single definition of every message both sides exchange. The agent
encodes with it; the dashboard validates every incoming frame against it before storing
anything. It depends only on the standard library and ``orjson``.

Frames are binary websocket messages holding one JSON object (encoded with orjson).
Every frame carries ``"v"`` (the protocol version) and ``"t"`` (the message type).

Agent → dashboard
    ``hello``   first frame on every connection: app, process, engines.
    ``engine``  an engine discovered (or re-configured) after hello.
    ``state``   periodic state: per-engine pool gauges, counters, distributions and
                the connections checked out now; the agent's own drop counters.
    ``events``  a batch of discrete events (``[kind, ts, ...]`` arrays, see ``EVENTS``).
    ``ack``     the agent's answer to a control message (applied / refused + reason).
    ``snapshot`` what one session tracks and is about to write, taken on request (a
                ``control`` with action ``snapshot``) while someone views that session.
    ``bye``     the process is shutting down cleanly.

Dashboard → agent
    ``welcome`` the answer to hello.
    ``error``   sent just before the dashboard closes the socket on a refusal, with the
                close code and reason (some ASGI servers, daphne among them, do not
                pass a close reason on to the client).
    ``control`` a runtime change requested by an operator (toggles, snapshots, traces);
                the agent answers every one with ``ack``.
"""

from __future__ import annotations

from typing import Any, Mapping

import orjson

VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

#: Largest frame the dashboard accepts, in bytes (also enforced by the agent, which
#: splits batches to stay below it).
MAX_FRAME_BYTES = 1_048_576
#: Largest number of events in one ``events`` frame.
MAX_EVENTS_PER_FRAME = 5_000
#: Longest string accepted in any field (SQL text is truncated by the agent to this).
MAX_STRING = 8_192
#: Most connections listed as checked out for one engine in one state frame.
MAX_HOLDERS = 500

#: Upper bounds, in seconds, of the histogram buckets for connection wait and hold
#: times; a last bucket catches everything above the final bound.
HIST_BOUNDS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
)
HIST_BUCKETS = len(HIST_BOUNDS) + 1

# Websocket close codes (4000–4999 are reserved for applications).
CLOSE_MALFORMED = 4000
CLOSE_UNAUTHORIZED = 4001
CLOSE_UNSUPPORTED_VERSION = 4002
CLOSE_TOO_LARGE = 4003
CLOSE_UNKNOWN_TYPE = 4004
CLOSE_PROTOCOL_ORDER = 4005
CLOSE_FORBIDDEN_ORIGIN = 4006
CLOSE_LOGIN_REQUIRED = 4401

#: Reasons the agent counts when it has to drop something.
DROP_QUEUE_FULL = "queue_full"          # the hook-side queue was full: oldest dropped
DROP_DISCONNECTED = "disconnected"      # send buffer overflowed while disconnected
DROP_OVERSIZE = "oversize"              # a single item larger than a frame
DROP_ENCODE_ERROR = "encode_error"      # could not be encoded
DROP_REFUSED = "refused"                # the dashboard closed the socket on a frame
DROP_REASONS = (
    DROP_QUEUE_FULL, DROP_DISCONNECTED, DROP_OVERSIZE, DROP_ENCODE_ERROR, DROP_REFUSED,
)


class ProtocolError(Exception):
    """A frame that does not follow this protocol.

    ``code`` is the websocket close code to answer it with; ``str(error)`` the reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# ---------------------------------------------------------------------------------
# Message shapes. A spec maps a field name to its type; a name ending in "?" is
# optional (and may be null). Types: a Python type (or tuple of types), a nested spec
# (dict), ``[spec]`` for a list of items of that spec, or ``ANY`` for free JSON
# (bounded by the frame size only).
# ---------------------------------------------------------------------------------

ANY = object()
NUM = (int, float)


class _Timestamp:
    """Seconds since the epoch, within what a datetime can hold (1970 – 2106)."""

    low, high = 0.0, 2.0 ** 32


#: a wall-clock timestamp field
TS = _Timestamp()

ENGINE_INFO: dict[str, Any] = {
    "id": str,
    "name": str,
    "dialect": str,
    "driver": str,
    "url": str,
    "echo": bool,
    "pool": {
        "class": str,
        "size?": int,
        "max_overflow?": int,
        "timeout?": NUM,
        "recycle": int,
        "pre_ping": bool,
        "use_lifo?": bool,
        "reset_on_return?": str,
    },
    "created?": TS,
    "disposed?": int,
    # read from the server at the first connection when allowed (read_server_settings):
    # wait_timeout, max_connections, idle_in_transaction_session_timeout, version…
    "server?": ANY,
}

#: Statements of one engine aggregated by fingerprint (cumulative since the process
#: started; sent in state frames only for fingerprints that changed).
STATEMENT_STATS: dict[str, Any] = {
    "fp": str,                 # a short stable hash of the fingerprint
    "sql": str,                # the fingerprint: literals and IN-lists folded
    "op": str,                 # select, insert, update, delete, other
    "table?": str,             # the first table named, when found
    "count": int,
    "errors": int,
    "total": NUM,              # seconds
    "max": NUM,
    "rows": int,               # rows reported by the driver (-1 counts as 0)
    "buckets": [int],          # HIST_BOUNDS histogram of durations
    "location?": str,          # where it was first seen in the application
    "stack?": [str],
}

HOLDER: dict[str, Any] = {
    "since": TS,
    "thread": str,
    "thread_id": int,
    "location?": str,
    "stack?": [str],
    "sampled?": bool,
    # the ORM session whose transaction holds this connection (its SESSION id)
    "session?": str,
    # checked out before the agent was attached: "since" is when the agent found it
    "before_agent?": bool,
}

#: Most sessions described in one state frame (oldest open transaction first).
MAX_SESSIONS = 500
#: Lifecycle entries kept per session.
MAX_LIFECYCLE = 30

#: One live (or just ended) ORM session: a cheap summary, no entity data.
SESSION: dict[str, Any] = {
    "id": str,                 # "s1", "s2"... unique within the process
    "kind": str,               # the session's class name (Session, or a subclass)
    "async?": bool,            # used through an AsyncSession
    "created": TS,             # first seen: its first transaction
    "thread": str,
    "thread_id": int,
    "task?": str,              # the asyncio task, when run inside one
    "engines": [str],          # engine ids of its connections (now, or last)
    "state": str,              # "idle" | "transaction" | "flushing" | "closed"
    "txn_since?": TS,          # when its open transaction began
    "last_activity?": TS,      # its last statement, flush or transaction change
    "autoflush": bool,
    "expire_on_commit": bool,
    "objects": int,            # in the identity map
    "by_class": {"*": int},    # objects per mapped class (refreshed every few seconds)
    "new": int,
    "dirty": int,              # objects flagged modified (flush decides what is written)
    "deleted": int,
    "connections": [str],      # engine ids of the pooled connections it holds now
    "statements": int,
    "flushes": int,
    "commits": int,
    "rollbacks": int,
    "location?": str,          # the code that began its transaction (or, sampled,
    "stack?": [str],           # where its thread is now: see "sampled")
    "sampled?": bool,
    "lifecycle": [list],       # [ts, kind, detail] oldest first, at most MAX_LIFECYCLE
    "ended?": TS,              # it was closed or garbage collected at this time
    "end?": str,               # "closed" | "collected"
    # its most repeated statements: [fp, count, distinct parameter sets or -1 if
    # unknown], most frequent first, at most 10 (fp: see STATEMENT_STATS)
    "repeats?": [list],
}

#: Most entities / changes in one snapshot (the dashboard pages through the rest).
MAX_SNAPSHOT_ENTITIES = 500
MAX_SNAPSHOT_CHANGES = 500

#: One tracked object as a snapshot shows it. Values are rendered by the agent from
#: their type (never by calling the object's ``__repr__``), truncated, and masked when
#: the attribute name looks secret.
ENTITY: dict[str, Any] = {
    "class": str,
    "identity": str,           # the primary key ("42", "(1, 'x')"), or "" if none yet
    "state": str,              # transient | pending | persistent | deleted | detached
    "modified": bool,
    "expired": [str],          # attributes expired (not loaded): reading them loads
}

#: A pending change: an insert with its values, an update with old -> new per changed
#: attribute and collection members added / removed, or a delete.
CHANGE: dict[str, Any] = {
    "op": str,                 # "insert" | "update" | "delete"
    "class": str,
    "identity": str,
    "values?": {"*": str},             # insert: attribute -> value
    "attributes?": {"*": [str]},       # update: attribute -> [old, new]
    "collections?": {"*": {"added": [str], "removed": [str]}},
    "references?": {"*": [str]},       # many-to-one changes: attribute -> [old, new]
}

ENGINE_STATE: dict[str, Any] = {
    "id": str,
    "gauges": {
        "checked_out": int,
        "idle?": int,
        "overflow?": int,
        "size?": int,
        "capacity?": int,
        "waiting": int,
    },
    "status?": str,
    "counters": {
        "connects": int,
        "checkouts": int,
        "checkins": int,
        "invalidations": int,
        "soft_invalidations": int,
        "timeouts": int,
        "closes": int,
        "detaches": int,
        "statements": int,
        "statement_errors": int,
        "statement_time": NUM,
    },
    "wait": {"buckets": [int], "sum": NUM, "max": NUM},
    "hold": {"buckets": [int], "sum": NUM, "max": NUM},
    "holders": [HOLDER],
    "statements?": [STATEMENT_STATS],
}

PROCESS_INFO: dict[str, Any] = {
    "host": str,
    "pid": int,
    "ppid?": int,
    "started": TS,
    "argv": [str],
    "python": str,
    "sqlalchemy": str,
    "agent": str,
}

MESSAGES: dict[str, dict[str, Any]] = {
    "hello": {
        "app": str,
        "process": PROCESS_INFO,
        "engines": [ENGINE_INFO],
        "capabilities?": ANY,
        "framework?": ANY,
    },
    "engine": {"engine": ENGINE_INFO},
    "state": {
        "ts": TS,
        "engines": [ENGINE_STATE],
        "agent": {
            "queue": int,
            "queue_max": int,
            "drops": {"*": int},
            "errors": int,
            "reconnects": int,
        },
        # sessions changed since the previous state frame (all of them on a new
        # connection); an ended session is sent once more, with "ended"
        "sessions?": [SESSION],
        # live sessions not described because of MAX_SESSIONS
        "sessions_omitted?": int,
    },
    "snapshot": {
        "request": str,            # the control id it answers
        "session": str,
        "ts": TS,
        "found": bool,             # False: no such live session (ended, or unknown)
        "partial": bool,           # the app changed the session while it was read
        "total": int,              # entities matching the filter
        "offset": int,
        "entities": [ENTITY],
        "changes": [CHANGE],
        "changes_total": int,
        "summary?": SESSION,
        "error?": str,
    },
    "events": {"events": [list]},
    "ack": {"id": str, "status": str, "reason?": str},
    # lines of a dashboard-started recording (tracker.traces.jsonl records, in order);
    # the last frame has "end" (and why it ended, when not asked)
    "trace": {"trace": str, "seq": int, "records": [ANY], "end?": bool, "reason?": str},
    "bye": {},
    "welcome": {"process": int, "interval": NUM},
    "error": {"code": int, "reason": str},
    "control": {"id": str, "action": str, "args?": ANY},
}

#: ``control`` actions and their ``args``. Every control is answered by one ``ack``
#: whose status is ``applied`` or ``refused`` (with the reason). Toggle ids are chosen
#: by the dashboard (``toggle:<pk>:<revision>``); the agent only echoes them.
CONTROL_ACTIONS: dict[str, Any] = {
    # a page wants one session's tracked objects (tracker.snapshot); more than an ack:
    # a ``snapshot`` frame follows
    "snapshot": {"session": str, "offset?": int, "limit?": int, "class?": str,
                 "state?": str, "modified?": bool},
    # one runtime setting (tracker.switches): value None removes it, so the agent's
    # own configuration (or a wider scope) is in force again
    "set": {"scope": str, "target": str, "switch": str, "value?": ANY},
    # after a (re)connection the dashboard sends every setting that applies to the
    # process ("set" each), then "sync" naming them all: the agent drops the others,
    # e.g. those removed while it was away. It never starts from nothing, so a
    # reconnection leaves no gap in a policy such as ignore_changes.
    "sync": {"keep": [[str]]},
    # start or stop a recording streamed back in ``trace`` frames (tracker/traces)
    "record": {"trace": str, "action": str, "name?": str, "engine?": str,
               "session?": str, "max_seconds?": NUM, "max_records?": int},
}

#: Messages the dashboard accepts from an agent.
AGENT_MESSAGES = frozenset({"hello", "engine", "state", "events", "ack", "snapshot", "trace",
                            "bye"})

#: Discrete events in ``events`` frames: ``[kind, ts, engine_id, *fields]``, each
#: field with its type.
EVENTS: dict[str, tuple[tuple[str, Any], ...]] = {
    # a checkout gave up after the pool's timeout ("QueuePool limit ... reached")
    "checkout_timeout": (("thread", str), ("location", str), ("waited", NUM)),
    # a pooled connection was invalidated (e.g. "server has gone away")
    "invalidate": (("thread", str), ("location", str), ("error", str)),
    # the engine's pool was replaced by engine.dispose()
    "dispose": (),
    # something the advisor reports; engine_id is "" when it concerns no engine (a
    # session that never touched the database). rule ids: see docs/findings.md
    "finding": (("rule", str), ("severity", str), ("session", str), ("thread", str),
                ("location", str), ("message", str), ("evidence", ANY)),
    # one statement slower than the slow_statement_seconds threshold; params is None
    # unless parameter capture is allowed (then redacted)
    "slow_statement": (("fp", str), ("sql", str), ("seconds", NUM), ("rows", int),
                       ("session", str), ("thread", str), ("location", str),
                       ("stack", [str]), ("params", ANY)),
}


def encode(message: Mapping[str, Any]) -> bytes:
    """Encode one message (adding the protocol version) to frame bytes."""
    return orjson.dumps({"v": VERSION, **message})


def decode(frame: bytes | str, *, allowed: frozenset[str] = AGENT_MESSAGES) -> dict:
    """Decode and validate one frame; raise :class:`ProtocolError` if it is refused.

    ``allowed`` is the set of message types the receiving side accepts.
    """
    size = len(frame)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(
            CLOSE_TOO_LARGE, f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}"
        )
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(CLOSE_MALFORMED, f"frame is not valid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(CLOSE_MALFORMED, "frame must be a JSON object")
    version = message.get("v")
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError(
            CLOSE_UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported "
            f"(supported: {sorted(SUPPORTED_VERSIONS)})",
        )
    kind = message.get("t")
    if kind not in allowed or kind not in MESSAGES:
        raise ProtocolError(CLOSE_UNKNOWN_TYPE, f"unknown message type {kind!r}")
    body = {k: v for k, v in message.items() if k not in ("v", "t")}
    _check(body, MESSAGES[kind], kind)
    if kind == "events":
        _check_events(message["events"])
    return message


def control_args(action: str, args: Any) -> dict:
    """Validate the ``args`` of a ``control`` message against CONTROL_ACTIONS; raise
    :class:`ProtocolError` (unknown action, missing or mistyped field)."""
    spec = CONTROL_ACTIONS.get(action)
    if spec is None:
        raise ProtocolError(CLOSE_UNKNOWN_TYPE, f"unknown action {action!r}")
    args = {} if args is None else args
    _check(args, spec, f"control {action}")
    return args


def _check(value: Any, spec: Any, path: str) -> None:
    if spec is ANY:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ProtocolError(CLOSE_MALFORMED, f"{path}: expected an object")
        if "*" in spec:  # a map of arbitrary keys to one type
            for key, item in value.items():
                _check(item, spec["*"], f"{path}.{key}")
            return
        known = set()
        for name, item_spec in spec.items():
            optional = name.endswith("?")
            key = name[:-1] if optional else name
            known.add(key)
            if key not in value or value[key] is None:
                if optional:
                    continue
                raise ProtocolError(CLOSE_MALFORMED, f"{path}.{key}: missing")
            _check(value[key], item_spec, f"{path}.{key}")
        extra = set(value) - known
        if extra:
            raise ProtocolError(
                CLOSE_MALFORMED, f"{path}: unexpected field(s) {sorted(extra)}"
            )
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise ProtocolError(CLOSE_MALFORMED, f"{path}: expected a list")
        for index, item in enumerate(value):
            _check(item, spec[0], f"{path}[{index}]")
        return
    if spec is TS:
        if (isinstance(value, bool) or not isinstance(value, NUM)
                or not TS.low <= value < TS.high):
            raise ProtocolError(CLOSE_MALFORMED, f"{path}: expected a timestamp (epoch seconds)")
        return
    # bool is a subclass of int: never accept one for the other
    if isinstance(value, bool) != (spec is bool) or not isinstance(value, spec):
        names = spec.__name__ if isinstance(spec, type) else "number"
        raise ProtocolError(CLOSE_MALFORMED, f"{path}: expected {names}")
    if isinstance(value, str) and len(value) > MAX_STRING:
        raise ProtocolError(CLOSE_MALFORMED, f"{path}: string longer than {MAX_STRING}")


def _check_events(events: list) -> None:
    if len(events) > MAX_EVENTS_PER_FRAME:
        raise ProtocolError(
            CLOSE_TOO_LARGE, f"{len(events)} events exceed {MAX_EVENTS_PER_FRAME} per frame"
        )
    for index, event in enumerate(events):
        if len(event) < 3 or not isinstance(event[0], str):
            raise ProtocolError(CLOSE_MALFORMED, f"events[{index}]: too short")
        fields = EVENTS.get(event[0])
        if fields is None:
            raise ProtocolError(
                CLOSE_MALFORMED, f"events[{index}]: unknown event kind {event[0]!r}"
            )
        if len(event) != 3 + len(fields):
            raise ProtocolError(
                CLOSE_MALFORMED,
                f"events[{index}]: {event[0]} takes {3 + len(fields)} items, got {len(event)}",
            )
        _check(event[1], TS, f"events[{index}].ts")
        _check(event[2], str, f"events[{index}].engine")
        for (name, spec), value in zip(fields, event[3:]):
            _check(value, spec, f"events[{index}].{name}")


def event_dict(event: list) -> dict[str, Any]:
    """Name the items of a validated event array: ``{"kind", "ts", "engine", ...}``."""
    kind, ts, engine, *rest = event
    names = [name for name, _ in EVENTS[kind]]
    return {"kind": kind, "ts": ts, "engine": engine, **dict(zip(names, rest))}

"""The agent: ties configuration, registry, hooks, recorder and worker together."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import socket
import sys
import threading
import time
from time import perf_counter
from typing import Any, Callable, Sequence

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlalchemy.pool import Pool

try:  # private: what a checkout hands out; only read when attaching to a running process
    from sqlalchemy.pool.base import _ConnectionFairy
except ImportError:  # pragma: no cover - a future SQLAlchemy may move it
    _ConnectionFairy = None  # type: ignore[assignment,misc]

from . import __version__, procinfo
from .config import AgentConfig
from .detectors import Detectors
from .hooks import ListenerSet
from .hooks.engine import EngineHooks
from .hooks.pool import PoolHooks, unwrap_connect, wrap_connect
from .locations import OFF, LocationFinder, describe, thread_name
from .hooks.session import SessionHooks
from .procinfo import process_start_time
from .protocol import MAX_FRAME_BYTES, MAX_HOLDERS, encode
from .redact import Redactor
from .sessions import SessionRegistry, SessionReporter
from .snapshot import Filter as SnapshotFilter
from .snapshot import take as take_snapshot
from .recorder import Recorder
from .registry import EngineEntry, PoolEntry, Registry, engine_info
from .stats import EngineStats
from .watch import Watch
from .engine_checks import EngineChecks
from .traces.remote import RemoteTraces
from . import policies
from .protocol import ProtocolError, control_args
from .switches import Settings, SwitchError, validate
from .worker import Worker

log = logging.getLogger("tracker")

#: A control handler takes the message's args and returns (status, reason).
#: A held connection with no checkout location gets its thread's stack sampled after
#: this many seconds.
SAMPLE_HOLDERS_AFTER = 0.5

#: A control handler takes the message's args and id and returns (status, reason), or
#: (status, reason, [messages to send after the ack]).
ControlHandler = Callable[[dict[str, Any], str], "tuple[Any, ...]"]


class Agent:
    """One instrumented process. Use :func:`tracker.instrument` rather than this."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        #: the OS process's start time: with host and pid, its identity on the dashboard
        self.started = process_start_time()
        self.recorder = Recorder(config.queue_size)
        self.finder = LocationFinder(config.skip_modules, config.stack_depth)
        self.registry = Registry(self._on_new_engine, self._on_new_pool)
        self.listeners = ListenerSet()
        self.pool_hooks = PoolHooks(self.registry, self.recorder, self.finder,
                                    config.capture_locations)
        self.sessions = SessionRegistry()
        self.session_reporter = SessionReporter(self.sessions)
        self.redactor = Redactor(config.secret_words)
        self.session_hooks: SessionHooks | None = None
        self.detectors = Detectors(dict(config.thresholds), self.recorder, self.finder,
                                   config.capture_locations, self.redactor,
                                   config.capture_parameters)
        if config.track_sessions:
            self.session_hooks = SessionHooks(self.registry, self.sessions, self.recorder,
                                              self.finder, config.capture_locations,
                                              self.detectors)
        self.engine_hooks = EngineHooks(self.registry, self.recorder, self.detectors,
                                        self.finder, config.capture_locations,
                                        self.sessions if config.track_sessions else None)
        self.watch = Watch(self, self.detectors)
        self.engine_checks = EngineChecks(self)
        #: what the dashboard switched at runtime (tracker/switches.py); worker-written
        self.settings = Settings()
        self.controls: dict[str, ControlHandler] = {"snapshot": self._snapshot_control,
                                                    "set": self._set_control,
                                                    "sync": self._sync_control,
                                                    "record": self._record_control}
        self.remote_traces = RemoteTraces(self)
        self.dashboard_process_id: int | None = None
        self.worker = Worker(self)
        self.run_worker = False
        self._pid = os.getpid()

    # -- lifecycle -------------------------------------------------------------------

    def start(self, *, run_worker: bool = True) -> None:
        self.run_worker = run_worker
        self.pool_hooks.install(self.listeners)
        self.engine_hooks.install(self.listeners)
        if self.session_hooks is not None:
            self.session_hooks.install(self.listeners)
        self.discover_existing()
        if run_worker:
            self.worker.start()

    def stop(self) -> None:
        self.remote_traces.stop_all()  # their last lines go with the worker's last round
        self.listeners.remove_all()
        if self.session_hooks is not None:
            self.session_hooks.uninstall()
        for pool_entry in list(self.registry.pools.values()):
            pool = pool_entry.pool_ref()
            if pool is not None:
                unwrap_connect(pool)
        self.worker.stop(self.config.flush_timeout)
        self.registry.clear()
        self.sessions.clear()
        self.recorder.clear()

    def discover_existing(self) -> int:
        """Register every engine already alive in the process (one scan of the heap),
        so that idle engines show up before their first checkout, and the sessions
        already in a transaction (when attached to a running process)."""
        found = 0
        sessions = []
        fairies = []
        for obj in gc.get_objects():
            # type(), not isinstance(): isinstance() on a dead weakproxy raises
            kind = type(obj)
            if issubclass(kind, Engine):
                try:
                    self.registry.engine_entry(obj)
                    found += 1
                except Exception as exc:
                    self.recorder.count_error("discover", exc)
            elif issubclass(kind, Session):
                sessions.append(obj)
            elif _ConnectionFairy is not None and issubclass(kind, _ConnectionFairy):
                fairies.append(obj)
        for fairy in fairies:
            self._adopt_checkout(fairy)
        if self.session_hooks is not None:
            for session in sessions:
                self._adopt_session(session)
        return found

    def _adopt_checkout(self, fairy: Any) -> None:
        """List a connection checked out before the agent came (attached to a running
        process) among its pool's holders: who holds it is unknown, only that it is held
        (and, once its session is adopted, by which session)."""
        try:
            record = fairy._connection_record
            if record is None or fairy.dbapi_connection is None:
                return  # checked in already
            pool_entry = self.registry.pools.get(id(fairy._pool))
            if pool_entry is not None:
                pool_entry.holders.setdefault(id(record), (perf_counter(), 0, BEFORE_AGENT))
        except Exception as exc:
            self.recorder.count_error("discover.checkout", exc)

    def _adopt_session(self, session: Session) -> None:
        """Register a session found in a transaction, with the connections it holds, as
        its after_begin would have. Its thread is unknown: the first to use it counts."""
        try:
            transaction = session.get_transaction()
            if transaction is None:
                return
            # SessionTransaction keeps its connections in _connections (2.0 and 2.1):
            # {bind: (Connection, transaction, should_commit, autoclose)}
            for connection, *_rest in list(getattr(transaction, "_connections", {}).values()):
                self.session_hooks._after_begin(session, transaction, connection)
            entry = self.session_hooks._known(session)
            if entry is not None:
                entry.thread_id = 0  # unknown (see Detectors.on_other_thread)
        except Exception as exc:
            self.recorder.count_error("discover.session", exc)

    def after_fork_in_child(self) -> None:
        """Restart the worker in a forked child: new pid, nothing inherited to send."""
        self.worker.abandon()
        self._pid = os.getpid()
        procinfo.after_fork()
        self.started = process_start_time()
        # the same recorder, emptied: the pools' connect wrappers hold on to its queue
        self.recorder.reset()
        for engine_entry in list(self.registry.tallied):
            engine_entry.tally.clear()
        for pool_entry in list(self.registry.pools.values()):
            # connections the parent held are not this process's to report
            pool_entry.holders.clear()
            pool_entry.waiters.clear()
        for entry in list(self.sessions.by_id.values()):
            entry.sent = None  # the child reports the sessions it inherited as its own
        self.worker = Worker(self)
        if self.run_worker:
            self.worker.start()

    # -- discovery callbacks (run on the application's thread) -----------------------

    def _on_new_engine(self, entry: EngineEntry) -> None:
        self.engine_hooks.on_new_engine(entry)  # wraps its dialect's execute methods
        # the worker announces engines it has not announced yet on its next round
        if self.settings.values:
            self._switch_engine(entry)

    def _on_new_pool(self, entry: PoolEntry, pool: Pool) -> None:
        try:
            wrap_connect(pool, entry, self.recorder, self.finder,
                         self.config.capture_locations)
        except Exception as exc:
            self.recorder.count_error("wrap_connect", exc)
        self.engine_hooks.on_new_pool(entry, pool)  # wraps its dialect's execute methods

    # -- what is reported ------------------------------------------------------------

    def hello(self, live: list[tuple[EngineEntry, Engine | None]] | None = None
              ) -> dict[str, Any]:
        """The ``hello`` message, announcing ``live`` engines (default: the live ones)."""
        if live is None:
            live = self.registry.live_engines()
        return {
            "t": "hello",
            "app": self.config.app,
            "process": {
                "host": socket.gethostname(),
                "pid": self._pid,
                "ppid": os.getppid(),
                "started": self.started,
                "argv": [str(arg)[:500] for arg in sys.argv[:20]],
                "python": sys.version.split()[0],
                "sqlalchemy": sqlalchemy.__version__,
                "agent": __version__,
            },
            "engines": [self.engine_info(entry, engine) for entry, engine in live],
            "capabilities": {"capture_parameters": self.config.capture_parameters},
        }

    def engine_info(self, entry: EngineEntry, engine: Engine | None) -> dict[str, Any]:
        return engine_info(entry, engine, self._pool_of(entry, engine))

    def _pool_of(self, entry: EngineEntry, engine: Engine | None) -> Pool | None:
        if engine is not None:
            return engine.pool
        for pool_entry in list(self.registry.pools.values()):
            if pool_entry.engine is entry:
                return pool_entry.pool_ref()
        return None

    def engine_state(self, entry: EngineEntry, engine: Engine | None,
                     stats: EngineStats) -> dict[str, Any]:
        """Gauges read from the pool now, plus the worker's cumulative aggregates."""
        pool = self._pool_of(entry, engine)
        pool_entry = self.registry.pools.get(id(pool)) if pool is not None else None
        holders = dict(pool_entry.holders) if pool_entry is not None else {}
        waiting = len(pool_entry.waiters) if pool_entry is not None else 0
        gauges: dict[str, Any] = {"checked_out": len(holders), "waiting": waiting}
        status = None
        if pool is not None:
            gauges.update(_pool_gauges(pool))
            try:
                status = pool.status()
            except Exception:
                status = None
        listed = sorted(holders.items(), key=lambda item: item[1][0])[:MAX_HOLDERS]
        sampled = self._sample_holders(pool_entry, listed) if pool_entry is not None else {}
        owners = self._record_owners() if listed else {}
        now_perf, now_wall = perf_counter(), time.time()
        return {
            "id": entry.id,
            "gauges": gauges,
            "status": status,
            "counters": stats.counters_dict(),
            "wait": stats.wait.as_dict(),
            "hold": stats.hold.as_dict(),
            "holders": [_holder(now_wall - (now_perf - t0), tid, stack,
                                sampled.get((key, t0)), owners.get(key),
                                stack is BEFORE_AGENT)
                        for key, (t0, tid, stack) in listed],
        }

    def _record_owners(self) -> dict[int, str]:
        """id(connection record) -> id of the session whose transaction holds it."""
        owners: dict[int, str] = {}
        for entry in list(self.sessions.by_conn.values()):
            for _engine_id, record_id in list(entry.conns.values()):
                owners[record_id] = entry.sid
        return owners

    # -- sessions --------------------------------------------------------------------

    def session_summaries(self, *, everything: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Summaries of sessions changed since last sent (``everything``: of all live
        sessions, for local use and tests). Worker thread only."""
        if everything:
            self.session_reporter.forget_sent()
        return self.session_reporter.summaries(self._session_location)

    def _session_location(self, entry: Any) -> tuple[list[str], bool] | None:
        """The stack of the checkout its transaction holds: captured at checkout, or
        sampled from its thread (see _sample_holders)."""
        for _engine_id, record_id in list(entry.conns.values()):
            for pool_entry in list(self.registry.pools.values()):
                holder = pool_entry.holders.get(record_id)
                if holder is None:
                    continue
                if holder[2]:
                    return describe(holder[2]), False
                sampled = pool_entry.sampled.get((record_id, holder[0]))
                if sampled:
                    return describe(sampled), True
        return None

    def detached_findings(self, now: float | None = None) -> list[list[Any]]:
        """Finding events for objects modified after their session closed (a change
        that will never be written unless merged into a session). Worker thread."""
        now = time.time() if now is None else now
        reporter = self.session_reporter
        reporter.watch_closed(now)
        events = []
        for sid, name, identity, changed in reporter.detached_changes(now):
            message = (f"{name}#{identity} was modified after its session {sid} closed: "
                       f"the change ({', '.join(changed) or 'attributes'}) will never be "
                       f"written unless the object is merged into a session")
            events.append(["finding", now, "", "detached-modification", "warning", sid,
                           "", "", message, {"class": name, "identity": identity,
                                             "attributes": changed}])
        return events

    # -- runtime switches (dashboard toggles) -----------------------------------------

    def _set_control(self, args: dict[str, Any], request: str) -> tuple[Any, ...]:
        """``set`` control: one runtime setting (tracker/switches.py), or its removal."""
        try:
            control_args("set", args)
            scope, target, switch = args["scope"], args["target"], args["switch"]
            value = validate(scope, target, switch, args.get("value"))
        except (ProtocolError, SwitchError) as exc:
            return "refused", str(exc)
        if switch == "parameters" and value and not self.config.capture_parameters:
            return "refused", ("parameter capture is not allowed by this process's agent "
                               "configuration (capture_parameters=False; the app's owner "
                               "can allow it with RETORT_CAPTURE_PARAMETERS=1)")
        self.settings.set(scope, target, switch, value)
        self.apply_settings()
        return "applied", self._set_note(scope, target)

    def _set_note(self, scope: str, target: str) -> str:
        """What an applied setting reaches in this process, when it reaches nothing."""
        if scope == "engine" and not any(entry.name == target
                                          for entry in list(self.registry.engines.values())):
            return f"no engine named {target} in this process yet"
        if scope == "session" and self.sessions.find(target) is None:
            return f"no live session {target} in this process"
        return ""

    def _record_control(self, args: dict[str, Any], request: str) -> tuple[Any, ...]:
        """``record`` control: start or stop a recording streamed to the dashboard."""
        return self.remote_traces.control(args, request)

    def _sync_control(self, args: dict[str, Any], request: str) -> tuple[Any, ...]:
        """``sync`` control: drop every setting the dashboard no longer has."""
        try:
            control_args("sync", args)
        except ProtocolError as exc:
            return "refused", str(exc)
        keep = {tuple(key) for key in args["keep"] if len(key) == 3}
        gone = self.settings.keep_only(keep)  # type: ignore[arg-type]
        self.apply_settings()
        return "applied", f"{len(gone)} setting(s) removed" if gone else ""

    def apply_settings(self) -> None:
        """Put the settings in force where hooks, detectors and policies read them."""
        settings = self.settings
        engines = list(self.registry.engines.values())
        for entry in engines:
            self._switch_engine(entry)
        self.detectors.parameters_off = frozenset(
            entry.id for entry in engines
            if not settings.get("parameters", True, engine=entry.name))
        thresholds = settings.get("thresholds", {})
        self.detectors.set_thresholds(thresholds)
        self.detectors.enabled = (self._detectors_enabled
                                  if any(key[2] == "detectors" for key in settings.values)
                                  else None)
        policies.ignore_classes(name for name, on in
                                settings.entities("ignore_changes").items() if on)

    def _switch_engine(self, entry: EngineEntry) -> None:
        settings = self.settings
        entry.statements = settings.get("statements", True, engine=entry.name)
        entry.sample = max(1, round(1 / settings.get("sampling", 1.0, engine=entry.name)))
        entry.locations = settings.get("locations", None, engine=entry.name)

    def _snapshots_allowed(self, sid: str, entry: Any) -> bool:
        engine_ids = {engine_id for engine_id, _record in list(entry.conns.values())} \
            if entry is not None else set()
        names = [e.name for e in list(self.registry.engines.values()) if e.id in engine_ids]
        return all(self.settings.get("snapshots", True, engine=name, session=sid or None)
                   for name in names or [None])

    def _detectors_enabled(self, engine_id: str, session_id: str) -> bool:
        name = None
        for entry in list(self.registry.engines.values()):
            if entry.id == engine_id:
                name = entry.name
                break
        return bool(self.settings.get("detectors", True, engine=name,
                                      session=session_id or None))

    def _snapshot_control(self, args: dict[str, Any], request: str) -> tuple[Any, ...]:
        """``snapshot`` control: what one session tracks and would write, one page."""
        sid = str(args.get("session") or "")
        entry = self.sessions.find(sid) if sid else None
        session = entry.ref() if entry is not None else None
        if self.settings.values and not self._snapshots_allowed(sid, entry):
            return "refused", "snapshots are switched off for this session by the dashboard"
        reply: dict[str, Any] = {
            "t": "snapshot", "request": request, "session": sid, "ts": time.time(),
            "found": session is not None, "partial": False, "total": 0, "offset": 0,
            "entities": [], "changes": [], "changes_total": 0,
        }
        if session is None or entry is None:
            return "applied", "no such live session", [reply]
        try:
            wanted = SnapshotFilter(args)
            wanted.hidden = frozenset(name for name, on in
                                      self.settings.entities("snapshots").items() if not on)
            reply.update(take_snapshot(session, self.redactor, wanted))
        except Exception as exc:  # the app changed too much under us: say so
            reply["partial"] = True
            reply["error"] = f"{type(exc).__name__}: {exc}"[:500]
        summary = self.session_reporter.summary(entry, session, perf_counter(), time.time(),
                                                self._session_location, force=True)
        if summary is not None:
            reply["summary"] = summary
        return "applied", "", [_fit(reply)]

    def _sample_holders(self, pool_entry: PoolEntry,
                        listed: list[tuple[int, tuple[Any, ...]]]) -> dict[Any, list[Any]]:
        """For connections held a while with no checkout location (not captured: the
        pool was not under pressure), sample where the holding thread is now. Kept
        per checkout, so it is sampled once; runs on the worker."""
        known = pool_entry.sampled
        if self.config.capture_locations == OFF:
            return known
        now = perf_counter()
        frames: dict[int, Any] | None = None
        current: dict[Any, list[Any]] = {}
        for key, (t0, tid, stack) in listed:
            if stack or now - t0 < SAMPLE_HOLDERS_AFTER:
                continue
            found = known.get((key, t0))
            if found is None:
                if frames is None:
                    frames = sys._current_frames()
                frame = frames.get(tid)
                found = self.finder.capture(frame) if frame is not None else []
            current[(key, t0)] = found
        pool_entry.sampled = current
        return current

    def snapshot(self) -> dict[str, Any]:
        """Aggregate whatever is queued and return the state message (for local use
        and tests). Only call it when no worker thread is running, or from the worker."""
        self.worker.process(self.recorder.drain())
        return self.worker.state()


class _BeforeAgent(tuple):
    """The (empty) stack of a checkout made before the agent came: its own type, so
    that it is told apart from an empty tuple by identity."""


BEFORE_AGENT = _BeforeAgent()


def _holder(since: float, tid: int, captured: Sequence[Any],
            sampled: list[Any] | None = None, session: str | None = None,
            before_agent: bool = False) -> dict[str, Any]:
    if before_agent:  # "since" is when the agent found it; the thread is unknown
        return {"since": since, "thread": "unknown", "thread_id": 0, "stack": [],
                "before_agent": True, **({"session": session} if session else {})}
    holder: dict[str, Any] = {"since": since, "thread": thread_name(tid), "thread_id": tid}
    if not captured and sampled:
        stack = describe(sampled)
        holder.update(location=stack[0], stack=stack, sampled=True)
    else:
        stack = describe(captured)
        holder.update(location=stack[0] if stack else None, stack=stack)
    if session is not None:
        holder["session"] = session
    return holder


def _fit(reply: dict[str, Any]) -> dict[str, Any]:
    """Shrink a snapshot until its frame fits the protocol's limit (the counts stay)."""
    while len(encode(reply)) > MAX_FRAME_BYTES - 1024 and (reply["changes"]
                                                           or reply["entities"]):
        if reply["changes"]:
            reply["changes"] = reply["changes"][: len(reply["changes"]) // 2]
        else:
            reply["entities"] = reply["entities"][: len(reply["entities"]) // 2]
    return reply


def _pool_gauges(pool: Pool) -> dict[str, Any]:
    """checked_out / idle / overflow / size / capacity where the pool class has them."""
    gauges: dict[str, Any] = {}
    for key, method in (("checked_out", "checkedout"), ("idle", "checkedin"),
                        ("overflow", "overflow"), ("size", "size")):
        fn = getattr(pool, method, None)
        if callable(fn):
            try:
                gauges[key] = int(fn())
            except Exception:
                pass
    max_overflow = getattr(pool, "_max_overflow", None)
    if "size" in gauges and isinstance(max_overflow, int) and max_overflow >= 0:
        gauges["capacity"] = gauges["size"] + max_overflow
    if "overflow" in gauges:
        # QueuePool counts overflow from -size; report only connections beyond size
        gauges["overflow"] = max(0, gauges["overflow"])
    return gauges


# -- the process-wide agent --------------------------------------------------------

_lock = threading.Lock()
_agent: Agent | None = None
_fork_handler_registered = False
_atexit_registered = False


def current() -> Agent | None:
    """The running agent, or None."""
    return _agent


def start(config: AgentConfig, *, run_worker: bool = True) -> Agent | None:
    global _agent, _fork_handler_registered, _atexit_registered
    with _lock:
        if _agent is not None:
            return _agent
        if not config.enabled:
            return None
        agent = Agent(config)
        agent.start(run_worker=run_worker)
        _agent = agent
        if not _fork_handler_registered and hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _fork_handler_registered = True
        if not _atexit_registered:
            atexit.register(_at_exit)
            _atexit_registered = True
        return agent


def stop() -> None:
    global _agent
    with _lock:
        agent, _agent = _agent, None
    if agent is not None:
        agent.stop()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # it may have been held by another thread at fork time
    agent = _agent
    if agent is not None:
        try:
            agent.after_fork_in_child()
        except Exception:
            pass


def _at_exit() -> None:
    try:
        stop()
    except Exception:
        pass

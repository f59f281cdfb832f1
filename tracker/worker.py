"""The agent's one background thread: drain, aggregate, send, reconnect, obey.

It is the single owner of the aggregates (:mod:`tracker.stats`); application threads
only hand it tuples through the :class:`~tracker.recorder.Recorder`.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from . import protocol
from .hooks import engine as engine_hooks
from .locations import describe
from .hooks import pool as pool_hooks
from .hooks import session as session_hooks
from . import detectors
from .stats import Batch, EngineStats
from .registry import LOCATE_PER_ROUND
from .tally import take
from .transport import Transport, TransportError

if TYPE_CHECKING:
    from .agent import Agent
    from .registry import EngineEntry

log = logging.getLogger("tracker")

#: How often the worker wakes to drain the queue (seconds).
#: Seconds the worker sleeps between rounds. Each wake-up makes the worker compete
#: for the GIL with the application; measured with bench/agent_overhead.py, waking
#: every 0.05 s cost the application ~4% on orm_get, every 0.25 s about 1%.
TICK = 0.25

_STATEMENT, _CHECKIN, _WAIT = engine_hooks.STATEMENT, pool_hooks.CHECKIN, pool_hooks.WAIT
_DEFERRED = engine_hooks.DEFERRED
#: Events kept while disconnected; older ones are dropped (counted) beyond this.
MAX_PENDING_EVENTS = 10_000


class Worker:
    """Aggregates what the hooks record and ships it to the dashboard, if any."""

    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self.config = agent.config
        self.recorder = agent.recorder
        self.stats: dict[str, EngineStats] = {}
        #: engine id -> revision of its configuration the dashboard has
        self.announced: dict[str, int] = {}
        self.pending_events: collections.deque[list[Any]] = collections.deque()
        self.reconnects = 0
        self.connections = 0
        self.transport: Transport | None = (
            Transport(self.config.url, self.config.token,
                      backoff_initial=self.config.backoff_initial,
                      backoff_max=self.config.backoff_max)
            if self.config.url else None
        )
        self._thread: threading.Thread | None = None
        #: rounds completed (see wait_round)
        self.rounds = 0
        self._wake = threading.Event()
        self._stopping = False
        self._next_state = 0.0
        self._next_attempt = 0.0
        self._last_scan = 0.0
        self._last_refusal: str | None = None
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "welcome": self._on_welcome,
            "control": self._on_control,
            "error": self._on_error,
        }
        self._dashboard_error: str | None = None
        # (checkouts, checkins and statements are handled inline by process())
        self._dispatch: dict[str, Callable[..., None]] = {
            pool_hooks.CONNECT: self._count("connects"),
            pool_hooks.CHECKOUT: self._count("checkouts"),
            pool_hooks.INVALIDATE: self._on_invalidate,
            pool_hooks.SOFT_INVALIDATE: self._count("soft_invalidations"),
            pool_hooks.CLOSE: self._count("closes"),
            pool_hooks.DETACH: self._count("detaches"),
            pool_hooks.TIMEOUT: self._on_timeout,
            engine_hooks.STATEMENT_ERROR: self._on_statement_error,
            session_hooks.FINDING: self._event,
            detectors.SLOW: self._event,
        }

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="retort-agent", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def cpu_seconds(self) -> float | None:
        """The CPU time the worker's thread has used, or None (not running, or no
        per-thread clock on this platform): for benchmarks."""
        thread = self._thread
        if thread is None or thread.ident is None or not thread.is_alive():
            return None
        try:
            return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (AttributeError, OSError):
            return None

    def stop(self, timeout: float) -> bool:
        """Send what is left (final state and ``bye``) and stop; True if done in time."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def abandon(self) -> None:
        """In a forked child: forget the parent's thread and socket without using them."""
        self._thread = None
        if self.transport is not None:
            self.transport.abandon()

    def wait_round(self, timeout: float) -> bool:
        """Wake the worker and wait until it has completed a whole round that began
        after this call (so it has taken everything recorded before it); False if the
        worker is not running or ``timeout`` seconds passed first."""
        target = self.rounds + 2  # the round under way may have drained already
        deadline = time.monotonic() + timeout
        while self.rounds < target:
            if not self.alive or time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(0.001)
        return True

    def _run(self) -> None:
        while not self._stopping:
            try:
                self.step()
            except Exception as exc:  # the worker must survive anything
                if self.recorder.count_error("worker", exc):
                    log.exception("retort agent: internal error (logged once)")
            self.rounds += 1
            self._wake.wait(TICK)
            self._wake.clear()
        try:
            self.step(final=True)
            if self.transport is not None and self.transport.connected:
                self.transport.send(protocol.encode({"t": "bye"}))
        except Exception:
            pass
        if self.transport is not None:
            self.transport.close()

    # -- one round -------------------------------------------------------------------

    def step(self, final: bool = False) -> None:
        """Drain and aggregate; when due, build a state frame; talk to the dashboard."""
        self.process(self.recorder.drain())
        now = time.monotonic()
        due = final or now >= self._next_state
        if due:
            self._next_state = now + self.config.state_interval
        if self.transport is None:
            self.pending_events.clear()  # local-only: nothing to ship events to
            return
        if not self.transport.connected:
            if (self.connections == 0 and self.config.wait_for_engine
                    and not self.agent.registry.engines):
                self.pending_events.clear()  # nothing worth a process on the dashboard yet
                return
            # at exit, one last attempt even if a retry is not due yet: flush what we have
            if now < self._next_attempt and not (final and self.connections == 0):
                self._trim_pending()
                return
            if not self._open():
                self._trim_pending()
                return
            due = True
        try:
            for message in self.transport.receive():
                self._on_message(message)
            # the state first, then the announcements: an engine born meanwhile (on the
            # application's threads) is in the state, so it must be announced too, and
            # the state holds it alive until then (a short-lived engine would otherwise
            # reach the dashboard as counters without a configuration)
            engines = _reportable(self.agent.registry.live_engines()) if due else []
            state = self.state(engines) if due else None
            self._announce_engines(engines)
            del engines
            self._send_events()
            for message in self.agent.remote_traces.frames():
                self.transport.send(protocol.encode(message))
            if state is not None:
                self.transport.send(protocol.encode(state))
        except TransportError as exc:
            self._lost(exc)

    def process(self, items: list[tuple[Any, ...]]) -> None:
        # Most checkouts, checkins and statements arrive through the engines' tallies
        # (_take_tallies); those that come queued (first sight of a text, sampled
        # engines, full tallies) are handled inline: the worker shares the GIL with
        # the application, so its time per event is the app's too. Per item it only
        # appends the duration to its engine's Batch, which counts them in at the end
        # (a sort and a C call per bucket bound per list).
        dispatch = self._dispatch
        stats_for = self.stats_for
        last_entry: Any = None
        stats: EngineStats | None = None
        batches: dict[int, Batch] = {}
        batch: Batch | None = None
        waits: list[float] = []
        holds: list[float] = []
        durations: dict[str, list[float]] = {}
        for item in items:
            kind = item[0]
            if kind is _STATEMENT or kind is _CHECKIN or kind is _WAIT:
                entry = item[1] if kind is _STATEMENT else item[1].engine
                if entry is not last_entry:
                    last_entry, stats = entry, stats_for(entry)
                    batch = batches.get(id(stats))
                    if batch is None:
                        batch = batches[id(stats)] = Batch(stats, entry.sample, entry)
                    waits, holds, durations = batch.waits, batch.holds, batch.durations
                if kind is _STATEMENT:
                    text = item[3]
                    values = durations.get(text)
                    if values is None:
                        values = durations[text] = []
                    values.append(item[2])
                    if item[5] > 0:
                        rows = batch.rows
                        rows[text] = rows.get(text, 0) + item[5]
                    if item[6]:
                        batch.stacks.append((text, item[6]))
                    elif item[6] is _DEFERRED:
                        batch.deferred.add(text)
                elif kind is _WAIT:  # the worker counts it as the checkout
                    waits.append(item[2])
                elif item[2] is not None:
                    holds.append(item[2])
                else:  # the checkin of a checkout the agent did not see
                    stats.counters["checkins"] += 1
                continue
            handler = dispatch.get(kind)
            if handler is not None:
                handler(*item[1:])
        self._take_tallies(batches)
        for batch in batches.values():
            batch.apply()

    def _take_tallies(self, batches: dict[int, Batch]) -> None:
        """Move what the hooks appended to the engines' tallies (tracker/tally.py)
        into this round's batches; give the statement texts seen through the queue
        this round a tally of their own; forget the tallies of engines gone."""
        registry = self.agent.registry
        tallied = registry.tallied
        gone = None
        pooled: set[int] | None = None
        for entry in list(tallied):
            entry.locate_left = LOCATE_PER_ROUND  # the first sights it may locate
            tally = entry.tally
            if tally.waits or tally.holds or tally.all_texts:
                stats = self.stats_for(entry)
                # what the tallies hold was recorded unsampled: weight 1, even if
                # sampling was switched on meanwhile (a batch of its own then)
                key = id(stats) if entry.sample == 1 else -id(stats)
                batch = batches.get(key)
                if batch is None:
                    batch = batches[key] = Batch(stats, 1, entry)
                waits = take(tally.waits)
                if waits:
                    batch.waits.extend(waits)
                holds = take(tally.holds)
                if holds:
                    batch.holds.extend(holds)
                durations, rows = batch.durations, batch.rows
                for text, text_tally in list(tally.all_texts.items()):
                    if not text_tally.durations:
                        continue  # (its rows are appended after its duration)
                    values = take(text_tally.durations)
                    if values:
                        known = durations.get(text)
                        if known is None:
                            durations[text] = values
                        else:
                            known.extend(values)
                    counted = take(text_tally.rows)
                    if counted:
                        rows[text] = rows.get(text, 0) + sum(counted)
            if entry.engine_ref is None or entry.engine() is None:
                # its engine is gone (or it had none): once no pool of it is left
                # either, no hook can append to its tally any more
                if pooled is None:
                    pooled = {id(pool_entry.engine)
                              for pool_entry in list(registry.pools.values())}
                if id(entry) not in pooled and not tally.pending():
                    gone = gone or []
                    gone.append(entry)
        for entry in gone or ():
            tallied.remove(entry)
        for batch in batches.values():
            # texts that recur get a tally once located: their next executions skip
            # the queue; a busy text's tally gets room for its rate
            entry = batch.entry
            if entry is not None and entry.statements and entry.sample == 1:
                tally = entry.tally
                published = tally.texts
                deferred = batch.deferred
                for text, values in batch.durations.items():
                    text_tally = published.get(text)
                    if text_tally is not None:
                        tally.grow(text_tally, len(values))
                    elif tally.recurs(text, len(values)) and text not in deferred:
                        tally.add_text(text)

    # -- aggregation -----------------------------------------------------------------

    def stats_for(self, entry: "EngineEntry") -> EngineStats:
        stats = self.stats.get(entry.id)
        if stats is None:
            stats = self.stats[entry.id] = EngineStats()
        return stats

    def _count(self, name: str) -> Callable[..., None]:
        def count(pool_entry: Any, *rest: Any) -> None:
            self.stats_for(pool_entry.engine).counters[name] += 1
        return count

    def _on_timeout(self, pool_entry: Any, ts: float, waited: float, thread: str,
                    stack: list[Any]) -> None:
        self.stats_for(pool_entry.engine).counters["timeouts"] += 1
        self.agent.watch.on_timeout(pool_entry.engine.id, _first(stack))
        self._event(["checkout_timeout", ts, pool_entry.engine.id, thread,
                     _first(stack), waited])

    def _on_invalidate(self, pool_entry: Any, ts: float, thread: str, stack: list[Any],
                       error: str) -> None:
        self.stats_for(pool_entry.engine).counters["invalidations"] += 1
        self._event(["invalidate", ts, pool_entry.engine.id, thread, _first(stack), error])

    def _on_statement_error(self, entry: "EngineEntry", statement: str) -> None:
        stats = self.stats_for(entry)
        stats.counters["statement_errors"] += 1
        shape = stats.statement(statement)
        shape.errors += 1
        stats.changed[shape.shape.fp] = shape

    def check_pools(self) -> None:
        registry = self.agent.registry
        if any(entry.engine_ref is None for entry in list(registry.engines_by_pool())):
            # a pool whose engine we have not seen execute anything yet: look for it
            now = time.monotonic()
            if now - self._last_scan > 5.0:
                self._last_scan = now
                self.agent.discover_existing()
        self._check_disposed()

    def _check_disposed(self) -> None:
        """Notice engines whose pool was replaced (``engine.dispose()``): count it,
        time the new pool, and announce the engine's configuration again. (Listening
        for ``engine_disposed`` would be a connection-level listener: see
        hooks/engine.py for what those cost.)"""
        for entry, engine in self.agent.registry.live_engines():
            if engine is None:
                continue
            pool = engine.pool
            if entry.pool_id == id(pool):
                continue
            if entry.pool_id is not None:
                entry.disposed += 1
                entry.revision += 1  # a new pool: send the configuration again
                self._event(["dispose", time.time(), entry.id])
            entry.pool_id = id(pool)
            self.agent.registry.pool_entry(pool, entry)

    def _event(self, event: list[Any]) -> None:
        if self.transport is not None:
            self.pending_events.append(event)

    def _trim_pending(self) -> None:
        excess = len(self.pending_events) - MAX_PENDING_EVENTS
        if excess > 0:
            for _ in range(excess):
                self.pending_events.popleft()
            self.recorder.count_drop(protocol.DROP_DISCONNECTED, excess)

    # -- frames ----------------------------------------------------------------------

    def state(self, live: list[tuple[Any, Any]] | None = None) -> dict[str, Any]:
        """The ``state`` message: every live engine's pool now (``live``: the
        registry's live engines, read by the caller), and the agent's health."""
        self.check_pools()
        engines = []
        if live is None:
            live = _reportable(self.agent.registry.live_engines())
        for entry, engine in live:
            stats = self.stats_for(entry)
            state = self.agent.engine_state(entry, engine, stats)
            if stats.changed:
                state["statements"] = stats.take_changed()
            engines.append(state)
        message: dict[str, Any] = {
            "t": "state",
            "ts": time.time(),
            "engines": engines,
            "agent": {
                "queue": len(self.recorder),
                "queue_max": self.recorder.maxlen,
                "drops": dict(self.recorder.drops),
                "errors": self.recorder.errors,
                "reconnects": self.reconnects,
            },
        }
        if self.agent.session_hooks is not None:
            sessions, omitted = self.agent.session_summaries()
            if sessions:
                message["sessions"] = sessions
            if omitted:
                message["sessions_omitted"] = omitted
            for event in self.agent.detached_findings():
                self._event(event)
        for event in self.agent.watch.check():
            self._event(event)
        if self.agent.run_worker:
            self.agent.engine_checks.start_due()  # tests run them with .run(.due())
        return message

    def _announce_engines(self, also: list[tuple[Any, Any]] = ()) -> None:
        seen: set[str] = set()
        for entry, engine in [*also, *_reportable(self.agent.registry.live_engines())]:
            if entry.id in seen:
                continue
            seen.add(entry.id)
            if self.announced.get(entry.id) != entry.revision:
                self.transport.send(protocol.encode(
                    {"t": "engine", "engine": self.agent.engine_info(entry, engine)}))
                self.announced[entry.id] = entry.revision

    def _send_events(self) -> None:
        while self.pending_events:
            batch = []
            while self.pending_events and len(batch) < protocol.MAX_EVENTS_PER_FRAME:
                batch.append(self.pending_events.popleft())
            self._send_batch(batch)

    def _send_batch(self, batch: list[list[Any]]) -> None:
        try:
            frame = protocol.encode({"t": "events", "events": batch})
        except TypeError:
            self.recorder.count_drop(protocol.DROP_ENCODE_ERROR, len(batch))
            return
        if len(frame) > protocol.MAX_FRAME_BYTES:
            if len(batch) == 1:  # one event larger than a frame: it can never be sent
                self.recorder.count_drop(protocol.DROP_OVERSIZE)
                return
            half = len(batch) // 2
            self._send_batch(batch[:half])
            self._send_batch(batch[half:])
            return
        self.transport.send(frame)

    def _open(self) -> bool:
        assert self.transport is not None
        try:
            self.transport.open()
            # what the hello announces is exactly what counts as announced: an engine
            # born after this read is announced on its own
            live = _reportable(self.agent.registry.live_engines())
            self.transport.send(protocol.encode(self.agent.hello(live)))
        except TransportError as exc:
            self._lost(exc)
            return False
        self.announced = {entry.id: entry.revision for entry, _ in live}
        del live
        self.agent.session_reporter.forget_sent()  # the dashboard gets every session
        for stats in self.stats.values():
            stats.resend_all()
        if self.connections:
            self.reconnects += 1
        self.connections += 1
        # _last_refusal is cleared on welcome, not here: a refused agent's hello can
        # go out before the dashboard's close arrives, and the same refusal would
        # then be logged again on every retry
        return True

    def _lost(self, exc: TransportError) -> None:
        assert self.transport is not None
        self.transport.close()
        delay = self.transport.next_delay()
        if exc.code is not None and exc.code >= 4000:
            # refused by the dashboard (bad token, bad frame): retrying fast is useless
            delay = self.config.backoff_max
            message = f"dashboard refused the agent: {self._refusal_reason(exc)}"
            if exc.code != protocol.CLOSE_UNAUTHORIZED:
                self.recorder.count_drop(protocol.DROP_REFUSED)
        else:
            message = str(exc)
        self._next_attempt = time.monotonic() + delay
        if message != self._last_refusal:
            log.warning("retort agent: %s (retrying in %.1fs)", message, delay)
            self._last_refusal = message

    def _refusal_reason(self, exc: TransportError) -> str:
        reason, self._dashboard_error = self._dashboard_error, None
        for raw in exc.pending:
            try:
                message = protocol.decode(raw, allowed=frozenset({"error"}))
            except protocol.ProtocolError:
                continue
            return message["reason"]
        return reason or exc.reason or f"close code {exc.code}"

    # -- control messages ------------------------------------------------------------

    def _on_message(self, raw: bytes | str) -> None:
        try:
            message = protocol.decode(raw, allowed=frozenset(self._handlers))
        except protocol.ProtocolError as exc:
            if self.recorder.count_error("worker.message", exc):
                log.warning("retort agent: ignored a message from the dashboard: %s", exc)
            return
        self._handlers[message["t"]](message)

    def _on_error(self, message: dict[str, Any]) -> None:
        self._dashboard_error = message["reason"]  # the close follows: see _lost()

    def _on_welcome(self, message: dict[str, Any]) -> None:
        self.agent.dashboard_process_id = message["process"]
        self._last_refusal = None
        log.info("retort agent: connected to %s", self.config.url)

    def _on_control(self, message: dict[str, Any]) -> None:
        handler = self.agent.controls.get(message["action"])
        replies: list[dict[str, Any]] = []
        if handler is None:
            status, reason = "refused", f"unknown action {message['action']!r}"
        else:
            try:
                status, reason, *more = handler(message.get("args") or {}, message["id"])
                replies = more[0] if more else []
            except Exception as exc:
                status, reason = "refused", f"{type(exc).__name__}: {exc}"
        assert self.transport is not None
        self.transport.send(protocol.encode(
            {"t": "ack", "id": message["id"], "status": status, "reason": reason}))
        for reply in replies:
            self.transport.send(protocol.encode(reply))


def _reportable(live: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Live engines, without an engine that was collected since it was read (its
    entry's weak reference is dead): there is nothing left to report of it. A pool
    whose engine is not known yet (no reference at all) is kept."""
    return [(entry, engine) for entry, engine in live
            if engine is not None or entry.engine_ref is None]


def _first(captured: list[Any]) -> str:
    """The innermost application frame of a captured stack, as text ("" if none)."""
    return describe(captured[:1])[0] if captured else ""

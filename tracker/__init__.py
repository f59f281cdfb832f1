"""Retort's agent: watches SQLAlchemy engines, pools and sessions in this process and
streams what it sees to a Retort dashboard.

Typical use, once at start-up::

    import tracker
    tracker.instrument(url="ws://127.0.0.1:8000/ws/agent/", token="rt_…", app="shop")

or with ``RETORT_URL``, ``RETORT_TOKEN`` and ``RETORT_APP`` set, just
``tracker.instrument()``. It never imports Django and never raises into the
application: internal errors are counted and logged once.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["instrument", "uninstrument", "is_instrumented", "current_agent", "Instrumented",
           "ignore_changes", "track_changes", "ignore_changes_when", "no_tracking",
           "NO_TRACKING", "NoTrackingError", "record"]

#: change-tracking policies (tracker/policies.py), imported on first use so that
#: ``import tracker`` stays cheap (the pytest plugin imports it in every test run)
_POLICIES = frozenset({"ignore_changes", "track_changes", "ignore_changes_when",
                       "no_tracking", "NO_TRACKING", "NoTrackingError"})


def __getattr__(name: str) -> Any:
    if name == "record":
        from .traces.recording import record

        return record
    if name in _POLICIES:
        from . import policies

        return getattr(policies, name)
    raise AttributeError(f"module 'tracker' has no attribute {name!r}")


class Instrumented:
    """What :func:`instrument` returns; also a context manager that uninstruments on
    exit (only if this call was the one that instrumented)."""

    def __init__(self, agent: Any, owner: bool) -> None:
        self.agent = agent
        self._owner = owner

    def __enter__(self) -> "Instrumented":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._owner:
            uninstrument()

    def __bool__(self) -> bool:
        return self.agent is not None


def instrument(*, run_worker: bool = True, **settings: Any) -> Instrumented:
    """Attach the agent to every SQLAlchemy engine and pool in this process, those that
    exist already and those created later.

    Idempotent: a second call while instrumented returns the running agent and ignores
    its settings. ``settings`` are the fields of :class:`tracker.config.AgentConfig`
    (``url``, ``token``, ``app``, ``capture_locations``, ``queue_size``,
    ``state_interval``, ``flush_timeout``, …); each one unset falls back to its
    ``RETORT_*`` environment variable, then to its default. ``run_worker=False``
    collects without a background thread (read it with ``current_agent().snapshot()``).

    Raises ``TypeError`` for an unknown setting and ``ValueError`` for a malformed
    environment variable: configuration mistakes are reported at once, not hidden.
    """
    from . import agent as _agent
    from .config import AgentConfig

    running = _agent.current()
    if running is not None:
        return Instrumented(running, owner=False)
    config = AgentConfig.load(settings)
    started = _agent.start(config, run_worker=run_worker)
    return Instrumented(started, owner=started is not None)


def uninstrument() -> None:
    """Remove every listener and wrapper, flush what is pending (bounded by
    ``flush_timeout``) and stop the worker. Idempotent."""
    from . import agent as _agent

    _agent.stop()


def is_instrumented() -> bool:
    """True while an agent is attached to this process."""
    from . import agent as _agent

    return _agent.current() is not None


def current_agent() -> Any:
    """The running :class:`tracker.agent.Agent`, or None."""
    from . import agent as _agent

    return _agent.current()

"""Starting the agent without changing the application's code.

* ``python -m tracker run -- <command>`` puts ``tracker/bootstrap`` first on
  ``PYTHONPATH``; its ``sitecustomize`` calls :func:`start_from_environment` in every
  Python process the command starts (gunicorn's pre-forked workers inherit the agent
  from their master and restart its worker thread after the fork).
* ``python -m tracker attach <pid>`` injects a few lines into a running process that
  call :func:`attach`; ``detach`` calls :func:`detach`.

Nothing here raises into the application: a failure is written to stderr (autoload)
or returned to the attaching command (attach).
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: set by ``python -m tracker run`` for the processes it starts
AUTOLOAD = "RETORT_AUTOLOAD"
#: ``run --trace``: record each process into this file ("{pid}" is replaced)
TRACE = "RETORT_TRACE"

_trace: Any = None


def start_from_environment() -> None:
    """Instrument this process from its ``RETORT_*`` variables if ``RETORT_AUTOLOAD``
    asks for it. Called by the bootstrap ``sitecustomize``."""
    if os.environ.get(AUTOLOAD) != "1":
        return
    try:
        import tracker

        tracker.instrument()
    except Exception as exc:  # a broken configuration must not stop the application
        sys.stderr.write(f"retort: the agent was not started: {type(exc).__name__}: {exc}\n")
    if os.environ.get(TRACE):
        _start_trace()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_restart_trace_in_child)
        import atexit
        atexit.register(_stop_trace)


def _start_trace() -> None:
    global _trace
    try:
        from .traces.recording import Trace

        path = os.environ[TRACE].replace("{pid}", str(os.getpid()))
        name = os.path.basename(sys.argv[0] or "python") or "python"
        _trace = Trace(name, path).start()
    except Exception as exc:
        sys.stderr.write(f"retort: the trace was not started: {type(exc).__name__}: {exc}\n")


def _restart_trace_in_child() -> None:
    # a forked worker (gunicorn, celery) records into its own file; the parent's
    # recording goes on in the parent
    global _trace
    if _trace is not None:
        _trace.abandon()
        _trace = None
        _start_trace()


def _stop_trace() -> None:
    if _trace is not None:
        _trace.stop()


def attach(settings: dict[str, Any]) -> dict[str, Any]:
    """Instrument this (running) process with ``settings``; what happened, for the
    attaching command."""
    import tracker

    already = tracker.is_instrumented()
    handle = tracker.instrument(**settings)
    agent = handle.agent
    if agent is None:
        return {"ok": False, "error": "failed", "detail": "the agent is disabled "
                "(RETORT_ENABLED=0 in the target's environment, or enabled=False)"}
    return {"ok": True, "already": already, "pid": os.getpid(), "app": agent.config.app,
            "agent": tracker.__version__, "python": sys.version.split()[0],
            "engines": sorted(entry.name for entry, _ in agent.registry.live_engines()),
            "sessions": len(agent.sessions.by_id)}


def detach() -> dict[str, Any]:
    """Uninstrument this process; what happened, for the detaching command."""
    import tracker

    was = tracker.is_instrumented()
    tracker.uninstrument()
    return {"ok": True, "was_attached": was, "pid": os.getpid()}

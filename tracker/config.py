"""Agent configuration: keyword arguments, falling back to ``RETORT_*`` environment
variables, falling back to documented defaults."""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Mapping

from .locations import location_mode
from .redact import DEFAULT_SECRET_WORDS
from .rules import THRESHOLDS, parse_thresholds

#: Environment variable for each setting (a keyword argument wins over it).
ENV = {
    "url": "RETORT_URL",
    "token": "RETORT_TOKEN",
    "app": "RETORT_APP",
    "enabled": "RETORT_ENABLED",
    "capture_locations": "RETORT_CAPTURE_LOCATIONS",
    "capture_parameters": "RETORT_CAPTURE_PARAMETERS",
    "queue_size": "RETORT_QUEUE_SIZE",
    "state_interval": "RETORT_STATE_INTERVAL",
    "flush_timeout": "RETORT_FLUSH_TIMEOUT",
    "track_sessions": "RETORT_TRACK_SESSIONS",
    "secret_words": "RETORT_SECRET_WORDS",
    "thresholds": "RETORT_THRESHOLDS",
    "read_server_settings": "RETORT_READ_SERVER_SETTINGS",
    "wait_for_engine": "RETORT_WAIT_FOR_ENGINE",
}


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the agent can be told. Every field has an environment variable."""

    #: Dashboard websocket URL, e.g. ``ws://127.0.0.1:8000/ws/agent/``. None: collect
    #: locally only (nothing is sent; state is still readable in-process).
    url: str | None = None
    #: Agent token for this app, created in the dashboard (admin or
    #: ``manage.py create_agent_token``).
    token: str | None = None
    #: Name the app is shown under; defaults to the program's name.
    app: str = dataclasses.field(default_factory=lambda: _default_app_name())
    #: Master switch: False makes ``instrument()`` a no-op.
    enabled: bool = True
    #: When to record the application code location of a checkout (a stack walk, the
    #: agent's main cost per checkout): "pressure" (default: once half the pool is in
    #: use; held connections without one get their thread's current stack sampled by
    #: the worker), "always", or "off". True/False mean "always"/"off".
    capture_locations: str = "pressure"
    #: Allow bind parameter values to be captured (off: never, whatever the dashboard asks).
    capture_parameters: bool = False
    #: Hook-side event queue bound (events); the oldest are dropped beyond it.
    queue_size: int = 100_000
    #: Seconds between two state frames (pool gauges, counters, holders).
    state_interval: float = 0.5
    #: Seconds the process may wait at exit for the last frames to be sent.
    flush_timeout: float = 2.0
    #: Reconnect backoff: first delay and cap, in seconds (full jitter between).
    backoff_initial: float = 0.5
    backoff_max: float = 15.0
    #: Track ORM sessions (live sessions, their transactions, snapshots on request,
    #: data-loss traps).
    track_sessions: bool = True
    #: Attribute names containing one of these words are masked in every value the
    #: agent renders. Environment: comma-separated; a leading "+" adds to the defaults
    #: (``RETORT_SECRET_WORDS=+dob,salary``).
    secret_words: tuple[str, ...] = DEFAULT_SECRET_WORDS
    #: Read the database server's settings (wait_timeout, max_connections…) once per
    #: engine, on one pooled connection, for the configuration checks.
    read_server_settings: bool = True
    #: Connect to the dashboard only once the process has an engine. ``python -m
    #: tracker run`` sets it: of the processes a command starts (a gunicorn master, a
    #: reloader, a multiprocessing helper), only those using SQLAlchemy show up.
    wait_for_engine: bool = False
    #: Overrides of the advisor's thresholds (names and defaults: tracker.rules.THRESHOLDS).
    #: Environment: ``RETORT_THRESHOLDS=n_plus_one=3,slow_statement_seconds=0.2``.
    thresholds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: Module prefixes skipped when looking for the application's code location.
    skip_modules: tuple[str, ...] = ("sqlalchemy", "tracker", "contextlib", "flask_sqlalchemy",
                                     "asyncio")
    #: Application frames kept per checkout (the first is the "location").
    stack_depth: int = 4

    @classmethod
    def load(cls, overrides: Mapping[str, Any] | None = None,
             environ: Mapping[str, str] | None = None) -> "AgentConfig":
        """Build a config from keyword overrides, then ``RETORT_*`` variables, then
        defaults. Raises ``ValueError`` naming the variable for a malformed value."""
        environ = os.environ if environ is None else environ
        overrides = dict(overrides or {})
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown agent setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in overrides and overrides[field.name] is not None:
                values[field.name] = overrides[field.name]
                continue
            var = ENV.get(field.name)
            if var and environ.get(var, "") != "":
                values[field.name] = _parse(field, var, environ[var])
        if "capture_locations" in values:
            try:
                values["capture_locations"] = location_mode(values["capture_locations"])
            except ValueError:
                raw = values["capture_locations"]
                source = (f"{ENV['capture_locations']}={raw!r}"
                          if "capture_locations" not in overrides else f"capture_locations={raw!r}")
                raise ValueError(f"{source} is not one of always, pressure, off") from None
        if "thresholds" in values:
            thresholds = dict(values["thresholds"])
            unknown = set(thresholds) - set(THRESHOLDS)
            if unknown:
                raise ValueError(f"unknown threshold(s): {', '.join(sorted(unknown))} "
                                 f"(known: {', '.join(THRESHOLDS)})")
            values["thresholds"] = thresholds
        return cls(**values)


def _default_app_name() -> str:
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return os.path.splitext(argv0)[0] or "python"


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(field: dataclasses.Field, var: str, raw: str) -> Any:
    kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    if field.name == "thresholds":
        try:
            return parse_thresholds(raw)
        except ValueError as exc:
            raise ValueError(f"{var}={raw!r}: {exc}") from None
    try:
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("tuple"):
            words = tuple(word.strip() for word in raw.lstrip("+").split(",") if word.strip())
            if field.name == "secret_words" and raw.strip().startswith("+"):
                return DEFAULT_SECRET_WORDS + words
            return words
    except ValueError:
        raise ValueError(f"{var}={raw!r} is not a valid {kind}") from None
    return raw

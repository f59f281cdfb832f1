"""Runtime switches: what an operator may change from the dashboard, at which scopes.

Both sides use this catalogue: the dashboard to build its forms and validate what an
operator asks, the agent to validate what arrives and to resolve the value in force.

A setting is ``(scope, target, switch) -> value``:

============  ==============================  =========================================
scope         target                          applies to
============  ==============================  =========================================
``app``       ``""``                          every process of the app, new ones too
``process``   ``""``                          the one process it is sent to
``engine``    the engine's name (``registry``  engines of that name, in every process
              ``_engine_name``: ``postgresql@
              db/shop``)
``session``   the session's key (``s12``)      one live session of one process
``entity``    a mapped class name (``Order``)  objects of that class (or a subclass)
============  ==============================  =========================================

The most specific scope wins: session, then engine, then process, then app, then the
agent's own configuration. Entity settings concern objects, not engines: snapshots
leave out the classes switched off, and ``ignore_changes`` makes flushes skip them.

The dashboard can never turn on what the application's owner did not allow locally:
``parameters`` is refused where the agent runs with ``capture_parameters`` off.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

from .rules import THRESHOLDS

SCOPES = ("app", "process", "engine", "session", "entity")
#: the order in which scopes are consulted (most specific first)
PRECEDENCE = ("session", "engine", "process", "app")
LOCATION_MODES = ("always", "pressure", "off")
#: longest target accepted (engine names, session keys, class names)
MAX_TARGET = 255


class SwitchError(ValueError):
    """A setting that cannot be applied; the message says why, for the operator."""


@dataclasses.dataclass(frozen=True)
class Switch:
    """One thing the dashboard can switch at runtime."""

    name: str
    title: str
    scopes: tuple[str, ...]
    #: checks and normalises a value; raises SwitchError
    parse: Callable[[Any], Any]
    #: what the form offers ("bool", "choice", "fraction", "thresholds")
    kind: str
    help: str
    choices: tuple[str, ...] = ()
    #: changes what the application writes: the dashboard asks for confirmation and
    #: the operator permission, and audits the result per process
    policy: bool = False


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise SwitchError(f"expected true or false, not {value!r}")


def _location_mode(value: Any) -> str:
    if value in LOCATION_MODES:
        return value
    raise SwitchError(f"expected one of {', '.join(LOCATION_MODES)}, not {value!r}")


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 < value <= 1:
        raise SwitchError(f"expected a fraction above 0 and at most 1, not {value!r}")
    return float(value)


def _thresholds(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping) or not value:
        raise SwitchError("expected a mapping of threshold names to numbers")
    parsed: dict[str, float] = {}
    for name, number in value.items():
        if name not in THRESHOLDS:
            raise SwitchError(f"unknown threshold {name!r} (known: {', '.join(THRESHOLDS)})")
        if isinstance(number, bool) or not isinstance(number, (int, float)) \
                or not math.isfinite(number) or number <= 0:
            raise SwitchError(f"threshold {name} must be a positive number, not {number!r}")
        parsed[name] = float(number)
    return parsed


SWITCHES: dict[str, Switch] = {switch.name: switch for switch in (
    Switch("statements", "Statements", ("app", "process", "engine"), _bool, "bool",
           "Record statements (counts, timings, fingerprints, slow statements). Off: "
           "the engine's statements stop being counted; pool tracking goes on."),
    Switch("parameters", "Parameter capture", ("app", "process", "engine"), _bool, "bool",
           "Send the (redacted) parameters of slow statements. Only where the agent's "
           "own configuration allows it (capture_parameters / RETORT_CAPTURE_PARAMETERS)."),
    Switch("locations", "Checkout code locations", ("app", "process", "engine"),
           _location_mode, "choice",
           "When a checkout walks the stack for the code holding the connection: "
           "always, under pressure (half the pool in use), or off.",
           choices=LOCATION_MODES),
    Switch("snapshots", "Entity snapshots", ("app", "process", "engine", "session", "entity"),
           _bool, "bool",
           "Show what a session tracks and would write. Off for an entity class: its "
           "objects are left out of snapshots."),
    Switch("detectors", "Detectors", ("app", "process", "engine", "session"), _bool, "bool",
           "Runtime advisor rules (N+1, repeated queries, long transactions…)."),
    Switch("thresholds", "Detector thresholds", ("app", "process"), _thresholds,
           "thresholds", "Override the advisor's thresholds (names: docs/findings.md)."),
    Switch("sampling", "Statement sampling", ("app", "process", "engine"), _fraction,
           "fraction",
           "Record this fraction of statements (1: all; 0.1: one in ten, counts scaled "
           "up). Per-session detectors see only the sampled statements."),
    Switch("ignore_changes", "Ignore changes", ("entity",), _bool, "bool",
           "Flushes write nothing for objects of this class (no INSERT, UPDATE or "
           "DELETE); they stay in the identity map with their in-memory values.",
           policy=True),
)}


def validate(scope: str, target: str, switch: str, value: Any) -> Any:
    """The normalised value of one setting (None clears it). Raises SwitchError."""
    spec = SWITCHES.get(switch)
    if spec is None:
        raise SwitchError(f"unknown switch {switch!r}")
    if scope not in SCOPES:
        raise SwitchError(f"unknown scope {scope!r}")
    if scope not in spec.scopes:
        raise SwitchError(f"{switch} cannot be set per {scope} "
                          f"(scopes: {', '.join(spec.scopes)})")
    if not isinstance(target, str) or len(target) > MAX_TARGET:
        raise SwitchError("the target must be a string of at most "
                          f"{MAX_TARGET} characters")
    if (scope in ("app", "process")) != (target == ""):
        raise SwitchError(f"a {scope} setting takes no target" if target else
                          f"a {scope} setting needs a target")
    return None if value is None else spec.parse(value)


class Settings:
    """The settings in force in one agent, as the dashboard last sent them.

    Written by the worker thread only; hooks never read it (the worker copies what
    they need onto registry entries and detectors), so no lock is needed.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str, str], Any] = {}

    def set(self, scope: str, target: str, switch: str, value: Any) -> None:
        """Store one validated setting; a value of None removes it."""
        key = (scope, target, switch)
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value

    def keep_only(self, keys: set[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
        """Remove every setting not in ``keys``; returns the removed keys."""
        gone = [key for key in self.values if key not in keys]
        for key in gone:
            del self.values[key]
        return gone

    def get(self, switch: str, default: Any, *, engine: str | None = None,
            session: str | None = None) -> Any:
        """The value in force for ``switch`` where ``engine``/``session`` are the ones
        concerned (None: not engine- or session-specific)."""
        values = self.values
        for scope, target in (("session", session), ("engine", engine),
                              ("process", ""), ("app", "")):
            if target is None:
                continue
            value = values.get((scope, target, switch))
            if value is not None:
                return value
        return default

    def entities(self, switch: str) -> dict[str, Any]:
        """Class name -> value of ``switch`` for every entity-scope setting of it."""
        return {target: value for (scope, target, name), value in self.values.items()
                if scope == "entity" and name == switch}

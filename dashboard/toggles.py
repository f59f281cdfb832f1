"""Runtime toggles: what an operator changes in an app's agents, without HTTP.

A toggle is one setting of ``tracker.switches`` — ``(scope, target, switch) ->
value`` — kept per app (a ``Toggle`` row) and sent to the agents it concerns as a
``set`` control (``toggle:<pk>:<revision>``). Each process's answer (an ``ack``,
applied or refused with the agent's reason) lands on a ``ToggleDelivery`` row, which
the controls page shows.

- App, engine and entity toggles concern every process of the app, new ones too;
  process and session toggles their one process.
- A change reaches the processes connected now. A process that (re)connects gets
  every toggle that concerns it after its welcome, then a ``sync`` naming them all
  (``sync:<process pk>:<connection number>``): the agent drops any other setting,
  e.g. one removed while it was away.
- Removing a toggle sends ``set`` with value None and keeps the row (value None),
  so that the removal's answers are shown like a change's.
- Every change, removal and refused attempt is audited (``AuditLog``); so is every
  refusal by an agent, and every answer to a policy switch (``Switch.policy``: it
  changes what the application writes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from tracker.switches import SWITCHES, SwitchError, validate

from . import groups
from .models import App, AuditLog, Process, Toggle, ToggleDelivery

#: the permission to change toggles, and the group the migrations give it to
PERMISSION = "dashboard.operate_agents"
OPERATORS = "Operators"
#: scopes sent to every process of the app
APP_WIDE = ("app", "engine", "entity")
#: scopes that belong to one process
PER_PROCESS = ("process", "session")
TOGGLE, SYNC = "toggle", "sync"
NO_PERMISSION = ("you do not have the permission to change what agents track "
                 f"({PERMISSION}; ask an admin to add you to the {OPERATORS} group)")


def can_operate(user: Any) -> bool:
    """Whether ``user`` may change toggles."""
    return bool(user is not None and user.is_authenticated and user.has_perm(PERMISSION))


# -- words --------------------------------------------------------------------------

def value_text(value: Any) -> str:
    """A setting's value in words: ``on``/``off``, a fraction, thresholds…; None
    (no setting) is ``not set``."""
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, dict):
        return ", ".join(f"{name}={number:g}" if isinstance(number, (int, float))
                         else f"{name}={number}" for name, number in sorted(value.items()))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def process_name(process: Process) -> str:
    return f"{process.host}:{process.pid}"


def where(scope: str, target: str, process: Process | None, app_name: str) -> str:
    """What a setting applies to, in words."""
    if scope == "app":
        return f"every process of {app_name}"
    if scope == "process":
        return f"process {process_name(process)}" if process else "a process"
    if scope == "engine":
        return f"engine {target}"
    if scope == "session":
        return f"session {target} of {process_name(process)}" if process else f"session {target}"
    if scope == "entity":
        return f"entity class {target}"
    return f"{scope} {target}".strip()


def describe(toggle: Toggle) -> str:
    """The toggle in words: ``Statements for engine postgresql/shop``."""
    title = SWITCHES[toggle.switch].title if toggle.switch in SWITCHES else toggle.switch
    return f"{title} for {where(toggle.scope, toggle.target, toggle.process, toggle.app.name)}"


# -- form values --------------------------------------------------------------------

_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def parse_value(switch: str, text: str) -> Any:
    """The value a form's text stands for, for ``validate`` to check: ``on``/``off``
    for switches, a number for fractions, ``name=number, …`` (or a JSON object) for
    thresholds. Text it cannot read is passed on as is, so that ``validate`` says
    what it expected."""
    text = (text or "").strip()
    if not text:
        raise SwitchError("choose a value (or remove the setting)")
    kind = SWITCHES[switch].kind if switch in SWITCHES else ""
    if kind == "bool":
        lowered = text.lower()
        return True if lowered in _TRUE else False if lowered in _FALSE else text
    if kind == "fraction":
        try:
            return float(text)
        except ValueError:
            return text
    if kind == "thresholds":
        if text.startswith("{"):
            try:
                return json.loads(text)
            except ValueError:
                raise SwitchError("the thresholds are not a valid JSON object") from None
        parsed: dict[str, Any] = {}
        for pair in text.replace(";", ",").split(","):
            name, sep, number = pair.partition("=")
            if not sep or not name.strip():
                raise SwitchError("expected name=number pairs separated by commas, "
                                  "e.g. slow_statement_seconds=0.5")
            try:
                parsed[name.strip()] = float(number)
            except ValueError:
                parsed[name.strip()] = number.strip()
        return parsed
    return text


def check(app: App, scope: str, target: str, switch: str, value: Any,
          process: Process | None) -> Any:
    """The normalised value of a setting an operator asks for (None: remove it);
    raises SwitchError with the reason to show."""
    normalised = validate(scope, target, switch, value)
    if scope in PER_PROCESS:
        if process is None:
            raise SwitchError(f"a {scope} setting needs a process")
        if process.app_id != app.pk:
            raise SwitchError(f"process {process_name(process)} is not a process of {app.name}")
    elif process is not None:
        raise SwitchError(f"a {scope} setting applies to every process of {app.name}: "
                          "choose no process")
    return normalised


# -- changes ------------------------------------------------------------------------

def concerned(toggle: Toggle) -> Q:
    """The processes a toggle concerns (a filter on Process)."""
    if toggle.scope in PER_PROCESS:
        return Q(pk=toggle.process_id)
    return Q(app_id=toggle.app_id)


def toggle_id(toggle: Toggle) -> str:
    return f"{TOGGLE}:{toggle.pk}:{toggle.revision}"


def parse_toggle_id(ack_id: str) -> tuple[int, int] | None:
    """(toggle pk, revision) of an ack id ``toggle:<pk>:<revision>``; None otherwise."""
    kind, _, rest = ack_id.partition(":")
    pk, _, revision = rest.partition(":")
    if kind != TOGGLE or not pk.isdigit() or not revision.isdigit() \
            or len(pk) > 18 or len(revision) > 18:
        return None
    return int(pk), int(revision)


def set_args(toggle: Toggle) -> dict[str, Any]:
    return {"scope": toggle.scope, "target": toggle.target, "switch": toggle.switch,
            "value": toggle.value}


def _deliver(toggle: Toggle, process_id: int, now) -> None:
    """Record that ``toggle``'s current revision is on its way to a process. A
    delivery never goes back to an older revision (a hello that read the toggle
    just before a change committed)."""
    delivery, created = ToggleDelivery.objects.select_for_update().get_or_create(
        toggle=toggle, process_id=process_id,
        defaults={"revision": toggle.revision, "updated_at": now})
    if not created and delivery.revision <= toggle.revision:
        delivery.revision, delivery.status, delivery.reason = (
            toggle.revision, ToggleDelivery.PENDING, "")
        delivery.updated_at = now
        delivery.save(update_fields=["revision", "status", "reason", "updated_at"])


@dataclass
class Change:
    """What a change did: the toggle, its value before, the processes it was sent to
    and the channel-layer messages that send it (``send`` them once committed)."""

    toggle: Toggle
    old: Any
    processes: list[Process]
    entry: AuditLog
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


@transaction.atomic
def change(app: App, user: Any, *, scope: str, target: str, switch: str, value: Any,
           process: Process | None = None) -> Change:
    """Set (value None: remove) one toggle of ``app`` for ``user``, who must be
    allowed to (``can_operate``: the caller checks, and audits a refusal with
    ``refuse``). Raises SwitchError, storing nothing, for an invalid setting.

    Bumps the toggle's revision, marks it pending on every connected process it
    concerns, audits it, and returns the messages to send (``send``)."""
    normalised = check(app, scope, target, switch, value, process)
    now = timezone.now()
    toggle = (Toggle.objects.select_for_update()
              .filter(app=app, process=process, scope=scope, target=target, switch=switch)
              .first())
    if toggle is None and normalised is None:
        raise SwitchError("there is no such setting to remove")
    if toggle is None:
        toggle = Toggle(app=app, process=process, scope=scope, target=target, switch=switch)
        old = None
    else:
        old = toggle.value
    toggle.value, toggle.revision = normalised, toggle.revision + 1
    toggle.updated_by, toggle.updated_at = user, now
    toggle.save()
    toggle.app = app
    connected = list(Process.objects.filter(concerned(toggle), connected=True)
                     .order_by("host", "pid", "pk"))
    for target_process in connected:
        _deliver(toggle, target_process.pk, now)
    names = [process_name(p) for p in connected]
    if connected:
        result = f"sent to {len(names)} process{'es' if len(names) != 1 else ''}: " \
                 + ", ".join(names)
    elif scope in PER_PROCESS:
        result = f"stored: {process_name(process)} is not connected; sent when it reconnects"
    else:
        result = f"stored: no process of {app.name} is connected; sent when one connects"
    entry = AuditLog.record(
        user, "toggle.remove" if normalised is None else "toggle.set",
        f"{describe(toggle)}: {value_text(old)} → {value_text(normalised)}", app=app,
        result=result, details={**_details(toggle), "old": old, "new": normalised,
                                "processes": names})
    message = {"type": groups.CONTROL, "id": toggle_id(toggle), "action": "set",
               "args": set_args(toggle)}
    return Change(toggle=toggle, old=old, processes=connected, entry=entry,
                  messages=[(groups.process(p.pk), message) for p in connected])


def _details(toggle: Toggle) -> dict[str, Any]:
    return {"toggle": toggle.pk, "revision": toggle.revision, "scope": toggle.scope,
            "target": toggle.target, "switch": toggle.switch,
            "process": process_name(toggle.process) if toggle.process else None}


def refuse(app: App, user: Any, *, scope: str, target: str, switch: str, value: Any,
           process: Process | None = None, reason: str = NO_PERMISSION) -> AuditLog:
    """Audit an attempt that was refused (no permission); nothing else changes."""
    title = SWITCHES[switch].title if switch in SWITCHES else switch
    what = f"{title} for {where(scope, target, process, app.name)}: → {value_text(value)}"
    return AuditLog.record(
        user, "toggle.remove" if value is None else "toggle.set", what, app=app,
        result=f"refused: {reason}",
        details={"scope": scope, "target": target, "switch": switch, "new": value,
                 "process": process_name(process) if process else None})


def send(messages: Iterable[tuple[str, dict[str, Any]]], *also_notify: str) -> None:
    """Send a change's messages (from a view: synchronous code), then tell the
    pages in ``also_notify``."""
    layer = get_channel_layer()
    for group, message in messages:
        async_to_sync(layer.group_send)(group, message)
    for group in also_notify:
        async_to_sync(layer.group_send)(group, {"type": groups.CHANGED})


# -- the agent's side ---------------------------------------------------------------

@transaction.atomic
def store_ack(process_id: int, ack: dict[str, Any]) -> int | None:
    """Store a process's answer to a ``toggle:`` control; returns the app pk whose
    controls changed, or None (not a toggle id, an unknown toggle, an answer to an
    older revision, the same answer again)."""
    parsed = parse_toggle_id(ack["id"])
    if parsed is None:
        return None
    pk, revision = parsed
    delivery = (ToggleDelivery.objects.select_for_update(of=("self",))
                .select_related("toggle__app", "toggle__process", "toggle__updated_by",
                                "process")
                .filter(toggle_id=pk, process_id=process_id).first())
    if delivery is None or delivery.revision != revision:
        return None
    status = (ToggleDelivery.APPLIED if ack["status"] == ToggleDelivery.APPLIED
              else ToggleDelivery.REFUSED)
    reason = str(ack.get("reason") or "")[:2000]
    if (delivery.status, delivery.reason) == (status, reason):
        return None
    delivery.status, delivery.reason, delivery.updated_at = status, reason, timezone.now()
    delivery.save(update_fields=["status", "reason", "updated_at"])
    toggle = delivery.toggle
    spec = SWITCHES.get(toggle.switch)
    if status == ToggleDelivery.REFUSED or (spec is not None and spec.policy):
        name = process_name(delivery.process)
        result = (f"applied on {name}" if status == ToggleDelivery.APPLIED
                  else f"refused on {name}: {reason or 'no reason given'}")
        AuditLog.record(toggle.updated_by, "toggle.result",
                        f"{describe(toggle)}: {value_text(toggle.value)}", app=toggle.app,
                        result=result, details={**_details(toggle), "new": toggle.value,
                                                "processes": [name], "status": status,
                                                "reason": reason})
    return toggle.app_id


def sync_id(process: Process) -> str:
    return f"{SYNC}:{process.pk}:{process.connections}"


@transaction.atomic
def on_hello(process_id: int) -> list[dict[str, Any]]:
    """The ``control`` frames a process gets after its welcome: a ``set`` for every
    toggle that concerns it (each delivery pending again), then the ``sync`` naming
    them all. A toggle removed since the process last had it is left to the sync
    (its delivery pending until the sync is answered)."""
    process = Process.objects.get(pk=process_id)
    now = timezone.now()
    toggles = (Toggle.objects.select_for_update()
               .filter(Q(app_id=process.app_id, process__isnull=True, scope__in=APP_WIDE)
                       | Q(process=process))
               .order_by("pk"))
    had = dict(ToggleDelivery.objects.filter(process=process)
               .values_list("toggle_id", "revision"))
    frames, keep = [], []
    for toggle in toggles:
        if toggle.value is None:
            # the process had an older revision: the sync removes it
            if had.get(toggle.pk, toggle.revision) < toggle.revision:
                _deliver(toggle, process.pk, now)
            continue
        _deliver(toggle, process.pk, now)
        frames.append({"t": "control", "id": toggle_id(toggle), "action": "set",
                       "args": set_args(toggle)})
        keep.append(toggle.key)
    frames.append({"t": "control", "id": sync_id(process), "action": "sync",
                   "args": {"keep": keep}})
    return frames


@transaction.atomic
def store_sync_ack(process_id: int, ack: dict[str, Any]) -> int | None:
    """A process answered a ``sync``: the removals it stood for are done (or were
    refused). Returns the app pk whose controls changed, or None."""
    kind, _, rest = ack["id"].partition(":")
    pk, _, _ = rest.partition(":")
    if kind != SYNC or pk != str(process_id):
        return None
    status = (ToggleDelivery.APPLIED if ack["status"] == ToggleDelivery.APPLIED
              else ToggleDelivery.REFUSED)
    updated = (ToggleDelivery.objects
               .filter(process_id=process_id, status=ToggleDelivery.PENDING,
                       toggle__value__isnull=True)
               .update(status=status, reason=str(ack.get("reason") or "")[:2000],
                       updated_at=timezone.now()))
    if not updated:
        return None
    return Process.objects.filter(pk=process_id).values_list("app_id", flat=True).first()

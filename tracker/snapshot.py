"""Read what one session tracks and what its next flush would write — from the worker
thread, while the application may be using that session.

Reading never loads, refreshes, flushes or emits SQL, and never changes the session:
only the session's maps, each object's ``InstanceState`` (its ``dict`` and
``committed_state``), and attribute history with ``PASSIVE_NO_INITIALIZE`` (which
returns what is in memory and never runs a loader) are read. The maps are copied
first (each copy is one C-level call, atomic under the GIL); every object is then read
on its own, and one that the application changes under us is skipped and the snapshot
marked ``partial``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import attributes
from sqlalchemy.orm.base import NO_VALUE, NEVER_SET, PASSIVE_NO_INITIALIZE

from .protocol import MAX_SNAPSHOT_CHANGES, MAX_SNAPSHOT_ENTITIES
from .redact import NOT_LOADED, Redactor, identity_text, render

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

STATES = ("transient", "pending", "persistent", "deleted", "detached")


class Filter:
    """Which entities a snapshot lists: class name, state, modified; and the page."""

    def __init__(self, args: dict[str, Any]) -> None:
        self.cls = str(args.get("class") or "") or None
        state = str(args.get("state") or "") or None
        self.state = state if state in STATES else None
        modified = args.get("modified")
        self.modified = modified if isinstance(modified, bool) else None
        self.offset = max(0, _int(args.get("offset"), 0))
        self.limit = min(MAX_SNAPSHOT_ENTITIES, max(1, _int(args.get("limit"), 100)))
        #: class names left out (the dashboard switched their snapshots off)
        self.hidden: frozenset[str] = frozenset()


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def take(session: "Session", redactor: Redactor, wanted: Filter) -> dict[str, Any]:
    """Entities (one page, filtered) and pending changes of ``session``."""
    partial = False
    identity_map = session.identity_map
    for _ in range(3):
        try:
            persistent = list(identity_map._dict.values())
            new = list(session._new)
            deleted = list(session._deleted)
            modified = set(identity_map._modified)
            break
        except RuntimeError:  # changed while copied: try again
            continue
    else:
        persistent, new, deleted, modified, partial = [], [], [], set(), True
    deleted_ids = {id(state) for state in deleted}

    total = 0
    page: list[dict[str, Any]] = []
    stop = wanted.offset + wanted.limit
    ordered = new + deleted + [state for state in persistent if id(state) not in deleted_ids]
    for state in ordered:
        try:
            name = state.class_.__name__
            if name in wanted.hidden or (wanted.cls is not None and name != wanted.cls):
                continue
            kind = "deleted" if id(state) in deleted_ids else _state_name(state)
            if wanted.state is not None and kind != wanted.state:
                continue
            # new objects are flagged modified by SQLAlchemy too: "modified" here means
            # a persistent object with changes (what EF Core calls Modified)
            is_modified = kind == "persistent" and (state in modified or bool(state.modified))
            if wanted.modified is not None and is_modified != wanted.modified:
                continue
            if wanted.offset <= total < stop:
                page.append({
                    "class": name,
                    "identity": identity_of(state),
                    "state": kind,
                    "modified": is_modified,
                    "expired": sorted(state.expired_attributes),
                })
            total += 1
        except Exception:
            partial = True

    changes: list[dict[str, Any]] = []
    changes_total = 0
    for op, states in (("insert", new), ("update", [s for s in persistent if s in modified
                                                     and id(s) not in deleted_ids]),
                       ("delete", deleted)):
        for state in states:
            if wanted.hidden and state.class_.__name__ in wanted.hidden:
                continue
            try:
                change = _change(op, state, redactor)
            except Exception:
                partial = True
                continue
            if change is None:
                continue
            changes_total += 1
            if len(changes) < MAX_SNAPSHOT_CHANGES:
                changes.append(change)
    if session.identity_map is not identity_map:
        partial = True  # the session was closed or cleared while we read it
    return {"ts": time.time(), "partial": partial, "total": total,
            "offset": wanted.offset, "entities": page, "changes": changes,
            "changes_total": changes_total}


def _state_name(state: Any) -> str:
    if state.key is None:
        return "pending" if state.session_id is not None else "transient"
    if state.session_id is None:
        return "detached"
    return "deleted" if state._deleted else "persistent"


def identity_of(state: Any) -> str:
    """An object's identity as text, from its state: its key, or for a pending object
    its primary key attributes if they are set already ("" if not)."""
    if state.key is not None:
        return identity_text(state.key[1])
    mapper = state.manager.mapper
    values = []
    for column in mapper.primary_key:
        prop = mapper._columntoproperty.get(column)
        value = state.dict.get(prop.key) if prop is not None else None
        if value is None:
            return ""
        values.append(value)
    return identity_text(tuple(values))


def pending_change(op: str, state: Any, redactor: Redactor) -> dict[str, Any] | None:
    """What a flush would write for ``state`` (``op``: insert, update, delete), with
    values rendered and redacted; None for an update that would write nothing."""
    return _change(op, state, redactor)


def _change(op: str, state: Any, redactor: Redactor) -> dict[str, Any] | None:
    mapper = state.manager.mapper
    change: dict[str, Any] = {"op": op, "class": state.class_.__name__,
                              "identity": identity_of(state)}
    if op == "delete":
        return change
    props = mapper._props
    if op == "insert":
        values: dict[str, str] = {}
        references: dict[str, list[str]] = {}
        collections: dict[str, dict[str, list[str]]] = {}
        current = dict(state.dict)
        for key, prop in list(props.items()):
            if key not in current:
                continue
            if _is_relationship(prop):
                _relationship_change(state, key, prop, redactor, references, collections)
            elif hasattr(prop, "columns"):
                values[key] = redactor.value(key, current[key])
        change["values"] = values
        if references:
            change["references"] = references
        if collections:
            change["collections"] = collections
        return change
    # update: each attribute with a committed (old) value that differs from now
    changed: dict[str, list[str]] = {}
    references = {}
    collections = {}
    committed = dict(state.committed_state)
    current = dict(state.dict)
    for key, old in committed.items():
        prop = props.get(key)
        if prop is None:
            continue
        if _is_relationship(prop):
            _relationship_change(state, key, prop, redactor, references, collections)
            continue
        new = current.get(key, NO_VALUE)
        if same_value(old, new):
            continue
        changed[key] = [_old_value(redactor, key, old), _old_value(redactor, key, new)]
    if not (changed or references or collections):
        return None  # flagged modified, but nothing a flush would write
    if changed:
        change["attributes"] = changed
    if references:
        change["references"] = references
    if collections:
        change["collections"] = collections
    return change


def _is_relationship(prop: Any) -> bool:
    return hasattr(prop, "direction") and hasattr(prop, "uselist")


def _relationship_change(state: Any, key: str, prop: Any, redactor: Redactor,
                         references: dict[str, list[str]],
                         collections: dict[str, dict[str, list[str]]]) -> None:
    # PASSIVE_NO_INITIALIZE: what is in memory; never runs a lazy loader
    history = attributes.get_state_history(state, key, PASSIVE_NO_INITIALIZE)
    if prop.uselist:
        added = [_member(item) for item in history.added or ()]
        removed = [_member(item) for item in history.deleted or ()]
        if added or removed:
            collections[key] = {"added": added[:100], "removed": removed[:100]}
        return
    added = list(history.added or ())
    removed = list(history.deleted or ())
    if added or removed:
        old = _member(removed[0]) if removed else "None"
        new = _member(added[0]) if added else "None"
        if old != new:
            references[key] = [old, new]


def _member(obj: Any) -> str:
    return "None" if obj is None else render(obj)


def same_value(old: Any, new: Any) -> bool:
    """True if an attribute's old and new values are the same (so nothing is written)."""
    if old is new:
        return True
    if old is NO_VALUE or old is NEVER_SET or new is NO_VALUE or new is NEVER_SET:
        return False
    # compare only values whose __eq__ is the builtin one: an application type's
    # __eq__ could do anything, on our thread
    return type(old) is type(new) and type(old) in _SIMPLE and old == new


_SIMPLE = (int, float, str, bool, bytes)


def _old_value(redactor: Redactor, key: str, value: Any) -> str:
    if value is NO_VALUE or value is NEVER_SET:
        return NOT_LOADED
    return redactor.value(key, value)

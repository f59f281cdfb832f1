"""Change-tracking policies: RavenDB's "disable entity tracking", in SQLAlchemy terms.

* :func:`ignore_changes` — flushes write nothing for these objects: no UPDATE for
  their modifications, no INSERT if they are new, no DELETE if deleted. A persistent
  object stays in the identity map with its in-memory values (it is not expunged nor
  reloaded); a new one is expunged at flush instead of being inserted.
* :func:`ignore_changes_when` — a convention: a function deciding, for any object
  about to be flushed, whether its changes are ignored. The dashboard's
  ``ignore_changes`` toggle per entity class is one such convention
  (:func:`ignore_classes`).
* :func:`no_tracking` — a session whose loaded objects are not kept in its identity
  map (they come back detached); adding an object to it raises
  :class:`NoTrackingError`.
* ``execution_options(retort_no_tracking=True)`` (:data:`NO_TRACKING`) — one query
  whose results are not kept in the identity map, in any session.

These are behaviours the application asks for, so unlike the agent's hooks they do
change what the application sees: that is their point. They work without
``tracker.instrument()`` and without a dashboard. The listeners (class-level, on
``Session``) are installed the first time a policy is used, and cost one dict lookup
per flush and per ORM execution until then-used policies apply.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Iterable

from sqlalchemy import event, exc, inspect
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

__all__ = ["NO_TRACKING", "NoTrackingError", "ignore_changes", "track_changes",
           "is_ignored", "ignore_changes_when", "ignore_classes", "no_tracking",
           "is_no_tracking"]

#: Execution option for one no-tracking query, and the ``Session.info`` key that marks
#: a no-tracking session (``sessionmaker(info={NO_TRACKING: True})``).
NO_TRACKING = "retort_no_tracking"
#: ``InstanceState.info`` key marking an object whose changes are ignored
_IGNORED = "retort_ignore_changes"
#: ``Session.info`` key of the list collecting objects loaded by a no-tracking query
_COLLECT = "_retort_loaded"

Rule = Callable[[Any], bool]


class NoTrackingError(exc.InvalidRequestError):
    """An object was added to a no-tracking session."""


_lock = threading.Lock()
_installed = False
_rules: list[Rule] = []
#: class names whose changes are ignored (set from the dashboard), or empty
_classes: frozenset[str] = frozenset()


# -- ignore changes -----------------------------------------------------------------------

def ignore_changes(*objects: Any) -> None:
    """Flushes will write nothing for ``objects`` (mapped instances) until
    :func:`track_changes`. Their in-memory values are kept as they are."""
    _install()
    for obj in objects:
        inspect(obj).info[_IGNORED] = True


def track_changes(*objects: Any) -> None:
    """Undo :func:`ignore_changes`: the next flush writes these objects' changes made
    from now on (changes made while ignored are not written)."""
    for obj in objects:
        inspect(obj).info.pop(_IGNORED, None)


def ignore_changes_when(rule: Rule) -> Callable[[], None]:
    """Ignore the changes of every object for which ``rule(obj)`` is true (a
    convention, e.g. ``lambda obj: isinstance(obj, AuditRow)``). Returns a function
    that removes the rule. An exception raised by the rule counts as false."""
    _install()
    with _lock:
        _rules.append(rule)

    def remove() -> None:
        with _lock:
            if rule in _rules:
                _rules.remove(rule)
    return remove


def ignore_classes(names: Iterable[str]) -> None:
    """Ignore the changes of objects whose class, or one of its bases, has one of these
    names (``"Order"`` or ``"shop.models.Order"``). Replaces the previous set; the
    agent calls it with the dashboard's entity toggles."""
    global _classes
    names = frozenset(names)
    if names:
        _install()
    _classes = names


def is_ignored(obj: Any) -> bool:
    """True if flushes skip ``obj``: marked, of an ignored class, or by a rule."""
    state = inspect(obj)
    if state.info.get(_IGNORED):
        return True
    if _classes and _class_ignored(type(obj)):
        return True
    for rule in list(_rules):
        try:
            if rule(obj):
                return True
        except Exception:
            continue
    return False


def _class_ignored(cls: type) -> bool:
    names = _classes
    for klass in cls.__mro__:
        if klass.__name__ in names or f"{klass.__module__}.{klass.__qualname__}" in names:
            return True
    return False


def _before_flush(session: Session, flush_context: Any, instances: Any) -> None:
    # one pass over what the flush would write; nothing else is looked at
    for obj in list(session.new):
        if is_ignored(obj):
            session.expunge(obj)  # never inserted
    for obj in list(session.deleted):
        if is_ignored(obj):
            # back to persistent: expunge takes it out of the deleted set (and
            # the identity map), add puts it back as it was
            session.expunge(obj)
            session.add(obj)
    for state in list(session.identity_map._modified):
        obj = state.obj()
        if obj is not None and is_ignored(obj):
            _commit_in_memory(state, obj)


def _commit_in_memory(state: Any, obj: Any) -> None:
    """Make the in-memory values of ``obj`` its committed values: the flush then finds
    nothing to write, and the object keeps what the application set."""
    for attr in state.attrs:
        history = attr.history
        if history.added or history.deleted:
            set_committed_value(obj, attr.key, attr.value)


# -- no tracking --------------------------------------------------------------------------

def no_tracking(session: Session) -> Session:
    """Make ``session`` a no-tracking session and return it: objects it loads come
    back detached (not kept in its identity map), and ``add()``/``merge()`` raise
    :class:`NoTrackingError`. For every session of a factory:
    ``sessionmaker(info={tracker.policies.NO_TRACKING: True})``."""
    _install()
    session.info[NO_TRACKING] = True
    return session


def is_no_tracking(session: Session) -> bool:
    return bool(session.info.get(NO_TRACKING)) if "info" in session.__dict__ else False


def _before_attach(session: Session, instance: Any) -> None:
    if "info" in session.__dict__ and session.info.get(NO_TRACKING):
        raise NoTrackingError(
            f"cannot add {type(instance).__name__} to a no-tracking session: it keeps no "
            f"objects, so it could never write this one (tracker.policies.no_tracking). "
            f"Use a tracking session to write.")


def _do_orm_execute(state: Any) -> Any:
    if not state.is_select:
        return None
    session = state.session
    wanted = state.execution_options.get(NO_TRACKING)
    if wanted is None and "info" in session.__dict__:
        wanted = session.info.get(NO_TRACKING)
    if not wanted or _COLLECT in session.info:
        return None  # tracking, or already inside a no-tracking load
    loaded: list[Any] = []
    session.info[_COLLECT] = loaded
    try:
        # all rows now: objects (and what eager loaders bring) are in the identity map
        # only until the frozen result is made, then taken out
        frozen = state.invoke_statement().freeze()
    finally:
        del session.info[_COLLECT]
    for obj in loaded:
        if inspect(obj).session_id == session.hash_key:
            session.expunge(obj)
    return frozen()


def _loaded_as_persistent(session: Session, instance: Any) -> None:
    if "info" in session.__dict__:
        loaded = session.info.get(_COLLECT)
        if loaded is not None:
            loaded.append(instance)


# -- installation -------------------------------------------------------------------------

def _install() -> None:
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "before_attach", _before_attach)
        event.listen(Session, "do_orm_execute", _do_orm_execute)
        event.listen(Session, "loaded_as_persistent", _loaded_as_persistent)
        _installed = True

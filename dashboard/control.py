"""Requests from the dashboard to an agent: ``control`` frames, handed to the agent
consumer of the process through the process's group (``groups.process``).

A snapshot request's id names the ``SessionSnapshot`` row its reply fills:
``snapshot:<TrackedSession pk>:<args key>``, the args key being the snapshot
arguments as a sorted query string, e.g.
``snapshot:12:class=Order&limit=100&modified=true&offset=0``. A reply is stored only
if that session belongs to the replying process and has the key the reply names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping
from urllib.parse import parse_qsl, urlencode

from django.utils import timezone

from tracker.protocol import MAX_SNAPSHOT_ENTITIES

from . import conf, groups
from .models import SessionSnapshot, TrackedSession
from .retention import keep_newest

SNAPSHOT = "snapshot"
#: entity states a snapshot can be filtered by (tracker.protocol.ENTITY "state")
STATES = ("transient", "pending", "persistent", "deleted", "detached")
#: longest class name accepted in a filter
MAX_CLASS = 200
#: highest page number accepted (a larger one asks for page 1)
MAX_PAGE = 1_000_000


def per_page() -> int:
    """Entities shown per page of a session page."""
    return max(1, min(conf.get("ENTITIES_PER_PAGE"), MAX_SNAPSHOT_ENTITIES))


def page_number(value: Any) -> int:
    """A 1-based page number from a GET parameter (1 when missing or invalid)."""
    try:
        page = int(str(value))
    except (TypeError, ValueError):
        return 1
    return page if 1 <= page <= MAX_PAGE else 1


def snapshot_args(query: Mapping[str, Any]) -> dict[str, Any]:
    """The snapshot arguments a session page's GET parameters ask for: ``page``
    (1-based), ``class``, ``state`` (one of STATES) and ``modified`` (``yes``/``no``).
    Invalid values are ignored."""
    size = per_page()
    args: dict[str, Any] = {"offset": (page_number(query.get("page")) - 1) * size,
                            "limit": size}
    name = str(query.get("class") or "").strip()[:MAX_CLASS]
    if name:
        args["class"] = name
    state = query.get("state")
    if state in STATES:
        args["state"] = state
    modified = query.get("modified")
    if modified in ("yes", "no"):
        args["modified"] = modified == "yes"
    return args


def args_key(args: Mapping[str, Any]) -> str:
    """The canonical text of snapshot arguments (a sorted query string)."""
    return urlencode(sorted((name, str(value).lower() if isinstance(value, bool) else str(value))
                            for name, value in args.items()))


def args_from_key(key: str) -> dict[str, Any] | None:
    """The arguments an args key stands for; None if it is not one ``args_key`` makes."""
    args: dict[str, Any] = {}
    for name, value in parse_qsl(key, keep_blank_values=True, strict_parsing=False):
        if name in ("offset", "limit"):
            if not value.isdigit():
                return None
            args[name] = int(value)
        elif name == "class" and 0 < len(value) <= MAX_CLASS:
            args[name] = value
        elif name == "state" and value in STATES:
            args[name] = value
        elif name == "modified" and value in ("true", "false"):
            args[name] = value == "true"
        else:
            return None
    if "offset" not in args or "limit" not in args or args_key(args) != key:
        return None
    return args


def request_id(session_pk: int, key: str) -> str:
    return f"{SNAPSHOT}:{session_pk}:{key}"


def parse_request_id(request: str) -> tuple[int, str, dict[str, Any]] | None:
    """(session pk, args key, args) of a snapshot request id; None if it is not one."""
    action, _, rest = request.partition(":")
    pk, _, key = rest.partition(":")
    if action != SNAPSHOT or not pk.isdigit() or len(pk) > 18:
        return None
    args = args_from_key(key)
    if args is None:
        return None
    return int(pk), key, args


def snapshot_request(session_pk: int, args: Mapping[str, Any]) -> tuple[int, dict] | None:
    """Record that a page asks for a snapshot of session ``session_pk``.

    Returns (process pk, the group message for its agent consumer), or None when there
    is nobody to ask (the session ended, its process is not connected) or the same
    snapshot was asked less than half a SNAPSHOT_SECONDS ago (by another viewer).
    """
    session = (TrackedSession.objects.select_related("process")
               .filter(pk=session_pk).first())
    if session is None or not session.live or not session.process.connected:
        return None
    key = args_key(args)
    now = timezone.now()
    snapshot, created = SessionSnapshot.objects.get_or_create(
        session=session, args_key=key, defaults={"args": dict(args), "requested_at": now})
    if not created:
        recent = now - timedelta(seconds=conf.get("SNAPSHOT_SECONDS") / 2)
        if snapshot.requested_at is not None and snapshot.requested_at > recent:
            return None
        snapshot.requested_at = now
        snapshot.save(update_fields=["requested_at"])
    else:
        _keep_newest_snapshots(session)
    message = {"type": groups.CONTROL, "id": request_id(session.pk, key),
               "action": SNAPSHOT, "args": {"session": session.key, **args}}
    return session.process_id, message


def _keep_newest_snapshots(session: TrackedSession) -> None:
    keep_newest(SessionSnapshot.objects.filter(session=session),
                conf.get("SNAPSHOTS_PER_SESSION"), "requested_at")

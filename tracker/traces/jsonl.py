"""Retort's own trace format: JSON Lines, complete, versioned, re-importable.

One JSON object per line, each with a ``type``:

``header`` (first line)
    ``format`` ("retort-trace"), ``version``, ``name``, ``started`` (epoch seconds),
    ``process`` {host, pid, app, python, sqlalchemy, agent}, ``scope`` {kind:
    process | engine | session, …}, ``parameters`` (whether values were captured).
``engine``      ``id`` ("e1"), ``name``, ``dialect``, ``driver``, ``url`` (masked);
                written before the first event that names it.
``connection``  ``id`` (1, 2, …), ``engine``; before the first event that names it.
``statement``   ``ts``, ``dur``, ``tid``, ``thread``, ``engine``, ``conn``,
                ``session`` (or null), ``sql``, ``executemany``, ``rows`` (-1: unknown),
                ``params`` (only if captured, redacted), ``error`` (if it failed).
``transaction`` ``ts``, ``tid``, ``thread``, ``session``, ``phase``: begin | commit |
                rollback | close (ended by the session's close without a commit or a
                rollback: the pool rolls the connection back).
``flush``       ``ts``, ``dur``, ``tid``, ``thread``, ``session``, ``changes``: [{op:
                insert | update | delete, class, identity, values | attributes {name:
                [old, new]}, references, collections}] (values rendered and masked as
                in snapshots).
``checkout``    ``ts``, ``tid``, ``thread``, ``engine``, ``conn``, ``checked_out`` (after
                it), ``wait`` (seconds waited for it, when the agent runs).
``checkin``     the same, with ``held`` (seconds since its checkout).
``lazy_load``   ``ts``, ``tid``, ``thread``, ``session``, ``relationship``
                ("Order.customer"), ``identity`` (of the object it was loaded for).
``finding``     ``ts``, ``rule``, ``severity``, ``session``, ``thread``, ``location``,
                ``message``, ``evidence`` (see docs/findings.md).
``end`` (last)  ``ts``, ``events`` (lines written after the header), ``dropped``.

Times are epoch seconds (``ts``) and seconds (``dur``, ``wait``, ``held``). Readers
must ignore unknown fields, and refuse a ``version`` they do not know.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import orjson

FORMAT = "retort-trace"
VERSION = 1
TYPES = frozenset({"header", "engine", "connection", "statement", "transaction", "flush",
                   "checkout", "checkin", "lazy_load", "finding", "end"})


class TraceError(ValueError):
    """Not a trace this version can read; the message says where and why."""


def line(record: dict[str, Any]) -> bytes:
    """One line of a trace file."""
    return orjson.dumps(record, default=str) + b"\n"


def read(path: str | Path) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    """The header, and an iterator over the other records (read lazily, so a large
    trace never sits in memory). Raises TraceError for a file that is not a trace."""
    handle = open(path, "rb")
    first = handle.readline()
    try:
        header = orjson.loads(first)
    except orjson.JSONDecodeError:
        handle.close()
        raise TraceError(f"{path}: line 1 is not JSON: not a Retort trace") from None
    if not isinstance(header, dict) or header.get("type") != "header" \
            or header.get("format") != FORMAT:
        handle.close()
        raise TraceError(f"{path}: line 1 is not a Retort trace header")
    if header.get("version") != VERSION:
        handle.close()
        raise TraceError(f"{path}: trace format version {header.get('version')!r} is not "
                         f"supported (this version reads {VERSION})")
    return header, _records(handle, path)


def _records(handle: Any, path: Any) -> Iterator[dict[str, Any]]:
    with handle:
        for number, raw in enumerate(handle, 2):
            if not raw.strip():
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise TraceError(f"{path}: line {number} is not JSON") from None
            if not isinstance(record, dict) or record.get("type") not in TYPES:
                raise TraceError(f"{path}: line {number} is not a trace record")
            yield record

"""Retort's dashboard settings: one entry point with documented defaults.

Override any key in ``settings.RETORT`` (a dict). The merged values are cached and the
cache is cleared on ``setting_changed`` so tests can use ``override_settings``.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

DEFAULTS: dict[str, Any] = {
    # seconds of pool history kept per engine (older samples are pruned)
    "POOL_HISTORY_SECONDS": 15 * 60,
    # at most one stored pool sample per engine per this many seconds
    "POOL_SAMPLE_SECONDS": 1.0,
    # seconds without a frame after which a connected process is shown as stale
    "STALE_AFTER_SECONDS": 10.0,
    # most live-page refreshes per second per open page
    "LIVE_UPDATES_PER_SECOND": 4.0,
    # seconds shown in the engine page's pool timeline
    "TIMELINE_SECONDS": 5 * 60,
    # disconnected processes listed on the overview for this long after last seen
    "RECENT_PROCESS_SECONDS": 60 * 60,
    # discrete pool events (timeouts, invalidations) kept per engine
    "EVENTS_PER_ENGINE": 200,
    # seconds an ended ORM session (and its snapshots) stays viewable after it ended
    "RECENT_SESSION_SECONDS": 15 * 60,
    # seconds without activity after which a session in a transaction is flagged
    # "idle in transaction" (it holds a connection and does nothing with it)
    "IDLE_IN_TRANSACTION_SECONDS": 5.0,
    # findings kept per process (the newest)
    "FINDINGS_PER_PROCESS": 1000,
    # seconds between snapshot requests while someone views a live session
    "SNAPSHOT_SECONDS": 1.0,
    # snapshots (one per filter and page viewed) kept per session, the newest
    "SNAPSHOTS_PER_SESSION": 10,
    # rows per page: sessions on the sessions page, objects on a session page (the
    # latter at most tracker.protocol.MAX_SNAPSHOT_ENTITIES)
    "SESSIONS_PER_PAGE": 100,
    "ENTITIES_PER_PAGE": 100,
    # statement fingerprints kept per engine (the most recently updated)
    "STATEMENTS_PER_ENGINE": 1000,
    # slow statements kept per engine (the newest)
    "SLOW_STATEMENTS_PER_ENGINE": 100,
    # fingerprints listed on a statements page (the first by its sort)
    "STATEMENTS_PER_PAGE": 100,
    # advice (grouped findings) kept per app, the most recently seen
    "ADVICE_PER_APP": 2000,
    # where trace files are written ("": RETORT_DATA_DIR/traces)
    "TRACES_DIR": "",
    # bytes stored per trace (recorded or imported); a recording beyond it is stopped
    # and marked truncated, an upload beyond it refused
    "TRACE_MAX_BYTES": 100 * 1024 * 1024,
    # traces kept per app (the newest; older files are deleted with their rows)
    "TRACES_PER_APP": 100,
    # seconds a recording may last (the form's longest; the agent stops it then)
    "TRACE_MAX_SECONDS": 3600,
    # seconds after its time limit a recording without its end is marked failed
    "TRACE_END_GRACE_SECONDS": 60,
    # spans drawn on a trace's timeline, and rows of its statements and flushes
    # tables (the first ones; the download has everything)
    "TRACE_TIMELINE_SPANS": 2000,
    "TRACE_TABLE_ROWS": 500,
}


@functools.cache
def _merged() -> dict[str, Any]:
    return {**DEFAULTS, **getattr(settings, "RETORT", {})}


def get(name: str) -> Any:
    """The value of Retort setting ``name`` (KeyError for a name that does not exist)."""
    return _merged()[name]


@receiver(setting_changed)
def _clear(*, setting: str, **kwargs: Any) -> None:
    if setting == "RETORT":
        _merged.cache_clear()

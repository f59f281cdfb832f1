"""Reading a live e2e dashboard's state straight from its SQLite file, and waiting."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable


def rows(dashboard, sql: str, *args: Any) -> list[sqlite3.Row]:
    """``sql`` on the dashboard's database, read-only (retried while daphne writes)."""
    path = Path(dashboard.env["RETORT_DATA_DIR"]) / "retort.sqlite3"
    for _ in range(50):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                db.row_factory = sqlite3.Row
                return db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:  # locked by daphne's write: again
            last = exc
            time.sleep(0.05)
    raise last


def until(read: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Read until ``read()`` is truthy; the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)

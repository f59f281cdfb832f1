"""The bounded hand-off between the application's threads and the agent's worker.

Hooks call :meth:`Recorder.submit` with a small tuple; the worker drains them. The
common path is one ``deque.append`` (atomic under the GIL, never blocks). When the
queue is at its bound the oldest item is dropped under a lock, so every drop is
counted exactly; the queue can exceed the bound by at most one item per thread.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

from .protocol import DROP_QUEUE_FULL


class Recorder:
    """A bounded FIFO of event tuples with exact drop counting."""

    def __init__(self, maxlen: int) -> None:
        self.maxlen = maxlen
        #: the deque itself; hot hooks may append to it directly while
        #: ``len(queue) < maxlen`` (the full case must go through submit())
        self.queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._items = self.queue
        self._full_lock = threading.Lock()
        self.drops: collections.Counter[str] = collections.Counter()
        #: internal errors caught in hooks or the worker (never raised to the app)
        self.errors = 0
        self._errors_lock = threading.Lock()
        self.first_error: str | None = None

    def submit(self, item: tuple[Any, ...]) -> bool:
        """Queue ``item``; returns False if an older item had to be dropped for it."""
        items = self._items
        if len(items) < self.maxlen:
            items.append(item)
            return True
        with self._full_lock:
            dropped = False
            while len(items) >= self.maxlen:
                try:
                    items.popleft()
                except IndexError:  # drained meanwhile
                    break
                self.drops[DROP_QUEUE_FULL] += 1
                dropped = True
            items.append(item)
        return not dropped

    def drain(self, limit: int = 50_000) -> list[tuple[Any, ...]]:
        """Take up to ``limit`` queued items, oldest first (worker thread only)."""
        items = self._items
        taken = []
        popleft = items.popleft
        try:
            for _ in range(limit):
                taken.append(popleft())
        except IndexError:
            pass
        return taken

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        self._items.clear()

    def reset(self) -> None:
        """Empty the queue and forget drops and errors (a forked child starts afresh)."""
        self._full_lock = threading.Lock()
        self._errors_lock = threading.Lock()
        self._items.clear()
        self.drops.clear()
        self.errors = 0
        self.first_error = None

    def count_drop(self, reason: str, n: int = 1) -> None:
        with self._full_lock:
            self.drops[reason] += n

    def count_error(self, where: str, exc: BaseException) -> bool:
        """Count an internal error; True the first time (so it is logged once)."""
        with self._errors_lock:
            self.errors += 1
            if self.first_error is None:
                self.first_error = f"{where}: {type(exc).__name__}: {exc}"
                return True
        return False

"""SQLAlchemy hooks. Each module covers one target; every event listener is registered
through :class:`ListenerSet`, and every other addition (wrappers of instance or class
methods) registers its undoing there, so that ``uninstrument()`` removes all of them."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import event


class ListenerSet:
    """Records every ``event.listen`` (and undo callbacks) so that they can all be
    removed again."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._undo: list[Callable[[], None]] = []

    def listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        event.listen(target, name, fn)
        self._listeners.append((target, name, fn))

    def on_remove(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` (once) when :meth:`remove_all` runs."""
        self._undo.append(fn)

    def remove_all(self) -> None:
        while self._listeners:
            target, name, fn = self._listeners.pop()
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception:  # one failing undo must not keep the others in place
                pass

    def __len__(self) -> int:
        """The event listeners registered (undo callbacks are not counted)."""
        return len(self._listeners)

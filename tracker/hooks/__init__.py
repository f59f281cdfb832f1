"""SQLAlchemy event listeners. Each module covers one event target; every listener is
registered through :class:`ListenerSet` so that ``uninstrument()`` removes all of them."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy import event


class ListenerSet:
    """Records every ``event.listen`` so that they can all be removed again."""

    def __init__(self) -> None:
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []

    def listen(self, target: Any, name: str, fn: Callable[..., Any]) -> None:
        event.listen(target, name, fn)
        self._listeners.append((target, name, fn))

    def remove_all(self) -> None:
        while self._listeners:
            target, name, fn = self._listeners.pop()
            if event.contains(target, name, fn):
                event.remove(target, name, fn)

    def __len__(self) -> int:
        return len(self._listeners)

"""Find the application code that caused an event: the first frames outside
SQLAlchemy, the agent and other plumbing.

Called on the application's thread (at checkout), so it must be cheap: whether a code
object belongs to the application is decided once per code object and cached.
"""

from __future__ import annotations

import os
import sys
import threading
from types import CodeType, FrameType

#: When checkout locations are captured (``capture_locations``).
ALWAYS, PRESSURE, OFF = "always", "pressure", "off"
MODES = (ALWAYS, PRESSURE, OFF)
#: An empty captured stack, shared.
NONE: tuple[tuple[CodeType, int], ...] = ()


def location_mode(value: object) -> str:
    """Normalise a ``capture_locations`` value: a mode name, or a bool (True is
    "always", False is "off"). Raises ``ValueError`` for anything else."""
    if value is True:
        return ALWAYS
    if value is False:
        return OFF
    if isinstance(value, str):
        low = value.strip().lower()
        if low in MODES:
            return low
        if low in ("1", "true", "yes", "on"):
            return ALWAYS
        if low in ("0", "false", "no"):
            return OFF
    raise ValueError(f"capture_locations={value!r}: expected one of always, pressure, off")


class LocationFinder:
    """Walks the current stack and names the application's frames."""

    def __init__(self, skip_modules: tuple[str, ...], depth: int) -> None:
        self._skip_dirs = tuple(_module_dirs(skip_modules))
        self._depth = depth
        # keyed by id(): hashing a code object hashes its whole contents. The code
        # objects are kept alive in _seen, so an id cannot be reused by another one.
        self._is_app: dict[int, bool] = {}
        self._seen: list[CodeType] = []

    def capture(self, frame: FrameType | None = None) -> list[tuple[CodeType, int]]:
        """Up to ``depth`` application frames, innermost first, as (code, line) pairs.

        This runs on the application's thread: it only walks and records; turning
        the pairs into text (:meth:`describe`) is left to the worker.
        """
        if frame is None:
            frame = sys._getframe(1)
        found: list[tuple[CodeType, int]] = []
        is_app = self._is_app
        depth = self._depth
        glet: object | None = None
        while True:
            while frame is not None:
                code = frame.f_code
                app = is_app.get(id(code))
                if app is None:
                    app = self._learn(code)
                if app:
                    found.append((code, frame.f_lineno))
                    if len(found) >= depth:
                        return found
                frame = frame.f_back
            # The bottom of this stack. Under SQLAlchemy's asyncio extension the sync
            # code runs in a greenlet whose stack ends here; the application's
            # coroutines (the await that led to it) are on the parent greenlet's stack,
            # suspended where it switched.
            frame, glet = _parent_greenlet_frame(glet)
            if frame is None:
                return found

    def stack(self, frame: FrameType | None = None) -> list[str]:
        """Like :meth:`capture`, as ``file:line in function`` strings."""
        return describe(self.capture(frame if frame is not None else sys._getframe(1)))

    def _learn(self, code: CodeType) -> bool:
        app = self._is_app[id(code)] = self._classify(code)
        self._seen.append(code)
        return app

    def _classify(self, code: CodeType) -> bool:
        filename = code.co_filename
        # "<frozen ...>", "<string>", and SQLAlchemy's generated wrappers
        # ("<sqlalchemy generated _go() wrapper ...>") are never the application's
        if filename.startswith("<"):
            return False
        return not filename.startswith(self._skip_dirs)


def _parent_greenlet_frame(glet: object | None) -> tuple[FrameType | None, object | None]:
    """The frame where the parent of ``glet`` (None: the current greenlet) switched
    away, and that parent; (None, None) without greenlet or at the main greenlet."""
    module = sys.modules.get("greenlet")
    if module is None:
        return None, None
    try:
        if glet is None:
            glet = module.getcurrent()
        parent = glet.parent  # type: ignore[attr-defined]
        if parent is None:
            return None, None
        return parent.gr_frame, parent
    except Exception:  # an exotic greenlet: no location rather than an error
        return None, None


def _module_dirs(modules: tuple[str, ...]) -> list[str]:
    """Directories (or file stems) whose code is plumbing, for the given module names."""
    dirs: list[str] = []
    stdlib = os.path.dirname(os.__file__)
    for name in modules:
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # not installed: nothing of it can be on the stack
                continue
        path = getattr(module, "__file__", None)
        if not path:
            continue
        if os.path.basename(path) == "__init__.py":
            dirs.append(os.path.dirname(path) + os.sep)
        else:
            dirs.append(os.path.splitext(path)[0])
    # threading's run/bootstrap frames are never the application's
    dirs.append(os.path.join(stdlib, "threading.py"))
    return dirs


def thread_name(tid: int) -> str:
    """The name of a live thread (looked up by the worker, not on the application's
    thread: it costs a call on the hot path); a thread that is gone is named by its id."""
    thread = threading._active.get(tid)  # type: ignore[attr-defined]
    return thread.name if thread is not None else f"thread {tid}"


def describe(captured: "list[tuple[CodeType, int]] | tuple[tuple[CodeType, int], ...]"
             ) -> list[str]:
    """``file:line in function`` for each captured (code, line) pair."""
    return [f"{_short(code.co_filename)}:{line} in {code.co_name}" for code, line in captured]


_CWD = os.getcwd() + os.sep


def _short(filename: str) -> str:
    """A path relative to the working directory (or site-packages) when it is below it."""
    if filename.startswith(_CWD):
        return filename[len(_CWD):]
    marker = filename.rfind("site-packages" + os.sep)
    if marker >= 0:
        return filename[marker + len("site-packages") + 1:]
    return filename

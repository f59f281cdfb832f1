"""Loaded by Python at start-up in processes started by ``python -m tracker run``
(this directory is put first on PYTHONPATH): start the agent, then run the
``sitecustomize`` this one hides, if the environment has one."""

import importlib
import sys


def _start() -> None:
    try:
        from tracker.autoload import start_from_environment
    except Exception as exc:  # another environment, without the agent: say so, go on
        sys.stderr.write(f"retort: the agent is not importable here ({exc}); "
                         f"install retort-tracker in this environment\n")
        return
    start_from_environment()


def _chain() -> None:
    here = __file__.rsplit("/", 1)[0]
    saved = list(sys.path)
    ours = sys.modules.pop("sitecustomize", None)
    try:
        sys.path[:] = [p for p in sys.path if p.rstrip("/") != here.rstrip("/")]
        try:
            importlib.import_module("sitecustomize")
        except ImportError:
            pass
        except Exception as exc:
            sys.stderr.write(f"retort: the environment's own sitecustomize failed: {exc}\n")
    finally:
        sys.path[:] = saved
        if ours is not None:
            sys.modules["sitecustomize"] = ours


_start()
_chain()

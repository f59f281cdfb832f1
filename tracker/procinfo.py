"""Facts about the current OS process that identify it across agent restarts."""

from __future__ import annotations

import os
import time


def process_start_time() -> float:
    """When this OS process started (epoch seconds), the same value every time it is
    asked: the dashboard identifies a process by host, pid and this, so an agent
    attached again (or instrumented again) reports to the same process, and a new
    process that reuses a pid is a new one.

    Linux reads it from /proc (clock ticks since boot plus the boot time); elsewhere it
    is the first time this module was imported in the process, which is stable for
    the agent's own restarts but not across a fork (see :func:`after_fork`).
    """
    started = _from_proc()
    return started if started is not None else _fallback


def after_fork() -> None:
    """In a forked child: the fallback start time is now (the child's own start)."""
    global _fallback
    _fallback = time.time()


def _from_proc() -> float | None:
    try:
        with open(f"/proc/{os.getpid()}/stat", "rb") as stat:
            # the command name (field 2) is in parentheses and may hold spaces
            fields = stat.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime), counted after the name
        with open("/proc/stat", "rb") as system:
            for line in system:
                if line.startswith(b"btime "):
                    boot = int(line.split()[1])
                    break
            else:
                return None
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


_fallback = time.time()

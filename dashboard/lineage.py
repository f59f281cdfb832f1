"""Processes of one app grouped by what was run: the workers of one gunicorn, the
children of one reloader, the runs of one script. Within a group, a process that
ended before a later one started was *replaced*: that is a restart.

Pure functions over Process rows, so the overview and its tests share them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable

from .models import Process

# A replacement may start a moment before the dashboard notices its predecessor's
# socket close (gunicorn spawns a new worker as soon as it reaps the dead one): this
# much overlap still counts as a restart; a process started earlier than that was
# running beside it, not in its place.
SLACK = timedelta(seconds=2)


@dataclass
class ProcessGroup:
    """Processes of one app on one host running the same command line."""

    host: str
    command: str
    processes: list[Process] = field(default_factory=list)
    #: processes that ended and had a successor in the group
    restarts: int = 0
    last_restart: datetime | None = None

    @property
    def running(self) -> int:
        return sum(p.status == "connected" for p in self.processes)

    @property
    def stale(self) -> int:
        return sum(p.status == "stale" for p in self.processes)


def group_processes(processes: Iterable[Process]) -> list[ProcessGroup]:
    """Groups in order of their newest process; within a group, newest first.

    Each process gets ``replaced_by`` (the first process of its group started after it
    ended, or None), which the overview shows as "replaced by pid …".
    """
    groups: dict[tuple[str, str], ProcessGroup] = {}
    for process in processes:
        command = " ".join(str(arg) for arg in process.argv)
        key = (process.host, command)
        if key not in groups:
            groups[key] = ProcessGroup(process.host, command)
        groups[key].processes.append(process)
    for group in groups.values():
        group.processes.sort(key=lambda p: (p.started_at, p.pk or 0))
        taken: set[int] = set()  # a process replaces at most one predecessor
        ended = sorted((p for p in group.processes
                        if not p.connected and p.disconnected_at is not None),
                       key=lambda p: p.disconnected_at)
        for process in group.processes:
            process.replaced_by = None
        for process in ended:
            successor = next((p for p in group.processes
                              if id(p) not in taken and p is not process
                              and p.started_at > process.started_at
                              and p.started_at >= process.disconnected_at - SLACK), None)
            if successor is None:
                continue
            taken.add(id(successor))
            process.replaced_by = successor
            group.restarts += 1
            if group.last_restart is None or successor.started_at > group.last_restart:
                group.last_restart = successor.started_at
        group.processes.reverse()
    return sorted(groups.values(), key=lambda g: g.processes[0].started_at, reverse=True)


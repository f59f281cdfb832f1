"""``python -m tracker run [options] -- <command …>``: run a command with the agent
loaded into its Python processes, with no change to their code.

The command is exec'd (it replaces this process: same pid, signals, exit status) with
``tracker/bootstrap`` first on ``PYTHONPATH`` and ``RETORT_AUTOLOAD=1``: Python runs
the bootstrap ``sitecustomize`` at start-up, which instruments the process from its
``RETORT_*`` variables. Works for ``flask run``, ``gunicorn`` (pre-forked workers each
report as their own process), ``uvicorn``, ``celery`` and plain scripts, as long as
they run on a Python where ``retort-tracker`` is installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from ..autoload import AUTOLOAD, TRACE
from ..config import ENV, AgentConfig
from .settings import add_options, as_environment

BOOTSTRAP = str(Path(__file__).resolve().parent.parent / "bootstrap")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="run a command with the agent loaded (no code change)",
        description="Run COMMAND with the agent loaded into its Python processes.",
        epilog="example: python -m tracker run --app shop -- gunicorn -w 2 shop:app")
    add_options(parser)
    parser.add_argument("--trace", metavar="PATH",
                        help="record each process into a trace file; {pid} in PATH is "
                             "replaced by the process id (e.g. trace-{pid}.jsonl)")
    parser.add_argument("--all-processes", action="store_true",
                        help="show every Python process the command starts on the "
                             "dashboard, also those that never create an engine (by "
                             "default a process connects at its first engine)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command, after --")
    parser.set_defaults(run=run)


def environment(args: argparse.Namespace, base: dict[str, str]) -> dict[str, str]:
    """The command's environment: ``base`` plus the agent's settings and bootstrap."""
    env = dict(base)
    env.update(as_environment(args))
    env[AUTOLOAD] = "1"
    # a gunicorn master, a reloader parent or a multiprocessing helper has no engine:
    # without this each would be a process on the dashboard with nothing in it
    if getattr(args, "all_processes", False):
        env[ENV["wait_for_engine"]] = "0"
    else:
        env.setdefault(ENV["wait_for_engine"], "1")
    if getattr(args, "trace", None):
        env[TRACE] = os.path.abspath(args.trace)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP] + [p for p in paths if p != BOOTSTRAP])
    return env


def run(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("python -m tracker run: give the command to run after --", file=sys.stderr)
        return 2
    env = environment(args, dict(os.environ))
    try:  # a broken setting is reported now, not in every process it would start
        AgentConfig.load({}, environ=env)
    except (TypeError, ValueError) as exc:
        print(f"python -m tracker run: {exc}", file=sys.stderr)
        return 2
    if not env.get("RETORT_URL"):
        print("python -m tracker run: no --url / RETORT_URL: the agent will collect "
              "but send nothing", file=sys.stderr)
    program = shutil.which(command[0], path=env.get("PATH"))
    if program is None:
        print(f"python -m tracker run: command not found: {command[0]}", file=sys.stderr)
        return 127
    os.execvpe(program, command, env)
    return 0  # not reached

"""``python -m tracker``: the agent's command line.

One module per subcommand; each defines ``add_parser(subparsers)``, which registers
its arguments and sets ``run`` (a function of the parsed arguments returning the exit
status). To add a command, write its module and list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
from types import ModuleType

from . import attach, check, export, run

#: The subcommands, in the order ``--help`` lists them.
COMMANDS: tuple[ModuleType, ...] = (run, attach, check, export)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="python -m tracker",
        description="Retort's agent: command-line tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit status (argparse exits with 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    return args.run(args)


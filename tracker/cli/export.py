"""``python -m tracker export TRACE.jsonl --format chrome|otlp|jsonl [-o OUT]``:
convert a recorded trace (see :mod:`tracker.traces.jsonl`) for Perfetto /
chrome://tracing, an OpenTelemetry backend, or check and copy Retort's own format.
The conversion streams: a trace of any length is converted in bounded memory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..traces import jsonl
from ..traces.chrome import write_chrome
from ..traces.otlp import write_otlp

SUFFIX = {"chrome": ".chrome.json", "otlp": ".otlp.json", "jsonl": ".copy.jsonl"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export", help="convert a trace for Perfetto or OpenTelemetry",
        description="Convert a Retort trace (JSON Lines) to another format.")
    parser.add_argument("trace", type=Path, help="a .jsonl trace written by tracker.record")
    parser.add_argument("--format", choices=("chrome", "otlp", "jsonl"), default="chrome",
                        help="chrome: Chrome Trace Event format (Perfetto, chrome://tracing);"
                             " otlp: OpenTelemetry OTLP/JSON; jsonl: Retort's own, checked")
    parser.add_argument("-o", "--output", type=Path,
                        help="output file (default: next to the trace; - for stdout)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        header, records = jsonl.read(args.trace)
    except (OSError, jsonl.TraceError) as exc:
        print(f"python -m tracker export: {exc}", file=sys.stderr)
        return 2
    output = args.output or args.trace.with_suffix(SUFFIX[args.format])
    out = sys.stdout.buffer if str(output) == "-" else open(output, "wb")
    try:
        if args.format == "chrome":
            write_chrome(header, records, out)
        elif args.format == "otlp":
            write_otlp(header, records, out)
        else:
            out.write(jsonl.line(header))
            for record in records:
                out.write(jsonl.line(record))
    except jsonl.TraceError as exc:
        print(f"python -m tracker export: {exc}", file=sys.stderr)
        return 1
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    if out is not sys.stdout.buffer:
        print(f"wrote {output}")
    return 0

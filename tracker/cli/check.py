"""``python -m tracker check <module>:<object> [--json] [--no-server]``

Prints the configuration findings for an engine, an AsyncEngine, a Flask app (its
Flask-SQLAlchemy engines, binds included, and settings), a Flask-SQLAlchemy instance,
a MetaData or a declarative base, grouped by severity with the fix. Exit status: 0 no
error-severity finding, 1 at least one, 2 the target could not be checked (for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from ..checks import CheckReport, TargetError, check_target, load_target
from ..rules import SEVERITIES, Finding, rule

OK, FOUND_ERRORS, BAD_TARGET = 0, 1, 2
_PLURAL = {"error": "errors", "warning": "warnings", "info": "info"}


def add_parser(subparsers: Any) -> None:
    """Register ``check`` on the ``python -m tracker`` parser."""
    parser = subparsers.add_parser(
        "check",
        help="print the configuration findings for an engine, Flask app or MetaData",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", metavar="MODULE:OBJECT",
                        help="what to check, e.g. myapp.db:engine, myapp:app, "
                             "myapp:create_app(), myapp.models:Base")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON document instead of text")
    parser.add_argument("--no-server", action="store_true",
                        help="do not connect to the databases (server settings such as "
                             "MySQL's wait_timeout stay unknown)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Check ``args.target`` and print the report; returns the exit status."""
    out = out or sys.stdout
    try:
        obj, module, attr = load_target(args.target)
        report = check_target(obj, spec=args.target, module=module, attr=attr,
                              read_server=not args.no_server)
    except TargetError as exc:
        if args.json:
            out.write(json.dumps({"target": args.target, "error": str(exc)}) + "\n")
        print(f"python -m tracker check: {exc}", file=sys.stderr)
        return BAD_TARGET
    status = FOUND_ERRORS if report.errors else OK
    report.findings.sort(key=lambda finding: SEVERITIES.index(finding.severity))
    if args.json:
        out.write(json.dumps(as_json(report, status), indent=2, ensure_ascii=False) + "\n")
    else:
        out.write(as_text(report, status))
    return status


def counts(report: CheckReport) -> dict[str, int]:
    """Findings per severity, every severity present."""
    found = dict.fromkeys(SEVERITIES, 0)
    for finding in report.findings:
        found[finding.severity] = found.get(finding.severity, 0) + 1
    return found


def finding_json(finding: Finding) -> dict[str, Any]:
    """One finding with its rule's title, fix and docs."""
    known = rule(finding.rule)
    return {
        "rule": finding.rule,
        "severity": finding.severity,
        "title": known.title if known else "",
        "message": finding.message,
        "location": finding.location,
        "evidence": finding.evidence,
        "fix": known.fix if known else "",
        "fix_code": finding.evidence.get("fix_code") or (known.fix_code if known else ""),
        "docs": known.docs_anchor if known else "",
    }


def as_json(report: CheckReport, status: int) -> dict[str, Any]:
    return {
        "target": report.target,
        "checked": report.checked,
        "notes": report.notes,
        "counts": counts(report),
        "status": status,
        "findings": [finding_json(finding) for finding in report.findings],
    }


def as_text(report: CheckReport, status: int) -> str:
    lines = [f"Checked {report.target}:"]
    lines += [f"  {item}" for item in report.checked]
    lines += [f"  note: {note}" for note in report.notes]
    by_severity = counts(report)
    for severity in SEVERITIES:
        findings = [f for f in report.findings if f.severity == severity]
        if not findings:
            continue
        lines += ["", f"{_PLURAL[severity].upper()} ({len(findings)})"]
        for finding in findings:
            lines += [""] + _finding_lines(finding)
    summary = ", ".join(f"{count} {severity if count == 1 else _PLURAL[severity]}"
                        for severity, count in by_severity.items() if count)
    lines += ["", f"{summary or 'No findings'}: exit status {status}"]
    return "\n".join(lines) + "\n"


def _finding_lines(finding: Finding) -> list[str]:
    data = finding_json(finding)
    lines = [f"  [{finding.rule}] {data['title']}", f"  {finding.message}"]
    if finding.location:
        lines.append(f"  where: {finding.location}")
    if not finding.evidence.get("fix_code"):
        lines.append(f"  fix: {data['fix']}")  # the message names this finding's own fix
    if data["fix_code"]:
        lines.append("  fix code:")
        lines += [f"      {line}" for line in data["fix_code"].splitlines()]
    if data["docs"]:
        lines.append(f"  docs: {data['docs']}")
    return lines

"""Check an object named ``module:object``: find what it holds (engines, a Flask app's
Flask-SQLAlchemy configuration, MetaData), run the checks that apply, and point each
finding at the line of the application's source that configures it."""

from __future__ import annotations

import ast
import importlib
import sys
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from sqlalchemy.engine import Engine

from ..locations import _short as short_path
from ..rules import ERROR, Finding
from . import flask_app
from .engine import engine_findings, masked_url, sync_engine
from .metadata import metadata_findings, metadata_of
from .server import server_settings

SUPPORTED = ("an Engine, an AsyncEngine, a Flask app, a Flask-SQLAlchemy instance, "
             "a MetaData or a declarative base")


class TargetError(Exception):
    """The target cannot be checked: not importable, missing, or of an unsupported
    type. The message says which and what to do."""


@dataclass
class CheckReport:
    """What ``check`` found for one target."""

    target: str
    #: one line per thing checked ("engine sqlite:// (StaticPool)", "Flask app 'shop'")
    checked: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: what could not be looked at (a server that did not answer…)
    notes: list[str] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return sum(1 for finding in self.findings if finding.severity == ERROR)


def load_target(spec: str) -> tuple[Any, ModuleType, str]:
    """Import ``module:attribute`` (dotted attributes allowed; ``name()`` calls a
    factory with no arguments) and return ``(object, module, attribute)``."""
    module_name, sep, attr = spec.partition(":")
    module_name, attr = module_name.strip(), attr.strip()
    if not sep or not module_name or not attr:
        raise TargetError(f"{spec!r}: expected <module>:<object>, e.g. myapp.db:engine")
    call = attr.endswith("()")
    if call:
        attr = attr[:-2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise TargetError(f"cannot import module {module_name!r}: no module named "
                              f"{exc.name!r} (is it on the path? run from the project's "
                              f"directory)") from None
        raise TargetError(f"importing {module_name!r} failed: {exc}") from None
    except Exception as exc:
        raise TargetError(f"importing {module_name!r} raised "
                          f"{type(exc).__name__}: {exc}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if call:
        if not callable(obj):
            raise TargetError(f"{module_name}:{attr} is not callable")
        try:
            obj = obj()
        except Exception as exc:
            raise TargetError(f"{module_name}:{attr}() raised "
                              f"{type(exc).__name__}: {exc}") from None
    return obj, module, attr


def check_target(obj: Any, *, spec: str = "", module: ModuleType | None = None,
                 attr: str = "", read_server: bool = True) -> CheckReport:
    """Every configuration finding for ``obj``; :class:`TargetError` if it is of no
    supported type. ``module``/``attr`` say where it is defined (for locations);
    ``read_server=False`` never connects to a database."""
    report = CheckReport(target=spec or attr or type(obj).__name__)
    here = definition_location(module, attr.split(".")[-1]) if module else ""
    if isinstance(sync_engine(obj), Engine):
        _check_engine(report, obj, read_server, here)
    elif flask_app.is_flask_app(obj):
        _check_flask_app(report, obj, None, read_server)
    elif flask_app.is_flask_sqlalchemy(obj):
        apps = flask_app.apps_of(obj)
        if not apps:
            raise TargetError(
                f"{report.target} is a Flask-SQLAlchemy instance with no Flask app: it was "
                f"never given to init_app(), or its app is gone. Point at the Flask app "
                f"instead (module:app, or module:create_app()).")
        for app in apps:
            _check_flask_app(report, app, obj, read_server)
    elif metadata_of(obj) is not None:
        name = report.target
        tables = len(metadata_of(obj).tables)
        report.checked.append(f"MetaData of {name} ({_count(tables, 'table')})")
        name = f"The MetaData of {name}" if isinstance(obj, type) else f"MetaData {name}"
        for finding in metadata_findings(obj, name):
            finding.location = here
            report.findings.append(finding)
    else:
        raise TargetError(f"{report.target} is {_a(type(obj).__name__)}: expected {SUPPORTED}")
    return report


def _check_engine(report: CheckReport, engine: Any, read_server: bool, location: str,
                  flask: tuple[Any, str | None] | None = None) -> None:
    engine = sync_engine(engine)
    url = masked_url(engine)
    server = server_settings(engine) if read_server else {}
    if server.get("error"):
        report.notes.append(f"server settings of {url} not read: {server['error']}")
    bind = ""
    if flask is not None and flask[1] is not None:
        bind = f" (bind {flask[1]!r})"
    report.checked.append(f"engine {url}{bind}: {type(engine.pool).__name__}"
                          f"{describe_server(server)}")
    for finding in engine_findings(engine, server):
        finding.location = location
        if flask is not None:
            app, key = flask
            finding.evidence["bind"] = key
            finding.evidence["fix_code"] = flask_app.engine_options_fix(
                app, key, finding.evidence.get("fix_options", {}),
                finding.evidence.get("fix_remove", []))
        report.findings.append(finding)


def describe_server(server: dict[str, Any]) -> str:
    """``"; server 10.11.19-MariaDB: wait_timeout 28800 s, max_connections 151"``."""
    if not server or "error" in server:
        return ""
    values = []
    for key, unit in (("wait_timeout", " s"), ("idle_in_transaction_session_timeout", " s"),
                      ("max_connections", "")):
        if key in server:
            off = unit and server[key] == 0
            values.append(f"{key} {'off' if off else f'{server[key]}{unit}'}")
    return f"; server {server.get('version', '?')}: {', '.join(values)}"


def _check_flask_app(report: CheckReport, app: Any, db: Any, read_server: bool) -> None:
    if db is None:
        db = flask_app.extension_of(app)
        if db is None:
            raise TargetError(
                f"Flask app {app.import_name!r} has no Flask-SQLAlchemy extension "
                f"(app.extensions['sqlalchemy'] is missing: call db.init_app(app) first)")
    module = sys.modules.get(app.import_name)
    app_here = _bound_location(module, app)
    report.checked.append(f"Flask app {app.import_name!r}")
    engines = flask_app.flask_engines(app, db)
    for key, engine in engines.items():
        if key is None:
            needles = ["SQLALCHEMY_ENGINE_OPTIONS", "SQLALCHEMY_DATABASE_URI"]
        else:
            needles = ["SQLALCHEMY_BINDS"]
        before = len(report.findings)
        _check_engine(report, engine, read_server, "", flask=(app, key))
        for finding in report.findings[before:]:
            echo = finding.rule == "echo-on" and app.config.get("SQLALCHEMY_ECHO")
            first = ["SQLALCHEMY_ECHO"] if echo else []
            finding.location = mention_location(module, *first, *needles) or app_here
    for finding in flask_app.flask_findings(app, db, engines):
        keys = list(finding.evidence.get("keys", {})) or [
            {"flask-track-modifications": flask_app.TRACK,
             "flask-record-queries": flask_app.RECORD}.get(finding.rule, "")]
        finding.location = mention_location(module, *keys) or app_here
        report.findings.append(finding)
    db_here = _bound_location(module, db) or app_here
    for key, metadata in flask_app.flask_metadatas(db).items():
        if not metadata.tables:
            continue  # Flask-SQLAlchemy makes one per bind key, models or not
        name = "db.metadata" if key is None else f"db.metadatas[{key!r}]"
        report.checked.append(f"{name} ({_count(len(metadata.tables), 'table')})")
        for finding in metadata_findings(metadata, f"{name} of Flask app {app.import_name!r}"):
            finding.location = db_here
            report.findings.append(finding)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _a(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


# -- locations in the application's source ---------------------------------------------

def _source(module: ModuleType | None) -> tuple[str, list[str]] | None:
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            return path, handle.read().splitlines()
    except OSError:
        return None


def definition_location(module: ModuleType | None, name: str) -> str:
    """``path:line`` of the module-level statement that defines ``name`` (the last
    one: a later assignment wins), or ``""``."""
    source = _source(module)
    if source is None:
        return ""
    path, lines = source
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return ""
    found = 0
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name == name:
                found = node.lineno
            continue
        for target in targets:
            names = target.elts if isinstance(target, ast.Tuple) else [target]
            if any(isinstance(item, ast.Name) and item.id == name for item in names):
                found = node.lineno
    return f"{short_path(path)}:{found}" if found else ""


def mention_location(module: ModuleType | None, *needles: str) -> str:
    """``path:line`` of the first line mentioning the first needle found, or ``""``."""
    source = _source(module)
    if source is None:
        return ""
    path, lines = source
    for needle in needles:
        if not needle:
            continue
        for number, line in enumerate(lines, 1):
            if needle in line and not line.lstrip().startswith("#"):
                return f"{short_path(path)}:{number}"
    return ""


def _bound_location(module: ModuleType | None, obj: Any) -> str:
    """Where ``module`` defines the global bound to ``obj``, or ``""``."""
    if module is None:
        return ""
    for name, value in vars(module).items():
        if value is obj and not name.startswith("__"):
            location = definition_location(module, name)
            if location:
                return location
    return ""

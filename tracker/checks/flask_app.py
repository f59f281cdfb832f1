"""The Flask-SQLAlchemy rules, read from a Flask app's configuration and its extension.

Flask and Flask-SQLAlchemy are never imported here unless the application imported
them already (an object cannot be a Flask app otherwise): the agent stays installable
without them. Versions 2.x and 3.x differ in defaults and in the keys they read; the
version is the installed distribution's.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
from typing import Any, Mapping

from sqlalchemy.engine import Engine, make_url

from ..registry import _pool_config as pool_config
from ..rules import ERROR, INFO, Finding
from . import render

TRACK = "SQLALCHEMY_TRACK_MODIFICATIONS"
RECORD = "SQLALCHEMY_RECORD_QUERIES"
ENGINE_OPTIONS = "SQLALCHEMY_ENGINE_OPTIONS"
COMMIT_ON_TEARDOWN = "SQLALCHEMY_COMMIT_ON_TEARDOWN"
#: Keys Flask-SQLAlchemy 3.x no longer reads, with the engine option that replaces
#: them (None: no equivalent).
IGNORED_KEYS: dict[str, str | None] = {
    "SQLALCHEMY_POOL_SIZE": "pool_size",
    "SQLALCHEMY_POOL_TIMEOUT": "pool_timeout",
    "SQLALCHEMY_POOL_RECYCLE": "pool_recycle",
    "SQLALCHEMY_MAX_OVERFLOW": "max_overflow",
    "SQLALCHEMY_NATIVE_UNICODE": None,
    COMMIT_ON_TEARDOWN: None,
}
#: engine option -> its key in tracker.registry's pool configuration
_POOL_VALUE = {"pool_size": "size", "pool_timeout": "timeout", "pool_recycle": "recycle",
               "max_overflow": "max_overflow"}
SIGNALS = ("models_committed", "before_models_committed")


def is_flask_app(obj: Any) -> bool:
    flask = sys.modules.get("flask")
    return flask is not None and isinstance(obj, flask.Flask)


def is_flask_sqlalchemy(obj: Any) -> bool:
    module = sys.modules.get("flask_sqlalchemy")
    return module is not None and isinstance(obj, module.SQLAlchemy)


def flask_sqlalchemy_version() -> tuple[int, ...]:
    """The installed Flask-SQLAlchemy's version, e.g. ``(3, 1, 1)``."""
    from importlib import metadata

    try:
        text = metadata.version("flask-sqlalchemy")
    except metadata.PackageNotFoundError:  # vendored or renamed: tell by its modules
        modern = importlib.util.find_spec("flask_sqlalchemy.track_modifications")
        return (3,) if modern is not None else (2,)
    match = re.match(r"\d+(?:\.\d+)*", text)
    return tuple(int(part) for part in match.group().split(".")) if match else (3,)


def _version_text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def extension_of(app: Any) -> Any:
    """The app's Flask-SQLAlchemy instance, or None."""
    ext = app.extensions.get("sqlalchemy")
    # 2.x registered a _SQLAlchemyState holding the instance as .db
    return ext.db if type(ext).__name__ == "_SQLAlchemyState" else ext


def apps_of(db: Any) -> list[Any]:
    """The Flask apps a Flask-SQLAlchemy instance serves: the current app when it is
    one of them, else every app ``init_app`` registered (3.x) or the app it was
    created with (2.x). ``[]`` when none is known."""
    flask = sys.modules["flask"]
    if flask.has_app_context():
        current = flask.current_app._get_current_object()
        if extension_of(current) is db:
            return [current]
    registered = getattr(db, "_app_engines", None)  # 3.x: a WeakKeyDictionary by app
    if registered is not None:
        return list(registered.keys())
    app = getattr(db, "app", None)
    return [app] if app is not None else []


def flask_engines(app: Any, db: Any) -> dict[str | None, Engine]:
    """The app's engines by bind key (None: the default engine)."""
    with app.app_context():
        if isinstance(getattr(type(db), "engines", None), property):  # 3.x
            return dict(db.engines)
        engines = {None: db.get_engine(app)}  # 2.x
        for key in app.config.get("SQLALCHEMY_BINDS") or {}:
            engines[key] = db.get_engine(app, bind=key)
        return engines


def flask_metadatas(db: Any) -> dict[str | None, Any]:
    """The extension's MetaData objects by bind key."""
    metadatas = getattr(db, "metadatas", None)  # 3.x
    return dict(metadatas) if metadatas is not None else {None: db.metadata}


def flask_findings(app: Any, db: Any = None,
                   engines: Mapping[str | None, Engine] | None = None) -> list[Finding]:
    """The Flask-SQLAlchemy rules for one Flask app: flask-track-modifications,
    flask-ignored-config-key, flask-record-queries. ``db`` defaults to the app's
    extension and ``engines`` to its engines (the ignored keys are shown beside the
    values the default engine really uses). The engine rules are not included: run
    :func:`tracker.checks.engine_findings` on each engine."""
    if db is None:
        db = extension_of(app)
    if engines is None:
        engines = flask_engines(app, db) if db is not None else {}
    version = flask_sqlalchemy_version()
    found = []
    track = check_track_modifications(app, version)
    if track is not None:
        found.append(track)
    engine = engines.get(None) or next(iter(engines.values()), None)
    found.extend(check_ignored_config_keys(app, version, engine))
    record = check_record_queries(app)
    if record is not None:
        found.append(record)
    return found


def _app_evidence(app: Any, version: tuple[int, ...], **values: Any) -> dict[str, Any]:
    return {"app": app.import_name, "flask_sqlalchemy": _version_text(version), **values}


def check_track_modifications(app: Any, version: tuple[int, ...]) -> Finding | None:
    """flask-track-modifications: modification tracking on (3.x: only when set true;
    2.x: also when unset). Lists the receivers of models_committed and
    before_models_committed for this app: none → safe to turn off; some → they need
    it (reported at info severity: keeping it is then a choice, not a mistake)."""
    configured = app.config.get(TRACK)
    if version >= (3,):
        on = bool(configured)
    else:
        on = configured is None or bool(configured)
    if not on:
        return None
    flask_sa = f"Flask-SQLAlchemy {_version_text(version)}"
    if configured is None:
        state = (f"{TRACK} is unset on Flask app '{app.import_name}', which {flask_sa} "
                 f"takes as on")
    else:
        state = (f"{TRACK} is {render.literal(configured)} on Flask app "
                 f"'{app.import_name}' ({flask_sa})")
    receivers = signal_receivers(app)
    listening = {signal: names for signal, names in receivers.items() if names}
    evidence = _app_evidence(app, version, configured=render.plain(configured),
                             effective=True, receivers=receivers,
                             safe_to_disable=not listening)
    cost = (f"{state}: every object inserted, updated or deleted in a session is recorded "
            f"until the commit (memory for each changed object, time at every flush) to "
            f"send the models_committed and before_models_committed signals.")
    if not listening:
        evidence["fix_code"] = f'app.config["{TRACK}"] = False'
        message = (f"{cost} No receiver is connected to either signal: it is safe to turn "
                   f"off ({TRACK} = False).")
        return Finding("flask-track-modifications", message, evidence)
    evidence["fix_code"] = (
        "from sqlalchemy import event\n\n"
        '@event.listens_for(db.session, "after_commit")\n'
        "def after_commit(session):\n"
        "    ...  # what the receivers do, on SQLAlchemy's own event\n"
        f'# then: app.config["{TRACK}"] = False')
    named = "; ".join(f"{signal} → {', '.join(names)}" for signal, names in listening.items())
    message = (f"{cost} Receivers depend on it: {named}. Keep it on, or move them to "
               f"SQLAlchemy's session events (after_commit, before_flush) and then turn it "
               f"off.")
    return Finding("flask-track-modifications", message, evidence, severity=INFO)


def signal_receivers(app: Any) -> dict[str, list[str]]:
    """Qualified names of the receivers of Flask-SQLAlchemy's models_committed and
    before_models_committed signals that would be called for ``app`` (sorted)."""
    try:  # 3.x keeps the signals in their own module, 2.x at the package's top
        module = importlib.import_module("flask_sqlalchemy.track_modifications")
    except ImportError:
        module = importlib.import_module("flask_sqlalchemy")
    found: dict[str, list[str]] = {}
    for name in SIGNALS:
        signal = getattr(module, name, None)
        receivers = signal.receivers_for(app) if signal is not None else ()
        found[name] = sorted({qualified_name(receiver) for receiver in receivers})
    return found


def qualified_name(fn: Any) -> str:
    """``package.module.function`` (``Class.method`` for methods) of a callable."""
    if isinstance(fn, functools.partial):
        return f"functools.partial({qualified_name(fn.func)})"
    func = getattr(fn, "__func__", fn)  # bound method → its function
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(qualname, str):  # a callable instance
        cls = type(func)
        return f"{cls.__module__}.{cls.__qualname__}"
    return f"{getattr(func, '__module__', '?')}.{qualname}"


def check_ignored_config_keys(app: Any, version: tuple[int, ...],
                              engine: Engine | None) -> list[Finding]:
    """flask-ignored-config-key: keys set (not None) that 3.x does not read. The pool
    keys are one warning with the configured value beside the engine's real one and
    the SQLALCHEMY_ENGINE_OPTIONS dict to use (an option the engine's pool does not
    take, such as pool_size on StaticPool, is left out of it: create_engine() would
    refuse it); SQLALCHEMY_COMMIT_ON_TEARDOWN set true is its own error (nothing
    commits at teardown any more: the writes are lost)."""
    if version < (3,):
        return []
    config = app.config
    flask_sa = f"Flask-SQLAlchemy {_version_text(version)}"
    options = dict(config.get(ENGINE_OPTIONS) or {})
    merged = dict(options)
    keys: dict[str, dict[str, Any]] = {}
    parts = []
    for key, option in IGNORED_KEYS.items():
        value = config.get(key)
        if value is None or key == COMMIT_ON_TEARDOWN:
            continue
        entry: dict[str, Any] = {"configured": render.plain(value), "option": option}
        shown = f"{key}={render.literal(value)}"
        if option is None:
            parts.append(f"{shown} (no equivalent: SQLAlchemy 2 always returns str)")
        elif option in options:
            entry["engine_options"] = render.plain(options[option], option)
            parts.append(f"{shown} ({ENGINE_OPTIONS} already sets {option}="
                         f"{render.literal(options[option], option)}, which the engine uses)")
        else:
            actual = _pool_value(engine, option)
            entry["engine"] = actual
            if actual is None:
                pool = type(engine.pool).__name__ if engine is not None else "no engine"
                parts.append(f"{shown} (the engine's {pool} takes no {option})")
            else:
                merged[option] = value
                never = " (never)" if option == "pool_recycle" and actual == -1 else ""
                parts.append(f"{shown} (the engine's {option} is {actual!r}{never})")
        keys[key] = entry
    found = []
    if keys:
        dead = ", ".join(keys)
        if merged != options:
            fix = (f'app.config["{ENGINE_OPTIONS}"] = {render.dict_literal(merged)}\n'
                   f"# and delete {dead}")
            advice = (f"Set {ENGINE_OPTIONS} = {render.dict_literal(merged)} and delete "
                      f"{dead}.")
        else:
            fix = f"# delete {dead} from the configuration"
            advice = f"Delete {dead}."
        message = (f"{flask_sa} ignores {'; '.join(parts)} on Flask app "
                   f"'{app.import_name}'. {advice}")
        evidence = _app_evidence(app, version, keys=keys,
                                 engine_options=render.plain(merged), fix_code=fix)
        found.append(Finding("flask-ignored-config-key", message, evidence))
    commit = config.get(COMMIT_ON_TEARDOWN)
    if commit:
        message = (
            f"{COMMIT_ON_TEARDOWN}={render.literal(commit)} on Flask app "
            f"'{app.import_name}' is ignored by {flask_sa}: nothing commits the session "
            f"when a request ends, so changes the code leaves for teardown to commit are "
            f"rolled back and lost. Call db.session.commit() after the writes, and delete "
            f"the key.")
        evidence = _app_evidence(
            app, version,
            keys={COMMIT_ON_TEARDOWN: {"configured": render.plain(commit), "option": None}},
            fix_code="db.session.add(order)\n"
                     f"db.session.commit()  # {COMMIT_ON_TEARDOWN} no longer does this")
        found.append(Finding("flask-ignored-config-key", message, evidence, severity=ERROR))
    return found


def _pool_value(engine: Engine | None, option: str) -> Any:
    """What the engine's pool really uses for a create_engine() option; None when its
    pool class does not take that option."""
    if engine is None:
        return None
    return pool_config(engine.pool).get(_POOL_VALUE[option])


def check_record_queries(app: Any) -> Finding | None:
    """flask-record-queries: SQLALCHEMY_RECORD_QUERIES true while neither DEBUG nor
    TESTING is on (both versions only record outside those when it is set true)."""
    value = app.config.get(RECORD)
    if not value or app.debug or app.testing:
        return None
    message = (
        f"{RECORD} is {value!r} on Flask app '{app.import_name}' while DEBUG and TESTING "
        f"are off: Flask-SQLAlchemy keeps every statement of each request in memory "
        f"with its parameters, duration and calling code, slowing every statement. "
        f"Enable it only in development or tests: {RECORD} = app.debug.")
    evidence = {"app": app.import_name, "configured": render.plain(value), "debug": app.debug,
                "testing": app.testing, "fix_code": f'app.config["{RECORD}"] = app.debug'}
    return Finding("flask-record-queries", message, evidence)


def engine_options_fix(app: Any, bind_key: str | None, set_options: Mapping[str, Any],
                       remove: list[str]) -> str:
    """The Flask configuration that applies an engine finding's fix (its
    ``fix_options`` / ``fix_remove``) to the engine of ``bind_key``."""
    config = app.config
    lines = []
    set_options = dict(set_options)
    if bind_key is None:
        current = dict(config.get(ENGINE_OPTIONS) or {})
        target = f'app.config["{ENGINE_OPTIONS}"]'
    else:
        bind = (config.get("SQLALCHEMY_BINDS") or {}).get(bind_key)
        current = dict(bind) if isinstance(bind, Mapping) else {"url": bind}
        target = f'app.config["SQLALCHEMY_BINDS"]["{bind_key}"]'
    if "echo" in set_options and "echo" not in current and config.get("SQLALCHEMY_ECHO"):
        # SQLALCHEMY_ECHO is the default of every engine's echo (binds included)
        lines.append(f'app.config["SQLALCHEMY_ECHO"] = {set_options.pop("echo")!r}')
    if "url" in current and current["url"] is not None:
        current["url"] = make_url(current["url"]).render_as_string(hide_password=True)
    if set_options or remove or not lines:
        merged = {key: value for key, value in current.items() if key not in remove}
        merged.update(set_options)
        imports = render.imports_for(merged)
        lines.insert(0, f"{imports}{target} = {render.dict_literal(merged)}")
    return "\n".join(lines)

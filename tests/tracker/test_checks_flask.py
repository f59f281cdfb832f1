"""The Flask-SQLAlchemy rules (tracker.checks.flask_app) and ``python -m tracker check``
on Flask targets. Flask and Flask-SQLAlchemy are test dependencies (requirements.txt and
the SQLAlchemy 2.0 venv of .ci/test), never the agent's."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from tests.tracker.test_checks import TARGETS, by_rule, only, run_check
from tracker import rules

flask = pytest.importorskip("flask", reason="Flask is a test dependency (requirements.txt)")
flask_sqlalchemy = pytest.importorskip("flask_sqlalchemy",
                                       reason="Flask-SQLAlchemy is a test dependency")

from tracker.checks import check_target, flask_findings  # noqa: E402
from tracker.checks import flask_app as flask_checks  # noqa: E402

VERSION = ".".join(map(str, flask_checks.flask_sqlalchemy_version()))

def make_app(name="shop", uri="sqlite://", **config):
    app = flask.Flask(name)
    app.config["SQLALCHEMY_DATABASE_URI"] = uri
    app.config.update(config)
    db = flask_sqlalchemy.SQLAlchemy(app)
    return app, db


def test_track_modifications_on_with_no_receiver_is_safe_to_turn_off():
    app, _ = make_app(SQLALCHEMY_TRACK_MODIFICATIONS=True)
    finding = only(flask_findings(app), "flask-track-modifications")
    assert finding.severity == "warning"
    assert finding.message == (
        f"SQLALCHEMY_TRACK_MODIFICATIONS is True on Flask app 'shop' (Flask-SQLAlchemy "
        f"{VERSION}): every object inserted, updated or deleted in a session is recorded "
        f"until the commit (memory for each changed object, time at every flush) to send "
        f"the models_committed and before_models_committed signals. No receiver is "
        f"connected to either signal: it is safe to turn off "
        f"(SQLALCHEMY_TRACK_MODIFICATIONS = False).")
    assert finding.evidence == {
        "app": "shop", "flask_sqlalchemy": VERSION, "configured": True, "effective": True,
        "receivers": {"models_committed": [], "before_models_committed": []},
        "safe_to_disable": True,
        "fix_code": 'app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False',
    }


class Search:
    def reindex(self, sender, changes):
        pass


def audit(sender, changes):
    pass


def test_track_modifications_names_the_receivers_that_depend_on_it():
    from flask_sqlalchemy.track_modifications import (before_models_committed,
                                                      models_committed)

    app, _ = make_app(SQLALCHEMY_TRACK_MODIFICATIONS=True)
    other, _ = make_app("other")
    search = Search()
    models_committed.connect(audit)                           # every app
    before_models_committed.connect(search.reindex, sender=app)
    models_committed.connect(audit, sender=other)             # another app only
    try:
        finding = only(flask_findings(app), "flask-track-modifications")
    finally:
        models_committed.disconnect(audit)
        before_models_committed.disconnect(search.reindex)
    assert finding.severity == "info"
    assert finding.message.endswith(
        "signals. Receivers depend on it: models_committed → tests.tracker."
        "test_checks_flask.audit; before_models_committed → tests.tracker."
        "test_checks_flask.Search.reindex. Keep it on, or move them to SQLAlchemy's "
        "session events (after_commit, before_flush) and then turn it off.")
    assert finding.evidence["receivers"] == {
        "models_committed": ["tests.tracker.test_checks_flask.audit"],
        "before_models_committed": ["tests.tracker.test_checks_flask.Search.reindex"]}
    assert finding.evidence["safe_to_disable"] is False


def test_track_modifications_off_is_quiet():
    unset, _ = make_app()             # 3.x: off unless set
    off, _ = make_app(SQLALCHEMY_TRACK_MODIFICATIONS=False)
    assert unset.config["SQLALCHEMY_TRACK_MODIFICATIONS"] is False
    assert by_rule(flask_findings(unset), "flask-track-modifications") == []
    assert by_rule(flask_findings(off), "flask-track-modifications") == []


def test_track_modifications_unset_on_flask_sqlalchemy_2(monkeypatch):
    # 2.x left the key None and tracked (with a warning); 3.x reads None as off
    app, _ = make_app()
    app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = None
    assert by_rule(flask_findings(app), "flask-track-modifications") == []
    monkeypatch.setattr(flask_checks, "flask_sqlalchemy_version", lambda: (2, 5, 1))
    finding = only(flask_findings(app), "flask-track-modifications")
    assert finding.message.startswith(
        "SQLALCHEMY_TRACK_MODIFICATIONS is unset on Flask app 'shop', which "
        "Flask-SQLAlchemy 2.5.1 takes as on: every object inserted")
    assert finding.evidence["configured"] is None
    # 2.x still reads the pool keys (deprecated): not reported as ignored there
    app.config["SQLALCHEMY_POOL_SIZE"] = 20
    assert by_rule(flask_findings(app), "flask-ignored-config-key") == []


def test_ignored_keys_beside_the_engines_real_values(tmp_path):
    app, db = make_app(uri=f"sqlite:///{tmp_path}/shop.db", SQLALCHEMY_POOL_SIZE=20,
                       SQLALCHEMY_POOL_TIMEOUT=10, SQLALCHEMY_MAX_OVERFLOW=5,
                       SQLALCHEMY_POOL_RECYCLE=280, SQLALCHEMY_NATIVE_UNICODE=False,
                       SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True})
    finding = only(flask_findings(app), "flask-ignored-config-key")
    options = ('{"pool_pre_ping": True, "pool_size": 20, "pool_timeout": 10, '
               '"pool_recycle": 280, "max_overflow": 5}')
    keys = ("SQLALCHEMY_POOL_SIZE, SQLALCHEMY_POOL_TIMEOUT, SQLALCHEMY_POOL_RECYCLE, "
            "SQLALCHEMY_MAX_OVERFLOW, SQLALCHEMY_NATIVE_UNICODE")
    assert finding.severity == "warning"
    assert finding.message == (
        f"Flask-SQLAlchemy {VERSION} ignores SQLALCHEMY_POOL_SIZE=20 (the engine's "
        f"pool_size is 5); SQLALCHEMY_POOL_TIMEOUT=10 (the engine's pool_timeout is 30.0); "
        f"SQLALCHEMY_POOL_RECYCLE=280 (the engine's pool_recycle is -1 (never)); "
        f"SQLALCHEMY_MAX_OVERFLOW=5 (the engine's max_overflow is 10); "
        f"SQLALCHEMY_NATIVE_UNICODE=False (no equivalent: SQLAlchemy 2 always returns "
        f"str) on Flask app 'shop'. Set SQLALCHEMY_ENGINE_OPTIONS = {options} and delete "
        f"{keys}.")
    assert finding.evidence["keys"] == {
        "SQLALCHEMY_POOL_SIZE": {"configured": 20, "option": "pool_size", "engine": 5},
        "SQLALCHEMY_POOL_TIMEOUT": {"configured": 10, "option": "pool_timeout",
                                    "engine": 30.0},
        "SQLALCHEMY_POOL_RECYCLE": {"configured": 280, "option": "pool_recycle",
                                    "engine": -1},
        "SQLALCHEMY_MAX_OVERFLOW": {"configured": 5, "option": "max_overflow",
                                    "engine": 10},
        "SQLALCHEMY_NATIVE_UNICODE": {"configured": False, "option": None},
    }
    assert finding.evidence["fix_code"] == (
        f'app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {options}\n# and delete {keys}')
    # the fix does what it says: an app configured with it gets that pool
    fixed, fixed_db = make_app("fixed", uri=f"sqlite:///{tmp_path}/shop.db",
                               SQLALCHEMY_ENGINE_OPTIONS=finding.evidence["engine_options"])
    with fixed.app_context():
        pool = fixed_db.engine.pool
        assert (pool.size(), pool.timeout(), pool._recycle, pool._max_overflow,
                pool._pre_ping) == (20, 10, 280, 5, True)
        assert flask_findings(fixed) == []


def test_ignored_pool_size_on_a_pool_without_one():
    # sqlite:// gets StaticPool from Flask-SQLAlchemy: create_engine would refuse
    # pool_size, so the fix drops it instead of moving it
    app, _ = make_app(SQLALCHEMY_POOL_SIZE=20)
    finding = only(flask_findings(app), "flask-ignored-config-key")
    assert finding.message == (
        f"Flask-SQLAlchemy {VERSION} ignores SQLALCHEMY_POOL_SIZE=20 (the engine's "
        f"StaticPool takes no pool_size) on Flask app 'shop'. Delete SQLALCHEMY_POOL_SIZE.")
    assert finding.evidence["fix_code"] == "# delete SQLALCHEMY_POOL_SIZE from the configuration"


def test_ignored_key_already_in_engine_options():
    app, _ = make_app(SQLALCHEMY_POOL_RECYCLE=280,
                      SQLALCHEMY_ENGINE_OPTIONS={"pool_recycle": 120})
    finding = only(flask_findings(app), "flask-ignored-config-key")
    assert finding.message == (
        f"Flask-SQLAlchemy {VERSION} ignores SQLALCHEMY_POOL_RECYCLE=280 "
        f"(SQLALCHEMY_ENGINE_OPTIONS already sets pool_recycle=120, which the engine uses) "
        f"on Flask app 'shop'. Delete SQLALCHEMY_POOL_RECYCLE.")


def test_commit_on_teardown_is_an_error():
    app, _ = make_app(SQLALCHEMY_COMMIT_ON_TEARDOWN=True)
    finding = only(flask_findings(app), "flask-ignored-config-key")
    assert finding.severity == "error"
    assert finding.message == (
        f"SQLALCHEMY_COMMIT_ON_TEARDOWN=True on Flask app 'shop' is ignored by "
        f"Flask-SQLAlchemy {VERSION}: nothing commits the session when a request ends, so "
        f"changes the code leaves for teardown to commit are rolled back and lost. Call "
        f"db.session.commit() after the writes, and delete the key.")


def test_ignored_keys_near_misses():
    # the same intent the 3.x way, and old keys left None or off
    app, _ = make_app(SQLALCHEMY_ENGINE_OPTIONS={"pool_recycle": 280},
                      SQLALCHEMY_POOL_SIZE=None, SQLALCHEMY_COMMIT_ON_TEARDOWN=False)
    assert flask_findings(app) == []


def test_record_queries_outside_debug_and_testing():
    app, _ = make_app(SQLALCHEMY_RECORD_QUERIES=True)
    finding = only(flask_findings(app), "flask-record-queries")
    assert finding.message == (
        "SQLALCHEMY_RECORD_QUERIES is True on Flask app 'shop' while DEBUG and TESTING are "
        "off: Flask-SQLAlchemy keeps every statement of each request in memory with its "
        "parameters, duration and calling code, slowing every statement. Enable it only "
        "in development or tests: SQLALCHEMY_RECORD_QUERIES = app.debug.")
    assert finding.evidence == {
        "app": "shop", "configured": True, "debug": False, "testing": False,
        "fix_code": 'app.config["SQLALCHEMY_RECORD_QUERIES"] = app.debug'}


@pytest.mark.parametrize("config", [{"TESTING": True}, {"DEBUG": True},
                                    {"SQLALCHEMY_RECORD_QUERIES": False}])
def test_record_queries_near_misses(config):
    app, _ = make_app(**{"SQLALCHEMY_RECORD_QUERIES": True, **config})
    assert flask_findings(app) == []


def test_flask_engine_fixes_are_flask_configuration():
    app, db = make_app(uri="mysql+pymysql://app:pw@db.example/shop",
                       SQLALCHEMY_BINDS={"reports": "postgresql+psycopg://r:pw@pg.example/r"},
                       SQLALCHEMY_ENGINE_OPTIONS={"pool_size": 10,
                                                  "connect_args": {"password": "x"}})
    report = check_target(app, read_server=False)
    recycle = [f for f in report.findings if f.rule == "mysql-pool-recycle"]
    assert recycle == []  # Flask-SQLAlchemy sets pool_recycle=7200 for MySQL
    pre_ping = {f.evidence["bind"]: f.evidence["fix_code"]
                for f in report.findings if f.rule == "no-pre-ping"}
    assert pre_ping == {
        None: 'app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 10, '
              '"connect_args": {"password": "••••••"}, "pool_pre_ping": True}',
        "reports": 'app.config["SQLALCHEMY_BINDS"]["reports"] = {"url": '
                   '"postgresql+psycopg://r:***@pg.example/r", "pool_pre_ping": True}',
    }



# -- python -m tracker check on Flask targets ------------------------------------------

def test_cli_flask_app_json_exits_1_on_an_error():
    from tests.tracker.check_targets import flask_app as target

    done = run_check(f"{TARGETS}.flask_app:app", "--json", "--no-server")
    assert (done.returncode, done.stderr) == (1, "")
    report = json.loads(done.stdout)
    file_url = f"sqlite:///{target.DATABASE}"
    memory_url = sa.make_url("sqlite:///:memory:").render_as_string(hide_password=True)
    assert report["counts"] == {"error": 1, "warning": 4, "info": 2}
    assert report["status"] == 1
    assert report["checked"] == [
        f"Flask app '{TARGETS}.flask_app'",
        f"engine {memory_url} (bind 'reports'): StaticPool",
        f"engine {file_url}: QueuePool",
        "db.metadata (1 table)",
    ]
    path = "tests/tracker/check_targets/flask_app.py"
    assert [(f["severity"], f["rule"], f["location"]) for f in report["findings"]] == [
        ("error", "flask-ignored-config-key", f"{path}:19"),       # COMMIT_ON_TEARDOWN
        ("warning", "echo-on", f"{path}:22"),                      # SQLALCHEMY_ECHO
        ("warning", "echo-on", f"{path}:22"),
        ("warning", "flask-ignored-config-key", f"{path}:17"),     # POOL_SIZE
        ("warning", "flask-record-queries", f"{path}:21"),
        ("info", "flask-track-modifications", f"{path}:20"),
        ("info", "metadata-naming-convention", f"{path}:24"),      # db = SQLAlchemy(app)
    ]
    pool_keys = report["findings"][3]
    assert pool_keys["message"] == (
        f"Flask-SQLAlchemy {VERSION} ignores SQLALCHEMY_POOL_SIZE=20 (the engine's "
        f"pool_size is 5); SQLALCHEMY_POOL_RECYCLE=280 (the engine's pool_recycle is -1 "
        f"(never)) on Flask app '{TARGETS}.flask_app'. Set SQLALCHEMY_ENGINE_OPTIONS = "
        f'{{"pool_size": 20, "pool_recycle": 280}} and delete SQLALCHEMY_POOL_SIZE, '
        f"SQLALCHEMY_POOL_RECYCLE.")
    assert pool_keys["fix_code"] == (
        'app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 20, "pool_recycle": 280}\n'
        "# and delete SQLALCHEMY_POOL_SIZE, SQLALCHEMY_POOL_RECYCLE")
    assert pool_keys["title"] == rules.RULES["flask-ignored-config-key"].title
    assert pool_keys["docs"] == "docs/findings.md#flask-ignored-config-key"
    assert report["findings"][1]["fix_code"] == 'app.config["SQLALCHEMY_ECHO"] = False'
    track = report["findings"][5]
    assert track["evidence"]["receivers"] == {
        "models_committed": [f"{TARGETS}.flask_app.reindex_orders"],
        "before_models_committed": []}


def test_cli_flask_sqlalchemy_instance_and_clean_app_exit_0():
    done = run_check(f"{TARGETS}.flask_clean:db")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"Checked {TARGETS}.flask_clean:db:\n"
        f"  Flask app '{TARGETS}.flask_clean'\n"
        "  engine sqlite://: StaticPool\n"
        "  db.metadata (1 table)\n"
        "\n"
        "No findings: exit status 0\n")


@pytest.mark.parametrize("target, message", [
    (f"{TARGETS}.flask_orphan:db",
     f"{TARGETS}.flask_orphan:db is a Flask-SQLAlchemy instance with no Flask app: it was "
     f"never given to init_app(), or its app is gone. Point at the Flask app instead "
     f"(module:app, or module:create_app())."),
    (f"{TARGETS}.flask_orphan:app",
     f"Flask app '{TARGETS}.flask_orphan' has no Flask-SQLAlchemy extension "
     f"(app.extensions['sqlalchemy'] is missing: call db.init_app(app) first)"),
])
def test_cli_bad_flask_target_exits_2(target, message):
    done = run_check(target)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"python -m tracker check: {message}\n"

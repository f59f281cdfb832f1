"""Configuration checks (tracker.checks) and ``python -m tracker check``.

Every rule has a scenario that must trigger it and a near-miss twin that must stay
quiet; messages, evidence and fixes are asserted exactly. MySQL's pool_recycle and the
server settings are checked against the real MariaDB and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.pool import NullPool, SingletonThreadPool, StaticPool

from tests import services
from tracker import rules
from tracker.checks import engine_findings, metadata_findings, server_settings

ROOT = Path(__file__).resolve().parents[2]
TARGETS = "tests.tracker.check_targets"


def by_rule(findings, rule_id):
    return [finding for finding in findings if finding.rule == rule_id]


def only(findings, rule_id):
    matching = by_rule(findings, rule_id)
    assert len(matching) == 1, [f.rule for f in findings]
    return matching[0]


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# -- mysql-pool-recycle (real MariaDB) -------------------------------------------------

def mariadb_global(name: str) -> int:
    """A server variable read without SQLAlchemy, to compare with what checks read."""
    import pymysql

    url = sa.make_url(services.MARIADB_URL)
    connection = pymysql.connect(host=url.host, port=url.port or 3306,
                                 user=url.username, password=url.password or "",
                                 database=url.database)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT @@GLOBAL.{name}")
            return int(cursor.fetchone()[0])
    finally:
        connection.close()


@pytest.fixture
def mariadb():
    services.require("mariadb")
    engines = []

    def make(**options):
        engine = sa.create_engine(services.MARIADB_URL, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


# the server closes these engines' connections after 300 s idle (their own sessions
# only: the server's global setting is untouched)
SHORT_WAIT = {"connect_args": {"init_command": "SET SESSION wait_timeout=300"}}


def test_mysql_pool_recycle_unset_names_the_servers_wait_timeout(mariadb):
    engine = mariadb()
    wait_timeout = mariadb_global("wait_timeout")
    server = server_settings(engine)
    assert server["wait_timeout"] == wait_timeout
    finding = only(engine_findings(engine, server), "mysql-pool-recycle")
    url = url_of(engine)
    recycle = wait_timeout - min(300, wait_timeout // 10)
    assert finding.severity == "warning"
    assert finding.message == (
        f"pool_recycle is not set on {url}, so pooled connections are kept however long "
        f"they sit idle, and the server's wait_timeout is {wait_timeout} s: a connection "
        f"idle longer than that is closed by the server and fails on its next use "
        f"('MySQL server has gone away'). Set pool_recycle={recycle}.")
    assert finding.evidence == {
        "url": url, "dialect": "mysql", "pool": "QueuePool", "pool_recycle": -1,
        "wait_timeout": wait_timeout, "pre_ping": False,
        "fix_options": {"pool_recycle": recycle, "pool_pre_ping": True},
        "fix_remove": [],
        "fix_code": f'engine = create_engine("{url}", pool_recycle={recycle}, '
                    f'pool_pre_ping=True)',
    }


def test_mysql_pool_recycle_not_below_wait_timeout_is_an_error(mariadb):
    engine = mariadb(pool_recycle=300, **SHORT_WAIT)
    server = server_settings(engine)
    assert server["wait_timeout"] == 300
    finding = only(engine_findings(engine, server), "mysql-pool-recycle")
    url = url_of(engine)
    assert finding.severity == "error"
    assert finding.message == (
        f"pool_recycle=300 on {url} is not below the server's wait_timeout of 300 s: a "
        f"connection idle for 300 s is closed by the server and fails on its next use "
        f"('MySQL server has gone away'), before the pool recycles it at 300 s. Set "
        f"pool_recycle=270.")
    assert finding.evidence["fix_code"] == (
        f'engine = create_engine("{url}", pool_recycle=270, pool_pre_ping=True)')
    assert (finding.evidence["pool_recycle"], finding.evidence["wait_timeout"]) == (300, 300)


def test_mysql_pool_recycle_not_below_wait_timeout_with_pre_ping_is_a_warning(mariadb):
    # pre-ping catches the dead connection at checkout: a reconnect, not an error
    engine = mariadb(pool_recycle=600, pool_pre_ping=True, **SHORT_WAIT)
    finding = only(engine_findings(engine, server_settings(engine)), "mysql-pool-recycle")
    url = url_of(engine)
    assert finding.severity == "warning"
    assert finding.message == (
        f"pool_recycle=600 on {url} is not below the server's wait_timeout of 300 s: a "
        f"connection idle for 300 s is closed by the server, and pool_pre_ping has to "
        f"replace it at checkout (a failed round trip and a reconnect), before the pool "
        f"recycles it at 600 s. Set pool_recycle=270.")
    assert finding.evidence["fix_code"] == (
        f'engine = create_engine("{url}", pool_recycle=270)')


def test_mysql_pool_recycle_below_wait_timeout_is_quiet(mariadb):
    engine = mariadb(pool_recycle=299, pool_pre_ping=True, **SHORT_WAIT)
    server = server_settings(engine)
    assert server["wait_timeout"] == 300
    assert engine_findings(engine, server) == []


def test_mysql_pool_recycle_unset_with_the_server_unknown():
    engine = sa.create_engine("mariadb+pymysql://app:s3cret@db.example:3306/shop",
                              pool_pre_ping=True)
    url = "mariadb+pymysql://app:***@db.example:3306/shop"
    assert url_of(engine) == url
    finding = only(engine_findings(engine, None), "mysql-pool-recycle")
    assert finding.message == (
        f"pool_recycle is not set on {url}, so pooled connections are kept however long "
        f"they sit idle; the server's wait_timeout is unknown (server settings: not "
        f"read). A connection idle longer than wait_timeout (MySQL's default is 28800 s) "
        f"is closed by the server, and pool_pre_ping has to replace it at checkout (a "
        f"failed round trip and a reconnect). Set pool_recycle below the server's "
        f"wait_timeout (SELECT @@wait_timeout).")
    assert finding.evidence["fix_code"] == (
        f'engine = create_engine("{url}", pool_recycle=28500)')
    failed = only(engine_findings(engine, {"error": "OperationalError: refused"}),
                  "mysql-pool-recycle")
    assert "wait_timeout is unknown (server settings; OperationalError: refused)" \
        in failed.message
    assert failed.evidence["server_error"] == "OperationalError: refused"


def test_mysql_pool_recycle_near_misses_without_a_server():
    # recycle set, wait_timeout unknown: nothing can be said
    assert engine_findings(sa.create_engine("mysql+pymysql://u@h/db", pool_recycle=280,
                                            pool_pre_ping=True)) == []
    # NullPool keeps no connection: nothing goes stale, nothing to ping
    assert engine_findings(sa.create_engine("mysql+pymysql://u@h/db", poolclass=NullPool),
                           {"wait_timeout": 300}) == []
    # not MySQL
    assert by_rule(engine_findings(sa.create_engine("postgresql+psycopg://u@h/db"),
                                   {"wait_timeout": 300}), "mysql-pool-recycle") == []


# -- no-pre-ping -------------------------------------------------------------------------

def test_no_pre_ping_on_a_network_database():
    engine = sa.create_engine("postgresql+psycopg://app:pw@db.example/shop")
    finding = only(engine_findings(engine), "no-pre-ping")
    url = "postgresql+psycopg://app:***@db.example/shop"
    assert finding.severity == "info"
    assert finding.message == (
        f"pool_pre_ping is off on {url} (QueuePool): a pooled connection that the server "
        f"or a proxy closed (restart, failover, idle timeout) is handed to the "
        f"application and its first statement fails. Set pool_pre_ping=True.")
    assert finding.evidence == {
        "url": url, "dialect": "postgresql", "pool": "QueuePool", "pre_ping": False,
        "fix_options": {"pool_pre_ping": True}, "fix_remove": [],
        "fix_code": f'engine = create_engine("{url}", pool_pre_ping=True)',
    }


def test_no_pre_ping_near_misses(tmp_path):
    assert engine_findings(sa.create_engine("postgresql+psycopg://u@h/db",
                                            pool_pre_ping=True)) == []
    assert engine_findings(sa.create_engine("postgresql+psycopg://u@h/db",
                                            poolclass=NullPool)) == []
    assert engine_findings(sa.create_engine(f"sqlite:///{tmp_path}/app.db")) == []


# -- sqlite-memory-pool / sqlite-file-pool ------------------------------------------------

def test_sqlite_memory_without_static_pool():
    engine = sa.create_engine("sqlite://")
    assert isinstance(engine.pool, SingletonThreadPool)
    finding = only(engine_findings(engine), "sqlite-memory-pool")
    assert finding.severity == "warning"
    assert finding.message == (
        "sqlite:// is an in-memory SQLite database on SingletonThreadPool: each "
        "connection is a different, empty database, so another thread (or a replaced "
        "connection) sees no tables and no data. Use poolclass=StaticPool with "
        "connect_args={'check_same_thread': False}.")
    assert finding.evidence == {
        "url": "sqlite://", "dialect": "sqlite", "pool": "SingletonThreadPool",
        "fix_options": {"poolclass": "StaticPool",
                        "connect_args": {"check_same_thread": False}},
        "fix_remove": [],
        "fix_code": 'from sqlalchemy.pool import StaticPool\n'
                    'engine = create_engine("sqlite://", poolclass=StaticPool, '
                    'connect_args={"check_same_thread": False})',
    }
    uri = sa.create_engine("sqlite:///file:scratch?mode=memory&uri=true", poolclass=NullPool)
    assert only(engine_findings(uri), "sqlite-memory-pool").evidence["pool"] == "NullPool"


def test_sqlite_memory_near_misses():
    assert engine_findings(sa.create_engine("sqlite://", poolclass=StaticPool)) == []
    # a shared-cache memory database is the same database for every connection (and
    # not a file: neither sqlite rule applies)
    shared = sa.create_engine("sqlite:///file:scratch?mode=memory&cache=shared&uri=true",
                              poolclass=SingletonThreadPool)
    assert engine_findings(shared) == []


@pytest.mark.parametrize("pool, how", [
    (StaticPool, "one connection is shared by every thread at once"),
    (SingletonThreadPool, "each thread gets its own connection, never bounded or returned"),
])
def test_sqlite_file_on_a_single_connection_pool(tmp_path, pool, how):
    engine = sa.create_engine(f"sqlite:///{tmp_path}/app.db", poolclass=pool)
    url = f"sqlite:///{tmp_path}/app.db"
    finding = only(engine_findings(engine), "sqlite-file-pool")
    name = pool.__name__
    assert finding.message == (
        f"{url} is a file SQLite database on {name}: {how}. Drop poolclass={name} and "
        f"use the default QueuePool.")
    assert finding.evidence["fix_remove"] == ["poolclass"]
    assert finding.evidence["fix_code"] == (
        f'engine = create_engine("{url}")  # no poolclass: QueuePool is the default')


def test_sqlite_file_near_misses(tmp_path):
    assert engine_findings(sa.create_engine(f"sqlite:///{tmp_path}/a.db")) == []
    assert engine_findings(sa.create_engine(f"sqlite:///{tmp_path}/b.db",
                                            poolclass=NullPool)) == []


# -- echo-on -----------------------------------------------------------------------------

@pytest.mark.parametrize("echo, what", [(True, "every statement"),
                                        ("debug", "every statement and every row")])
def test_echo_on(echo, what):
    engine = sa.create_engine("sqlite://", poolclass=StaticPool, echo=echo)
    finding = only(engine_findings(engine), "echo-on")
    assert finding.message == (
        f"echo={echo!r} on sqlite://: {what} is logged, at a large cost per statement. "
        f"Set echo=False and configure the 'sqlalchemy.engine' logger when you need SQL "
        f"logs.")
    assert finding.evidence["echo"] == echo
    assert finding.evidence["fix_code"] == 'engine = create_engine("sqlite://", echo=False)'


def test_echo_off_is_quiet():
    assert engine_findings(sa.create_engine("sqlite://", poolclass=StaticPool,
                                            echo=False)) == []


def test_async_engine_is_checked_through_its_sync_engine():
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite:///:memory:", echo=True)
    assert [f.rule for f in engine_findings(engine)] == ["echo-on"]


def test_findings_are_protocol_events():
    from tracker import protocol

    findings = engine_findings(sa.create_engine("sqlite://", echo="debug"))
    frame = protocol.encode({"t": "events", "events": [f.event(1.0e9) for f in findings]})
    assert len(protocol.decode(frame)["events"]) == 2


# -- metadata-naming-convention ---------------------------------------------------------

def test_metadata_without_naming_convention():
    from tests.tracker.check_targets import models

    finding = only(metadata_findings(models.Base), "metadata-naming-convention")
    assert finding.severity == "info"
    assert finding.message == (
        "The MetaData of tests.tracker.check_targets.models.Base has no naming convention "
        "for constraints (only SQLAlchemy's default one for indexes): in its 2 tables, 2 "
        "primary keys, 1 foreign key and 1 unique constraint have no name, so each "
        "database chooses one, and migrations (Alembic) cannot drop or alter them "
        "reliably. Give it a naming_convention with the keys pk, fk, uq and ck before "
        "creating tables.")
    assert finding.evidence == {
        "metadata": "The MetaData of tests.tracker.check_targets.models.Base",
        "tables": 2,
        "naming_convention": {"ix": "ix_%(column_0_label)s"},
        "missing": ["pk", "fk", "uq", "ck"],
        "unnamed": {"pk": 2, "fk": 1, "uq": 1},
    }


def test_metadata_with_a_partial_convention_given_by_class():
    metadata = sa.MetaData(naming_convention={
        sa.PrimaryKeyConstraint: "pk_%(table_name)s", "fk": "fk_%(table_name)s_%(column_0_name)s"})
    sa.Table("tag", metadata, sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("name", sa.String(20), unique=True))
    finding = only(metadata_findings(metadata, "MetaData app.tags"),
                   "metadata-naming-convention")
    assert finding.message == (
        "MetaData app.tags has a naming convention without the uq and ck keys: in its 1 "
        "table, 1 unique constraint has no name, so each database chooses one, and "
        "migrations (Alembic) cannot drop or alter it reliably. Give it a "
        "naming_convention with the keys pk, fk, uq and ck before creating tables.")
    assert finding.evidence["missing"] == ["uq", "ck"]
    assert finding.evidence["unnamed"] == {"uq": 1}
    assert finding.evidence["naming_convention"] == {
        "PrimaryKeyConstraint": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s"}


def test_metadata_without_tables():
    finding = only(metadata_findings(sa.MetaData()), "metadata-naming-convention")
    assert finding.message == (
        "A MetaData has no naming convention for constraints (only SQLAlchemy's default "
        "one for indexes): it has no tables yet, and the constraints of tables created "
        "without a convention get names chosen by the database. Give it a "
        "naming_convention with the keys pk, fk, uq and ck before creating tables.")


def test_metadata_near_misses():
    from tests.tracker.check_targets import models

    assert metadata_findings(models.NamedBase) == []
    assert metadata_findings(models.Shelf) == []  # a mapped class: its base's MetaData
    # no convention, but every constraint named by hand: nothing for the database to pick
    metadata = sa.MetaData()
    sa.Table("tag", metadata,
             sa.Column("id", sa.Integer),
             sa.Column("name", sa.String(20)),
             sa.PrimaryKeyConstraint("id", name="pk_tag"),
             sa.UniqueConstraint("name", name="uq_tag_name"))
    assert metadata_findings(metadata) == []


# -- server_settings ---------------------------------------------------------------------

def statements_seen(engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: seen.append(statement))
    return seen


def test_server_settings_postgresql():
    services.require("postgresql")
    import psycopg

    url = sa.make_url(services.POSTGRES_URL)
    with psycopg.connect(host=url.host, port=url.port or 5432, user=url.username,
                         dbname=url.database) as direct:
        max_connections = int(direct.execute("SHOW max_connections").fetchone()[0])
        version = direct.execute("SHOW server_version").fetchone()[0]
        idle = direct.execute("SELECT setting::int FROM pg_settings "
                              "WHERE name = 'idle_in_transaction_session_timeout'"
                              ).fetchone()[0]
    engine = sa.create_engine(services.POSTGRES_URL)
    seen = statements_seen(engine)
    try:
        settings = server_settings(engine)
        assert settings == {
            "max_connections": max_connections,
            "idle_in_transaction_session_timeout": idle // 1000 if idle % 1000 == 0
            else idle / 1000,
            "version": version,
        }
        assert seen == []  # the application's statement listeners saw nothing
        # the connection went back to the pool, not left in a transaction
        assert (engine.pool.checkedout(), engine.pool.checkedin()) == (0, 1)
    finally:
        engine.dispose()


def test_server_settings_postgresql_async():
    services.require("postgresql")
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(services.POSTGRES_URL.replace("+psycopg:", "+psycopg_async:"),
                                 pool_size=1)
    settings = server_settings(engine)
    assert sorted(settings) == ["idle_in_transaction_session_timeout", "max_connections",
                                "version"]
    assert settings == server_settings(engine.sync_engine)

    async def use() -> int:
        # the reader's connection belonged to its own event loop: had it gone back
        # into the pool, this loop would be handed a connection it cannot use
        async with engine.connect() as connection:
            value = (await connection.execute(sa.text("SELECT 1"))).scalar_one()
        await engine.dispose()
        return value

    assert asyncio.run(use()) == 1


def test_server_settings_mariadb(mariadb):
    engine = mariadb(**SHORT_WAIT)
    seen = statements_seen(engine)
    settings = server_settings(engine)
    assert settings["wait_timeout"] == 300  # the session value the pool's connections get
    assert settings["max_connections"] == mariadb_global("max_connections")
    assert "MariaDB" in settings["version"]
    assert sorted(settings) == ["max_connections", "version", "wait_timeout"]
    assert seen == []
    assert (engine.pool.checkedout(), engine.pool.checkedin()) == (0, 1)


def test_server_settings_nothing_for_sqlite():
    engine = sa.create_engine("sqlite://")
    connects = []
    event.listen(engine, "connect", lambda *args: connects.append(args))
    assert server_settings(engine) == {}
    assert connects == []


def test_server_settings_never_raises():
    refused = server_settings(sa.create_engine("mysql+pymysql://root@127.0.0.1:1/test"))
    assert refused == {"error": "OperationalError: (2003, \"Can't connect to MySQL server "
                                "on '127.0.0.1' ([Errno 111] Connection refused)\")"}


def test_server_settings_gives_up_after_its_timeout():
    # a server that accepts the connection and never says a word
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        engine = sa.create_engine(f"mysql+pymysql://root@127.0.0.1:{port}/test",
                                  connect_args={"connect_timeout": 3})
        assert server_settings(engine, timeout=0.3) == {
            "error": "TimeoutError: no answer from the server within 0.3 s"}


# -- python -m tracker check ---------------------------------------------------------------

def run_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tracker", "check", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)


def test_cli_clean_engine_exits_0():
    done = run_check(f"{TARGETS}.engines:shared_memory")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"Checked {TARGETS}.engines:shared_memory:\n"
        "  engine sqlite://: StaticPool\n"
        "\n"
        "No findings: exit status 0\n")


def test_cli_prints_findings_by_severity_with_location_and_fix():
    done = run_check(f"{TARGETS}.engines:memory")
    assert (done.returncode, done.stderr) == (0, "")  # warnings only
    where = "tests/tracker/check_targets/engines.py:10"
    assert done.stdout == f"""\
Checked {TARGETS}.engines:memory:
  engine sqlite://: SingletonThreadPool

WARNINGS (2)

  [sqlite-memory-pool] An in-memory SQLite database without StaticPool
  {only(engine_findings(sa.create_engine("sqlite://")), "sqlite-memory-pool").message}
  where: {where}
  fix code:
      from sqlalchemy.pool import StaticPool
      engine = create_engine("sqlite://", poolclass=StaticPool, connect_args={{"check_same_thread": False}})
  docs: docs/findings.md#sqlite-memory-pool

  [echo-on] Engine echo is on
  echo=True on sqlite://: every statement is logged, at a large cost per statement. Set echo=False and configure the 'sqlalchemy.engine' logger when you need SQL logs.
  where: {where}
  fix code:
      engine = create_engine("sqlite://", echo=False)
  docs: docs/findings.md#echo-on

2 warnings: exit status 0
"""  # noqa: E501


def test_cli_declarative_base():
    done = run_check(f"{TARGETS}.models:Base", "--json")
    assert done.returncode == 0
    report = json.loads(done.stdout)
    assert [(f["rule"], f["location"]) for f in report["findings"]] == [
        ("metadata-naming-convention", "tests/tracker/check_targets/models.py:15")]
    assert report["findings"][0]["message"].startswith(
        f"The MetaData of {TARGETS}.models:Base has no naming convention")
    assert report["findings"][0]["fix_code"] == rules.RULES[
        "metadata-naming-convention"].fix_code


def test_cli_mysql_recycle_error_exits_1():
    services.require("mariadb")
    done = run_check(f"{TARGETS}.engines:mariadb_stale")
    assert (done.returncode, done.stderr) == (1, "")
    url = sa.make_url(services.MARIADB_URL).render_as_string(hide_password=True)
    lines = done.stdout.splitlines()
    assert lines[1].startswith(f"  engine {url}: QueuePool; server ")
    assert lines[1].endswith(f": wait_timeout 300 s, max_connections "
                             f"{mariadb_global('max_connections')}")
    assert lines[3:7] == [
        "ERRORS (1)",
        "",
        "  [mysql-pool-recycle] pool_recycle is unset or not below the MySQL/MariaDB "
        "server's wait_timeout",
        f"  pool_recycle=3600 on {url} is not below the server's wait_timeout of 300 s: a "
        f"connection idle for 300 s is closed by the server and fails on its next use "
        f"('MySQL server has gone away'), before the pool recycles it at 3600 s. Set "
        f"pool_recycle=270.",
    ]
    assert lines[-3:] == ["  docs: docs/findings.md#no-pre-ping", "",
                          "1 error, 1 info: exit status 1"]


def test_cli_no_server_never_connects():
    done = run_check(f"{TARGETS}.engines:mariadb_stale", "--no-server", "--json")
    assert done.returncode == 0  # wait_timeout unknown: a set pool_recycle is not judged
    assert [f["rule"] for f in json.loads(done.stdout)["findings"]] == ["no-pre-ping"]


@pytest.mark.parametrize("target, message", [
    ("nocolon", "'nocolon': expected <module>:<object>, e.g. myapp.db:engine"),
    (f"{TARGETS}.missing:app",
     f"cannot import module '{TARGETS}.missing': no module named '{TARGETS}.missing' "
     f"(is it on the path? run from the project's directory)"),
    (f"{TARGETS}.engines:nothing",
     f"module '{TARGETS}.engines' has no attribute 'nothing'"),
    (f"{TARGETS}.engines:not_an_engine",
     f"{TARGETS}.engines:not_an_engine is a dict: expected an Engine, an AsyncEngine, a "
     f"Flask app, a Flask-SQLAlchemy instance, a MetaData or a declarative base"),
])
def test_cli_bad_target_exits_2(target, message):
    done = run_check(target)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"python -m tracker check: {message}\n"


def test_cli_help_lists_check():
    done = subprocess.run([sys.executable, "-m", "tracker", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert re.search(r"^    check +print the configuration findings", done.stdout, re.M)


def test_checks_import_no_flask():
    code = ("import sys, tracker.checks, tracker.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('flask', 'flask_sqlalchemy', 'django')))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n")


# -- docs --------------------------------------------------------------------------------

def test_every_rule_has_a_docs_section():
    text = (ROOT / "docs" / "findings.md").read_text()
    headings = re.findall(r"^## ([a-z0-9-]+) \((error|warning|info)\)$", text, re.M)
    documented = dict(headings)
    assert {rule_id: rule.severity for rule_id, rule in rules.RULES.items()} == {
        rule_id: documented.get(rule_id) for rule_id in rules.RULES}

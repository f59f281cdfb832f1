"""Real applications with no agent in their code, against a real dashboard:

* a Flask-SQLAlchemy app (a default database and two binds) under gunicorn with two
  pre-forked workers, started through ``python -m tracker run``;
* a FastAPI app on an async engine (aiosqlite) under uvicorn, the same way;
* a plain Python program started without the agent, then ``python -m tracker attach``
  by pid, and ``detach``.

What the dashboard stored is read from its SQLite database (the pages render exactly
that; the overview is fetched once to see the workers listed). The applications'
responses are compared with a run of the same requests without the wrapper.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

import tracker

from .conftest import PASSWORD, ROOT, USERNAME, _free_port
from .reading import rows as _rows, until as _until

APPS = ROOT / "tests" / "e2e"          # on PYTHONPATH: ``apps.flask_app:app``
BIN = Path(sys.executable).parent      # gunicorn, uvicorn of this environment
APP = "e2e-app"                        # the app of the dashboard fixture's token


def _require(program: str) -> str:
    path = BIN / program
    if path.exists():
        return str(path)
    message = f"{path} is missing (pip install -r requirements.txt)"
    if os.environ.get("CI"):
        pytest.fail(message + ", and CI must run the attaching tests", pytrace=False)
    pytest.skip(message)


def _env(**extra: str) -> dict[str, str]:
    """No RETORT_* setting; the agent importable as if installed (the checkout on
    PYTHONPATH) and the test apps too."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETORT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(APPS)])
    env.update(extra)
    return env


def _wrapped(dashboard, *command: str) -> list[str]:
    return [sys.executable, "-m", "tracker", "run", "--url", dashboard.agent_url,
            "--token", dashboard.token, "--app", APP, "--", *command]


# -- reading the dashboard -------------------------------------------------------------

def _wait(read: Callable[[], Any], expected: Any, timeout: float = 15.0) -> Any:
    """Read until ``read()`` equals ``expected``; the last reading (for the assert's
    diff) when it never does."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def _processes(dashboard, *pids: int) -> dict[int, dict[str, Any]]:
    """The app's processes with these pids: pid -> ppid, connected, engines."""
    marks = ",".join("?" * len(pids))
    out = {}
    for row in _rows(dashboard, f"""
            select p.id, p.pid, p.ppid, p.connected from dashboard_process p
            join dashboard_app a on a.id = p.app_id
            where a.name = ? and p.pid in ({marks})""", APP, *pids):
        out[row["pid"]] = {"ppid": row["ppid"], "connected": bool(row["connected"]),
                           "engines": _engines(dashboard, row["id"])}
    return out


def _engines(dashboard, process_pk: int) -> dict[str, dict[str, Any]]:
    """name -> driver, pool class and the last state's gauges and counters."""
    out = {}
    for row in _rows(dashboard, "select name, driver, pool, state from dashboard_engine "
                                "where process_id = ?", process_pk):
        state = json.loads(row["state"] or "{}")
        out[row["name"]] = {"driver": row["driver"], "pool": json.loads(row["pool"])["class"],
                            "gauges": state.get("gauges"), "counters": state.get("counters"),
                            "held": sorted((h.get("session", ""), h.get("before_agent", False))
                                           for h in state.get("holders", []))}
    return out


def _process_pk(dashboard, pid: int) -> int:
    rows = _rows(dashboard, "select p.id from dashboard_process p join dashboard_app a "
                            "on a.id = p.app_id where a.name = ? and p.pid = ?", APP, pid)
    assert len(rows) == 1, f"process {pid}: {len(rows)} rows"
    return rows[0]["id"]


def _sessions(dashboard, pid: int) -> list[dict[str, Any]]:
    rows = _rows(dashboard, """
        select s.key, s.kind, s.state, s.task, s.objects_count, s.new, s.statements,
               s.flushes, s.commits, s.end, s.summary
        from dashboard_trackedsession s join dashboard_process p on p.id = s.process_id
        where p.pid = ? order by s.id""", pid)
    out = []
    for row in rows:
        summary = json.loads(row["summary"] or "{}")
        out.append({"key": row["key"], "kind": row["kind"], "async": summary.get("async"),
                    "state": row["state"], "task": bool(row["task"]),
                    "objects": row["objects_count"], "new": row["new"],
                    "statements": row["statements"], "flushes": row["flushes"],
                    "commits": row["commits"], "end": row["end"],
                    "engines": summary.get("engines")})
    return out


def _overview(dashboard) -> str:
    """The overview page's HTML, logged in."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    login = dashboard.url + "/accounts/login/"
    page = opener.open(login, timeout=10).read().decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"username": USERNAME, "password": PASSWORD,
                                   "csrfmiddlewaretoken": csrf, "next": "/"}).encode()
    request = urllib.request.Request(login, data=data, headers={"Referer": login})
    return opener.open(request, timeout=10).read().decode()


# -- driving the applications ----------------------------------------------------------

class Server:
    """A server process (gunicorn, uvicorn…) answering HTTP on ``port``."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port, self.log = port, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, f"exited: {log.read_text()}"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"no answer on {port}: {log.read_text()}"
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def children(self) -> list[int]:
        """Pids of the server's child processes (gunicorn's workers)."""
        found = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            found += [int(pid) for pid in (task / "children").read_text().split()]
        return sorted(found)

    def request(self, method: str, path: str) -> tuple[int, Any, int | None]:
        """(status, JSON body, X-Worker-Pid) of one request on a new connection."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                         method=method)
        try:
            with urllib.request.urlopen(request, timeout=15) as answer:
                status, body, headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            status, body, headers = error.code, error.read(), error.headers
        worker = headers.get("X-Worker-Pid")
        return status, json.loads(body), int(worker) if worker else None

    def concurrently(self, *requests: tuple[str, str]) -> list[tuple[int, Any, int | None]]:
        answers: list[Any] = [None] * len(requests)

        def one(i: int) -> None:
            answers[i] = self.request(*requests[i])

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answers

    def stop(self) -> str:
        """SIGTERM (a graceful stop for gunicorn and uvicorn); returns the log."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.log.read_text()


@pytest.fixture
def servers():
    started: list[Server] = []

    def start(*args: Any) -> Server:
        server = Server(*args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- gunicorn, two pre-forked workers, Flask-SQLAlchemy with binds ---------------------

#: pairs of concurrent requests: each worker takes one (``wait`` keeps it busy)
FLASK_ROUNDS = [
    ("POST", "/notes?text=first&wait=0.3"), ("POST", "/notes?text=first&wait=0.3"),
    ("GET", "/cache/k1?wait=0.3"), ("GET", "/cache/k2?wait=0.3"),
    ("GET", "/cache/k1?wait=0.3"), ("GET", "/cache/k2?wait=0.3"),
    ("GET", "/notes?wait=0.3"), ("GET", "/notes?wait=0.3"),
]

#: statements each request runs, per engine (an INSERT, then the SELECT that refreshes
#: the committed object when the view reads it; a cache miss adds the INSERT and the
#: refresh to its SELECT)
MAIN, AUDIT, CACHE = "sqlite/main.db", "sqlite/audit.db", "sqlite/cache.db"


def _statements_of(path: str, cache_seen: set[str]) -> dict[str, int]:
    route = path.split("?")[0]
    if route == "/notes":
        return {MAIN: 2, AUDIT: 1} if "text=" in path else {MAIN: 1, AUDIT: 1}
    key = route.rsplit("/", 1)[1]
    first = key not in cache_seen
    cache_seen.add(key)
    return {CACHE: 3 if first else 1}


def _flask_env(tmp_path: Path, name: str) -> dict[str, str]:
    env = _env(E2E_MAIN_DB=str(tmp_path / name / "main.db"),
               E2E_AUDIT_DB=str(tmp_path / name / "audit.db"),
               E2E_CACHE_DB=str(tmp_path / name / "cache.db"))
    (tmp_path / name).mkdir()
    subprocess.run([sys.executable, "-m", "apps.flask_app"], env=env, cwd=ROOT, check=True,
                   timeout=60)  # creates the tables
    return env


def _flask_session(server: Server) -> list[tuple[list[tuple[int, Any]], list[int | None]]]:
    """The rounds: (the pair's (status, body), sorted; the pids that answered)."""
    out = []
    for i in range(0, len(FLASK_ROUNDS), 2):
        answers = server.concurrently(*FLASK_ROUNDS[i:i + 2])
        out.append((sorted(((s, b) for s, b, _ in answers), key=repr),
                    [pid for _, _, pid in answers]))
    return out


def test_gunicorn_workers_each_report_their_engines(dashboard, servers, tmp_path):
    gunicorn = _require("gunicorn")

    def command(port: int) -> list[str]:
        return [gunicorn, "-w", "2", "-b", f"127.0.0.1:{port}", "--no-control-socket",
                "apps.flask_app:app"]

    # the application alone, for its answers
    plain = servers(command(port := _free_port()), _flask_env(tmp_path, "plain"), port,
                    tmp_path / "plain.log")
    expected_answers = [pair for pair, _ in _flask_session(plain)]
    plain.stop()

    port = _free_port()
    server = servers(_wrapped(dashboard, *command(port)), _flask_env(tmp_path, "wrapped"),
                     port, tmp_path / "wrapped.log")
    # gunicorn forks its workers after it listens
    workers = _until(lambda: len(server.children()) == 2) and server.children()
    assert len(workers) == 2, workers
    rounds = _flask_session(server)
    assert [pair for pair, _ in rounds] == expected_answers  # unchanged by the agent
    for _, pids in rounds:
        assert sorted(pids) == workers  # each worker took one request of each pair

    # the statements each worker ran, per engine, from what it answered
    expected: dict[int, dict[str, int]] = {pid: {MAIN: 0, AUDIT: 0, CACHE: 0}
                                           for pid in workers}
    cache_seen: set[str] = set()
    for i, (_, pids) in enumerate(rounds):
        for (method, path), pid in zip(FLASK_ROUNDS[2 * i:2 * i + 2], pids):
            for name, count in _statements_of(path, cache_seen).items():
                expected[pid][name] += count

    def seen() -> dict[int, Any]:
        processes = _processes(dashboard, server.pid, *workers)
        return {pid: {"ppid": p["ppid"], "connected": p["connected"],
                      "statements": {name: e["counters"] and e["counters"]["statements"]
                                     for name, e in p["engines"].items()},
                      "checked_out": sorted({e["gauges"] and e["gauges"]["checked_out"]
                                             for e in p["engines"].values()})}
                for pid, p in processes.items()}

    # the master has the agent but never uses an engine: it does not connect
    want = {}
    for pid in workers:
        want[pid] = {"ppid": server.pid, "connected": True, "statements": expected[pid],
                     "checked_out": [0]}
    assert _wait(seen, want) == want

    processes = _processes(dashboard, *workers)
    for pid in workers:
        assert {name: (e["driver"], e["pool"]) for name, e in
                processes[pid]["engines"].items()} == {
            MAIN: ("pysqlite", "QueuePool"), AUDIT: ("pysqlite", "QueuePool"),
            CACHE: ("pysqlite", "QueuePool")}

    # the advisor saw the app's models_committed / before_models_committed receivers
    findings = _rows(dashboard, """
        select p.pid, e.name, f.message from dashboard_finding f
        join dashboard_process p on p.id = f.process_id
        left join dashboard_engine e on e.id = f.engine_id
        where f.rule = 'flask-track-modifications' and p.pid in (?, ?)""", *workers)
    assert sorted((row["pid"], row["name"]) for row in findings) == [
        (workers[0], MAIN), (workers[1], MAIN)]
    assert all("count_pending" in row["message"] and "remember_changes" in row["message"]
               for row in findings), [row["message"] for row in findings]

    # the overview lists each worker under the app, in one group (same command line)
    page = _overview(dashboard)
    for pid in workers:
        assert re.search(rf"{re.escape(socket.gethostname())}:{pid}\b", page), pid
    assert not re.search(rf"{re.escape(socket.gethostname())}:{server.pid}\b", page)

    # a worker dies (SIGKILL: no goodbye): it shows disconnected, and the worker
    # gunicorn starts in its place shows up as a new process
    os.kill(workers[0], signal.SIGKILL)
    replacement = _until(lambda: [pid for pid in server.children() if pid not in workers])
    assert len(replacement) == 1, replacement
    # it connects at its first engine: once it has served a request
    served = _until(lambda: server.request("GET", "/notes")[2] == replacement[0], 20)
    assert served, "the replacement worker served no request"
    now = {workers[0]: (server.pid, False), workers[1]: (server.pid, True),
           replacement[0]: (server.pid, True)}
    assert _wait(lambda: {pid: (p["ppid"], p["connected"]) for pid, p in _processes(
        dashboard, *now).items()}, now) == now
    # shown as a restart of the group
    assert re.search(r'2 running · <span class="restarts">1 restart</span>',
                     _overview(dashboard)), _overview(dashboard)

    # a graceful stop leaves no ghost "connected" process
    log = server.stop()
    assert "retort:" not in log  # the agent said nothing on the servers' output
    gone = {pid: False for pid in [*workers, *replacement]}
    assert _wait(lambda: {pid: p["connected"] for pid, p in
                          _processes(dashboard, *gone).items()}, gone) == gone


# -- uvicorn, FastAPI on an async engine -----------------------------------------------

FASTAPI_REQUESTS = [("POST", "/items?name=spoon"), ("POST", "/items?name=fork"),
                    ("GET", "/items"), ("GET", "/items/2"), ("GET", "/items/9")]


def _fastapi_env(tmp_path: Path, name: str) -> dict[str, str]:
    env = _env(E2E_FASTAPI_DB=str(tmp_path / f"{name}.db"))
    subprocess.run([sys.executable, "-m", "apps.fastapi_app"], env=env, cwd=ROOT,
                   check=True, timeout=60)
    return env


def test_uvicorn_fastapi_async_engine_pool_and_sessions(dashboard, servers, tmp_path):
    uvicorn = _require("uvicorn")

    def command(port: int) -> list[str]:
        return [uvicorn, "--port", str(port), "--no-access-log", "apps.fastapi_app:app"]

    plain = servers(command(port := _free_port()), _fastapi_env(tmp_path, "plain"), port,
                    tmp_path / "plain.log")
    expected_answers = [plain.request(*r)[:2] for r in FASTAPI_REQUESTS]
    plain.stop()
    assert expected_answers[-1] == (404, {"detail": "no such item"})

    port = _free_port()
    server = servers(_wrapped(dashboard, *command(port)), _fastapi_env(tmp_path, "items"),
                     port, tmp_path / "wrapped.log")
    assert [server.request(*r)[:2] for r in FASTAPI_REQUESTS] == expected_answers

    # a request that keeps its session in a transaction for a while
    held: list[Any] = []
    holder = threading.Thread(target=lambda: held.append(
        server.request("POST", "/hold?seconds=2&name=held")))
    holder.start()
    try:
        # (a request's session is reported only if it spans a state frame: the five
        # above may or may not be; the held one is)
        in_transaction = {"kind": "Session", "async": True, "state": "transaction",
                          "task": True, "objects": 1, "new": 0, "statements": 1,
                          "flushes": 1, "commits": 0, "end": "", "engines": ["e1"]}
        open_ones = _wait(lambda: [s for s in _sessions(dashboard, server.pid)
                                   if s.pop("key") and s["state"] == "transaction"],
                          [in_transaction], timeout=1.8)
        assert open_ones == [in_transaction]
        key = next(s["key"] for s in _sessions(dashboard, server.pid)
                   if s["state"] == "transaction")
        engine = _processes(dashboard, server.pid)[server.pid]["engines"]["sqlite/items.db"]
        assert (engine["driver"], engine["pool"], engine["gauges"]["checked_out"]) == (
            "aiosqlite", "AsyncAdaptedQueuePool", 1)
        assert engine["gauges"]["capacity"] == 5  # pool_size=3, max_overflow=2
    finally:
        holder.join()
    assert held == [(201, {"id": 3, "name": "held"}, None)]

    # five requests of one statement each, and the held one's INSERT
    def counters() -> dict[str, Any]:
        engine = _processes(dashboard, server.pid)[server.pid]["engines"]["sqlite/items.db"]
        return {k: engine["counters"][k] for k in ("statements", "checkouts", "checkins",
                                                    "statement_errors")} | {
            "checked_out": engine["gauges"]["checked_out"]}
    want = {"statements": 6, "checkouts": 6, "checkins": 6, "statement_errors": 0,
            "checked_out": 0}
    assert _wait(counters, want) == want
    held_session = {**in_transaction, "state": "closed", "end": "closed", "objects": 0,
                    "commits": 1}
    ended = _wait(lambda: [s for s in _sessions(dashboard, server.pid)
                           if s.pop("key") == key], [held_session])
    assert ended == [held_session]


# -- attaching to a running process, and detaching --------------------------------------

class Plain:
    """tests/e2e/apps/plain_app.py, driven line by line."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(APPS / "apps" / "plain_app.py"), str(db)], cwd=ROOT,
            env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert self.process.stdout.readline() == f"ready {self.process.pid}\n"

    def send(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _tracker(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracker", *args], capture_output=True,
                          text=True, env=_env(), cwd=ROOT, timeout=60)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ptrace: Linux only")
def test_attach_a_running_process_by_pid_then_detach(dashboard, tmp_path):
    app = Plain(tmp_path / "plain.db")
    pid = app.process.pid
    try:
        assert _processes(dashboard, pid) == {}  # started without the agent
        done = _tracker("attach", str(pid), "--url", dashboard.agent_url,
                        "--token", dashboard.token, "--app", APP)
        assert (done.returncode, done.stderr) == (0, "")
        assert done.stdout == (f"pid {pid} ({APP}, Python {sys.version.split()[0]}): agent "
                               f"{tracker.__version__} attached; engines: sqlite/plain.db; "
                               f"sessions: 1\n")

        def seen() -> Any:
            process = _processes(dashboard, pid).get(pid)
            if process is None or "sqlite/plain.db" not in process["engines"]:
                return None
            engine = process["engines"]["sqlite/plain.db"]
            counters = engine["counters"] or {}
            return {"connected": process["connected"], "gauges": engine["gauges"],
                    "held": engine["held"],
                    "counters": {k: counters.get(k) for k in
                                 ("connects", "checkouts", "checkins", "statements")},
                    "sessions": _sessions(dashboard, pid)}

        # the report's connection and the session's: both checked out before the agent
        # came, so its counters start at zero
        session = {"key": "s1", "kind": "Session", "async": False, "state": "transaction",
                   "task": False, "objects": 1, "new": 0, "statements": 0, "flushes": 0,
                   "commits": 0, "end": "", "engines": ["e1"]}
        want = {"connected": True,
                "gauges": {"checked_out": 2, "waiting": 0, "idle": 0, "overflow": 0,
                           "size": 4, "capacity": 5},
                # both listed as held, from before the agent; one by the session
                "held": [("", True), ("s1", True)],
                "counters": {"connects": 0, "checkouts": 0, "checkins": 0, "statements": 0},
                "sessions": [session]}
        assert _wait(seen, want) == want

        # the program goes on; the agent counts what it does now
        assert app.send("work 3") == ("ok Pool size: 4  Connections in pool: 1 Current "
                                      "Overflow: -1 Current Checked out connections: 2")
        assert app.send("add second").startswith("ok Pool size: 4")
        want["gauges"].update(idle=1)
        want["counters"] = {"connects": 1, "checkouts": 3, "checkins": 3, "statements": 4}
        want["sessions"] = [{**session, "objects": 2, "statements": 1, "flushes": 1}]
        assert _wait(seen, want) == want

        done = _tracker("detach", str(pid))
        assert (done.returncode, done.stdout, done.stderr) == (
            0, f"pid {pid}: agent detached\n", "")
        want["connected"] = False
        want["sessions"] = [{**want["sessions"][0], "end": "disconnected"}]
        assert _wait(seen, want) == want
        # the program is unaffected and still running
        assert app.send("work 2") == ("ok Pool size: 4  Connections in pool: 1 Current "
                                      "Overflow: -1 Current Checked out connections: 2")
        assert app.send("commit") == ("ok Pool size: 4  Connections in pool: 2 Current "
                                      "Overflow: -1 Current Checked out connections: 1")
        assert app.process.poll() is None

        # attached again: the same process on the dashboard, connected again (it is
        # keyed by host, pid and the OS process's start time, not the agent's)
        done = _tracker("attach", str(pid), "--url", dashboard.agent_url,
                        "--token", dashboard.token, "--app", APP)
        assert done.stdout.endswith("attached; engines: sqlite/plain.db; sessions: 0\n")
        rows = _wait(lambda: [(r["connected"], r["connections"]) for r in _rows(
            dashboard, "select connected, connections from dashboard_process "
                       "where pid = ? order by id", pid)], [(1, 2)])
        assert rows == [(1, 2)]
    finally:
        app.close()
    # the program ends: its agent says goodbye
    assert _wait(lambda: [r["connected"] for r in _rows(
        dashboard, "select connected from dashboard_process where pid = ?", pid)],
        [0]) == [0]


# -- a Celery worker with its prefork pool ---------------------------------------------

@pytest.mark.services
def test_celery_prefork_pool_processes_each_report_their_engine(dashboard, tmp_path):
    from tests.services import require

    require("redis")
    celery_bin = _require("celery")
    from celery import Celery

    broker = "redis://127.0.0.1:6379/12"  # a database of its own
    queue = f"e2e-attaching-{os.getpid()}-{time.monotonic_ns()}"
    env = _env(E2E_CELERY_DB=str(tmp_path / "events.db"), E2E_CELERY_BROKER=broker)
    subprocess.run([sys.executable, "-m", "apps.celery_app"], env=env, cwd=ROOT, check=True,
                   timeout=60)
    log = tmp_path / "celery.log"
    with open(log, "wb") as out:
        worker = subprocess.Popen(_wrapped(dashboard, celery_bin, "-A", "apps.celery_app",
                                           "worker", "-c", "2", "-Q", queue,
                                           "--without-heartbeat", "--without-gossip",
                                           "--without-mingle", "--loglevel", "warning"),
                                  cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    client = Celery(broker=broker, backend=broker)
    try:
        results = [client.send_task("apps.celery_app.record", args=[f"event {i}"],
                                    queue=queue) for i in range(6)]
        answers = [result.get(timeout=30) for result in results]
        for result in results:
            result.forget()
        assert sorted(answer["count"] for answer in answers) == [1, 2, 3, 4, 5, 6]

        children = sorted(int(pid) for task in Path(f"/proc/{worker.pid}/task").iterdir()
                          for pid in (task / "children").read_text().split())
        assert len(children) == 2, children
        ran = {pid: sum(answer["pid"] == pid for answer in answers) for pid in children}
        assert sum(ran.values()) == 6, (ran, answers)

        def seen() -> dict[int, Any]:
            return {pid: (p["ppid"], p["connected"],
                          {name: e["counters"] and e["counters"]["statements"]
                           for name, e in p["engines"].items()})
                    for pid, p in _processes(dashboard, worker.pid, *children).items()}

        # each pool process that ran a task, on its own, with an INSERT and a SELECT
        # per task; the main process never used an engine, so never connected
        want = {pid: (worker.pid, True, {"sqlite/events.db": 2 * count})
                for pid, count in ran.items() if count}
        assert _wait(seen, want) == want
    finally:
        client.close()
        worker.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    gone = {pid: (ppid, False, engines) for pid, (ppid, _, engines) in want.items()}
    assert _wait(seen, gone) == gone
    assert "retort:" not in log.read_text()


# -- flask run with its reloader --------------------------------------------------------

def test_flask_run_reloader_restarts_show_as_new_processes(dashboard, servers, tmp_path):
    flask = _require("flask")
    # a copy of the app the reloader may watch change, under another module name
    (tmp_path / "reloading_app.py").write_text((APPS / "apps" / "flask_app.py").read_text())
    env = _flask_env(tmp_path, "reload")
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(tmp_path)])
    port = _free_port()
    server = servers(_wrapped(dashboard, flask, "--app", "reloading_app", "run", "--debug",
                              "--port", str(port)), env, port, tmp_path / "flask.log")
    first = _until(lambda: server.children())[0]
    assert server.request("POST", "/notes?text=before") == (201, {"id": 1, "text": "before"},
                                                            first)

    with open(tmp_path / "reloading_app.py", "a") as source:
        source.write("\n# changed\n")  # the reloader restarts its child
    second = _until(lambda: [pid for pid in server.children() if pid != first], 10)
    assert len(second) == 1, second
    second = second[0]
    # the reloader spawns the new child once the old one exited: this goes to it
    assert server.request("GET", "/notes")[2] == second
    assert server.request("POST", "/notes?text=after") == (201, {"id": 2, "text": "after"},
                                                           second)

    def seen() -> dict[int, Any]:
        return {pid: (p["ppid"], p["connected"],
                      {name: e["counters"] and e["counters"]["statements"]
                       for name, e in p["engines"].items()})
                for pid, p in _processes(dashboard, server.pid, first, second).items()}

    # the first child gone, the new one counting from zero (its GET /notes above: a
    # SELECT on each database; its note: 2 + 1); the reloader never used an engine
    want = {first: (server.pid, False, {MAIN: 2, AUDIT: 1}),
            second: (server.pid, True, {MAIN: 3, AUDIT: 2})}
    assert _wait(seen, want) == want
    # the overview shows the reload as a restart: the first child replaced by the second
    page = _overview(dashboard)
    assert f'<div class="muted small replaced">replaced by {second}</div>' in page, page
    assert re.search(r'1 running · <span class="restarts">1 restart</span>', page), page

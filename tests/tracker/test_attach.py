"""Loading the agent with no code change: ``python -m tracker run`` and
``python -m tracker attach/detach <pid>`` against real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

import tracker

REPO = str(Path(tracker.__file__).resolve().parent.parent)


def _env(**extra: str) -> dict[str, str]:
    """This environment without RETORT_* settings, the agent importable (from the
    checkout when it is not installed), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETORT_")}
    env["PYTHONPATH"] = REPO
    env.update(extra)
    return env


def _tracker(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "tracker", *args], capture_output=True,
                          text=True, env=env or _env(), cwd=REPO, timeout=timeout)


PROBE = ("import tracker; a = tracker.current_agent(); "
         "print(tracker.is_instrumented(), a and a.config.app, a and a.config.capture_locations)")


# -- run ----------------------------------------------------------------------------------

def test_run_loads_the_agent_into_the_command():
    done = _tracker("run", "--app", "wrapped", "--capture-locations", "off", "--",
                    sys.executable, "-c", PROBE)
    assert (done.returncode, done.stdout) == (0, "True wrapped off\n")
    assert done.stderr == ("python -m tracker run: no --url / RETORT_URL: the agent will "
                           "collect but send nothing\n")


def test_run_reaches_child_python_processes_and_keeps_their_sitecustomize(tmp_path):
    (tmp_path / "sitecustomize.py").write_text("print('their sitecustomize ran')\n")
    child = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {PROBE!r}])"
    done = _tracker("run", "--app", "parent", "--", sys.executable, "-c", child,
                    env=_env(PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ("their sitecustomize ran\n"   # python -m tracker's own
                           "their sitecustomize ran\n"   # the parent's
                           "their sitecustomize ran\n"   # the child's
                           "True parent pressure\n")


def test_run_refuses_a_broken_setting_and_a_missing_command():
    done = _tracker("run", "--thresholds", "n_plus_two=3", "--", "python", "-c", "pass")
    assert done.returncode == 2
    assert done.stderr.startswith("python -m tracker run: RETORT_THRESHOLDS='n_plus_two=3'")
    done = _tracker("run", "--", "no-such-command-here")
    assert (done.returncode, done.stderr.splitlines()[-1]) == (
        127, "python -m tracker run: command not found: no-such-command-here")
    done = _tracker("run")
    assert (done.returncode, done.stderr) == (
        2, "python -m tracker run: give the command to run after --\n")


def test_a_broken_environment_does_not_stop_the_application():
    done = subprocess.run(
        [sys.executable, "-c", "print('the app ran')"], capture_output=True, text=True,
        env=_env(PYTHONPATH=f"{REPO}{os.pathsep}{REPO}/tracker/bootstrap",
                 RETORT_AUTOLOAD="1", RETORT_QUEUE_SIZE="lots"), timeout=60)
    assert (done.returncode, done.stdout) == (0, "the app ran\n")
    assert done.stderr == ("retort: the agent was not started: ValueError: "
                           "RETORT_QUEUE_SIZE='lots' is not a valid int\n")


# -- attach -------------------------------------------------------------------------------

TARGET = textwrap.dedent("""
    import sys, time
    import sqlalchemy as sa
    from sqlalchemy.orm import Session
    engine = sa.create_engine("sqlite:///" + sys.argv[1])
    session = Session(engine)
    session.execute(sa.text("select 1"))  # a session in a transaction, holding a connection
    print("ready", flush=True)
    while True:
        with engine.connect() as conn:
            conn.exec_driver_sql("select 1").all()
        time.sleep(0.02)
""")


@pytest.fixture
def target(tmp_path):
    """A plain Python process using SQLAlchemy, started without the agent."""
    processes = []

    def start(env: dict[str, str] | None = None, python: str = sys.executable):
        script = tmp_path / "target.py"
        script.write_text(TARGET)
        process = subprocess.Popen([python, str(script), str(tmp_path / "target.db")],
                                   stdout=subprocess.PIPE, text=True, cwd=tmp_path,
                                   env=env or _env())
        processes.append(process)
        assert process.stdout.readline() == "ready\n"
        return process

    yield start
    for process in processes:
        process.kill()
        process.wait()


pytestmark_attach = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="ptrace injection: Linux only")


@pytestmark_attach
def test_attach_finds_engines_and_sessions_then_detach(target):
    process = target()
    done = _tracker("attach", str(process.pid), "--app", "attached")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (f"pid {process.pid} (attached, Python {sys.version.split()[0]}): "
                           f"agent {tracker.__version__} attached; engines: sqlite/target.db; "
                           f"sessions: 1\n")
    again = _tracker("attach", str(process.pid))
    assert "agent " + tracker.__version__ + " was already attached" in again.stdout
    assert _tracker("detach", str(process.pid)).stdout == f"pid {process.pid}: agent detached\n"
    assert _tracker("detach", str(process.pid)).stdout == (
        f"pid {process.pid}: agent was not attached\n")
    assert process.poll() is None  # the application went on


@pytestmark_attach
def test_attach_says_when_the_agent_is_not_installed_in_the_target(target, tmp_path):
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(bare)], check=True)
    # the bare venv sees SQLAlchemy through the system packages? not necessarily: give it
    # the SQLAlchemy of this environment, but not the agent
    import sqlalchemy
    site = Path(sqlalchemy.__file__).resolve().parent.parent
    shutil.copytree(site / "sqlalchemy", tmp_path / "only" / "sqlalchemy")
    for extra in ("typing_extensions.py", "greenlet"):
        if (site / extra).exists():
            (shutil.copytree if (site / extra).is_dir() else shutil.copy)(
                site / extra, tmp_path / "only" / extra)
    process = target(env=_env(PYTHONPATH=str(tmp_path / "only")),
                     python=str(bare / "bin" / "python"))
    done = _tracker("attach", str(process.pid))
    assert done.returncode == 1
    assert done.stderr == (
        f"python -m tracker attach: the agent is not importable in pid {process.pid}'s "
        f"environment ({bare}/bin/python, prefix {bare}): ModuleNotFoundError: No module "
        f"named 'tracker'. Install it there: {bare}/bin/pip install retort-tracker\n")
    assert process.poll() is None


@pytestmark_attach
def test_attach_refuses_what_it_cannot_attach_to():
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        done = _tracker("attach", str(sleeper.pid))
        assert (done.returncode, done.stderr) == (
            1, f"python -m tracker attach: pid {sleeper.pid} is not a Python process "
               f"(it runs {shutil.which('sleep') and os.path.realpath(shutil.which('sleep'))})\n")
    finally:
        sleeper.kill()
        sleeper.wait()
    gone = subprocess.Popen(["true"])
    gone.wait()
    done = _tracker("attach", str(gone.pid))
    assert (done.returncode, done.stderr) == (
        1, f"python -m tracker attach: no process with pid {gone.pid}\n")


@pytestmark_attach
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root to run the attaching command as another user")
def test_attach_without_permission_says_so(target):
    process = target()
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "tracker", "attach", str(process.pid)],
        capture_output=True, text=True, env=_env(), cwd="/", timeout=60)
    assert (done.returncode, done.stderr) == (
        1, f"python -m tracker attach: no permission to inspect pid {process.pid}: attach "
           f"as its user or as root (ptrace)\n")


@pytestmark_attach
def test_attach_to_a_process_that_has_exited_says_it_is_not_python():
    zombie = subprocess.Popen(["true"])  # exits at once; not reaped until wait()
    try:
        deadline = time.monotonic() + 10
        while " Z " not in Path(f"/proc/{zombie.pid}/stat").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        done = _tracker("attach", str(zombie.pid))
        assert (done.returncode, done.stderr) == (
            1, f"python -m tracker attach: pid {zombie.pid} is not a Python process (it has "
               f"no executable: it has exited and was not reaped yet)\n")
    finally:
        zombie.wait()
    if Path("/proc/2/comm").exists() and Path("/proc/2/comm").read_text() == "kthreadd\n":
        done = _tracker("attach", "2")
        assert (done.returncode, done.stderr) == (
            1, "python -m tracker attach: pid 2 is not a Python process (it has no "
               "executable: a kernel thread)\n")


def test_attach_refuses_another_python_version_before_touching_the_target(monkeypatch):
    from tracker.cli import attach

    monkeypatch.setattr(attach, "python_version_of", lambda pid: (3, 99))
    ours = "{}.{}".format(*sys.version_info[:2])
    with pytest.raises(attach.AttachError) as refused:
        attach.inject(os.getpid(), "_retort.detach()", timeout=1)
    assert str(refused.value) == (
        f"pid {os.getpid()} runs Python 3.99, this command Python {ours}: run it with the "
        f"target's Python (python3.99 -m tracker attach {os.getpid()})")


def test_connections_checked_out_before_the_agent_are_listed_as_held(tmp_path):
    # what attach finds in a running process: one connection held by a session's
    # transaction, one by plain Core code, both checked out before instrument()
    from sqlalchemy.orm import Session

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'held.db'}", pool_size=3)
    session = Session(engine)
    session.execute(sa.text("select 1"))
    conn = engine.connect()
    try:
        tracker.instrument(app="held", capture_locations="always")
        agent = tracker.current_agent()

        def holders():
            (state,) = [e for e in agent.snapshot()["engines"]
                        if e["id"] == agent.registry.engine_entry(engine).id]
            return state["gauges"]["checked_out"], sorted(
                ({k: v for k, v in h.items() if k != "since"} for h in state["holders"]),
                key=lambda h: h.get("session", ""))

        assert holders() == (2, [
            {"thread": "unknown", "thread_id": 0, "stack": [], "before_agent": True},
            {"thread": "unknown", "thread_id": 0, "stack": [], "before_agent": True,
             "session": "s1"}])
        conn.close()
        assert holders() == (1, [
            {"thread": "unknown", "thread_id": 0, "stack": [], "before_agent": True,
             "session": "s1"}])
        session.commit()
        assert holders() == (0, [])
        # a checkout made with the agent in place is an ordinary holder
        with engine.connect():
            count, (held,) = holders()
            assert (count, held["thread_id"], "before_agent" in held) == (
                1, threading.get_ident(), False)
    finally:
        conn.close()
        session.close()
        tracker.uninstrument()

"""``python -m tracker attach <pid>`` / ``detach <pid>``: load the agent into a Python
process that is already running, or take it out, with no restart.

The agent must be installed in the *target's* environment: the injected code only
imports it there and calls :func:`tracker.autoload.attach`. Injection uses
``sys.remote_exec`` on Python 3.14+, and otherwise ptrace through the ``hypno``
package (``pip install 'retort-tracker[attach]'``); both need the attaching Python to
be the target's major.minor version. (gdb must not be used: on these CPUs it leaves the target
hung.) The injected code writes what happened to a result file this command waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..config import ENV
from .settings import OPTIONS, add_options, as_environment

#: seconds to wait for the injected code's answer
WAIT = 15.0

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class AttachError(Exception):
    """Attaching is impossible; the message says why and what to do."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "attach", help="load the agent into a running Python process",
        description="Load the agent into the running Python process PID (no restart).",
        epilog="example: python -m tracker attach 4242 --url ws://127.0.0.1:8000/ws/agent/ "
               "--token rt_… --app shop")
    parser.add_argument("pid", type=int)
    add_options(parser)
    parser.add_argument("--timeout", type=float, default=WAIT,
                        help=f"seconds to wait for the target's answer (default {WAIT:g})")
    parser.set_defaults(run=run_attach)
    detach = subparsers.add_parser(
        "detach", help="remove the agent from a running process",
        description="Uninstrument the running Python process PID.")
    detach.add_argument("pid", type=int)
    detach.add_argument("--timeout", type=float, default=WAIT)
    detach.set_defaults(run=run_detach)


def settings_from(args: argparse.Namespace, environ: dict[str, str]) -> dict[str, Any]:
    """Agent settings for the target: the options given, else this shell's RETORT_*
    variables (the target's own environment cannot be changed from outside)."""
    from ..config import AgentConfig

    fields = set(OPTIONS.values()) | {"capture_parameters"}
    values = {ENV[name]: environ[ENV[name]] for name in fields if environ.get(ENV[name])}
    values.update(as_environment(args))  # an option wins over the shell's variable
    config = AgentConfig.load({}, environ=values)  # ValueError for a broken setting
    settings = {name: getattr(config, name) for name in fields
                if ENV[name] in values}
    if "thresholds" in settings:
        settings["thresholds"] = dict(settings["thresholds"])
    if "secret_words" in settings:
        settings["secret_words"] = list(settings["secret_words"])
    return settings


# -- the target ---------------------------------------------------------------------------

def python_version_of(pid: int) -> tuple[int, int]:
    """(major, minor) of the Python running as ``pid``; AttachError if there is no
    such process, it may not be read, or it is not Python."""
    proc = Path(f"/proc/{pid}")
    if not proc.exists():
        raise AttachError(f"no process with pid {pid}")
    try:
        exe = os.readlink(proc / "exe")
        maps = (proc / "maps").read_text(errors="replace")
    except PermissionError:
        raise AttachError(f"no permission to inspect pid {pid}: attach as its user or "
                          f"as root (ptrace)") from None
    except FileNotFoundError:
        if not proc.exists():
            raise AttachError(f"no process with pid {pid}") from None
        # the process is there but has no executable: a kernel thread, or a process
        # that has exited and not been reaped yet (a zombie)
        raise AttachError(f"pid {pid} is not a Python process (it has no executable: "
                          f"{_state_of(pid)})") from None
    for text in (os.path.basename(exe), maps):
        found = re.search(r"(?:lib)?python(\d)\.(\d+)", text)
        if found:
            return int(found.group(1)), int(found.group(2))
    raise AttachError(f"pid {pid} is not a Python process (it runs {exe})")


def _state_of(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "it is exiting"
    state = re.search(r"^State:\s+(\S)", status, re.M)
    if state and state.group(1) in "ZX":
        return "it has exited and was not reaped yet"
    if re.search(r"^Kthread:\s+1", status, re.M) or "\nVmSize:" not in status:
        return "a kernel thread"
    return "it is exiting"


def owner_of(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+\d+\s+(\d+)", status, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+\d+\s+(\d+)", status, re.M).group(1))
    return uid, gid


def _script(call: str, result: str) -> str:
    # Runs inside the target, in a thread the injector created, holding the GIL: it
    # must not raise and should do little.
    return f"""
import json as _json, os as _os, sys as _sys
def _retort_answer(data, path={result!r}):
    with open(path + ".tmp", "w") as out:
        _json.dump(data, out)
    _os.replace(path + ".tmp", path)
try:
    import tracker.autoload as _retort
except Exception as exc:
    _retort_answer({{"ok": False, "error": "not-importable",
                     "detail": f"{{type(exc).__name__}}: {{exc}}",
                     "executable": _sys.executable, "prefix": _sys.prefix}})
else:
    try:
        _retort_answer({call})
    except Exception as exc:
        _retort_answer({{"ok": False, "error": "failed",
                         "detail": f"{{type(exc).__name__}}: {{exc}}"}})
"""


def inject(pid: int, call: str, timeout: float) -> dict[str, Any]:
    """Run ``call`` (an expression using ``_retort``, the target's tracker.autoload) in
    process ``pid``; return the dict it evaluates to."""
    version = python_version_of(pid)
    ours = sys.version_info[:2]
    workdir = tempfile.mkdtemp(prefix="retort-attach-")
    script = os.path.join(workdir, "attach.py")
    result = os.path.join(workdir, "result.json")
    try:
        with open(script, "w") as out:
            out.write(_script(call, result))
        os.chmod(script, 0o600)
        if os.geteuid() == 0:  # the target reads the script and writes its answer
            uid, gid = owner_of(pid)
            os.chown(workdir, uid, gid)
            os.chown(script, uid, gid)
        code = (f"exec(compile(open({script!r}).read(), {script!r}, 'exec'), "
                f"{{'__name__': '__retort_attach__'}})")
        if version != ours:
            # sys.remote_exec needs the same major.minor on both sides too
            raise AttachError(
                f"pid {pid} runs Python {version[0]}.{version[1]}, this command "
                f"Python {ours[0]}.{ours[1]}: run it with the target's Python "
                f"(python{version[0]}.{version[1]} -m tracker attach {pid})")
        if ours >= (3, 14):
            _remote_exec(pid, script)
        else:
            _ptrace_inject(pid, code)
        deadline = time.monotonic() + timeout
        while not os.path.exists(result):
            if time.monotonic() > deadline:
                raise AttachError(
                    f"pid {pid} did not answer within {timeout:g} s: it may be stopped, "
                    f"or never release the GIL")
            time.sleep(0.05)
        with open(result) as answer:
            return json.load(answer)
    finally:
        for path in (script, result):
            try:
                os.unlink(path)
            except OSError:
                pass
        try:
            os.rmdir(workdir)
        except OSError:
            pass


def _remote_exec(pid: int, script: str) -> None:
    try:
        sys.remote_exec(pid, script)  # type: ignore[attr-defined]
    except PermissionError as exc:
        raise AttachError(f"no permission to trace pid {pid} ({exc}): attach as its user "
                          f"or as root, and check /proc/sys/kernel/yama/ptrace_scope") from None
    except (OSError, RuntimeError) as exc:
        raise AttachError(
            f"could not run code in pid {pid} with sys.remote_exec: {exc} (remote "
            f"debugging is off in a Python started with PYTHON_DISABLE_REMOTE_DEBUG=1 or "
            f"-X disable_remote_debug, or built --without-remote-debug)") from None


def _ptrace_inject(pid: int, code: str) -> None:
    try:
        from hypno import inject_py
    except ImportError:
        raise AttachError("attaching needs the hypno package: "
                          "pip install 'retort-tracker[attach]'") from None
    try:
        inject_py(pid, code)
    except Exception as exc:
        text = str(exc)
        if "permission" in text.lower() or "EPERM" in text or "ptrace" in text.lower():
            raise AttachError(f"no permission to trace pid {pid} ({text}): attach as its "
                              f"user or as root, and check "
                              f"/proc/sys/kernel/yama/ptrace_scope") from None
        raise AttachError(f"could not inject into pid {pid}: {type(exc).__name__}: "
                          f"{text}") from None


def _explain(pid: int, answer: dict[str, Any]) -> str:
    if answer.get("error") == "not-importable":
        return (f"the agent is not importable in pid {pid}'s environment "
                f"({answer.get('executable')}, prefix {answer.get('prefix')}): "
                f"{answer.get('detail')}. Install it there: "
                f"{answer.get('prefix')}/bin/pip install retort-tracker")
    return f"pid {pid}: {answer.get('detail') or answer}"


def run_attach(args: argparse.Namespace) -> int:
    try:
        settings = settings_from(args, dict(os.environ))
    except (TypeError, ValueError) as exc:
        print(f"python -m tracker attach: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        answer = inject(args.pid, f"_retort.attach({settings!r})", args.timeout)
    except AttachError as exc:
        print(f"python -m tracker attach: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not answer.get("ok"):
        print(f"python -m tracker attach: {_explain(args.pid, answer)}", file=sys.stderr)
        return EXIT_FAILED
    state = "was already attached" if answer["already"] else "attached"
    engines = ", ".join(answer["engines"]) or "none yet"
    print(f"pid {answer['pid']} ({answer['app']}, Python {answer['python']}): agent "
          f"{answer['agent']} {state}; engines: {engines}; sessions: {answer['sessions']}")
    return EXIT_OK


def run_detach(args: argparse.Namespace) -> int:
    try:
        answer = inject(args.pid, "_retort.detach()", args.timeout)
    except AttachError as exc:
        print(f"python -m tracker detach: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if not answer.get("ok"):
        print(f"python -m tracker detach: {_explain(args.pid, answer)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"pid {answer['pid']}: agent "
          f"{'detached' if answer['was_attached'] else 'was not attached'}")
    return EXIT_OK

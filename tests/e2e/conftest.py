"""A real dashboard (daphne in a subprocess, its own SQLite file) and real
instrumented applications in other processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
USERNAME, PASSWORD = "e2e-user", "e2e-password-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("daphne did not start")


class Dashboard:
    """A daphne server that can be stopped and started again on the same port."""

    def __init__(self, data_dir: Path) -> None:
        self.port = _free_port()
        self.env = {**os.environ, "RETORT_DATA_DIR": str(data_dir),
                    "RETORT_SECRET_KEY": "e2e-not-secret", "PYTHONPATH": str(ROOT),
                    "DJANGO_SETTINGS_MODULE": "dashboard.settings"}
        self.env.pop("RETORT_DATABASE_URL", None)
        self.env.pop("RETORT_REDIS_URL", None)
        self.process: subprocess.Popen | None = None
        self.log = data_dir / "daphne.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def agent_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/agent/"

    def manage(self, *args: str) -> str:
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def setup(self) -> str:
        self.manage("migrate", "--noinput")
        self.manage("shell", "-c",
                    "from django.contrib.auth.models import User; "
                    f"User.objects.create_user({USERNAME!r}, password={PASSWORD!r})")
        return self.manage("create_agent_token", "e2e-app", "--quiet").strip()

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port),
                 "dashboard.asgi:application"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


class App:
    """An app of tests/e2e (holder_app.py by default) in its own process, driven line
    by line."""

    def __init__(self, db: Path | str, env: dict[str, str],
                 script: str = "holder_app.py") -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "e2e" / script), str(db)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert self.readline() == "ready"

    def readline(self) -> str:
        line = self.process.stdout.readline()
        assert line, self.process.stderr.read() if self.process.poll() is not None else "EOF"
        return line.strip()

    def send(self, command: str) -> str:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        answer = self.readline()
        assert answer.startswith("ok "), answer
        return answer[3:]

    def close(self) -> str:
        """End the app; returns what it wrote on stderr."""
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.stderr.read()


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    server = Dashboard(tmp_path_factory.mktemp("dashboard"))
    server.token = server.setup()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_app(dashboard, tmp_path):
    apps: list[App] = []

    def start(token: str | None = None, app_name: str = "e2e-app",
              script: str = "holder_app.py", db: str | None = None) -> App:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "RETORT_URL": dashboard.agent_url,
               "RETORT_TOKEN": token or dashboard.token, "RETORT_APP": app_name}
        app = App(db or tmp_path / f"app{len(apps)}.sqlite3", env, script)
        apps.append(app)
        return app

    yield start
    for app in apps:
        app.close()


@pytest.fixture(scope="session")
def browser_type_launch_args():
    """pytest-playwright: Debian's Chromium (no browser download is possible here)."""
    if not os.path.exists(CHROMIUM):
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(message + ", and CI must run the browser tests", pytrace=False)
        pytest.skip(message)
    return {"executable_path": CHROMIUM, "headless": True,
            "args": ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]}

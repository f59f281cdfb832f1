"""``manage.py demo``: the dashboard on 127.0.0.1 with the bundled demo shop feeding
it live data.

It migrates, creates (or resets) the ``demo`` login with a fresh random password,
issues a fresh agent token for the ``demo-shop`` app, then runs daphne and the demo
app (``python -m examples.demo_shop``) as child processes until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ...models import AgentToken, App

DEMO_APP = "demo-shop"
DEMO_USER = "demo"


class Command(BaseCommand):
    help = "Run the dashboard with the bundled demo app attached (Ctrl-C stops both)."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--db", default="",
                            help="database URL for the demo app (default: a local SQLite file)")
        parser.add_argument("--no-app", action="store_true", help="run the dashboard only")
        parser.add_argument("--password", default=os.environ.get("RETORT_DEMO_PASSWORD", ""),
                            help="password for the demo login (default: a random one)")

    def handle(self, *args, port: int, db: str, no_app: bool, password: str, **options):
        # SIGTERM (a service manager, `kill`) stops the children too, like Ctrl-C
        signal.signal(signal.SIGTERM, _interrupt)
        if _port_busy(port):
            raise CommandError(f"port {port} on 127.0.0.1 is in use: pass --port")
        call_command("migrate", interactive=False, verbosity=0)
        password = password or secrets.token_urlsafe(9)
        _ensure_user(password)
        token = _fresh_token()
        children: list[subprocess.Popen] = []
        base = str(settings.BASE_DIR)
        try:
            children.append(subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port),
                 "dashboard.asgi:application"], cwd=base))
            _wait_for_port(port, children[0])
            if not no_app:
                env = {**os.environ, "RETORT_URL": f"ws://127.0.0.1:{port}/ws/agent/",
                       "RETORT_TOKEN": token, "RETORT_APP": DEMO_APP}
                command = [sys.executable, "-m", "examples.demo_shop"]
                if db:
                    command += ["--db", db]
                children.append(subprocess.Popen(command, cwd=base, env=env))
            self.stdout.write(self.style.SUCCESS(
                f"\nRetort is running: http://127.0.0.1:{port}/\n"
                f"Log in as  {DEMO_USER}  with password  {password}\n"
                f"The demo shop ({'--no-app: not started' if no_app else 'pid ' + str(children[-1].pid)}) "
                f"reports to it as app {DEMO_APP!r}. Ctrl-C stops everything.\n"))
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
            for child in children:
                if child.poll() is not None:
                    self.stderr.write(f"{child.args[2]} exited with status {child.returncode}")
        except KeyboardInterrupt:
            pass
        finally:
            _stop(children)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ensure_user(password: str) -> None:
    User = get_user_model()
    user, _ = User.objects.get_or_create(username=DEMO_USER)
    user.is_staff = user.is_superuser = True
    user.set_password(password)
    user.save()


def _fresh_token() -> str:
    app, _ = App.objects.get_or_create(name=DEMO_APP)
    AgentToken.objects.filter(app=app, name="demo", revoked_at__isnull=True).update(
        revoked_at=timezone.now())
    return AgentToken.issue(app, "demo")[1]


def _port_busy(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CommandError(f"daphne exited with status {process.returncode}")
        if _port_busy(port):
            return
        time.sleep(0.1)
    raise CommandError(f"daphne did not listen on port {port} within {timeout:.0f} s")


def _stop(children: list[subprocess.Popen]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()

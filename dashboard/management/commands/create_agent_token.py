"""``manage.py create_agent_token APP [--name NAME]``: create an app (if new) and an
agent token for it. The token is printed once; only its hash is stored."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from ...models import AgentToken, App


class Command(BaseCommand):
    help = "Create an agent token for an app (creating the app if needed)."

    def add_arguments(self, parser):
        parser.add_argument("app", help="the app's name, as the agent reports it (RETORT_APP)")
        parser.add_argument("--name", default="", help="a label for this token")
        parser.add_argument("--quiet", action="store_true", help="print only the token")

    def handle(self, *args, app: str, name: str, quiet: bool, **options):
        app_row, created = App.objects.get_or_create(name=app)
        _, raw = AgentToken.issue(app_row, name)
        if quiet:
            self.stdout.write(raw)
            return
        if created:
            self.stdout.write(f"Created app {app!r}.")
        self.stdout.write(f"Agent token for {app!r} (shown once, stored hashed):\n\n  {raw}\n")
        self.stdout.write("Start your app with:\n"
                          f"  RETORT_URL=ws://127.0.0.1:8000/ws/agent/ RETORT_TOKEN={raw} "
                          f"RETORT_APP={app} python your_app.py")

"""``manage.py operator USERNAME [--remove]``: make a user an operator (a member of
the Operators group, which holds ``dashboard.operate_agents``: may change what agents
track), or no longer one; ``manage.py operator --list`` names the operators. The same
as adding the user to the group in the admin."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from ...toggles import OPERATORS


class Command(BaseCommand):
    help = "Make a user an operator (may change what agents track), or list them."

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?")
        parser.add_argument("--remove", action="store_true",
                            help="take the user out of the Operators group")
        parser.add_argument("--list", action="store_true", help="list the operators")

    def handle(self, *args, username: str | None, remove: bool, list: bool, **options):
        group = Group.objects.filter(name=OPERATORS).first()
        if group is None:
            raise CommandError(f"there is no {OPERATORS} group: run manage.py migrate")
        if list:
            names = sorted(group.user_set.values_list("username", flat=True))
            self.stdout.write("\n".join(names) if names else "no operator")
            return
        if not username:
            raise CommandError("name a user (or pass --list)")
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        if remove:
            user.groups.remove(group)
            self.stdout.write(f"{username} is no longer an operator"
                              + (" (but is a superuser: may still change toggles)"
                                 if user.is_superuser else "") + ".")
        else:
            user.groups.add(group)
            self.stdout.write(f"{username} is an operator: may change what agents track.")

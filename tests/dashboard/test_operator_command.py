"""``manage.py operator``: add a user to the Operators group, take them out, list."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from dashboard import toggles

pytestmark = pytest.mark.django_db


def run(*args: str) -> str:
    out = StringIO()
    call_command("operator", *args, stdout=out)
    return out.getvalue().strip()


def test_make_and_unmake_an_operator(alice, django_user_model):
    assert run("--list") == "no operator"
    assert run("alice") == "alice is an operator: may change what agents track."
    alice = django_user_model.objects.get(pk=alice.pk)  # permissions are cached per object
    assert toggles.can_operate(alice) is True
    assert run("--list") == "alice"
    assert run("alice", "--remove") == "alice is no longer an operator."
    alice = django_user_model.objects.get(pk=alice.pk)
    assert toggles.can_operate(alice) is False


def test_unknown_users_and_no_user(alice):
    with pytest.raises(CommandError, match="^no user 'bob'$"):
        run("bob")
    with pytest.raises(CommandError, match=r"^name a user \(or pass --list\)$"):
        run()

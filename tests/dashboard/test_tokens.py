"""Agent tokens: stored as SHA-256 digests only; authenticate; the management command;
creation and revocation in the admin."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from dashboard.models import TOKEN_PREFIX, AgentToken, App, token_digest

pytestmark = pytest.mark.django_db

TOKEN_RE = re.compile(r"rt_[A-Za-z0-9_-]{43}")


@pytest.fixture
def app():
    return App.objects.create(name="shop")


def stored_values(token: AgentToken) -> list[str]:
    """Every column of the token's row, as stored."""
    row = AgentToken.objects.filter(pk=token.pk).values().get()
    return [str(value) for value in row.values()]


# -- issue --------------------------------------------------------------------------

def test_issue_stores_only_the_sha256_digest(app, admin_user):
    token, raw = AgentToken.issue(app, "web", admin_user)
    assert TOKEN_RE.fullmatch(raw)
    token.refresh_from_db()
    assert token.digest == hashlib.sha256(raw.encode()).hexdigest()
    assert token.digest == token_digest(raw)
    assert token.prefix == raw[:10]
    assert (token.app_id, token.name, token.created_by_id) == (app.pk, "web", admin_user.pk)
    assert token.last_used_at is None
    assert token.revoked_at is None
    assert all(raw not in value for value in stored_values(token))
    assert str(token) == f"shop {raw[:10]}… web"


def test_issue_makes_a_different_token_each_time(app):
    raws = {AgentToken.issue(app)[1] for _ in range(5)}
    assert len(raws) == 5
    assert AgentToken.objects.filter(app=app).count() == 5


# -- authenticate -------------------------------------------------------------------

def test_authenticate_returns_the_token_and_records_its_use(app):
    token, raw = AgentToken.issue(app)
    other, _ = AgentToken.issue(app)
    before = timezone.now()
    found = AgentToken.authenticate(raw)
    assert found.pk == token.pk
    assert found.app.name == "shop"
    token.refresh_from_db()
    assert before <= token.last_used_at <= timezone.now()
    other.refresh_from_db()
    assert other.last_used_at is None


@pytest.mark.parametrize("raw", [
    None,
    "",
    "rt_",
    "rt_" + "A" * 43,          # well-formed but never issued
])
def test_authenticate_refuses_unknown_values(app, raw):
    token, _ = AgentToken.issue(app)
    assert AgentToken.authenticate(raw) is None
    token.refresh_from_db()
    assert token.last_used_at is None


def test_authenticate_refuses_a_wrong_token(app):
    token, raw = AgentToken.issue(app)
    wrong = raw[:-1] + ("A" if raw[-1] != "A" else "B")
    assert AgentToken.authenticate(wrong) is None
    assert AgentToken.authenticate(raw + "x") is None
    assert AgentToken.authenticate(" " + raw) is None
    token.refresh_from_db()
    assert token.last_used_at is None


def test_authenticate_refuses_a_revoked_token(app):
    token, raw = AgentToken.issue(app)
    AgentToken.objects.filter(pk=token.pk).update(
        revoked_at=timezone.now() - timedelta(seconds=1))
    assert AgentToken.authenticate(raw) is None
    token.refresh_from_db()
    assert token.last_used_at is None


def row_for(app: App, raw: str) -> AgentToken:
    """A token row whose digest matches ``raw``, whatever ``raw`` looks like."""
    return AgentToken.objects.create(app=app, prefix=raw[:10], digest=token_digest(raw))


def test_authenticate_refuses_values_without_the_prefix(app):
    raw = "xx_" + "A" * 43
    row_for(app, raw)
    assert not raw.startswith(TOKEN_PREFIX)
    assert AgentToken.authenticate(raw) is None


def test_authenticate_refuses_values_longer_than_200_characters(app):
    at_limit = TOKEN_PREFIX + "a" * 197
    too_long = TOKEN_PREFIX + "b" * 198
    row_for(app, at_limit)
    row_for(app, too_long)
    assert (len(at_limit), len(too_long)) == (200, 201)
    assert AgentToken.authenticate(at_limit).digest == token_digest(at_limit)
    assert AgentToken.authenticate(too_long) is None


# -- manage.py create_agent_token ---------------------------------------------------

def test_create_agent_token_creates_the_app_and_prints_a_working_token():
    out = StringIO()
    call_command("create_agent_token", "billing", "--name", "ci", stdout=out)
    raws = TOKEN_RE.findall(out.getvalue())
    assert len(raws) == 2 and raws[0] == raws[1]
    raw = raws[0]
    assert out.getvalue() == (
        "Created app 'billing'.\n"
        "Agent token for 'billing' (shown once, stored hashed):\n\n"
        f"  {raw}\n"
        "Start your app with:\n"
        f"  RETORT_URL=ws://127.0.0.1:8000/ws/agent/ RETORT_TOKEN={raw} "
        "RETORT_APP=billing python your_app.py\n"
    )
    token = AgentToken.authenticate(raw)
    assert (token.app.name, token.name) == ("billing", "ci")
    assert all(raw not in value for value in stored_values(token))


def test_create_agent_token_reuses_an_existing_app(app):
    out = StringIO()
    call_command("create_agent_token", "shop", stdout=out)
    assert "Created app" not in out.getvalue()
    assert App.objects.count() == 1
    raw = TOKEN_RE.search(out.getvalue()).group()
    assert AgentToken.authenticate(raw).app_id == app.pk
    assert AgentToken.objects.get().name == ""


def test_create_agent_token_quiet_prints_only_the_token():
    out = StringIO()
    call_command("create_agent_token", "billing", "--quiet", stdout=out)
    raw = out.getvalue().removesuffix("\n")
    assert TOKEN_RE.fullmatch(raw)
    assert out.getvalue() == raw + "\n"
    assert AgentToken.authenticate(raw).app.name == "billing"


# -- admin --------------------------------------------------------------------------

def add_form(app: App, name: str) -> dict[str, str]:
    return {"app": str(app.pk), "name": name, "revoked_at_0": "", "revoked_at_1": ""}


def test_admin_add_shows_the_token_once_and_stores_its_digest(admin_client, admin_user, app):
    response = admin_client.post("/admin/dashboard/agenttoken/add/", add_form(app, "ci"),
                                 follow=True)
    assert response.status_code == 200
    assert response.redirect_chain == [("/admin/dashboard/agenttoken/", 302)]
    shown = [str(message) for message in response.context["messages"]]
    token_messages = [m for m in shown if m.startswith("Agent token for shop: ")]
    assert len(token_messages) == 1
    raw = TOKEN_RE.search(token_messages[0]).group()
    assert token_messages[0] == (f"Agent token for shop: {raw} — copy it now, it is "
                                 f"stored hashed and will not be shown again.")

    token = AgentToken.objects.get()  # exactly one row: the form did not save another
    assert token.digest == token_digest(raw)
    assert token.prefix == raw[:10]
    assert (token.app_id, token.name, token.created_by_id) == (app.pk, "ci", admin_user.pk)
    assert all(raw not in value for value in stored_values(token))
    assert AgentToken.authenticate(raw).pk == token.pk

    # shown once: neither the list nor the token's page shows it again
    assert raw.encode() not in admin_client.get("/admin/dashboard/agenttoken/").content
    change = admin_client.get(f"/admin/dashboard/agenttoken/{token.pk}/change/")
    assert change.status_code == 200
    assert raw.encode() not in change.content
    assert token.digest.encode() not in change.content


def test_admin_edit_does_not_issue_a_new_token(admin_client, app):
    token, raw = AgentToken.issue(app, "old")
    response = admin_client.post(f"/admin/dashboard/agenttoken/{token.pk}/change/",
                                 add_form(app, "renamed"), follow=True)
    assert response.status_code == 200
    assert not [m for m in response.context["messages"]
                if str(m).startswith("Agent token for")]
    token.refresh_from_db()
    assert token.name == "renamed"
    assert AgentToken.objects.count() == 1
    assert AgentToken.authenticate(raw).pk == token.pk


def test_admin_revoke_action(admin_client, app):
    token, raw = AgentToken.issue(app)
    revoked, _ = AgentToken.issue(app)
    earlier = timezone.now() - timedelta(days=1)
    AgentToken.objects.filter(pk=revoked.pk).update(revoked_at=earlier)
    response = admin_client.post("/admin/dashboard/agenttoken/", {
        "action": "revoke", "_selected_action": [str(token.pk), str(revoked.pk)]},
        follow=True)
    assert [str(m) for m in response.context["messages"]] == ["1 token(s) revoked."]
    assert AgentToken.authenticate(raw) is None
    revoked.refresh_from_db()
    assert revoked.revoked_at == earlier  # an earlier revocation keeps its time


def test_admin_requires_staff_to_add_tokens(client, django_user_model, app):
    user = django_user_model.objects.create_user("alice")
    client.force_login(user)
    response = client.post("/admin/dashboard/agenttoken/add/", add_form(app, "ci"))
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/admin/dashboard/agenttoken/add/"
    assert AgentToken.objects.count() == 0


def test_admin_app_inline_issues_real_tokens(admin_client):
    form = {"name": "billing", "tokens-TOTAL_FORMS": "1", "tokens-INITIAL_FORMS": "0",
            "tokens-MIN_NUM_FORMS": "0", "tokens-MAX_NUM_FORMS": "1000",
            "tokens-0-name": "ci", "tokens-0-revoked_at_0": "",
            "tokens-0-revoked_at_1": ""}
    response = admin_client.post("/admin/dashboard/app/add/", form, follow=True)
    assert response.status_code == 200
    tokens = list(AgentToken.objects.all())
    # either the inline cannot add tokens, or what it adds is a real, shown token
    if tokens:
        assert len(tokens) == 1
        assert re.fullmatch(r"[0-9a-f]{64}", tokens[0].digest)
        shown = " ".join(str(m) for m in response.context["messages"])
        raw = TOKEN_RE.search(shown).group()
        assert token_digest(raw) == tokens[0].digest

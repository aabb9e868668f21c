"""Admin-scoped API keys (docs/security.md §"API keys (exists)"): created on the API keys page (owners and admins
pick the scope; agent by default) or with ``create_api_key --scope admin``; the scope is audited and shown."""

import io
import re

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import Account, ApiKey, AuditEntry
from billing.services import api_key_create

KEYS_URL = "/keys/"


@pytest.mark.parametrize("persona", ["owner_a", "admin_a"])
def test_the_keys_page_creates_an_admin_key(request, persona):
    who = request.getfixturevalue(persona)
    client = who.login(Client())
    response = client.post(KEYS_URL, {"label": "ops console", "scope": "admin"})
    assert response.status_code == 302
    shown = client.get(response["Location"]).content.decode()
    raw = re.search(r'value="(once_live_[A-Za-z0-9_-]+)"', shown).group(1)
    key = ApiKey.objects.get()
    assert (key.scope, key.label, key.created_by) == ("admin", "ops console", who.user)
    entry = AuditEntry.objects.get(action="billing.api_key.created")
    assert entry.data == {"label": "ops console", "key": key.preview, "scope": "admin"}
    assert ">admin</span>" in shown  # the scope column
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/v1/me").status_code == 200


def test_the_form_offers_the_scope_with_its_warning_and_defaults_to_agent(owner_a):
    client = owner_a.login(Client())
    html = client.get(KEYS_URL).content.decode()
    assert '<option value="agent" selected>Agent</option>' in html
    assert '<option value="admin">' in html
    assert "Admin keys can also approve or deny approval requests — never give one to an agent." in html
    assert client.post(KEYS_URL, {"label": "bot"}).status_code == 302  # no scope sent: an agent's key
    assert ApiKey.objects.get().scope == "agent"
    assert AuditEntry.objects.get(action="billing.api_key.created").data["scope"] == "agent"


def test_an_unknown_scope_is_an_inline_error_and_creates_nothing(owner_a):
    response = owner_a.login(Client()).post(KEYS_URL, {"label": "x", "scope": "root"})
    assert response.status_code == 422
    assert "Select a valid choice" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_a_viewer_cannot_create_an_admin_key(viewer_a):
    assert viewer_a.login(Client()).post(KEYS_URL, {"scope": "admin"}).status_code == 403
    assert not ApiKey.objects.exists()


def test_the_service_refuses_an_unknown_scope(account_a):
    with pytest.raises(ValidationError, match="Unknown key scope 'root'"):
        api_key_create(account=account_a, scope="root")
    assert not ApiKey.objects.exists()
    assert api_key_create(account=account_a).api_key.scope == "agent"


def _run(*args) -> str:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue().strip()


def test_create_api_key_takes_scope_admin(plans):
    raw = _run("create_api_key", "--account", "Initech", "--plan", "agency", "--scope", "admin")
    key = ApiKey.objects.get(account=Account.objects.get(name="Initech"))
    assert key.scope == "admin" and raw.endswith(key.last4)
    assert AuditEntry.objects.get(action="billing.api_key.created").data["scope"] == "admin"
    _run("create_api_key", "--account", "Initech")
    assert ApiKey.objects.exclude(pk=key.pk).get().scope == "agent"


def test_create_api_key_refuses_an_unknown_scope_and_writes_nothing(plans):
    with pytest.raises(CommandError, match="invalid choice: 'root'"):
        _run("create_api_key", "--account", "Initech", "--scope", "root")
    assert not Account.objects.filter(name="Initech").exists()

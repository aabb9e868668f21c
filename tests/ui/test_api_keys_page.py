"""The API keys page: permission matrix, shown-once keys, revocation, tenant scoping and pinned query counts."""

import re

import pytest
from django.test import Client

from billing.models import ApiKey, AuditEntry
from tests.conftest import make_key

KEYS_URL = "/keys/"


def revoke_url(key) -> str:
    return f"/keys/{key.api_key.pk}/revoke/"


def test_anonymous_is_sent_to_login(db):
    for url in (KEYS_URL, "/", "/keys/1/revoke/"):
        response = Client().get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


def test_anonymous_cannot_create_a_key(account_a):
    response = Client().post(KEYS_URL, {"label": "x"})
    assert response.status_code == 302
    assert not ApiKey.objects.exists()


def test_viewer_sees_key_metadata_but_no_create_form(viewer_a, key_a):
    response = viewer_a.login(Client()).get(KEYS_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert key_a.api_key.preview in html
    assert "agent A" in html
    assert "Create key" not in html
    assert "Revoke" not in html
    assert key_a.raw not in html


def test_viewer_cannot_create_or_revoke(viewer_a, key_a):
    client = viewer_a.login(Client())
    assert client.post(KEYS_URL, {"label": "sneaky"}).status_code == 403
    assert client.get(revoke_url(key_a)).status_code == 403
    assert client.post(revoke_url(key_a)).status_code == 403
    assert ApiKey.objects.count() == 1
    assert ApiKey.objects.get().revoked_at is None


@pytest.mark.parametrize("persona", ["owner_a", "admin_a"])
def test_editors_create_a_key_that_is_shown_exactly_once(request, persona):
    who = request.getfixturevalue(persona)
    client = who.login(Client())
    response = client.post(KEYS_URL, {"label": "billing-agent prod"})
    assert response.status_code == 302
    shown = client.get(response["Location"])
    raw = re.search(r'value="(once_live_[A-Za-z0-9_-]+)"', shown.content.decode()).group(1)
    key = ApiKey.objects.get()
    assert key.label == "billing-agent prod"
    assert key.created_by == who.user
    assert key.preview == f"{raw[:14]}…{raw[-4:]}"
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/v1/me").status_code == 200
    assert "no-store" in shown["Cache-Control"]
    again = client.get(response["Location"]).content.decode()
    assert raw not in again
    assert "already shown once" in again
    assert AuditEntry.objects.filter(action="billing.api_key.created", actor=who.user).count() == 1


def test_label_too_long_is_an_inline_error_and_creates_nothing(owner_a):
    response = owner_a.login(Client()).post(KEYS_URL, {"label": "x" * 101})
    assert response.status_code == 422
    assert "at most 100 characters" in response.content.decode()
    assert not ApiKey.objects.exists()


def test_owner_revokes_after_confirmation(owner_a, key_a):
    client = owner_a.login(Client())
    confirm = client.get(revoke_url(key_a))
    assert confirm.status_code == 200
    assert "cannot be undone" in confirm.content.decode()
    assert ApiKey.objects.get().revoked_at is None  # the GET changed nothing
    response = client.post(revoke_url(key_a), follow=True)
    assert "revoked" in response.content.decode()
    assert ApiKey.objects.get().revoked_at is not None
    assert ApiKey.objects.get().revoked_by == owner_a.user


def test_other_account_sees_nothing_and_gets_404(owner_b, key_a, key_b):
    client = owner_b.login(Client())
    html = client.get(KEYS_URL).content.decode()
    assert key_b.api_key.preview in html
    assert key_a.api_key.preview not in html
    assert client.get(revoke_url(key_a)).status_code == 404
    assert client.post(revoke_url(key_a)).status_code == 404
    assert ApiKey.objects.get(pk=key_a.api_key.pk).revoked_at is None


def test_user_without_an_account_is_told_so(db, django_user_model):
    django_user_model.objects.create_user(username="nobody@x.test", password="pw-nobody-123")
    client = Client()
    client.login(username="nobody@x.test", password="pw-nobody-123")
    response = client.get(KEYS_URL)
    assert response.status_code == 403
    assert "not a member of any account" in response.content.decode()


def test_keys_page_is_paginated(owner_a):
    for index in range(30):
        make_key(owner_a.account, f"k{index}")
    client = owner_a.login(Client())
    first = client.get(KEYS_URL).content.decode()
    assert "Page 1 of 2" in first
    assert first.count("badge-on") == 25
    second = client.get(KEYS_URL + "?page=2").content.decode()
    assert second.count("badge-on") == 5


@pytest.mark.parametrize("count", [1, 30])
def test_keys_page_query_count_does_not_grow_with_keys(owner_a, count, django_assert_num_queries):
    for index in range(count):
        make_key(owner_a.account, f"k{index}")
    client = owner_a.login(Client())
    # session, user, memberships (+account, plan), key count, key page (+created_by)
    with django_assert_num_queries(5):
        assert client.get(KEYS_URL).status_code == 200


def test_overview_query_count(owner_a, key_a, django_assert_num_queries):
    client = owner_a.login(Client())
    # session, user, memberships, active keys, usage mirror (no live hash yet), operations panel without agents
    # (series, block reasons, agents, failing tools, blocked agents, failed runs, alerts; tests/ui/test_overview.py
    # pins it with data), keyed-runs panel (in progress, recent failures)
    with django_assert_num_queries(14):
        response = client.get("/")
    assert response.status_code == 200
    assert "1 active API key" in response.content.decode()


def test_account_switcher(owner_a, owner_b, key_b):
    from billing.services import operator_create

    operator_create(account=owner_b.account, email=owner_a.email, password=owner_a.password, role="viewer")
    client = owner_a.login(Client())
    page = client.get(KEYS_URL).content.decode()
    assert "Acme (Owner)" in page and "Globex (Viewer)" in page
    response = client.post("/account/switch/", {"account_id": owner_b.account.pk, "next": KEYS_URL})
    assert response.status_code == 302 and response["Location"] == KEYS_URL
    page = client.get(KEYS_URL).content.decode()
    assert key_b.api_key.preview in page
    assert "Create key" not in page  # a viewer there


def test_switching_to_a_foreign_account_is_refused(owner_a, owner_b, key_b):
    client = owner_a.login(Client())
    client.post("/account/switch/", {"account_id": owner_b.account.pk})
    assert key_b.api_key.preview not in client.get(KEYS_URL).content.decode()


def test_switch_ignores_offsite_next(owner_a):
    response = owner_a.login(Client()).post(
        "/account/switch/", {"account_id": owner_a.account.pk, "next": "https://evil.example/"}
    )
    assert response["Location"] == "/"


def test_forms_are_csrf_protected(owner_a):
    client = Client(enforce_csrf_checks=True)
    owner_a.login(client)
    assert client.post(KEYS_URL, {"label": "x"}).status_code == 403
    assert not ApiKey.objects.exists()

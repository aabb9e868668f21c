"""Team page: owners add members (one-time password), change roles (effective on the next request), remove; the
last owner stays; admins and viewers cannot manage the team; other accounts' members are 404."""

import re

import pytest
from django.contrib.auth import authenticate
from django.test import Client

from billing.models import AuditEntry, Membership


def test_owner_adds_a_member_with_a_one_time_password(owner_a):
    client = owner_a.login(Client())
    response = client.post("/team/", {"email": "New@Acme.test", "role": "admin"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    password = re.search(r'id="new-password" type="text" readonly value="([^"]+)"', response.content.decode()).group(1)
    assert authenticate(username="new@acme.test", password=password) is not None
    assert Membership.objects.get(user__username="new@acme.test").role == "admin"
    assert AuditEntry.objects.filter(action="billing.member.added").exists()
    again = client.post("/team/", {"email": "new@acme.test", "role": "viewer"})
    assert again.status_code == 422 and "already a member" in again.content.decode()


def test_role_change_takes_effect_on_the_next_request(owner_a, viewer_a):
    viewer = viewer_a.login(Client())
    assert viewer.post("/keys/", {"label": "x"}).status_code == 403
    member = Membership.objects.get(user=viewer_a.user)
    owner_a.login(Client()).post(f"/team/{member.pk}/", {"role": "admin"})
    assert viewer.post("/keys/", {"label": "x"}).status_code == 302  # same session, next request: now an admin


def test_the_last_owner_can_be_neither_demoted_nor_removed(owner_a):
    client = owner_a.login(Client())
    me = Membership.objects.get(user=owner_a.user)
    response = client.post(f"/team/{me.pk}/", {"role": "viewer"}, follow=True)
    assert "last owner cannot be demoted" in response.content.decode()
    response = client.post(f"/team/{me.pk}/", {"action": "remove"}, follow=True)
    assert "last owner cannot be removed" in response.content.decode()
    assert Membership.objects.get(pk=me.pk).role == "owner"


def test_owner_removes_a_member(owner_a, viewer_a):
    member = Membership.objects.get(user=viewer_a.user)
    owner_a.login(Client()).post(f"/team/{member.pk}/", {"action": "remove"})
    assert not Membership.objects.filter(pk=member.pk).exists()
    assert viewer_a.login(Client()).get("/keys/").status_code == 403  # no account any more


@pytest.mark.parametrize("persona", ["admin_a", "viewer_a"])
def test_only_owners_manage_the_team(request, persona, owner_a):
    who = request.getfixturevalue(persona)
    client = who.login(Client())
    html = client.get("/team/").content.decode()
    assert owner_a.email in html and "Add member" not in html
    assert client.post("/team/", {"email": "x@y.test", "role": "owner"}).status_code == 403
    owner = Membership.objects.get(user=owner_a.user)
    assert client.post(f"/team/{owner.pk}/", {"action": "remove"}).status_code == 403


def test_other_accounts_members_are_404(owner_a, owner_b):
    theirs = Membership.objects.get(user=owner_b.user)
    assert owner_a.login(Client()).post(f"/team/{theirs.pk}/", {"action": "remove"}).status_code == 404
    assert Membership.objects.filter(pk=theirs.pk).exists()


def test_team_page_query_count_is_pinned(owner_a, django_assert_num_queries):
    from billing.services import membership_add

    for n in range(12):
        membership_add(account=owner_a.account, email=f"m{n}@acme.test", role="viewer", actor=owner_a.user)
    client = owner_a.login(Client())
    with django_assert_num_queries(5):  # session, user, memberships, count, page
        assert client.get("/team/").status_code == 200

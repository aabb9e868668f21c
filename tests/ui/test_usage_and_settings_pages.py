"""Usage & plan and Settings pages: bars match the API, owners switch plans, viewers cannot, settings audited."""

import re

import pytest
from django.test import Client

from billing.models import Account, AuditEntry


def lock(key, name):
    return key.client().post("/v1/check-lock", {"key": name}, content_type="application/json")


def test_usage_bars_match_the_api(owner_a, key_a):
    for n in range(4):
        lock(key_a, f"k{n}")
    lock(key_a, "k0")
    html = owner_a.login(Client()).get("/usage/").content.decode()
    api = key_a.client().get("/v1/usage", {"kind": "make"}).json()
    used = re.search(
        r'data-kind="make">\s*<p><strong>Check-locks</strong> — <span class="quota-used">([\d,]+)</span> '
        r"of ([\d,]+) this month",
        html,
    )
    assert used.group(2) == "2,000,000"  # thousands separators
    assert (int(used.group(1)), int(used.group(2).replace(",", ""))) == (api["usage"], api["limit"]) == (4, 2_000_000)


def test_owner_switches_plan_and_the_api_sees_it(owner_a, key_a):
    assert key_a.client().get("/v1/me").json()["plan"] == "agency"
    client = owner_a.login(Client())
    response = client.post("/usage/", {"plan": "pro"}, follow=True)
    assert "now on the Pro plan" in response.content.decode()
    assert Account.objects.get(pk=owner_a.account.pk).plan.code == "pro"
    # on_commit invalidation does not run inside the test transaction; a fresh key shows the new plan
    from tests.conftest import make_key

    assert make_key(owner_a.account).client().get("/v1/me").json()["plan"] == "pro"
    assert AuditEntry.objects.filter(action="billing.account.plan_changed", actor=owner_a.user).exists()


@pytest.mark.parametrize("persona", ["admin_a", "viewer_a"])
def test_only_owners_switch_plans(request, persona):
    who = request.getfixturevalue(persona)
    client = who.login(Client())
    assert "Switch to" not in client.get("/usage/").content.decode()
    assert client.post("/usage/", {"plan": "free"}).status_code == 403
    assert Account.objects.get(pk=who.account.pk).plan.code == "agency"


def test_settings_are_saved_audited_and_validated(admin_a, owner_b):
    client = admin_a.login(Client())
    response = client.post(
        "/settings/", {"name": "Acme Corp", "strict_mode": "on", "email_notifications_enabled": "on"}, follow=True
    )
    assert "Settings saved." in response.content.decode()
    account = Account.objects.get(pk=admin_a.account.pk)
    assert (account.name, account.strict_mode, account.tool_error_notifications_enabled) == ("Acme Corp", True, False)
    entry = AuditEntry.objects.get(action="billing.account.settings_changed")
    assert entry.data["after"]["strict_mode"] is True
    clash = client.post("/settings/", {"name": "Globex"})
    assert clash.status_code == 422 and "already has this name" in clash.content.decode()


def test_viewer_cannot_change_settings(viewer_a):
    client = viewer_a.login(Client())
    assert "Save settings" not in client.get("/settings/").content.decode()
    assert client.post("/settings/", {"name": "Hacked"}).status_code == 403
    assert Account.objects.get(pk=viewer_a.account.pk).name == "Acme"


def test_strict_mode_refuses_unregistered_tools(owner_a, key_a):
    owner_a.login(Client()).post("/settings/", {"name": "Acme", "strict_mode": "on"})
    response = key_a.client().post("/v1/ai/run", {"agent_id": "a", "tool": "t"}, content_type="application/json")
    assert response.status_code == 404
    assert response.json()["detail"]["error"] == "tool_not_found"

"""Management commands of docs/architecture.md §6: create_api_key, create_operator, bootstrap_demo."""

import io

import pytest
from django.contrib.auth import authenticate
from django.core.management import CommandError, call_command
from django.test import Client

from billing.models import Account, ApiKey, Membership


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_create_api_key_prints_only_the_raw_key_and_creates_the_account(plans):
    out, err = run("create_api_key", "--account", "Initech", "--plan", "pro", "--label", "ci")
    raw = out.strip()
    assert raw.startswith("once_live_") and "\n" not in raw and " " not in raw
    assert "Created account" in err
    account = Account.objects.get(name="Initech")
    assert account.plan.code == "pro"
    key = ApiKey.objects.get(account=account)
    assert key.label == "ci"
    me = Client(headers={"Authorization": f"Bearer {raw}"}).get("/v1/me").json()
    assert me["plan"] == "pro" and me["account"] == "Initech"


def test_create_api_key_for_an_existing_account_changes_the_plan_when_asked(account_a):
    run("create_api_key", "--account", "Acme", "--plan", "free")
    account_a.refresh_from_db()
    assert account_a.plan.code == "free"
    assert account_a.audit_entries.filter(action="billing.account.plan_changed").exists()


def test_create_api_key_default_plan_is_free(plans):
    run("create_api_key", "--account", "Newco")
    assert Account.objects.get(name="Newco").plan.code == "free"


def test_create_api_key_refuses_an_unknown_plan_and_writes_nothing(plans):
    with pytest.raises(CommandError, match="Unknown plan 'platinum'"):
        run("create_api_key", "--account", "Initech", "--plan", "platinum")
    assert not Account.objects.filter(name="Initech").exists()


@pytest.mark.parametrize(("name", "message"), [("   ", "needs a name"), ("x" * 121, "at most 120")])
def test_create_api_key_refuses_a_bad_account_name(plans, name, message):
    with pytest.raises(CommandError, match=message):
        run("create_api_key", "--account", name)
    assert not Account.objects.exists()


def test_create_operator_refuses_a_weak_password_and_writes_nothing(account_a):
    with pytest.raises(CommandError, match="too short"):
        run("create_operator", "--account", "Acme", "--email", "ops@acme.test", "--password", "short")
    assert not Membership.objects.exists()


def test_create_operator_creates_a_login_with_the_role(account_a):
    out, _ = run(
        "create_operator",
        "--account",
        "Acme",
        "--email",
        "Ops@Acme.test",
        "--password",
        "s3cret-pass-1",
        "--role",
        "viewer",
    )
    assert "ops@acme.test is viewer of 'Acme'" in out
    user = authenticate(username="ops@acme.test", password="s3cret-pass-1")
    assert user is not None
    assert Membership.objects.get(user=user, account=account_a).role == "viewer"


def test_create_operator_again_updates_password_and_role(account_a):
    run("create_operator", "--account", "Acme", "--email", "ops@acme.test", "--password", "first-pass-1")
    run(
        "create_operator",
        "--account",
        "Acme",
        "--email",
        "ops@acme.test",
        "--password",
        "second-pass-2",
        "--role",
        "admin",
    )
    assert authenticate(username="ops@acme.test", password="second-pass-2") is not None
    assert Membership.objects.get(user__username="ops@acme.test").role == "admin"


def test_create_operator_rejects_a_bad_email(account_a):
    with pytest.raises(CommandError, match="valid email"):
        run("create_operator", "--account", "Acme", "--email", "nope", "--password", "x-pass-123")


def test_bootstrap_demo_creates_once_and_then_only_explains(plans):
    out, _ = run("bootstrap_demo", "--base-url", "http://127.0.0.1:8000")
    account = Account.objects.get(name="demo")
    assert account.plan.code == "agency"
    assert "demo@onceonly.local" in out
    raw = next(word for word in out.split() if word.startswith("once_live_"))
    password = out.split("password ")[1].split()[0]
    assert authenticate(username="demo@onceonly.local", password=password) is not None
    assert Client(headers={"Authorization": f"Bearer {raw}"}).get("/v1/me").json()["plan"] == "agency"

    again, _ = run("bootstrap_demo")
    assert "Demo account exists" in again
    assert "once_live_" not in again.replace("create_api_key", "")
    assert ApiKey.objects.filter(account=account).count() == 1


def test_a_password_reset_keeps_the_members_role(account_a, viewer_a):
    """create_operator without --role resets the password and leaves the role alone (it used to make an owner)."""
    from django.contrib.auth import authenticate

    from billing.models import Membership

    out = io.StringIO()
    call_command(
        "create_operator",
        "--account",
        account_a.name,
        "--email",
        viewer_a.email,
        "--password",
        "a-brand-new-password-42",
        stdout=out,
    )
    assert Membership.objects.get(user=viewer_a.user, account=account_a).role == "viewer"
    assert "is viewer of" in out.getvalue()
    assert authenticate(username=viewer_a.email, password="a-brand-new-password-42") is not None
    call_command(
        "create_operator",
        "--account",
        account_a.name,
        "--email",
        viewer_a.email,
        "--password",
        "a-brand-new-password-42",
        "--role",
        "admin",
        stdout=out,
    )
    assert Membership.objects.get(user=viewer_a.user, account=account_a).role == "admin"

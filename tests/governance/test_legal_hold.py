"""Retention per account and plan, and legal holds (docs/operations.md §"Retention"): the sweep deletes old history
of accounts not on hold, each after its own retention, and keeps what a hold on the account or on an agent covers;
holds are an owner's (dashboard) or an admin key's (API) action, with a reason, audited."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing.models import Account, AuditEntry, Plan
from billing.services import api_key_create
from governance import holds, ledger
from idempotency import services
from idempotency.models import Lease, LockRecord, Run, RunEvent
from tests.conftest import Key
from tests.support.decisions import agent, decide

JSON = "application/json"


def _old_history(key, account, *, days: int, tag: str, agent_id: str = "bot") -> None:
    """A finished keyed run of ``agent_id`` (lease, run, events), an expired lock and an event, all ``days`` old."""
    api = key.client()
    answer = api.post(
        "/v1/ai/run",
        {"key": f"{tag}-job", "metadata": {"task": "demo.echo", "run_id": f"{tag}-run", "agent_id": agent_id}},
        content_type=JSON,
    )
    assert answer.status_code == 200, answer.content
    api.post("/v1/check-lock", {"key": f"{tag}-lock", "ttl": 1}, content_type=JSON)
    api.post("/v1/events", {"run_id": f"{tag}-run", "type": "note", "agent_id": agent_id}, content_type=JSON)
    then = timezone.now() - timedelta(days=days, hours=1)
    Lease.objects.filter(account=account, key=f"{tag}-job").update(
        status="completed", updated_at=then, done_at=then, expires_at=then
    )
    LockRecord.objects.filter(account=account, key=f"{tag}-lock").update(expires_at=then)
    RunEvent.objects.filter(account=account, run_id=f"{tag}-run").update(ts=then)


def _kept(account, tag: str) -> dict[str, bool]:
    return {
        "lease": Lease.objects.filter(account=account, key=f"{tag}-job").exists(),
        "run": Run.objects.filter(account=account, run_id=f"{tag}-run").exists(),
        "lock": LockRecord.objects.filter(account=account, key=f"{tag}-lock").exists(),
        "events": RunEvent.objects.filter(account=account, run_id=f"{tag}-run").exists(),
    }


ALL = {"lease": True, "run": True, "lock": True, "events": True}
NONE = {"lease": False, "run": False, "lock": False, "events": False}


def test_effective_retention_is_the_account_override_else_the_plan_else_the_server(account_a, settings):
    settings.ONCEONLY_RETENTION_DAYS = 7
    assert holds.effective_retention_days(account_a) == 7
    Plan.objects.filter(pk=account_a.plan_id).update(retention_days=30)
    account_a.refresh_from_db()
    account_a.plan.refresh_from_db()
    assert holds.effective_retention_days(account_a) == 30
    account_a.retention_days = 90
    assert holds.effective_retention_days(account_a) == 90
    annotated = services.accounts_by_retention().get(pk=account_a.pk)
    assert annotated.retention == 30  # (the override above was not saved)


def test_the_sweep_follows_each_accounts_retention_and_keeps_held_history(key_a, key_b, account_a, account_b, settings):
    settings.ONCEONLY_RETENTION_DAYS = 7
    Account.objects.filter(pk=account_b.pk).update(retention_days=30)  # B keeps a month
    _old_history(key_a, account_a, days=10, tag="a10")
    _old_history(key_b, account_b, days=10, tag="b10")
    _old_history(key_b, account_b, days=40, tag="b40")
    assert _kept(account_a, "a10") == ALL
    services.retention_sweep()
    assert _kept(account_a, "a10") == NONE  # past A's 7 days
    assert _kept(account_b, "b10") == ALL  # within B's 30
    assert _kept(account_b, "b40") == NONE


def test_a_shorter_retention_never_ends_a_completed_lease_early(key_a, account_a, settings):
    """A completed lease is final for ONCEONLY_RETENTION_DAYS everywhere: its record is kept at least that long."""
    settings.ONCEONLY_RETENTION_DAYS = 7
    Account.objects.filter(pk=account_a.pk).update(retention_days=1)
    _old_history(key_a, account_a, days=3, tag="a3")
    services.retention_sweep()
    assert _kept(account_a, "a3") == {"lease": True, "run": True, "lock": False, "events": False}


def test_an_account_on_hold_keeps_everything_until_released(key_a, owner_a, account_a, settings):
    _old_history(key_a, account_a, days=settings.ONCEONLY_RETENTION_DAYS + 3, tag="old")
    assert holds.set_account_hold(account=account_a, held=True, reason="Matter 42", actor="alice")
    services.retention_sweep()
    assert _kept(account_a, "old") == ALL
    assert holds.set_account_hold(account=account_a, held=False, reason="Matter 42 closed", actor="alice")
    services.retention_sweep()
    assert _kept(account_a, "old") == NONE
    entries = AuditEntry.objects.filter(account=account_a, action__startswith="governance.legal_hold").order_by("id")
    assert [(e.action, e.data["reason"]) for e in entries] == [
        ("governance.legal_hold.set", "Matter 42"),
        ("governance.legal_hold.cleared", "Matter 42 closed"),
    ]


def test_an_agent_on_hold_keeps_its_runs_and_events_only(key_a, account_a, settings):
    days = settings.ONCEONLY_RETENTION_DAYS + 3
    _old_history(key_a, account_a, days=days, tag="held", agent_id="held-bot")
    _old_history(key_a, account_a, days=days, tag="free", agent_id="free-bot")
    held = agent(account_a, "held-bot")
    assert holds.set_agent_hold(account=account_a, agent=held, held=True, reason="Incident 7", actor="alice")
    assert "held-bot" in holds.held_agents()[account_a.pk]
    services.retention_sweep()
    assert _kept(account_a, "held") == {"lease": True, "run": True, "lock": False, "events": True}
    assert _kept(account_a, "free") == NONE
    entry = AuditEntry.objects.get(account=account_a, action="governance.legal_hold.set")
    assert (entry.object_type, entry.object_id, entry.data["reason"]) == ("agent", "held-bot", "Incident 7")


def test_a_hold_needs_a_reason_and_setting_it_twice_changes_nothing(account_a):
    with pytest.raises(holds.HoldError):
        holds.set_account_hold(account=account_a, held=True, reason="  ", actor="alice")
    assert holds.set_account_hold(account=account_a, held=True, reason="r", actor="alice")
    assert not holds.set_account_hold(account=account_a, held=True, reason="r", actor="alice")
    assert AuditEntry.objects.filter(action="governance.legal_hold.set").count() == 1


def test_retention_never_deletes_decisions_so_the_ledger_still_verifies(key_a, account_a, settings):
    bot = agent(account_a, "bot")
    decide(bot, n=3, ts=timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS + 30))
    for decision in bot.decisions.all():
        fields = ledger._row_fields(decision)
        fields["agent_id"] = bot.agent_id
        decision.row_hash = ledger.row_hash(account_a.pk, fields)
        decision.save(update_fields=["row_hash"])
    services.retention_sweep()
    assert bot.decisions.count() == 3 and ledger.verify(account_a.pk).ok


# --- the dashboard ---------------------------------------------------------------------------------------------


def test_owners_set_and_clear_holds_on_the_dashboard_others_only_see_them(owner_a, admin_a, viewer_a, account_a):
    bot = agent(account_a, "bot")
    owner = owner_a.login(Client())
    settings_page = owner.get("/settings/").content.decode()
    assert 'data-hold="off"' in settings_page and 'action="/settings/legal-hold/"' in settings_page
    response = owner.post("/settings/legal-hold/", {"action": "set", "reason": "Audit 2026"})
    assert response.status_code == 302 and response["Location"].endswith("/settings/#legal-hold")
    account_a.refresh_from_db()
    assert account_a.legal_hold_since is not None and account_a.legal_hold_reason == "Audit 2026"
    assert "“Audit 2026”" in owner.get("/settings/").content.decode()
    owner.post(f"/agents/{bot.pk}/legal-hold/", {"action": "set", "reason": "Incident 7"})
    bot.refresh_from_db()
    assert bot.legal_hold_reason == "Incident 7"
    assert 'data-hold="on"' in owner.get(f"/agents/{bot.pk}/").content.decode()
    owner.post("/settings/legal-hold/", {"action": "clear", "reason": ""})  # no reason: refused
    account_a.refresh_from_db()
    assert account_a.legal_hold_since is not None
    for persona in (admin_a, viewer_a):
        web = persona.login(Client())
        assert web.post("/settings/legal-hold/", {"action": "clear", "reason": "x"}).status_code == 403
        assert web.post(f"/agents/{bot.pk}/legal-hold/", {"action": "clear", "reason": "x"}).status_code == 403
        page = web.get(f"/agents/{bot.pk}/").content.decode()
        assert 'data-hold="on"' in page and "/legal-hold/" not in page


# --- the API ---------------------------------------------------------------------------------------------------


def test_the_api_reads_holds_with_any_key_and_changes_them_with_an_admin_key(key_a, account_a):
    agent(account_a, "bot")
    assert key_a.client().get("/v1/legal-hold").json()["account"] == {"held": False, "since": None, "reason": None}
    refused = key_a.client().post("/v1/legal-hold", {"held": True, "reason": "r"}, content_type=JSON)
    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "admin_key_required"
    created = api_key_create(account=account_a, label="admin", scope="admin")
    admin = Key(created.raw, created.api_key).client()
    answer = admin.post("/v1/legal-hold", {"held": True, "reason": "Matter 9", "agent_id": "bot"}, content_type=JSON)
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["changed"] and body["agents"][0]["agent_id"] == "bot" and body["agents"][0]["reason"] == "Matter 9"
    assert not body["account"]["held"]
    entry = AuditEntry.objects.get(action="governance.legal_hold.set")
    assert entry.actor_label.startswith("api key ") and entry.object_id == "bot"
    assert (
        admin.post("/v1/legal-hold", {"held": True, "reason": "r", "agent_id": "ghost"}, content_type=JSON).json()[
            "detail"
        ]["error"]
        == "agent_not_found"
    )
    missing = admin.post("/v1/legal-hold", {"held": True}, content_type=JSON)
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "reason"]

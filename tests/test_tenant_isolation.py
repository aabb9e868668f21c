"""Tenant isolation over every route: account B — its API key and its owner in the dashboard — can neither read nor
change anything of account A. A's ids in B's URLs are 404, lists and totals never show A's rows, and the same names
(lock keys, agent ids, run ids) are B's own, independent objects.

The cases are a table keyed by URL name; ``test_every_route_has_an_isolation_case`` fails when a route is added
without a case (or an explicit exemption with its reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from billing.choices import Role
from billing.models import ApiKey, Membership
from billing.services import account_get_or_create, api_key_create
from governance import channels, policy_code
from governance.models import Agent, Approval, Decision, McpServer, NotificationChannel, PolicyFile, Tool
from idempotency.models import Lease
from tests.conftest import Key, Persona, _persona, make_key, seeded_plans
from tests.support.module_data import Shared, shared_per_module
from tests.support.routes import walk_routes

JSON = "application/json"
A_SECRET_NAME = "alpha-private-marker"  # appears in A's objects; must never appear in a response to B


@dataclass
class World:
    a: Key
    b: Key
    owner_a: Persona
    owner_b: Persona
    web_b: Client
    lease_id: str
    decision_id: int
    tool_id: int
    key_id: int
    membership_id: int
    agent_pk: int  # dashboard URLs name an agent by its row (governance/urls.py)
    approval_id: str  # a pending approval of A's, whose args preview holds A_SECRET_NAME
    channel_id: int
    policy_preview: str  # the SHA-256 of a policies file A's owner uploaded (waiting for its Confirm)
    policy_fingerprint: str  # …and the fingerprint its Confirm posts
    mcp_server_id: int  # A's upstream MCP server `a-mcp`, with one tool (its last_error holds A_SECRET_NAME)

    def api_a(self) -> Client:
        return self.a.client()

    def api_b(self) -> Client:
        return self.b.client()


def _build_world() -> dict[str, Any]:
    """A's objects of every kind (and B's key and owner), the same for every case: built once for the module."""
    seeded_plans()
    account_a = account_get_or_create(name="Acme", plan_code="agency")[0]
    account_b = account_get_or_create(name="Globex", plan_code="agency")[0]
    key_a, key_b = make_key(account_a, "agent A"), make_key(account_b, "agent B")
    owner_a = _persona(account_a, Role.OWNER, "alice@acme.test")
    owner_b = _persona(account_b, Role.OWNER, "bob@globex.test")
    viewer_a = _persona(account_a, Role.VIEWER, "victor@acme.test")
    api = key_a.client()
    assert api.post("/v1/check-lock", {"key": "shared-key"}, content_type=JSON).json()["status"] == "locked"
    # An hour: the lease outlives the module's run, however slow the machine (its cases see it held).
    lease = api.post("/v1/ai/lease", {"key": "lease-key", "ttl": 3600}, content_type=JSON).json()
    assert lease["status"] == "acquired"
    policy = {"blocked_tools": [A_SECRET_NAME], "require_approval": ["wire.transfer"]}
    api.post("/v1/policies/a-bot", policy, content_type=JSON)
    waiting = api.post(
        "/v1/ai/run", {"agent_id": "a-bot", "tool": "wire.transfer", "args": {"memo": A_SECRET_NAME}}, content_type=JSON
    ).json()
    assert waiting["policy_reason"] == "approval_required"
    channel, _ = channels.channel_create(
        account=account_a,
        kind="webhook",
        label=A_SECRET_NAME,
        url="https://hooks.example.com/a",
        events=["tool_error"],
        actor="alice@acme.test",
    )
    from governance.models import Alert  # the alerts feed (docs/governance.md §"Budget alerts")

    Alert.objects.create(account=account_a, kind="budget", code="daily_spend", once="world", message=A_SECRET_NAME)
    decision = api.post(
        "/v1/ai/run", {"agent_id": "a-bot", "tool": "search", "args": {"run_id": "a-run"}}, content_type=JSON
    ).json()
    assert decision["decision"] == "allowed"
    api.post("/v1/events", {"run_id": "a-run", "type": "note", "message": A_SECRET_NAME}, content_type=JSON)
    api.post(
        "/v1/tools",
        {
            "name": A_SECRET_NAME,
            "url": "https://tools.example.com/x",
            "auth": {"type": "hmac_sha256", "secret": "s3cret-0123456789"},
        },
        content_type=JSON,
    )
    ApiKey.objects.filter(pk=key_a.api_key.pk).update(label=A_SECRET_NAME)
    # An upstream MCP server (made directly: registering would ask a server for its tools) and one of its tools.
    server = McpServer.objects.create(
        account=account_a, name="a-mcp", url="https://mcp.example.com/mcp", last_error=A_SECRET_NAME
    )
    Tool.objects.create(
        account=account_a,
        name=f"a-mcp.{A_SECRET_NAME}",
        name_key=f"a-mcp.{A_SECRET_NAME}",
        url=server.url,
        kind="mcp",
        mcp_server=server,
        remote_name=A_SECRET_NAME,
        enabled=False,  # not offered by A's MCP endpoint: the gateway's cases see A's tools as they were
    )
    # Policies as code: a file applied (a-bot's policy as it is: no new version) and one uploaded, not confirmed.
    applied = f"agents:\n  a-bot:\n    blocked_tools: [{A_SECRET_NAME}]\n    require_approval: [wire.transfer]\n"
    assert api.post("/v1/policies/apply", {"yaml": applied}, content_type=JSON).json()["counts"]["unchanged"] == 1
    uploaded = applied.replace("require_approval", "max_actions_per_hour: 1\n    require_approval")
    web_a = owner_a.login(Client())
    file = SimpleUploadedFile("a.yaml", uploaded.encode())
    preview = web_a.post("/agents/policies/upload/", {"file": file})["Location"]
    fingerprint = re.search(r'name="fingerprint" value="(\w+)"', web_a.get(preview).content.decode()).group(1)
    return {
        "a": key_a,
        "b": key_b,
        "owner_a": owner_a,
        "owner_b": owner_b,
        "b_cookies": owner_b.login(Client()).cookies,  # B's dashboard session
        "lease_id": lease["lease_id"],
        "decision_id": decision["decision_id"],
        "tool_id": Tool.objects.get(account=account_a, name=A_SECRET_NAME).pk,
        "key_id": key_a.api_key.pk,
        "membership_id": Membership.objects.get(user=viewer_a.user).pk,
        "agent_pk": Agent.objects.get(account=account_a, agent_id="a-bot").pk,
        "approval_id": waiting["approval_id"],
        "channel_id": channel.pk,
        "policy_preview": policy_code.sha256_of(uploaded),
        "policy_fingerprint": fingerprint,
        "mcp_server_id": server.pk,
    }


@pytest.fixture(scope="module")
def _world(django_db_setup, django_db_blocker):
    """The world once per module (~50 ms a case when each built it): tests/support/module_data.py."""
    with shared_per_module(django_db_blocker, _build_world) as shared:
        yield shared


@pytest.fixture
def world(db, _world: Shared[dict[str, Any]]) -> World:
    """The module's world as built, for one case: its rows inside the case's own (rolled back) transaction, Redis
    as the build left it, and B's dashboard session in a client of the case's own."""
    built = _world.for_test()
    web_b = Client()
    web_b.cookies = built.pop("b_cookies")
    # Still B's session: a page that redirected B to the login would pass ``hidden`` without showing anything.
    assert web_b.session.get("_auth_user_id") == str(built["owner_b"].user.pk)
    return World(web_b=web_b, **built)


def hidden(response) -> None:
    """A 404 (or the API's answer for an unknown key), or an answer that shows nothing of A's."""
    assert response.status_code in (200, 302, 404, 409), response.status_code
    assert A_SECRET_NAME not in response.content.decode(), "account A's data reached account B"
    assert "a-bot" not in response.content.decode() or response.status_code == 404


def a_still_intact(w: World) -> None:
    """A's objects as B found them: lease held, lock held, tool and key alive, agent enabled, policy unchanged."""
    assert Lease.objects.get(account=w.owner_a.account, key="lease-key").status == "in_progress"
    assert w.api_a().post("/v1/check-lock", {"key": "shared-key"}, content_type=JSON).json()["status"] == "duplicate"
    assert Tool.objects.filter(pk=w.tool_id, enabled=True).exists()
    assert not ApiKey.objects.get(pk=w.key_id).revoked_at
    agent = Agent.objects.get(account=w.owner_a.account, agent_id="a-bot")
    assert agent.is_enabled and agent.policy["blocked_tools"] == [A_SECRET_NAME]
    assert Membership.objects.filter(pk=w.membership_id).exists()
    assert Decision.objects.filter(account=w.owner_a.account).count() == 2  # the allowed call, the one waiting
    assert Approval.objects.get(public_id=w.approval_id).status == Approval.Status.PENDING
    assert NotificationChannel.objects.filter(pk=w.channel_id, enabled=True).exists()
    assert McpServer.objects.filter(pk=w.mcp_server_id, enabled=True, url="https://mcp.example.com/mcp").exists()
    assert Tool.objects.filter(mcp_server_id=w.mcp_server_id).count() == 1


# --- the /v1 API, with B's key --------------------------------------------------------------------------------


def api_policy_shadow(w):
    """B's key on A's agent id: B's own namesake (registered on first sight by the start), never A's agent."""
    assert w.api_b().get("/v1/policies/a-bot/shadow").status_code == 404
    started = w.api_b().post("/v1/policies/a-bot/shadow", {"max_actions_per_hour": 1}, content_type=JSON)
    assert started.status_code == 200 and A_SECRET_NAME not in started.content.decode()
    assert started.json()["enforced_version"] is None  # B's namesake has no policy; A's has version 1
    assert Agent.objects.get(account=w.owner_a.account, agent_id="a-bot").shadow_policy is None
    assert w.api_b().delete("/v1/policies/a-bot/shadow").status_code in (200, 404)


def api_policy_shadow_promote(w):
    response = w.api_b().post("/v1/policies/a-bot/shadow/promote", {"shadow_id": "s1"}, content_type=JSON)
    assert response.status_code == 404


def api_alerts(w):
    response = w.api_b().get("/v1/alerts")
    hidden(response)
    assert response.json()["total"] == 0


def api_approvals(w):
    response = w.api_b().get("/v1/approvals")
    hidden(response)
    assert response.json()["total"] == 0


def api_approval(w):
    response = w.api_b().get(f"/v1/approvals/{w.approval_id}")
    assert response.status_code == 404 and A_SECRET_NAME not in response.content.decode()


def _api_approval_decide(action):
    """With an admin-scoped key of B's (one that may decide B's own approvals): 404, A's approval still pending."""

    def case(w):
        admin_b = Key(*_admin_key(w))
        response = admin_b.client().post(f"/v1/approvals/{w.approval_id}/{action}", {"reason": "B"}, content_type=JSON)
        assert response.status_code == 404, response.content

    return case


def _admin_key(w):
    created = api_key_create(account=w.owner_b.account, label="admin B", scope="admin")
    return created.raw, created.api_key


def api_me(w):
    response = w.api_b().get("/v1/me")
    hidden(response)
    assert response.json()["account_id"] == w.owner_b.account.pk


def api_me_notifications(w):
    hidden(w.api_b().post("/v1/me/notifications", {"email_notifications_enabled": False}, content_type=JSON))
    assert w.owner_a.account.__class__.objects.get(pk=w.owner_a.account.pk).email_notifications_enabled


def api_usage(w):
    body = w.api_b().get("/v1/usage", {"kind": "make"}).json()
    assert body["usage"] == 0  # A's check-lock is A's


def api_usage_all(w):
    response = w.api_b().get("/v1/usage/all")
    hidden(response)
    assert response.json()["make"]["usage"] == 0


def api_check_lock(w):
    assert w.api_b().post("/v1/check-lock", {"key": "shared-key"}, content_type=JSON).json()["status"] == "locked"


def api_lease(w):
    assert w.api_b().post("/v1/ai/lease", {"key": "lease-key"}, content_type=JSON).json()["status"] == "acquired"


def _lease_write(path, **extra):
    """B naming A's key and A's lease id gets exactly what an unknown key gets."""

    def case(w):
        response = w.api_b().post(path, {"key": "lease-key", "lease_id": w.lease_id, **extra}, content_type=JSON)
        unknown = w.api_b().post(path, {"key": "never-seen", "lease_id": w.lease_id, **extra}, content_type=JSON)
        assert response.status_code in (404, 409), response.status_code
        assert (response.status_code, response.json()) == (unknown.status_code, unknown.json())

    return case


def api_status(w):
    response = w.api_b().get("/v1/ai/status", {"key": "lease-key"})
    assert response.status_code == 404 or response.json()["status"] == "not_found"
    assert w.lease_id not in response.content.decode()


def api_result(w):
    response = w.api_b().get("/v1/ai/result", {"key": "lease-key"})
    assert response.status_code == 404 or response.json()["status"] == "not_found"
    assert w.lease_id not in response.content.decode()


def api_run_timeline(w):
    assert w.api_a().get("/v1/runs/a-run").json()["total"] > 0  # A's run has events to leak
    response = w.api_b().get("/v1/runs/a-run")
    hidden(response)
    unknown = w.api_b().get("/v1/runs/never-seen").json()
    assert {**response.json(), "run_id": ""} == {**unknown, "run_id": ""}  # the same as a run B never had


def api_ai_run(w):
    # B's agent of the same name is B's own: A's policy (which blocks the marker tool) does not apply.
    body = w.api_b().post("/v1/ai/run", {"agent_id": "a-bot", "tool": A_SECRET_NAME}, content_type=JSON).json()
    assert body["decision"] == "allowed"
    keyed = w.api_b().post("/v1/ai/run", {"key": "lease-key", "metadata": {"task": "demo.echo"}}, content_type=JSON)
    assert keyed.json()["status"] == "acquired"


def api_events(w):
    response = w.api_b().get("/v1/events", {"run_id": "a-run"})
    assert response.status_code in (200, 404)
    hidden(response)


def api_metrics(w):
    today = {"from_day": f"{timezone.now():%Y-%m-%d}", "to_day": f"{timezone.now():%Y-%m-%d}"}

    def counted(client):
        totals = client.get("/v1/metrics", today).json()["totals"]
        return sum(v for v in totals.values() if isinstance(v, int | float))

    assert counted(w.api_a()) > 0  # A's check-lock, lease and decision are there to be leaked
    assert counted(w.api_b()) == 0


def api_policies(w):
    hidden(w.api_b().get("/v1/policies"))


def api_tools(w):
    hidden(w.api_b().get("/v1/tools"))


def api_tool(w):
    assert w.api_b().get(f"/v1/tools/{A_SECRET_NAME}").status_code == 404
    assert w.api_b().delete(f"/v1/tools/{A_SECRET_NAME}").status_code == 404


def api_mcp_servers(w):
    hidden(w.api_b().get("/v1/mcp/servers"))
    assert w.api_b().get("/v1/mcp/servers").json()["total"] == 0


def api_mcp_server(w):
    b = w.api_b()
    assert b.get("/v1/mcp/servers/a-mcp").status_code == 404
    assert b.patch("/v1/mcp/servers/a-mcp", {"enabled": False}, content_type=JSON).status_code == 404
    assert b.delete("/v1/mcp/servers/a-mcp").status_code == 404


def api_mcp_server_discover(w):
    assert w.api_b().post("/v1/mcp/servers/a-mcp/discover", {}, content_type=JSON).status_code == 404


def api_mcp_server_tool(w):
    """B's key on A's server's tool (by its remote name, which holds A_SECRET_NAME): 404, and the tool unchanged."""
    change = {"enabled": True, "price_usd": 9, "risk_level": "low", "timeout_ms": 1000}
    response = w.api_b().patch(f"/v1/mcp/servers/a-mcp/tools/{A_SECRET_NAME}", change, content_type=JSON)
    assert response.status_code == 404 and response.json()["detail"]["error"] == "mcp_server_not_found"
    hidden(response)
    tool = Tool.objects.get(mcp_server_id=w.mcp_server_id)
    assert (tool.enabled, tool.price_usd, tool.risk_level) == (False, None, "")
    assert tool.timeout_ms == Tool._meta.get_field("timeout_ms").default


def web_mcp_server(w):
    """B's owner on A's MCP server's page, by its row: 404 to read and to change."""
    path = f"/tools/mcp/{w.mcp_server_id}/"
    assert w.web_b.get(path).status_code == 404
    change = {"url": "https://evil.example.com/mcp", "auth_header_name": "Authorization", "timeout_ms": "1000"}
    assert w.web_b.post(path, change).status_code == 404


def _mcp(client: Client, path: str, method: str, params: dict[str, Any], **headers: str):
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    return client.post(path, body, content_type=JSON, headers=headers)


def _mcp_gateway(path: str, **headers: str):
    """B's key at A's agent id: B's namesake agent, which sees B's tools only; A's tool is unknown to it, and A's
    session (its run) is not found with B's key."""

    def case(w):
        listed = _mcp(w.api_b(), path, "tools/list", {}, **headers)
        hidden(listed)
        assert listed.json()["result"]["tools"] == []
        called = _mcp(w.api_b(), path, "tools/call", {"name": A_SECRET_NAME, "arguments": {}}, **headers)
        # The name B sent comes back in the error, as any name no tool of B's has does: nothing of A's.
        assert called.json()["error"] == {"code": -32602, "message": f"Unknown tool: {A_SECRET_NAME}"}
        opened = _mcp(w.api_a(), path, "initialize", {"protocolVersion": "2025-11-25"}, **headers)
        session = opened["Mcp-Session-Id"]
        stolen = _mcp(w.api_b(), path, "tools/list", {}, **headers, **{"Mcp-Session-Id": session})
        assert stolen.status_code == 404 and A_SECRET_NAME not in stolen.content.decode()
        assert _mcp(w.api_a(), path, "tools/list", {}, **headers, **{"Mcp-Session-Id": session}).status_code == 200

    return case


def api_tool_toggle(w):
    response = w.api_b().post(f"/v1/tools/{A_SECRET_NAME}/toggle", {"enabled": False}, content_type=JSON)
    assert response.status_code == 404


def api_policy(w):
    hidden(w.api_b().get("/v1/policies/a-bot"))
    w.api_b().post("/v1/policies/a-bot", {"max_actions_per_hour": 1}, content_type=JSON)


def api_policy_template(w):
    w.api_b().post("/v1/policies/a-bot/from-template", {"template": "strict"}, content_type=JSON)


def api_policies_export(w):
    response = w.api_b().get("/v1/policies/export")
    hidden(response)
    assert "a-bot" in w.api_a().get("/v1/policies/export").content.decode()  # A's export has it to leak


def api_policies_apply(w):
    """B's file naming A's agent id creates B's own agent; A's stays as it was (a_still_intact)."""
    text = "agents:\n  a-bot: {max_actions_per_hour: 1}\n"
    response = w.api_b().post("/v1/policies/apply", {"yaml": text}, content_type=JSON)
    assert response.status_code == 200 and A_SECRET_NAME not in response.content.decode()
    assert response.json()["agents"][0]["action"] == "create"  # B had no a-bot: A's policy was not compared
    assert Agent.objects.get(account=w.owner_b.account, agent_id="a-bot").policy == {"max_actions_per_hour": 1}
    assert PolicyFile.objects.filter(account=w.owner_a.account).count() == 1


def api_agent_disable(w):
    w.api_b().post("/v1/agents/a-bot/disable", {"reason": "B's own agent"}, content_type=JSON)


def api_agent_enable(w):
    w.api_b().post("/v1/agents/a-bot/enable", {"reason": "B's own agent"}, content_type=JSON)


def api_agent_release(w):
    """B has no contained a-bot: nothing to release (A's agent is not B's to release)."""
    response = w.api_b().post("/v1/agents/a-bot/release", {}, content_type=JSON)
    assert response.status_code in (403, 409), response.content


def api_agent_logs(w):
    response = w.api_b().get("/v1/agents/a-bot/logs")
    hidden(response)
    assert w.api_a().get("/v1/agents/a-bot/logs").json()["items"]  # A has a decision to leak
    if response.status_code == 200:
        assert response.json()["items"] == []


def api_agent_metrics(w):
    response = w.api_b().get("/v1/agents/a-bot/metrics")
    assert response.status_code == 404 or response.json()["total_actions"] == 0


# --- the dashboard, as B's owner ------------------------------------------------------------------------------


def web_verify_job(w):
    """A's "Verify now" check (its result names A's decisions) is not B's to read: B's page says it does not exist."""
    from governance import verify_jobs

    job_id = verify_jobs.JOBS.start(w.owner_a.account.pk, {}, lambda job_id: None)
    result = {"decisions": {"ok": True, "message": "a-verified-1234"}, "audit": {}}
    verify_jobs.JOBS.done(w.owner_a.account.pk, job_id, result)
    response = w.web_b.get(f"/audit/verify/{job_id}/")
    hidden(response)
    assert "does not exist" in response.content.decode() and "a-verified-1234" not in response.content.decode()
    mine = w.owner_a.login(Client()).get(f"/audit/verify/{job_id}/").content.decode()
    assert "a-verified-1234" in mine  # A's own page shows it: the check can fail


def page(path):
    def case(w):
        hidden(w.web_b.get(path))

    return case


def not_found(method, path_of, data=None):
    def case(w):
        path = path_of(w)
        response = getattr(w.web_b, method)(path, data or {})
        assert response.status_code == 404, (path, response.status_code)

    return case


def web_agent(suffix, data, methods=("post",)):
    """B's owner on A's agent's page, by A's agent row: 404 (B's own namesake agent is another row)."""

    def case(w):
        for method in methods:
            response = getattr(w.web_b, method)(f"/agents/{w.agent_pk}/{suffix}", data)
            assert response.status_code == 404, (method, suffix, response.status_code)

    return case


def web_lock_action(path):
    def case(w):
        w.web_b.post(path, {"key": "lease-key", "reason": "not yours"})
        w.web_b.post(path, {"key": "shared-key", "reason": "not yours"})

    return case


def web_account_switch(w):
    response = w.web_b.post("/account/switch/", {"account_id": w.owner_a.account.pk})
    assert response.status_code in (302, 403, 404)
    hidden(w.web_b.get("/"))  # still B's overview


def web_approval_confirm(w):
    """B's owner with a genuine one-click link to A's approval (as a channel of A's would carry): 404 both ways."""
    link = channels.one_click_url(Approval.objects.get(public_id=w.approval_id), "approve")
    assert w.web_b.get(link).status_code == 404
    assert w.web_b.post(link, {"reason": "by B"}).status_code == 404


def web_policy_code_upload(w):
    """B's upload naming A's agent id previews B's own agent (a create), nothing of A's."""
    file = SimpleUploadedFile("b.yaml", b"agents:\n  a-bot: {max_actions_per_hour: 1}\n")
    preview = w.web_b.get(w.web_b.post("/agents/policies/upload/", {"file": file})["Location"])
    assert preview.status_code == 200 and A_SECRET_NAME not in preview.content.decode()
    assert "a first policy: version 1" in preview.content.decode()


def web_policy_code_preview(w):
    """A's upload under B's session: not found (a redirect saying it expired), nothing of A's shown."""
    response = w.web_b.get(f"/agents/policies/preview/{w.policy_preview}/", follow=True)
    hidden(response)
    assert "That preview has expired" in response.content.decode()


def web_policy_code_apply(w):
    """B confirming A's upload, with the very fingerprint A's page holds: nothing applied anywhere."""
    path = f"/agents/policies/preview/{w.policy_preview}/apply/"
    assert w.web_b.post(path, {"fingerprint": w.policy_fingerprint}).status_code == 302
    assert not PolicyFile.objects.filter(account=w.owner_b.account).exists()
    assert PolicyFile.objects.filter(account=w.owner_a.account).count() == 1


def web_settings(w):
    w.web_b.post("/settings/", {"name": "renamed by B"})
    assert w.owner_a.account.__class__.objects.get(pk=w.owner_a.account.pk).name != "renamed by B"
    hidden(w.web_b.get("/settings/"))


def streamed_hidden(w: World, response) -> None:
    """``hidden`` for a streamed export (its body read to the end): "a-bot" only as B's own namesake agent."""
    assert response.status_code == 200, response.status_code
    text = b"".join(response.streaming_content).decode()
    assert A_SECRET_NAME not in text, "account A's data reached account B"
    if "a-bot" in text:
        assert Agent.objects.filter(account=w.owner_b.account, agent_id="a-bot").exists(), "A's agent reached B"


def api_export(path):
    def case(w):
        streamed_hidden(w, w.api_b().get(path))

    return case


def api_export_decisions(w):
    streamed_hidden(w, w.api_b().get("/v1/export/decisions?format=jsonl"))
    assert b"a-bot" in b"".join(w.api_a().get("/v1/export/decisions?format=jsonl").streaming_content)  # the control


def web_export(path):
    def case(w):
        streamed_hidden(w, w.web_b.get(path))

    return case


def api_legal_hold(w):
    """B's admin key holding "a-bot" holds B's namesake (or finds none): A's agent and account stay unheld."""
    hidden(w.api_b().get("/v1/legal-hold"))
    admin_b = Key(*_admin_key(w)).client()
    admin_b.post("/v1/legal-hold", {"held": True, "reason": "B", "agent_id": "a-bot"}, content_type=JSON)
    assert Agent.objects.get(account=w.owner_a.account, agent_id="a-bot").legal_hold_since is None
    admin_b.post("/v1/legal-hold", {"held": False, "reason": "B", "agent_id": "a-bot"}, content_type=JSON)


def web_account_legal_hold(w):
    w.web_b.post("/settings/legal-hold/", {"action": "set", "reason": "by B"})
    assert w.owner_a.account.__class__.objects.get(pk=w.owner_a.account.pk).legal_hold_since is None
    w.web_b.post("/settings/legal-hold/", {"action": "clear", "reason": "by B"})


def _paused_run_of_a(w):
    """A keyed run of account A paused at a per-run cap (run id "a-paused")."""
    from django.utils import timezone

    from idempotency.models import Lease, Run

    now = timezone.now()
    lease = Lease.objects.create(
        account=w.owner_a.account, key="a-paused", status="in_progress", lease_id="la", ttl_seconds=60,
        first_seen_at=now, acquired_at=now, expires_at=now, updated_at=now,
    )  # fmt: skip
    return Run.objects.create(
        account=w.owner_a.account, lease=lease, key="a-paused", lease_version=1, holder="la", run_id="a-paused",
        status="paused", waiting_for="run_action_limit_exceeded", created_at=now, enqueued_at=now, deadline_at=now,
    )  # fmt: skip


def api_run_resume(w):
    """B's admin key resuming A's paused run: 404 run_not_found (not 409: A's run is not B's to know of)."""
    run = _paused_run_of_a(w)
    response = Key(*_admin_key(w)).client().post("/v1/runs/a-paused/resume", {}, content_type=JSON)
    assert response.status_code == 404 and response.json()["detail"]["error"] == "run_not_found", response.content
    run.refresh_from_db()
    assert run.status == "paused"


def web_run_resume(w):
    run = _paused_run_of_a(w)
    assert w.web_b.post(f"/runs/resume/{run.pk}/", {"max_actions_per_run": "9"}).status_code == 404
    run.refresh_from_db()
    assert run.status == "paused"


CASES: dict[str, Any] = {
    "v1:run-resume": api_run_resume,
    "governance:run-resume": web_run_resume,
    "v1:export-decisions": api_export_decisions,
    "v1:export-runs": api_export("/v1/export/runs"),
    "v1:export-run-events": api_export("/v1/export/run-events?run_id=a-run"),
    "v1:export-audit": api_export("/v1/export/audit?format=jsonl"),
    "v1:legal-hold": api_legal_hold,
    "governance:decisions-export": web_export("/decisions/export/?format=jsonl"),
    "governance:audit-export": web_export("/audit/export/?format=jsonl"),
    "governance:account-legal-hold": web_account_legal_hold,
    "governance:agent-legal-hold": web_agent("legal-hold/", {"action": "set", "reason": "by B"}),
    "idempotency:runs-export": web_export("/runs/export/?format=jsonl"),
    "idempotency:run-timeline-export": web_export("/runs/timeline/export/?run_id=a-run&format=jsonl"),
    "v1:mcp-servers": api_mcp_servers,
    "v1:mcp-server": api_mcp_server,
    "v1:mcp-server-discover": api_mcp_server_discover,
    "v1:mcp-server-tool": api_mcp_server_tool,
    "governance:mcp-server-new": page("/tools/mcp/new/"),
    "governance:mcp-server": web_mcp_server,
    "governance:mcp-server-discover": not_found("post", lambda w: f"/tools/mcp/{w.mcp_server_id}/discover/"),
    "governance:mcp-server-delete": not_found("post", lambda w: f"/tools/mcp/{w.mcp_server_id}/delete/"),
    "v1:me": api_me,
    "v1:me-notifications": api_me_notifications,
    "v1:usage": api_usage,
    "v1:usage-all": api_usage_all,
    "v1:check-lock": api_check_lock,
    "v1:ai-lease": api_lease,
    "v1:ai-extend": _lease_write("/v1/ai/extend", ttl=60),
    "v1:ai-complete": _lease_write("/v1/ai/complete", result={"by": "B"}),
    "v1:ai-fail": _lease_write("/v1/ai/fail", error_code="by_b"),
    "v1:ai-cancel": _lease_write("/v1/ai/cancel", reason="by B"),
    "v1:ai-status": api_status,
    "v1:ai-result": api_result,
    "v1:run-timeline": api_run_timeline,
    "v1:ai-run": api_ai_run,
    "v1:events": api_events,
    "v1:metrics": api_metrics,
    "v1:policies": api_policies,
    "v1:tools": api_tools,
    "v1:tool": api_tool,
    "v1:tool-toggle": api_tool_toggle,
    "v1:policy": api_policy,
    "v1:policy-template": api_policy_template,
    "v1:policies-export": api_policies_export,
    "v1:policies-apply": api_policies_apply,
    "v1:agent-disable": api_agent_disable,
    "v1:agent-enable": api_agent_enable,
    "v1:agent-release": api_agent_release,
    "v1:agent-logs": api_agent_logs,
    "v1:agent-metrics": api_agent_metrics,
    "v1:policy-shadow": api_policy_shadow,
    "v1:policy-shadow-promote": api_policy_shadow_promote,
    "v1:approvals": api_approvals,
    "v1:alerts": api_alerts,
    "v1:approval": api_approval,
    "v1:approval-approve": _api_approval_decide("approve"),
    "v1:approval-deny": _api_approval_decide("deny"),
    "governance:agents": page("/agents/"),
    "governance:agent-kill-switch": web_agent(
        "kill-switch/", {"action": "disable", "reason": "not yours", "confirm": "on"}
    ),
    "governance:agent-release": web_agent("release/", {}),
    "governance:policy-rollback": web_agent("policy/rollback/", {"version": "1"}),
    "governance:policy-template": web_agent("policy/template/", {"template": "strict"}),
    "governance:policy-shadow": web_agent("policy/shadow/", {"action": "start", "base_version": "1"}),
    "governance:policy-impact": web_agent("policy/impact/", {"version": "1", "days": "7"}, ("get", "post")),
    "governance:policy-impact-job": not_found("get", lambda w: f"/agents/{w.agent_pk}/policy/impact/{'0' * 32}/"),
    "governance:policy-edit": web_agent("policy/", {"max_actions_per_hour": "1"}, ("get", "post")),
    "governance:agent-detail": web_agent("", {}, ("get",)),
    "governance:decisions": page("/decisions/"),
    "governance:operations": page("/overview/operations/?range=30d"),
    "governance:decision-detail": not_found("get", lambda w: f"/decisions/{w.decision_id}/"),
    "governance:tools": page("/tools/"),
    "governance:tool-new": page("/tools/new/"),
    "governance:tool-edit": not_found("get", lambda w: f"/tools/{w.tool_id}/"),
    "governance:tool-toggle": not_found("post", lambda w: f"/tools/{w.tool_id}/toggle/"),
    "governance:tool-delete": not_found("post", lambda w: f"/tools/{w.tool_id}/delete/"),
    "governance:tool-test": not_found("post", lambda w: f"/tools/{w.tool_id}/test/", {"args": "{}"}),
    "governance:audit": page("/audit/"),
    "governance:verify": page("/audit/verify/"),
    "governance:verify-job": web_verify_job,
    "governance:approvals": page("/approvals/"),
    "governance:alerts": page("/alerts/"),
    "governance:approval": not_found("get", lambda w: f"/approvals/{w.approval_id}/"),
    "governance:approval-decide": not_found(
        "post", lambda w: f"/approvals/{w.approval_id}/decide/", {"action": "approve"}
    ),
    "governance:approval-confirm": web_approval_confirm,
    "governance:policy-code": page("/agents/policies/"),
    "governance:policy-code-export": page("/agents/policies/export/"),
    "governance:policy-code-upload": web_policy_code_upload,
    "governance:policy-code-preview": web_policy_code_preview,
    "governance:policy-code-apply": web_policy_code_apply,
    "governance:channels": page("/settings/channels/"),
    "governance:channel-new": page("/settings/channels/new/"),
    "governance:channel-edit": not_found("get", lambda w: f"/settings/channels/{w.channel_id}/"),
    "governance:channel-toggle": not_found("post", lambda w: f"/settings/channels/{w.channel_id}/toggle/"),
    "governance:channel-test": not_found("post", lambda w: f"/settings/channels/{w.channel_id}/test/"),
    "governance:channel-delete": not_found("post", lambda w: f"/settings/channels/{w.channel_id}/delete/"),
    "idempotency:locks": page("/locks/?key=shared-key"),
    "idempotency:lock-release": web_lock_action("/locks/release/"),
    "idempotency:lease-reset": web_lock_action("/locks/reset/"),
    "idempotency:runs": page("/runs/"),
    "idempotency:run-timeline": page("/runs/timeline/?run_id=a-run"),
    "billing:overview": page("/"),
    "billing:api-keys": page("/keys/"),
    "billing:api-key-revoke": not_found("post", lambda w: f"/keys/{w.key_id}/revoke/"),
    "billing:account-switch": web_account_switch,
    "billing:usage": page("/usage/"),
    "billing:settings": web_settings,
    "mcp": _mcp_gateway("/mcp", **{"OnceOnly-Agent-Id": "a-bot"}),
    "mcp-root": _mcp_gateway("/mcp/", **{"OnceOnly-Agent-Id": "a-bot"}),
    "mcp-agent": _mcp_gateway("/mcp/a-bot"),
    "billing:team": page("/team/"),
    "billing:member-change": not_found("post", lambda w: f"/team/{w.membership_id}/", {"action": "remove"}),
}

EXEMPT = {
    "v1:?": "the JSON 404 for unknown /v1 routes (no data)",
    "?": "/v1 without a slash: the same JSON 404",
    "schema": "the OpenAPI document (no account data)",
    "api-docs": "Swagger UI (no account data)",
    "healthz": "liveness (no account data; tests/test_health.py)",
    "favicon": "a redirect to the static icon (no account data)",
    "checkpoint-keys": "the public checkpoint-signing keys, no login (no account data; test_signed_checkpoints.py)",
    "prometheus": "operator-wide totals behind ONCEONLY_METRICS_TOKEN, not an account's key (tests/test_metrics.py)",
    "billing:login": "before any account (the lockout tests: tests/test_web_hardening.py)",
    "billing:logout": "ends the caller's own session",
    "billing:oidc-authenticate": "before any account: a redirect to the SSO provider (tests/ui/test_browser_sso.py)",
    "billing:oidc-callback": "before any account: the SSO provider's redirect back (tests/ui/test_browser_sso.py)",
    "billing:stripe-webhook": "Stripe's signed calls, 404 without Stripe; tests/billing/test_stripe.py",
    "billing:billing-checkout": "404 without Stripe; the caller's own account only (tests/billing/test_stripe.py)",
    "billing:billing-portal": "404 without Stripe; the caller's own account only (tests/billing/test_stripe.py)",
    "billing:billing-done": "404 without Stripe; shows the caller's own account (tests/billing/test_stripe.py)",
    "billing:provider-events": "404 without Stripe; staff-wide operations page (tests/billing/test_stripe.py)",
    "billing:provider-event-retry": "404 without Stripe; staff-wide operations page (tests/billing/test_stripe.py)",
}


def route_names(urlconf: Any = None) -> set[str]:
    """Every route's name; ``?`` stands for the name of an unnamed one (``v1:?``)."""
    return {
        route.name or ":".join(filter(None, [route.namespace, "?"]))
        for route in walk_routes(urlconf)
        # Django's admin: superusers only, not tenant-facing.
        if not any(str(step.pattern).startswith("admin") for step in route.includes)
    }


def uncovered(routes: set[str]) -> set[str]:
    return routes - set(CASES) - set(EXEMPT)


def test_every_route_has_an_isolation_case():
    routes = route_names()
    missing = uncovered(routes)
    assert not missing, f"routes without a tenant-isolation case (add one to CASES): {sorted(missing)}"
    stale = (set(CASES) | set(EXEMPT)) - routes
    assert not stale, f"cases for routes that no longer exist: {sorted(stale)}"


def test_a_new_route_without_a_case_is_caught():
    """The control of the check above: the project's URLs plus one new agent page are reported as uncovered."""
    from django.urls import include, path

    from governance import urls as governance_urls
    from governance import views
    from onceonly_site import urls as site_urls

    extra = path("agents/<int:pk>/export/", views.agent_detail, name="agent-export")
    urlconf = ModuleType("urls_with_a_new_page")
    urlconf.urlpatterns = [
        path("", include(([*governance_urls.urlpatterns, extra], "governance"))),
        *site_urls.urlpatterns,
    ]
    assert uncovered(route_names(urlconf)) == {"governance:agent-export"}


@pytest.mark.parametrize("route", sorted(CASES))
def test_account_b_cannot_reach_account_a(route, world):
    CASES[route](world)
    a_still_intact(world)


def test_the_same_requests_do_show_a_its_own_data(world):
    """The control: what B must not see is there for A, so ``hidden`` would catch a leak."""
    web_a = world.owner_a.login(Client())
    for url in ("/tools/", "/keys/", f"/agents/{world.agent_pk}/policy/"):
        response = web_a.get(url)
        assert response.status_code == 200 and A_SECRET_NAME in response.content.decode(), url
    assert "a-bot" in web_a.get(f"/agents/{world.agent_pk}/").content.decode()
    assert "a-bot" in web_a.get(f"/decisions/{world.decision_id}/").content.decode()
    assert A_SECRET_NAME in world.api_a().get("/v1/tools").content.decode()
    assert "a-bot" in web_a.get("/agents/").content.decode()
    assert A_SECRET_NAME in web_a.get(f"/approvals/{world.approval_id}/").content.decode()  # the args preview
    assert A_SECRET_NAME in web_a.get("/settings/channels/").content.decode()
    assert A_SECRET_NAME in web_a.get("/alerts/").content.decode()
    assert A_SECRET_NAME in world.api_a().get("/v1/alerts").content.decode()
    assert world.api_a().get("/v1/ai/status", {"key": "lease-key"}).json()["status"] == "in_progress"

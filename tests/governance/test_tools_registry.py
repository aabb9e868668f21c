"""The tools registry: validation, SSRF guard, encrypted secrets with rotation, plan limits, the governed call's
lookup (tool_disabled, registry risk), and the SDK's tool methods."""

import pytest
from onceonly import OnceOnly
from onceonly.exceptions import OverLimitError

from billing.models import Notification, Plan
from billing.services import account_set_plan
from governance import secrets
from governance.models import Decision, Tool
from tests.conftest import make_key

SECRET = "example_secret_123"


def tool_body(name="send_email", url="https://tools.example.com/send_email", **extra):
    return {"name": name, "url": url, "auth": {"type": "hmac_sha256", "secret": SECRET}, **extra}


def create(client, **body):
    return client.post("/v1/tools", tool_body(**body), content_type="application/json")


@pytest.fixture
def client(key_a):
    return key_a.client()


def test_register_never_returns_or_stores_the_plain_secret(client):
    response = create(client, description="Sends mail", risk_level="medium", price_usd=0.01)
    assert response.status_code == 200, response.content
    body = response.json()
    assert SECRET not in response.content.decode()
    assert body["has_secret"] is True and body["secret_mask"] == "***123"
    assert (body["scope_id"], body["timeout_ms"], body["max_retries"], body["enabled"]) == ("global", 15000, 2, True)
    stored = Tool.objects.get()
    assert SECRET not in stored.secret_encrypted and secrets.decrypt(stored.secret_encrypted) == SECRET


def test_upsert_updates_and_keeps_the_secret_when_none_is_sent(client):
    create(client)
    body = {"name": "send_email", "url": "https://tools.example.com/v2", "timeout_ms": 500}
    updated = client.post("/v1/tools", body, content_type="application/json").json()
    assert updated["url"].endswith("/v2") and updated["timeout_ms"] == 500 and updated["has_secret"] is True
    assert Tool.objects.count() == 1


def test_get_list_toggle_delete(client):
    create(client)
    create(client, name="refund", scope_id="agent:billing-bot")
    assert [t["name"] for t in client.get("/v1/tools").json()] == ["send_email"]
    assert [t["name"] for t in client.get("/v1/tools", {"scope_id": "agent:billing-bot"}).json()] == ["refund"]
    assert client.get("/v1/tools/send_email").json()["name"] == "send_email"
    toggled = client.post("/v1/tools/send_email/toggle", {"enabled": False}, content_type="application/json")
    assert toggled.json()["enabled"] is False
    assert client.delete("/v1/tools/send_email", content_type="application/json").json() == {
        "ok": True,
        "deleted": "send_email",
    }
    missing = client.get("/v1/tools/send_email")
    assert missing.status_code == 404 and missing.json()["detail"]["error"] == "tool_not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (tool_body(name="bad name!"), "name"),
        (tool_body(url="ftp://x.example/y"), "url"),
        # URLs urlsplit or the IDNA codec cannot read were a 500; whitespace and controls urlsplit dropped silently.
        (tool_body(url="https://[tools]/y"), "url"),
        (tool_body(url="https://[2606:2800::1/y"), "url"),
        (tool_body(url="https://tools\uff03x.example/y"), "url"),
        (tool_body(url="https://tools..example/y"), "url"),
        (tool_body(url=f"https://{'a' * 64}.example/y"), "url"),
        (tool_body(url=" https://tools.example.com/y"), "url"),
        (tool_body(url="https://tools.example.com/a b"), "url"),
        (tool_body(url="https://tools.example.com/\ty"), "url"),
        (tool_body(scope_id="team:x"), "scope_id"),
        (tool_body(timeout_ms=100), "timeout_ms"),
        (tool_body(max_retries=11), "max_retries"),
        ({**tool_body(), "auth": {"type": "hmac_sha256", "secret": "short"}}, "auth"),
        ({**tool_body(), "auth": {"type": "rsa", "secret": SECRET}}, "auth"),
        (tool_body(risk_level="extreme"), "risk_level"),
        (tool_body(extra_field=1), "extra_field"),
        ({"name": "new_tool", "url": "https://tools.example.com/n"}, "auth"),  # a new tool needs a secret
    ],
)
def test_bad_tool_bodies_are_422_and_store_nothing(client, body, field):
    response = client.post("/v1/tools", body, content_type="application/json")
    assert response.status_code == 422, response.content
    assert ["body", field] in [item["loc"] for item in response.json()["detail"]]
    assert not Tool.objects.exists()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://[::1]/x",
        "http://10.0.0.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://0.0.0.0/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://2130706433/x",
        "http://0177.0.0.1/x",
        "http://localhost:8080/x",
        "http://192.168.1.5/x",
        "http://[fd00::1]/x",
    ],
)
def test_ssrf_guard_refuses_internal_addresses(client, url):
    response = create(client, url=url)
    assert response.status_code == 422
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "url"] and "address" in detail["msg"]
    assert not Tool.objects.exists()


def test_private_urls_are_allowed_by_setting(client, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    assert create(client, url="http://127.0.0.1:9999/hook").status_code == 200


@pytest.mark.parametrize("url", ["http://93.184.216.34/hook", "http://[2606:2800:220:1::1]/hook"])
def test_plain_http_to_a_public_address_is_refused_unless_allowed(client, settings, url):
    """Anyone on the path could read the arguments and forge the answer: https:// by default."""
    response = create(client, url=url)
    assert response.status_code == 422
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "url"] and "must be https://" in problem["msg"]
    assert not Tool.objects.exists()
    assert create(client, url=url.replace("http://", "https://")).status_code == 200
    settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS = True
    assert create(client, name="plain", url=url).status_code == 200


def test_plain_http_stays_refused_at_dispatch_for_a_tool_saved_before(client, settings):
    """The guard runs again at dispatch: a tool saved while http:// was allowed is refused once it is not."""
    settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS = True
    assert create(client, url="http://93.184.216.34/hook").status_code == 200
    settings.ONCEONLY_ALLOW_HTTP_TOOL_URLS = False
    answer = client.post("/v1/ai/run", {"agent_id": "b", "tool": "send_email"}, content_type="application/json")
    assert (answer.json()["decision"], answer.json()["policy_reason"]) == ("failed", "tool_error")
    [note] = Notification.objects.filter(kind="tool_error")
    assert "must be https://" in note.subject  # refused by the guard, no request made


def test_an_unresolvable_name_is_accepted_with_a_warning(client):
    body = create(client, url="https://not-yet-deployed.invalid/hook").json()
    assert any("does not resolve" in w for w in body["warnings"])


def test_key_rotation_keeps_old_secrets_readable(client, settings):
    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "old-key-material"
    create(client)
    old_token = Tool.objects.get().secret_encrypted
    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "new-key-material,old-key-material"
    assert secrets.decrypt(old_token) == SECRET  # still readable with the old key listed second
    rotated = secrets.rotate(old_token)
    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "new-key-material"
    assert secrets.decrypt(rotated) == SECRET
    with pytest.raises(ValueError, match="cannot be decrypted"):
        secrets.decrypt(old_token)


def test_plan_limits(account_a, plans):
    account_set_plan(account=account_a, plan=plans["starter"])
    refused = create(make_key(account_a).client())
    assert refused.status_code == 403 and refused.json()["detail"]["error"] == "feature_not_available"
    account_set_plan(account=account_a, plan=plans["pro"])  # 10 tools
    client = make_key(account_a).client()
    for n in range(10):
        assert create(client, name=f"tool{n}").status_code == 200
    over = create(client, name="tool10")
    assert over.status_code == 402
    assert over.json()["detail"] == {
        "error": "plan_limit",
        "message": "pro plan limit: at most 10 tools.",
        "limit": 10,
        "plan": "pro",
    }
    assert create(client, name="tool3", description="update is fine").status_code == 200


def test_governed_call_uses_the_registry(client, account_a):
    create(client, name="wire_money", risk_level="low")
    allowed = client.post("/v1/ai/run", {"agent_id": "bot", "tool": "wire_money"}, content_type="application/json")
    assert allowed.json()["risk_level"] == "low"  # the registry's level beats the name heuristic
    client.post("/v1/tools/wire_money/toggle", {"enabled": False}, content_type="application/json")
    blocked = client.post(
        "/v1/ai/run", {"agent_id": "bot", "tool": "wire_money", "args": {"n": 2}}, content_type="application/json"
    ).json()
    assert (blocked["decision"], blocked["policy_reason"]) == ("blocked", "tool_disabled")
    account_a.strict_mode = True
    account_a.save(update_fields=["strict_mode"])
    create(client, name="registered")
    ok = client.post("/v1/ai/run", {"agent_id": "bot", "tool": "registered"}, content_type="application/json")
    assert ok.status_code == 200
    assert Decision.objects.filter(policy_reason="tool_disabled").count() == 1


def test_agent_scope_wins_over_global(client):
    create(client, name="charge", risk_level="low")
    create(client, name="charge", scope_id="agent:bot", enabled=False)
    body = client.post("/v1/ai/run", {"agent_id": "bot", "tool": "charge"}, content_type="application/json").json()
    assert body["policy_reason"] == "tool_disabled"
    other = client.post("/v1/ai/run", {"agent_id": "other", "tool": "charge"}, content_type="application/json")
    # The global tool is enabled, so it is dispatched (its example.com URL cannot be reached here: tool_error).
    assert other.json()["policy_reason"] == "tool_error"


def test_sdk_tool_methods(live_server, key_a):
    with OnceOnly(api_key=key_a.raw, base_url=f"{live_server.url}/v1", fail_open=False) as sdk:
        created = sdk.gov.create_tool(
            {
                "name": "send_email",
                "scope_id": "global",
                "url": "https://example.com/tools/send_email",
                "auth": {"type": "hmac_sha256", "secret": SECRET},
            }
        )
        assert created["has_secret"] is True and "secret" not in created
        assert [t["name"] for t in sdk.gov.list_tools()] == ["send_email"]
        assert sdk.gov.get_tool("send_email")["url"] == "https://example.com/tools/send_email"
        assert sdk.gov.toggle_tool("send_email", enabled=False)["enabled"] is False
        assert sdk.gov.delete_tool("send_email")["deleted"] == "send_email"


def test_sdk_maps_plan_limit_to_over_limit(live_server, account_a):
    Plan.objects.filter(code="pro").update(tools_limit=1)
    account_set_plan(account=account_a, plan=Plan.objects.get(code="pro"))
    key = make_key(account_a)
    with OnceOnly(api_key=key.raw, base_url=f"{live_server.url}/v1", fail_open=False) as sdk:
        sdk.gov.create_tool(tool_body(name="one"))
        with pytest.raises(OverLimitError) as caught:
            sdk.gov.create_tool(tool_body(name="two"))
    assert caught.value.detail["error"] == "plan_limit"


def test_an_upsert_keeps_the_fields_it_does_not_send(client):
    create(client, enabled=False, risk_level="high", price_usd=0.5, timeout_ms=900)
    client.post(
        "/v1/tools", {"name": "send_email", "url": "https://tools.example.com/v3"}, content_type="application/json"
    )
    tool = Tool.objects.get()
    assert (tool.enabled, tool.risk_level, float(tool.price_usd), tool.timeout_ms) == (False, "high", 0.5, 900)


@pytest.mark.parametrize("url", ["http://100.100.100.200/latest/meta-data", "http://[2001:db8::1]/x"])
def test_non_public_ranges_are_refused_too(client, url):
    assert create(client, url=url).status_code == 422


def test_registered_tools_are_known_to_policy_warnings(client):
    create(client, name="send_email")
    body = client.post("/v1/policies/bot", {"blocked_tools": ["send_email"]}, content_type="application/json").json()
    assert body["warnings"] == []


def test_a_broken_secret_is_a_tool_error_and_releases_the_reservation(client, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    create(client, url="http://127.0.0.1:9/hook")
    Tool.objects.update(secret_encrypted="not-a-fernet-token")
    first = client.post(
        "/v1/ai/run", {"agent_id": "b", "tool": "send_email", "args": {"n": 1}}, content_type="application/json"
    )
    assert first.status_code == 200 and first.json()["policy_reason"] == "tool_error"
    again = client.post(
        "/v1/ai/run", {"agent_id": "b", "tool": "send_email", "args": {"n": 1}}, content_type="application/json"
    ).json()
    assert again["decision"] == "failed"  # not a dedup of nothing: the entry was released

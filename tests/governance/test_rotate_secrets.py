"""`manage.py rotate_tool_secrets` re-encrypts every encrypted column with the newest key: afterwards the old key can
go and everything still decrypts (docs/security.md)."""

import json

from django.core.management import call_command

from governance import approvals, channels
from governance import secrets as sealed
from governance.models import Approval, NotificationChannel, Tool


def test_every_encrypted_column_is_rotated(key_a, settings, capsys):
    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "old-key"
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    client = key_a.client()
    tool = {
        "name": "stripe.refund",
        "url": "http://127.0.0.1:9/refund",
        "auth": {"type": "hmac_sha256", "secret": "s" * 24},
    }
    assert client.post("/v1/tools", tool, content_type="application/json").status_code == 200
    channel, secret = channels.channel_create(
        account=key_a.api_key.account,
        kind="webhook",
        label="ops",
        url="http://127.0.0.1:9/hook?token=abc",
        events=["approval_requested"],
        actor="t",
    )
    client.post("/v1/policies/bot", {"require_approval": ["stripe.*"]}, content_type="application/json")
    body = {"agent_id": "bot", "tool": "stripe.refund", "args": {"charge": "ch_1"}}
    assert client.post("/v1/ai/run", body, content_type="application/json").json()["policy_reason"] == (
        "approval_required"
    )

    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "new-key,old-key"
    call_command("rotate_tool_secrets")
    out = capsys.readouterr().out
    assert "Re-encrypted 1 tool secret " in out and "Re-encrypted 1 channel URL " in out

    settings.ONCEONLY_FIELD_ENCRYPTION_KEY = "new-key"  # the old key is gone
    assert sealed.decrypt(Tool.objects.get().secret_encrypted) == "s" * 24
    channel = NotificationChannel.objects.get()
    assert channel.url == "http://127.0.0.1:9/hook?token=abc" and sealed.decrypt(channel.secret_encrypted) == secret
    assert channel.url_shown == "http://127.0.0.1:9/hook?…"  # the token is not shown on pages
    assert approvals.args_preview(Approval.objects.get()) == {"charge": "ch_1"}
    assert json.loads(sealed.decrypt(Approval.objects.get().args_encrypted)) == {"charge": "ch_1"}

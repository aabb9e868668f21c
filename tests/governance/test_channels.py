"""Notification channels (docs/notifications.md) against real receivers on 127.0.0.1: a Slack-shaped one and a
generic webhook whose signatures verify with the `standardwebhooks` package; approval requests reach both with
one-click links, and the confirm page those links open decides only on its POST, once; failing endpoints are retried
with backoff and shown failing; SSRF-refused URLs are refused in the form and at delivery. Celery runs eagerly
(the tasks' own code, in this process); retries are run by calling the task once the delivery is due."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from billing.models import AuditEntry, Notification
from governance import channels
from governance.models import Approval, ChannelDelivery, NotificationChannel
from governance.tasks import deliver_channel_message
from onceonly_site.celery import app as celery_app

JSON = "application/json"
PUBLIC = "https://onceonly.example.com"
SECRET_ARG = "ch_do_not_leak_0123"


class Receiver:
    """An HTTP endpoint on loopback that records every POST (path, headers, raw body) and answers ``status``."""

    def __init__(self) -> None:
        self.calls: list[dict] = []
        self.status = 200
        self.headers: dict[str, str] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append({"path": self.path, "headers": dict(self.headers.items()), "body": body})
                self.send_response(receiver.status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def json(self, index: int = -1) -> dict:
        return json.loads(self.calls[index]["body"])

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver(settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    settings.ONCEONLY_PUBLIC_URL = PUBLIC
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def eager_celery():
    """Tasks run in this process when woken (a retry's countdown is ignored: it finds the delivery not yet due)."""
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture
def owner(owner_a):
    return owner_a.login(Client())


@pytest.fixture
def api(key_a):
    return key_a.client()


def add_channel(
    client, kind: str, url: str, events=("approval_requested",), label=None
) -> tuple[NotificationChannel, str]:
    response = client.post(
        "/settings/channels/new/", {"kind": kind, "label": label or f"{kind} channel", "url": url, "events": events}
    )
    assert response.status_code == 201, response.content.decode()[:2000]
    found = re.search(r"whsec_[A-Za-z0-9+/=]+", response.content.decode())
    return NotificationChannel.objects.get(label=label or f"{kind} channel"), found.group() if found else ""


def require_approval(api, agent="billing-agent"):
    response = api.post(f"/v1/policies/{agent}", {"require_approval": ["stripe.refund"]}, content_type=JSON)
    assert response.status_code == 200, response.content


def governed_call(api, capture, args=None) -> dict:
    body = {"agent_id": "billing-agent", "tool": "stripe.refund", "args": args or {"charge": SECRET_ARG}}
    body["spend_usd"] = 12.5
    with capture(execute=True):  # the approval's listeners run after the commit, and wake the deliveries
        response = api.post("/v1/ai/run", body, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def local(url: str) -> str:
    """A link of a message, as the test client requests it (its path)."""
    assert url.startswith(PUBLIC + "/"), url
    return urlsplit(url).path


@pytest.fixture
def requested(owner, api, receiver, django_capture_on_commit_callbacks):
    """A Slack channel and a webhook channel, then a governed call that needs approval."""
    slack, no_secret = add_channel(owner, "slack", receiver.base + "/slack")
    hook, secret = add_channel(
        owner, "webhook", receiver.base + "/hook", events=("approval_requested", "approval_decided")
    )
    assert no_secret == "" and secret.startswith("whsec_")
    require_approval(api)
    body = governed_call(api, django_capture_on_commit_callbacks)
    assert body["policy_reason"] == "approval_required"
    return {"slack": slack, "hook": hook, "secret": secret, "approval_id": body["result"]["approval_id"]}


def by_path(receiver, path: str) -> list[dict]:
    return [call for call in receiver.calls if call["path"] == path]


def test_an_approval_request_reaches_slack_and_the_signed_webhook(requested, receiver):
    approval_id = requested["approval_id"]
    (slack,) = by_path(receiver, "/slack")
    message = json.loads(slack["body"])
    assert "Approval needed: agent billing-agent wants to call stripe.refund ($12.50" in message["text"]
    fields = " ".join(f["text"] for block in message["blocks"] for f in block.get("fields", []))
    assert "*Tool*\nstripe.refund" in fields and "*Agent*\nbilling-agent" in fields and "$12.50" in fields
    assert "*Rule*\nstripe.refund" in fields
    (actions,) = [block for block in message["blocks"] if block["type"] == "actions"]
    buttons = {button["text"]["text"]: button for button in actions["elements"]}
    assert buttons["Approve"]["style"] == "primary" and buttons["Deny"]["style"] == "danger"
    assert buttons["Approve"]["url"].startswith(f"{PUBLIC}/approvals/{approval_id}/confirm/")
    assert buttons["Open in OnceOnly"]["url"] == f"{PUBLIC}/approvals/{approval_id}/"

    (hook,) = by_path(receiver, "/hook")
    # The signature verifies with the standardwebhooks package and the secret shown once.
    event = Webhook(requested["secret"]).verify(hook["body"], hook["headers"])
    assert event["type"] == "approval_requested" and event["timestamp"].endswith("Z")
    data = event["data"]
    assert data["approval_id"] == approval_id and data["tool"] == "stripe.refund" and data["spend_usd"] == 12.5
    assert data["agent_id"] == "billing-agent" and data["rule"] == {"tool": "stripe.refund", "over_usd": None}
    assert data["approve_url"] != data["deny_url"] and data["deny_url"].startswith(PUBLIC)
    assert hook["headers"]["webhook-id"].startswith("msg_")
    # …and not with another secret, nor once the body is changed.
    with pytest.raises(WebhookVerificationError):
        Webhook(channels.new_secret()).verify(hook["body"], hook["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(requested["secret"]).verify(hook["body"].replace(b"12.5", b"99.5"), hook["headers"])
    # No raw args in anything sent or stored.
    assert all(SECRET_ARG.encode() not in call["body"] for call in receiver.calls)
    assert all(SECRET_ARG not in json.dumps(d.payload) + d.text for d in ChannelDelivery.objects.all())
    assert set(ChannelDelivery.objects.values_list("status", "attempts")) == {("delivered", 1)}
    channel = NotificationChannel.objects.get(pk=requested["hook"].pk)
    assert (channel.last_status, channel.consecutive_failures, channel.last_error) == (200, 0, "")
    # The same call again: the same pending approval, no second message.
    assert len(receiver.calls) == 2


def test_approval_requests_reach_email_too(requested):
    (notice,) = Notification.objects.filter(kind=Notification.Kind.APPROVAL_REQUESTED)
    assert notice.subject.startswith(f"Approval needed: {PUBLIC}/approvals/{requested['approval_id']}/")
    assert "stripe.refund" in notice.subject and SECRET_ARG not in notice.subject + notice.body


def test_the_one_click_link_confirms_then_approves_once(requested, receiver, owner, django_capture_on_commit_callbacks):
    approval_id = requested["approval_id"]
    hook = json.loads(by_path(receiver, "/hook")[0]["body"])["data"]
    link = local(hook["approve_url"])
    assert Client().get(link).status_code == 302  # sign-in first
    page = owner.get(link)
    assert page.status_code == 200 and "Approve this call?" in page.content.decode()
    assert SECRET_ARG in page.content.decode()  # the approver sees the args (pending only)
    assert Approval.objects.get(public_id=approval_id).status == "pending"  # GET decided nothing

    with django_capture_on_commit_callbacks(execute=True):
        done = owner.post(link)
    assert done.status_code == 200 and "Approved" in done.content.decode()
    approval = Approval.objects.get(public_id=approval_id)
    assert (approval.status, approval.decided_by) == ("approved", "alice@acme.test")
    assert AuditEntry.objects.filter(action="governance.approval.approved", object_id=approval_id).count() == 1

    # The decision reaches the channel subscribed to approval_decided (the webhook), not the other.
    decided = [json.loads(call["body"]) for call in by_path(receiver, "/hook")][-1]
    assert decided["type"] == "approval_decided"
    assert decided["data"]["status"] == "approved" and decided["data"]["decided_by"] == "alice@acme.test"
    assert len(by_path(receiver, "/slack")) == 1

    # Reused: nothing more happens.
    again = owner.post(link)
    assert again.status_code == 409 and "already approved" in again.content.decode()
    assert "already approved" in owner.get(link).content.decode()
    deny = owner.post(local(hook["deny_url"]), {"reason": "too late"})
    assert deny.status_code == 409 and Approval.objects.get(public_id=approval_id).status == "approved"
    assert AuditEntry.objects.filter(action__startswith="governance.approval.", object_id=approval_id).count() == 1


def test_the_deny_link_needs_a_reason(requested, receiver, owner):
    hook = json.loads(by_path(receiver, "/hook")[0]["body"])["data"]
    link = local(hook["deny_url"])
    page = owner.get(link).content.decode()
    assert "Deny this call?" in page and 'name="reason"' in page
    assert owner.post(link, {"reason": " "}).status_code == 422
    assert Approval.objects.get(public_id=requested["approval_id"]).status == "pending"
    assert owner.post(link, {"reason": "not this customer"}).status_code == 200
    approval = Approval.objects.get(public_id=requested["approval_id"])
    assert (approval.status, approval.reason) == ("denied", "not this customer")


def test_tampered_foreign_and_expired_links_decide_nothing(requested, receiver, owner, owner_b, viewer_a):
    approval_id = requested["approval_id"]
    hook = json.loads(by_path(receiver, "/hook")[0]["body"])["data"]
    link = local(hook["approve_url"])
    token = link.rstrip("/").rsplit("/", 1)[1]
    flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    for bad in (
        link.replace(token, flipped),  # the signature no longer verifies
        link.replace(token, token[:20]),  # cut short
        link.replace(approval_id, "apr_someone_else_entirely"),  # the token names another approval
    ):
        for method in (owner.get, owner.post):
            response = method(bad)
            assert response.status_code == 400, (bad, response.status_code)
            assert "Nothing was approved or denied" in response.content.decode()
    # A link made for another approval of the account does not work for this one either.
    assert Approval.objects.get(public_id=approval_id).status == "pending"

    # Someone else's account: not found; a viewer of this one: refused.
    assert owner_b.login(Client()).post(link).status_code == 404
    viewer = viewer_a.login(Client())
    seen = viewer.get(link)  # the summary, without a button
    assert seen.status_code == 200 and "A call waits for approval" in seen.content.decode()
    assert 'method="post" novalidate' not in seen.content.decode()
    assert viewer.post(link).status_code == 403
    assert Approval.objects.get(public_id=approval_id).status == "pending"

    # Expired: the link says so; nothing is decided (the approval is past its time as well).
    approval = Approval.objects.get(public_id=approval_id)
    Approval.objects.filter(pk=approval.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    approval.refresh_from_db()
    stale = local(channels.one_click_url(approval, "approve"))
    for method in (owner.get, owner.post):
        response = method(stale)
        assert response.status_code == 403 and "expired" in response.content.decode()
    assert Approval.objects.get(public_id=approval_id).status == "pending"


def test_a_failing_endpoint_is_retried_with_backoff_and_shown_failing(
    owner, receiver, django_capture_on_commit_callbacks
):
    hook, secret = add_channel(owner, "webhook", receiver.base + "/down", events=("tool_error",))
    receiver.status = 500
    with django_capture_on_commit_callbacks(execute=True):
        assert owner.post(f"/settings/channels/{hook.pk}/test/").status_code == 302
    delivery = ChannelDelivery.objects.get()
    assert (delivery.event, delivery.status, delivery.attempts, delivery.last_status) == ("test", "pending", 1, 500)
    assert delivery.last_error == "HTTP 500: ok"
    waited = []
    while delivery.status == "pending":
        waited.append(round((delivery.next_attempt_at - timezone.now()).total_seconds()))
        assert channels.deliver(delivery.pk) is None and delivery.attempts == len(receiver.calls)  # not due yet
        ChannelDelivery.objects.filter(pk=delivery.pk).update(next_attempt_at=timezone.now())
        deliver_channel_message(delivery.pk)
        delivery.refresh_from_db()
    assert [abs(w - b) <= 2 for w, b in zip(waited, channels.BACKOFF_SECONDS, strict=True)] == [True] * 5, waited
    assert (delivery.status, delivery.attempts) == ("failed", channels.MAX_ATTEMPTS)
    # Every attempt was the same message (one webhook-id), signed anew; the receiver saw each.
    assert len(receiver.calls) == channels.MAX_ATTEMPTS
    assert {call["headers"]["webhook-id"] for call in receiver.calls} == {delivery.message_id}
    for call in receiver.calls:
        assert Webhook(secret).verify(call["body"], call["headers"])["type"] == "test"

    page = owner.get("/settings/channels/").content.decode()
    assert 'class="row-failing"' in page and "failing" in page
    assert f"HTTP 500: ok ({channels.MAX_ATTEMPTS} failed attempts in a row)" in page
    detail = owner.get(f"/settings/channels/{hook.pk}/").content.decode()
    assert "failed" in detail and "HTTP 500" in detail

    # The endpoint recovers: the next message goes through and the channel is no longer failing.
    receiver.status = 204
    with django_capture_on_commit_callbacks(execute=True):
        owner.post(f"/settings/channels/{hook.pk}/test/")
    hook.refresh_from_db()
    assert (hook.consecutive_failures, hook.last_status, hook.last_error) == (0, 204, "")
    assert 'class="row-failing"' not in owner.get("/settings/channels/").content.decode()


def test_refusals_that_cannot_pass_are_not_retried_and_redirects_are_not_followed(
    owner, receiver, django_capture_on_commit_callbacks
):
    elsewhere = Receiver()
    try:
        slack, _ = add_channel(owner, "slack", receiver.base + "/moved")
        receiver.status, receiver.headers = 301, {"Location": elsewhere.base + "/new"}
        with django_capture_on_commit_callbacks(execute=True):
            owner.post(f"/settings/channels/{slack.pk}/test/")
        delivery = ChannelDelivery.objects.get()
        assert (delivery.status, delivery.attempts, delivery.last_status) == ("failed", 1, 301)
        assert "redirects are not followed" in delivery.last_error and elsewhere.calls == []
        receiver.status, receiver.headers = 404, {}
        with django_capture_on_commit_callbacks(execute=True):
            owner.post(f"/settings/channels/{slack.pk}/test/")
        assert ChannelDelivery.objects.filter(status="failed", attempts=1, last_status=404).count() == 1
        receiver.status = 429  # "slow down" may pass
        with django_capture_on_commit_callbacks(execute=True):
            owner.post(f"/settings/channels/{slack.pk}/test/")
        assert ChannelDelivery.objects.filter(status="pending", attempts=1, last_status=429).count() == 1
    finally:
        elsewhere.stop()


def test_ssrf_refused_urls_are_form_errors_and_refused_again_at_delivery(
    owner, receiver, settings, django_capture_on_commit_callbacks
):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    for url, said in (
        (receiver.base + "/hook", "is not a public address (loopback)"),
        ("https://169.254.169.254/latest/meta-data/", "link-local/metadata"),
        ("https://user:pw@hooks.example.com/x", "may not carry credentials"),
        ("ftp://hooks.example.com/x", "http:// or https://"),
    ):
        form = {"kind": "webhook", "label": "refused", "url": url, "events": ["tool_error"]}
        response = owner.post("/settings/channels/new/", form)
        assert response.status_code == 422 and said in response.content.decode(), (url, response.content[:3000])
    assert (
        not NotificationChannel.objects.exists()
        and not AuditEntry.objects.filter(action__startswith="governance.channel.").exists()
    )

    # Saved while private addresses were allowed, then no longer: the delivery is refused, nothing sent.
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    hook, _ = add_channel(owner, "webhook", receiver.base + "/hook", events=("tool_error",))
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = False
    with django_capture_on_commit_callbacks(execute=True):
        owner.post(f"/settings/channels/{hook.pk}/test/")
    delivery = ChannelDelivery.objects.get()
    assert delivery.status == "failed" and "not a public address" in delivery.last_error and receiver.calls == []


def test_editing_toggling_deleting_are_audited_and_slack_urls_stay_masked(
    owner, receiver, django_capture_on_commit_callbacks
):
    slack_url = receiver.base + "/services/T000/B000/XXXXsecretpathZZZZ"
    slack, _ = add_channel(owner, "slack", slack_url, events=("approval_requested", "run_failure"))
    listing = owner.get("/settings/channels/").content.decode()
    assert "XXXXsecretpath" not in listing and "/…ZZZZ" in listing
    edit = owner.get(f"/settings/channels/{slack.pk}/").content.decode()
    assert "XXXXsecretpath" not in edit
    saved = owner.post(f"/settings/channels/{slack.pk}/", {"label": "ops", "url": "", "events": ["run_failure"]})
    assert saved.status_code == 302
    slack.refresh_from_db()
    assert (slack.label, slack.url, slack.events) == ("ops", slack_url, ["run_failure"])
    assert owner.post(f"/settings/channels/{slack.pk}/", {"label": "ops", "events": []}).status_code == 422
    owner.post(f"/settings/channels/{slack.pk}/toggle/")
    slack.refresh_from_db()
    assert slack.enabled is False
    # Disabled: events do not reach it (a test still does).
    with django_capture_on_commit_callbacks(execute=True):
        assert channels.publish(slack.account_id, "run_failure", {"x": 1}, "boom") == []
    assert owner.get(f"/settings/channels/{slack.pk}/delete/").status_code == 200
    assert owner.post(f"/settings/channels/{slack.pk}/delete/").status_code == 302
    assert not NotificationChannel.objects.exists()
    actions = list(
        AuditEntry.objects.filter(action__startswith="governance.channel.")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "governance.channel.created",
        "governance.channel.updated",
        "governance.channel.disabled",
        "governance.channel.deleted",
    ]
    assert all("XXXXsecretpath" not in json.dumps(e.data) for e in AuditEntry.objects.all())


def test_labels_are_unique_per_account(owner, receiver):
    add_channel(owner, "slack", receiver.base + "/a", label="team")
    form = {"kind": "slack", "label": "team", "url": receiver.base + "/b", "events": ["tool_error"]}
    response = owner.post("/settings/channels/new/", form)
    assert response.status_code == 422 and "exists already" in response.content.decode()


def test_viewers_read_the_channels_and_change_nothing(owner, viewer_a, receiver):
    hook, _ = add_channel(owner, "webhook", receiver.base + "/hook")
    viewer = viewer_a.login(Client())
    for url in ("/settings/channels/", f"/settings/channels/{hook.pk}/"):
        page = viewer.get(url)
        assert page.status_code == 200 and '<form method="post" novalidate' not in page.content.decode()
        assert "Send test" not in page.content.decode() and "/new/" not in page.content.decode()
    assert viewer.get("/settings/channels/new/").status_code == 403
    for path in ("new/", f"{hook.pk}/", f"{hook.pk}/toggle/", f"{hook.pk}/test/", f"{hook.pk}/delete/"):
        response = viewer.post(f"/settings/channels/{path}", {"label": "x", "kind": "slack", "events": ["tool_error"]})
        assert response.status_code == 403, path
    assert NotificationChannel.objects.get().label == "webhook channel" and not ChannelDelivery.objects.exists()


def test_other_accounts_channels_are_not_found(owner, owner_b, receiver):
    hook, _ = add_channel(owner, "webhook", receiver.base + "/hook")
    other = owner_b.login(Client())
    for path in (f"{hook.pk}/", f"{hook.pk}/delete/"):
        assert other.get(f"/settings/channels/{path}").status_code == 404
    for path in (f"{hook.pk}/toggle/", f"{hook.pk}/test/", f"{hook.pk}/delete/"):
        assert other.post(f"/settings/channels/{path}").status_code == 404
    assert "webhook channel" not in other.get("/settings/channels/").content.decode()


def test_the_settings_page_links_the_channels(owner):
    assert 'href="/settings/channels/"' in owner.get("/settings/").content.decode()


def test_channels_page_query_count(owner, receiver, django_assert_num_queries):
    for n in range(5):
        add_channel(owner, "webhook" if n % 2 else "slack", receiver.base + f"/{n}", label=f"c{n}")
    # session, user, memberships, the channels
    with django_assert_num_queries(4):
        assert owner.get("/settings/channels/").status_code == 200


def test_the_due_sweep_wakes_lost_deliveries_and_prunes_old_ones(owner, receiver, settings):
    hook, _ = add_channel(owner, "webhook", receiver.base + "/hook", events=("tool_error",))
    (lost,) = channels.publish(hook.account_id, "tool_error", {"subject": "s"}, "s")  # its wake-up never ran
    old = ChannelDelivery.objects.create(
        channel=hook,
        event="tool_error",
        message_id="msg_old",
        payload={},
        status="delivered",
        created_at=timezone.now() - timedelta(days=settings.ONCEONLY_RETENTION_DAYS + 1),
    )
    assert channels.deliver_due() == 1
    lost.refresh_from_db()
    assert lost.status == "delivered" and len(receiver.calls) == 1
    assert not ChannelDelivery.objects.filter(pk=old.pk).exists()
    assert channels.deliver_due() == 0 and channels.deliver(lost.pk) is None and len(receiver.calls) == 1


@pytest.mark.slow
def test_a_real_worker_delivers_an_sdk_calls_approval_request(sdk, owner_a, receiver):
    """End to end: the SDK's call needs approval; a real Celery worker (another process, the broker in Redis)
    delivers the request to Slack and to the signed webhook."""
    from tests.conftest import ARTIFACTS
    from tests.support.servers import CeleryWorker

    celery_app.conf.task_always_eager = False  # the wake-ups go through the broker (restored by eager_celery)
    owner = owner_a.login(Client())
    add_channel(owner, "slack", receiver.base + "/slack")
    _, secret = add_channel(owner, "webhook", receiver.base + "/hook")
    worker = CeleryWorker(
        "channels", log_dir=ARTIFACTS / "workers", ONCEONLY_ALLOW_PRIVATE_TOOL_URLS="1", ONCEONLY_PUBLIC_URL=PUBLIC
    )
    try:
        sdk.gov.upsert_policy({"agent_id": "billing-agent", "require_approval": ["stripe.refund"]})
        res = sdk.ai.run_tool(agent_id="billing-agent", tool="stripe.refund", args={"charge": SECRET_ARG})
        assert res.policy_reason == "approval_required"
        approval_id = res.result["approval_id"]
        deadline = time.monotonic() + 30
        while len(receiver.calls) < 2:
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        (hook,) = by_path(receiver, "/hook")
        event = Webhook(secret).verify(hook["body"], hook["headers"])
        assert event["type"] == "approval_requested" and event["data"]["approval_id"] == approval_id
        slack = json.loads(by_path(receiver, "/slack")[0]["body"])
        assert approval_id in json.dumps(slack["blocks"]) and SECRET_ARG not in json.dumps(slack)
        assert set(ChannelDelivery.objects.values_list("status", flat=True)) == {"delivered"}
    finally:
        worker.stop()


def test_the_crawls_seeded_channels_and_links_render_for_every_role(owner_a, admin_a, viewer_a, key_a):
    """What the every-page crawl (tests/support/pages.py) visits: the channels with the longest label and a failing
    delivery, and the confirm pages of a pending approval's links — for an owner, an admin and a viewer."""
    from governance.models import Agent
    from tests.support.pages import AGENT, CHANNEL, extra_urls, seed_long_identifiers

    seed_long_identifiers(key_a, owner_a)
    hook = NotificationChannel.objects.get(label=CHANNEL)
    links = [url for url in extra_urls() if "/confirm/" in url]
    assert len(links) == 2 and Agent.objects.filter(agent_id=AGENT).exists()
    for persona in (owner_a, admin_a, viewer_a):
        client = persona.login(Client())
        listing = client.get("/settings/channels/").content.decode()
        assert CHANNEL in listing and "failing" in listing and "/…" + "s" * 4 in listing
        assert client.get(f"/settings/channels/{hook.pk}/").status_code == 200
        for link in links:
            page = client.get(link)
            offered = 'method="post" novalidate' in page.content.decode()  # the Approve or Deny form
            assert page.status_code == 200 and offered == (persona is not viewer_a)

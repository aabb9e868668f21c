"""The Verification page (governance/verify_views.py): "Verify now" queues a check of the whole decision and audit
logs (a Celery task: governance/verify_jobs.py), the page polls its progress (htmx) until the result shows; one check
at a time per account; the hourly checks' state is shown. In Chromium, the poll swaps the result in under the
Content-Security-Policy."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from html import unescape

import pytest
from django.test import Client

from governance import ledger, verify_jobs
from governance.models import Decision
from governance.tasks import verify_logs_now
from tests.ui.test_browser_keys import login


def text(response) -> str:
    return unescape(re.sub(r"\s+", " ", response.content.decode())).strip()


def calls(key, n: int) -> None:
    client = key.client()
    for i in range(n):
        body = {"agent_id": "bot", "tool": "send_email", "args": {"n": i}, "spend_usd": 0.5}
        assert client.post("/v1/ai/run", body, content_type="application/json").status_code == 200


def test_progress_is_polled_until_the_result_shows(owner_a, key_a, monkeypatch):
    calls(key_a, 3)
    client = owner_a.login(Client())
    sent = []
    monkeypatch.setattr(verify_logs_now, "delay", lambda *args: sent.append(args))  # queued, not run yet
    response = client.post("/audit/verify/")
    assert response.status_code == 302 and response["Location"].startswith("/audit/verify/?job=")
    job_id = response["Location"].rsplit("=", 1)[1]
    poll = f"/audit/verify/{job_id}/"
    html = text(client.get(response["Location"]))
    assert f'hx-get="{poll}" hx-trigger="every 1s" hx-swap="outerHTML"' in html and "queued" in html
    # A second "Verify now" while it waits names the same check: one at a time.
    assert client.post("/audit/verify/")["Location"].endswith(job_id) and len(sent) == 1
    # Running: the fragment shows the rows checked of about how many, and still polls.
    from onceonly_site.redis_client import get_redis

    get_redis().hset(verify_jobs.JOBS.key(owner_a.account.pk, job_id), "state", "running")
    verify_jobs.JOBS.progress(owner_a.account.pk, job_id, 2, 5)
    fragment = text(client.get(poll))
    assert fragment.startswith('<section id="verify-job"') and 'hx-trigger="every 1s"' in fragment
    assert '<progress max="5" value="2"' in fragment and "2 of about 5 decisions and audit entries" in fragment
    get_redis().hset(verify_jobs.JOBS.key(owner_a.account.pk, job_id), "state", "queued")
    verify_logs_now(*sent[0])  # the worker runs it
    fragment = text(client.get(poll))
    assert "OK — 3 decisions and 0 checkpoints verified." in fragment and "hx-trigger" not in fragment
    assert "Audit log OK" in fragment
    # Done: a new "Verify now" starts a new check.
    assert not client.post("/audit/verify/")["Location"].endswith(job_id) and len(sent) == 2


def test_a_check_queued_without_a_worker_says_so(owner_a, monkeypatch):
    client = owner_a.login(Client())
    monkeypatch.setattr(verify_logs_now, "delay", lambda *args: None)
    location = client.post("/audit/verify/")["Location"]
    job_id = location.rsplit("=", 1)[1]
    get_redis_key = verify_jobs.JOBS.key(owner_a.account.pk, job_id)
    from onceonly_site.redis_client import get_redis

    get_redis().hset(get_redis_key, "created", 0)
    assert "No Celery worker has been seen lately" in text(client.get(location))


def test_a_broker_that_is_down_is_said_and_a_stale_job_id_is_expired(owner_a, monkeypatch):
    client = owner_a.login(Client())

    def down(*args):
        raise ConnectionError("broker down")

    monkeypatch.setattr(verify_logs_now, "delay", down)
    response = client.post("/audit/verify/")
    assert response.status_code == 503 and "could not be queued" in text(response)
    assert "has expired or does not exist" in text(client.get("/audit/verify/?job=" + "0" * 32))
    assert "has expired or does not exist" in text(client.get("/audit/verify/?job=not-a-job"))
    assert "has expired or does not exist" in text(client.get("/audit/verify/" + "f" * 32 + "/"))


def test_the_hourly_checks_are_shown(owner_a, key_a, monkeypatch):
    monkeypatch.setattr(ledger, "SETTLE", timedelta(0))  # chain the fresh decisions at once (30 s in production)
    client = owner_a.login(Client())
    assert "Not checked yet" in text(client.get("/audit/verify/"))
    calls(key_a, 2)
    ledger.checkpoint_all()
    ledger.verify_recent(owner_a.account)
    html = text(client.get("/audit/verify/"))
    assert "Decision log" in html and "Audit log" in html and "Not checked yet" not in html
    decision = Decision.objects.first()
    Decision.objects.filter(pk=decision.pk).update(spend_usd=Decimal("0"))
    ledger.verify_recent(owner_a.account, days=1)  # 1 checkpoint: its slice is the whole log
    html = text(client.get("/audit/verify/"))
    assert f"Failed</span> Decision {decision.pk} does not match its hash" in html


@pytest.mark.browser
def test_the_page_shows_the_result_when_the_worker_is_done(page, live_server, owner_a, key_a, monkeypatch):
    """In Chromium: "Verify now" while no worker runs shows the check queued; the worker runs it; the page's htmx poll
    swaps the result in (allowed by the page's Content-Security-Policy: the fixture fails on any violation)."""
    calls(key_a, 2)
    sent = []
    monkeypatch.setattr(verify_logs_now, "delay", lambda *args: sent.append(args))
    login(page, live_server, owner_a)
    page.goto(f"{live_server.url}/audit/verify/")
    page.get_by_role("button", name="Verify now").click()
    page.wait_for_url(re.compile(r".*/audit/verify/\?job=[0-9a-f]{32}$"))
    assert "queued" in page.locator("#verify-job").inner_text()
    verify_logs_now(*sent[0])
    status = page.get_by_role("status").filter(has_text="decisions and")
    status.wait_for(timeout=10_000)
    assert "OK — 2 decisions" in status.inner_text()
    assert "Audit log OK" in page.get_by_role("status", name="Audit log").inner_text()


def test_a_redelivered_task_does_not_take_the_check_again(owner_a, monkeypatch):
    sent = []
    monkeypatch.setattr(verify_logs_now, "delay", lambda *args: sent.append(args))
    job_id = verify_jobs.verify_start(owner_a.account.pk)
    assert verify_jobs.JOBS.take(owner_a.account.pk, job_id) is not None  # the first delivery takes it
    assert verify_jobs.JOBS.take(owner_a.account.pk, job_id) is None  # a second one (acks_late, a redelivery) does not

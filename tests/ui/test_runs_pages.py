"""The Runs pages (list with filters and pagination, run timeline with live polling) and the overview panel."""

from __future__ import annotations

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from idempotency import runs
from idempotency.models import Run


def start(key, run_key, **metadata):
    response = key.client().post("/v1/ai/run", {"key": run_key, "metadata": metadata}, content_type="application/json")
    assert response.status_code == 200, response.content
    return Run.objects.get(key=run_key, lease_version=response.json()["version"])


def test_anonymous_is_sent_to_login(db):
    for url in ("/runs/", "/runs/timeline/?run_id=x"):
        assert Client().get(url)["Location"].startswith("/login/")


def test_runs_list_shows_status_result_and_error_and_filters(viewer_a, key_a):
    ok = start(key_a, "job:ok", task="demo.echo", agent_id="bot")
    runs.execute(ok.pk)
    bad = start(key_a, "job:bad", task="test.fail")
    runs.execute(bad.pk)
    start(key_a, "job:queued", task="demo.sleep")
    client = viewer_a.login(Client())
    html = client.get("/runs/").content.decode()
    assert html.count('badge-completed">completed') == 1 and 'badge-failed">handler_error' in html
    assert 'badge-queued">queued' in html and "demo.echo" in html and "the handler failed on purpose" in html
    failed_only = client.get("/runs/", {"status": "failed"}).content.decode()
    assert "job:bad" in failed_only and "job:ok" not in failed_only
    assert "job:ok" in client.get("/runs/", {"q": "job:o"}).content.decode()
    assert "No runs match" in client.get("/runs/", {"agent": "nobody"}).content.decode()
    bogus = client.get("/runs/", {"status": "bogus"})  # ignored and said so; every run shown
    assert bogus.status_code == 200 and "Status “bogus” ignored" in bogus.content.decode()
    assert "job:ok" in bogus.content.decode() and "job:bad" in bogus.content.decode()


def test_runs_list_is_paginated_with_a_pinned_query_count(owner_a, key_a):
    client = owner_a.login(Client())

    def count():
        with CaptureQueriesContext(connection) as queries:
            assert client.get("/runs/").status_code == 200
        return len(queries)

    start(key_a, "job:0", task="demo.echo")
    few = count()
    for i in range(1, 30):
        start(key_a, f"job:{i}", task="demo.echo")
    assert count() == few == 6  # session, user, membership, agent suggestions, count, page
    html = client.get("/runs/", {"page": 2}).content.decode()
    assert "Page 2 of 2" in html and "job:0" in html


def test_run_timeline_page_shows_events_and_links_decisions(viewer_a, key_a):
    run = start(key_a, "job:acts", run_id="nightly/1 a", agent_id="bot", actions=[{"tool": "send_email"}])
    runs.execute(run.pk)
    client = viewer_a.login(Client())
    with CaptureQueriesContext(connection) as queries:
        html = client.get("/runs/timeline/", {"run_id": "nightly/1 a"}).content.decode()
    assert len(queries) == 5  # session, user, membership, runs, events
    for kind in ("run_queued", "run_started", "tool_call", "tool_result", "run_finished"):
        assert f'data-type="{kind}"' in html
    from governance.models import Decision

    decision = Decision.objects.get(run_id="nightly/1 a")
    # The decision opens in the drawer; its row is clickable (tr[data-href]).
    assert f'<a href="/decisions/{decision.pk}/" data-drawer>decision #{decision.pk}</a>' in html
    assert f'data-href="/decisions/{decision.pk}/"' in html
    assert "data-live" not in html  # finished: no polling


def test_timeline_polls_while_running_and_stops_when_finished(viewer_a, key_a):
    run = start(key_a, "job:live", task="demo.echo")
    client = viewer_a.login(Client())
    html = client.get("/runs/timeline/", {"run_id": "job:live"}).content.decode()
    assert "data-live" in html and 'id="live-badge"' in html
    newest = Run.objects.get(pk=run.pk).account.run_events.order_by("-id").first().pk
    poll = client.get("/runs/timeline/", {"run_id": "job:live", "after": newest}, headers={"HX-Request": "true"})
    assert poll.status_code == 200 and b"data-id" not in poll.content  # nothing new yet
    runs.execute(run.pk)
    done = client.get("/runs/timeline/", {"run_id": "job:live", "after": newest}, headers={"HX-Request": "true"})
    assert done.status_code == 286  # htmx: swap, then stop polling
    body = done.content.decode()
    assert 'data-type="run_started"' in body and 'data-type="run_finished"' in body
    assert 'hx-swap-oob="true"' in body and 'badge-completed">completed' in body


def test_timeline_of_other_tenants_and_bad_input(owner_b, key_a):
    start(key_a, "secret-job", task="demo.echo")
    client = owner_b.login(Client())
    html = client.get("/runs/timeline/", {"run_id": "secret-job"}).content.decode()
    assert "run_queued" not in html and "No keyed run wrote to this timeline" in html
    assert "secret-job" not in client.get("/runs/").content.decode()
    blank = client.get("/runs/timeline/", {"run_id": "   "})
    assert blank.status_code == 400 and "Enter a run id." in blank.content.decode()


def test_overview_shows_runs_in_progress_and_recent_failures(viewer_a, key_a):
    start(key_a, "job:waiting", task="demo.sleep")
    bad = start(key_a, "job:broken", task="test.fail")
    runs.execute(bad.pk)
    html = viewer_a.login(Client()).get("/").content.decode()
    assert "Keyed runs" in html and "job:waiting" in html
    assert "job:broken" in html and 'badge-failed">handler_error' in html

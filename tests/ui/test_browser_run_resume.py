"""Raise & resume in headless Chromium (docs/runs.md §"Runs that pause at a cap"): a keyed run paused at its
max_actions_per_run shows the cap's numbers on its timeline; an admin's raise that would pause it again is refused
on the page, a real raise queues it again with the run's own caps."""

import pytest
from playwright.sync_api import expect

from governance import services as governance
from idempotency import runs
from idempotency.choices import RunStatus
from idempotency.models import Run
from tests.support.tool_endpoint import ToolEndpoint
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


@pytest.fixture
def paused(settings, key_a, account_a, monkeypatch):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    endpoint = ToolEndpoint()
    api = key_a.client()
    tool = {"name": "crm.note", "url": endpoint.base + "/note", "auth": {"type": "hmac_sha256", "secret": "s" * 24}}
    assert api.post("/v1/tools", tool, content_type="application/json").status_code == 200
    governance.policy_upsert(
        account_id=account_a.pk, agent_id="runner", changes={"max_actions_per_run": 2}, actor="test"
    )
    monkeypatch.setattr(runs, "enqueue", lambda pk: None)  # no worker here: the run is executed in the test
    actions = [{"tool": "crm.note", "args": {"n": n}} for n in range(1, 5)]
    body = {"key": "notes:browser", "ttl": 60, "metadata": {"agent_id": "runner", "actions": actions}}
    assert api.post("/v1/ai/run", body, content_type="application/json").status_code == 200
    run = Run.objects.get(key="notes:browser")
    assert runs.execute(run.pk) == "paused"
    yield run
    endpoint.stop()


def test_an_admin_raises_and_resumes_a_paused_run(page, live_server, admin_a, paused):
    login(page, live_server, admin_a)
    page.goto(f"{live_server.url}/runs/timeline/?run_id=notes:browser")
    facts = page.locator("#run-paused-1")
    expect(facts).to_contain_text("run_action_limit_exceeded")
    expect(facts).to_contain_text("2 of 2")
    form = page.get_by_role("form", name="Raise & resume")
    form.get_by_label("Max actions per run").fill("2")
    form.get_by_role("button", name="Raise & resume").click()
    expect(page.locator(".messages")).to_contain_text("must be more than 2")
    assert Run.objects.get(pk=paused.pk).status == RunStatus.PAUSED

    form = page.get_by_role("form", name="Raise & resume")
    form.get_by_label("Max actions per run").fill("4")
    form.get_by_role("button", name="Raise & resume").click()
    expect(page.locator("body")).to_contain_text("Resumed with max_actions_per_run 4")
    run = Run.objects.get(pk=paused.pk)
    assert run.status == RunStatus.QUEUED and run.cap_overrides == {"max_actions_per_run": 4}

"""Run timeline in headless Chromium: a slow keyed run executed by a real worker process updates the page live,
without a reload, until it completes."""

import pytest
from playwright.sync_api import expect

from tests.conftest import ARTIFACTS
from tests.support.servers import CeleryWorker
from tests.ui.test_browser_keys import login

pytestmark = pytest.mark.browser


@pytest.fixture
def worker(transactional_db):
    process = CeleryWorker("browser", log_dir=ARTIFACTS / "workers")
    yield process
    process.stop()


def test_slow_run_timeline_updates_live_until_completed(page, live_server, viewer_a, key_a, worker):
    body = {
        "key": "report:nightly",
        "ttl": 60,
        "metadata": {"run_id": "nightly/report 1", "task": "demo.sleep", "params": {"seconds": 4}},
    }
    response = key_a.client().post("/v1/ai/run", body, content_type="application/json")
    assert response.json()["status"] == "acquired"
    login(page, live_server, viewer_a)
    page.get_by_role("link", name="Runs", exact=True).click()
    page.get_by_role("link", name="nightly/report 1").click()
    expect(page.locator("#live-badge")).to_be_visible()
    page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
    page.locator('tr[data-type="progress"]').first.wait_for(timeout=20_000)  # demo.sleep's steps, as they happen
    page.locator('tr[data-type="run_finished"]').wait_for(timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    expect(page.locator("#run-summary .badge-completed").first).to_be_visible()
    assert page.locator("#live-badge").count() == 0  # the summary was swapped in its final state
    assert page.locator('tr[data-type="run_started"]').count() == 1  # no row appended twice
    assert page.locator('tr[data-type="run_finished"]').count() == 1
    page.wait_for_timeout(2500)  # polling stopped (286): nothing more arrives, nothing is duplicated
    assert page.locator('tr[data-type="run_finished"]').count() == 1

"""The Export buttons of the decision timeline, the audit log, the Runs table and a run timeline: each carries the
filters in force to the export view, which streams the rows those filters show (CSV or JSON Lines), with a pinned
number of queries; and in headless Chromium a click downloads the file."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from html import unescape
from pathlib import Path
from urllib.parse import urlencode

import pytest
from django.test import Client
from django.utils import timezone

from billing.services import audit_record
from tests.support.decisions import agent, decide

JSON = "application/json"


def export_links(html: str) -> dict[str, str]:
    """{format: the URL its Export button submits}: the form's action with its hidden inputs, then the format."""
    form = re.search(r'<form method="get" action="([^"]+)" class="export-form"[^>]*>(.*?)</form>', html, re.S)
    if form is None:
        return {}
    hidden = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', form.group(2))
    formats = re.findall(r'<button type="submit" name="format" value="(\w+)"', form.group(2))
    return {
        fmt: f"{form.group(1)}?{urlencode([*((n, unescape(v)) for n, v in hidden), ('format', fmt)])}"
        for fmt in formats
    }


def streamed(response) -> str:
    assert response.status_code == 200 and response.streaming, response.status_code
    return b"".join(response.streaming_content).decode()


@pytest.fixture
def seeded(account_a, key_a, owner_a):
    bot = agent(account_a, "bot")
    decide(bot, tool="search.web", n=3, ts=timezone.now() - timedelta(hours=2))
    decide(bot, tool="email.send", outcome="blocked", n=2)
    key_a.client().post(
        "/v1/ai/run", {"key": "job-1", "metadata": {"task": "demo.echo", "run_id": "tl-1"}}, content_type=JSON
    )
    key_a.client().post("/v1/events", {"run_id": "tl-1", "type": "note", "message": "hello"}, content_type=JSON)
    audit_record(account=account_a, action="test.marker", actor_label="auditor", object_id="o-1")
    return owner_a.login(Client())


@pytest.mark.parametrize(
    ("page", "filters", "expected"),
    [
        ("/decisions/", {"outcome": "blocked", "sort": "time"}, {"rows": 2, "column": "outcome", "value": "blocked"}),
        ("/audit/", {"action": "test.marker"}, {"rows": 1, "column": "object_id", "value": "o-1"}),
        ("/runs/", {"q": "job-"}, {"rows": 1, "column": "run_id", "value": "tl-1"}),
        ("/runs/timeline/", {"run_id": "tl-1"}, {"rows": None, "column": "run_id", "value": "tl-1"}),
    ],
)
def test_each_export_button_carries_the_filters_in_force(seeded, page, filters, expected):
    html = seeded.get(page, filters).content.decode()
    links = export_links(html)
    assert set(links) == {"csv", "jsonl"}, page
    for name, value in filters.items():
        assert f"{name}={value}" in links["csv"], (page, links)
    rows = list(csv.DictReader(io.StringIO(streamed(seeded.get(links["csv"])))))
    if expected["rows"] is not None:
        assert len(rows) == expected["rows"], (page, rows)
    assert rows and {r[expected["column"]] for r in rows} == {expected["value"]}
    assert streamed(seeded.get(links["jsonl"])).startswith("{")


def test_the_export_views_read_a_fixed_number_of_queries(seeded, django_assert_num_queries):
    """Session, user and membership, then one query per 2,000-row chunk (and the timeline's tool resolution)."""
    for path, queries in (
        ("/decisions/export/?format=csv", 4),
        ("/decisions/export/?format=csv&tool=search", 5),  # + the tools the account called (the tool facet)
        ("/audit/export/?format=csv", 4),
        ("/runs/export/?format=csv", 4),
        ("/runs/timeline/export/?run_id=tl-1", 4),
    ):
        with django_assert_num_queries(queries):
            streamed(seeded.get(path))


def test_no_export_link_without_a_run_on_the_timeline_page(seeded):
    assert export_links(seeded.get("/runs/timeline/").content.decode()) == {}


@pytest.mark.browser
def test_clicking_export_downloads_the_filtered_csv(page, live_server, viewer_a, account_a):
    from tests.ui.test_browser_keys import login

    bot = agent(account_a, "bot")
    decide(bot, tool="search.web", n=3)
    decide(bot, tool="email.send", outcome="blocked", n=2)
    login(page, live_server, viewer_a)
    page.goto(f"{live_server.url}/decisions/?outcome=blocked")
    with page.expect_download() as download:
        page.locator('[data-export] button[data-format="csv"]').click()
    file = download.value
    assert file.suggested_filename.startswith("onceonly-decisions-") and file.suggested_filename.endswith(".csv")
    rows = list(csv.DictReader(io.StringIO(Path(file.path()).read_text(encoding="utf-8"))))
    assert len(rows) == 2 and {r["outcome"] for r in rows} == {"blocked"}

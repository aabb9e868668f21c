"""Streaming exports (docs/api.md §"Exports"): the dashboard tables' filters, CSV and JSON Lines, streamed in keyset
chunks in bounded memory, tenant-scoped, never the call's args; errors are JSON 422s, never a 500."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from datetime import timedelta

import pytest
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.services import audit_record
from governance.models import Decision
from onceonly_site import export
from tests.support.decisions import agent, decide

JSON = "application/json"


def body_of(response) -> str:
    assert isinstance(response, StreamingHttpResponse), type(response)
    return b"".join(response.streaming_content).decode()


def csv_rows(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body_of(response))))


def jsonl_rows(response) -> list[dict]:
    return [json.loads(line) for line in body_of(response).splitlines()]


@pytest.fixture
def log(account_a, account_b):
    """A's decisions of two agents and three tools over three days, and one of B's (never in A's exports)."""
    now = timezone.now()
    bot, other = agent(account_a, "bot"), agent(account_a, "other-bot")
    decide(bot, tool="search.web", ts=now - timedelta(days=2), n=3)
    decide(bot, tool="email.send", outcome="blocked", ts=now - timedelta(days=1), n=2)
    decide(other, tool="search.web", ts=now, n=4)
    decide(agent(account_b, "bot"), tool="search.web", ts=now, n=5)
    return now


def test_decisions_export_honours_the_timeline_filters(key_a, log):
    api = key_a.client()
    everything = csv_rows(api.get("/v1/export/decisions?format=csv"))
    assert len(everything) == 9  # A's only
    assert [r["ts"] for r in everything] == sorted((r["ts"] for r in everything), reverse=True)  # newest first
    blocked = csv_rows(api.get("/v1/export/decisions", {"format": "csv", "outcome": "blocked"}))
    assert {(r["agent_id"], r["tool"], r["outcome"]) for r in blocked} == {("bot", "email.send", "blocked")}
    assert len(blocked) == 2
    exact = jsonl_rows(api.get("/v1/export/decisions", {"format": "jsonl", "agent": "=bot", "tool": "search"}))
    assert len(exact) == 3 and {r["agent_id"] for r in exact} == {"bot"}
    searched = jsonl_rows(api.get("/v1/export/decisions", {"format": "jsonl", "q": "other"}))
    assert len(searched) == 4
    since = (log - timedelta(hours=36)).strftime("%Y-%m-%dT%H:%M:%S")
    recent = jsonl_rows(api.get("/v1/export/decisions", {"format": "jsonl", "since": since, "sort": "time"}))
    assert len(recent) == 6 and recent[0]["tool"] == "email.send"  # oldest first
    reason = jsonl_rows(api.get("/v1/export/decisions", {"format": "jsonl", "reason": "limit"}))
    assert len(reason) == 2


def test_an_export_holds_no_args_and_amounts_stay_exact(key_a, log):
    row = jsonl_rows(key_a.client().get("/v1/export/decisions?format=jsonl"))[0]
    assert "args" not in row and "result" not in row and "explain" not in row
    assert row["args_hash"] == "x" * 64 and row["spend_usd"] == "0.000000"
    assert set(row) == {c.name for c in views_columns()}
    decision = Decision.objects.get(pk=row["id"])
    assert row["row_hash"] == decision.row_hash and row["ts"] == decision.ts.isoformat()


def test_the_answer_is_a_named_attachment_streamed_in_chunks(key_a, log):
    response = key_a.client().get("/v1/export/decisions?format=csv")
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="onceonly-decisions-') and disposition.endswith('.csv"')
    assert response["Cache-Control"] == "no-store" and not response.has_header("Content-Length")
    jsonl = key_a.client().get("/v1/export/decisions", HTTP_ACCEPT="application/x-ndjson")
    assert jsonl["Content-Type"].startswith("application/x-ndjson") and body_of(jsonl).startswith("{")


def test_rows_arrive_before_the_end_one_query_per_chunk(account_a, django_assert_num_queries):
    bot = agent(account_a, "bot")
    decide(bot, n=25)
    source = export.Source("decisions", Decision.objects.filter(account=account_a), [export.Column("id", "id")])
    rows = export.keyset_rows(source, chunk=10)
    with django_assert_num_queries(1):
        first = next(rows)  # the first chunk is read; the rest is not
    with django_assert_num_queries(2):  # 10 + 5 more rows: two more chunk queries
        rest = list(rows)
    assert len(rest) == 24 and first[0] > rest[0][0]
    ids = [r[0] for r in export.keyset_rows(source, chunk=7)]
    assert len(ids) == len(set(ids)) == 25  # no row twice, none skipped at chunk boundaries (equal timestamps)


def test_the_http_answer_streams_its_first_bytes_after_one_chunk(key_a, account_a):
    """Through the whole stack: the first piece of the body is out after one chunk query of 5,000 rows' three."""
    decide(agent(account_a, "bot"), n=5000)
    response = key_a.client().get("/v1/export/decisions?format=csv")
    pieces = iter(response.streaming_content)
    with CaptureQueriesContext(connection) as queries:
        first = next(pieces)
    assert first.startswith(b"id,ts,agent_id,tool,") and len(first) < 200_000
    assert len([q for q in queries if "governance_decision" in q["sql"]]) == 1
    with CaptureQueriesContext(connection) as queries:
        rest = b"".join(pieces)
    assert len([q for q in queries if "governance_decision" in q["sql"]]) == 2
    assert (first + rest).count(b"\r\n") == 5001  # the header and every row


def test_memory_stays_bounded_over_20000_rows(account_a):
    bot = agent(account_a, "bot")
    decide(bot, n=20_000)
    source = export.Source("decisions", Decision.objects.filter(account=account_a), views_columns(), ("ts", "id"), True)
    tracemalloc.start()
    try:
        size = 0
        for piece in export.csv_chunks(source, export.keyset_rows(source)):
            size += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 20_000 * 100  # every row written
    assert peak < 8 * 1024 * 1024, peak  # a chunk of 2,000 rows, not 20,000 (those alone are ~20 MB of objects)


def views_columns():
    from governance.views import DECISION_EXPORT_COLUMNS

    return DECISION_EXPORT_COLUMNS


def test_bad_filters_are_a_422_naming_them(key_a, log):
    api = key_a.client()
    for query, loc in (
        ({"format": "xml"}, "format"),
        ({"outcome": "nope"}, "outcome"),
        ({"since": "yesterday"}, "since"),
        ({"sort": "tool"}, "sort"),
        ({"page": "2"}, "page"),
    ):
        response = api.get("/v1/export/decisions", query)
        assert response.status_code == 422, (query, response.status_code)
        assert response["Content-Type"] == JSON
        assert response.json()["detail"][0]["loc"] == ["query", loc], response.json()
    assert api.get("/v1/export/decisions", HTTP_ACCEPT="text/html").status_code == 406


def test_runs_run_events_and_audit_exports(key_a, owner_a, account_b):
    api = key_a.client()
    start = api.post(
        "/v1/ai/run",
        {"key": "job-1", "metadata": {"task": "demo.echo", "run_id": "tl-1", "agent_id": "bot"}},
        content_type=JSON,
    )
    assert start.status_code in (200, 202), start.content
    api.post("/v1/events", {"run_id": "tl-1", "type": "step", "data": {"secret": "args"}}, content_type=JSON)
    runs = jsonl_rows(api.get("/v1/export/runs?format=jsonl"))
    assert [r["run_id"] for r in runs] == ["tl-1"] and "params" not in runs[0] and "result" not in runs[0]
    assert jsonl_rows(api.get("/v1/export/runs", {"format": "jsonl", "status": "failed"})) == []
    assert len(jsonl_rows(api.get("/v1/export/runs", {"format": "jsonl", "q": "job-"}))) == 1
    events = jsonl_rows(api.get("/v1/export/run-events", {"format": "jsonl", "run_id": "tl-1"}))
    assert events and all("data" not in e and "lease_id" not in e for e in events)
    assert "args" not in body_of(api.get("/v1/export/run-events", {"run_id": "tl-1"}))
    assert api.get("/v1/export/run-events").status_code == 422  # a run id is required
    audit_record(account=owner_a.account, action="test.marker", actor_label="auditor", object_id="x1")
    audit_record(account=account_b, action="test.marker", actor_label="auditor", object_id="b-only")
    entries = csv_rows(api.get("/v1/export/audit", {"action": "test.marker"}))
    assert [e["object_id"] for e in entries] == ["x1"] and entries[0]["row_hash"]


def test_the_dashboard_export_carries_the_page_filters_for_every_role(viewer_a, log):
    web = viewer_a.login(Client())
    page = web.get("/decisions/", {"outcome": "blocked"}).content.decode()
    assert '<form method="get" action="/decisions/export/" class="export-form"' in page
    assert '<input type="hidden" name="outcome" value="blocked">' in page
    rows = csv_rows(web.get("/decisions/export/", {"outcome": "blocked", "format": "csv"}))
    assert len(rows) == 2 and {r["outcome"] for r in rows} == {"blocked"}
    assert web.get("/decisions/export/", {"format": "xls"}).status_code == 404
    for path in ("/audit/export/?format=jsonl", "/runs/export/?format=csv", "/runs/timeline/export/?run_id=x"):
        response = web.get(path)
        assert response.status_code == 200 and response.streaming, path
        body_of(response)
    assert web.get("/runs/timeline/export/").status_code == 400
    assert Client().get("/decisions/export/").status_code == 302  # to the login


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted():
    from onceonly_site.export import _text

    assert [_text(v) for v in ("=HYPERLINK(1)", "+1", "-x", "@cmd", "\tx", "send_email", -1, None)] == [
        "'=HYPERLINK(1)",
        "'+1",
        "'-x",
        "'@cmd",
        "'\tx",
        "send_email",
        "-1",
        "",
    ]

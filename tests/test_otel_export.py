"""OpenTelemetry export (docs/operations.md §"OpenTelemetry export"), against a real OTLP/HTTP receiver in the test
process that decodes the protobuf payloads the exporter sends: one span per governed call and per run with the
documented attributes, calls of a run in the run's trace; a receiver that is down costs spans (counted on /metrics),
never a call; nothing runs when the endpoint is unset."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from django.test import Client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from governance.models import Decision
from idempotency import runs
from idempotency.models import Run
from onceonly_site import telemetry
from tests.support.governance import governed_call, register_tool, set_policy
from tests.support.servers import GunicornServer
from tests.support.tool_endpoint import ToolEndpoint

METRICS_TOKEN = "metrics-token-0123456789"


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver:
    """POST /v1/traces: every span of every request, decoded, with its resource's attributes."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.content_types: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.content_types.append(self.headers["Content-Type"])
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans.append(
                                {
                                    "resource": resource,
                                    "scope": scope_spans.scope.name,
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent_span_id": span.parent_span_id.hex(),
                                    "start": span.start_time_unix_nano,
                                    "end": span.end_time_unix_nano,
                                    "status": span.status.code,
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                    "events": [
                                        (e.name, {a.key: _value(a.value) for a in e.attributes}) for e in span.events
                                    ],
                                }
                            )
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def named(self, prefix: str) -> list[dict]:
        return [span for span in self.spans if span["name"].startswith(prefix)]


def export_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("OtelBatch")]


def metrics(settings) -> dict[str, float]:
    settings.ONCEONLY_METRICS_TOKEN = METRICS_TOKEN
    settings.ONCEONLY_METRICS_CACHE_SECONDS = 0
    response = Client(headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).get("/metrics")
    assert response.status_code == 200
    lines = [line for line in response.content.decode().splitlines() if line and not line.startswith("#")]
    return {name: float(value) for name, value in (line.rsplit(" ", 1) for line in lines)}


@pytest.fixture
def receiver(settings, transactional_db):
    """Export on, to a receiver of this process (spans are exported after the commit: a real one, hence
    transactional_db); the provider is shut down afterwards."""
    telemetry.reset()
    receiver = Receiver()
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = receiver.base
    yield receiver
    telemetry.reset()
    receiver.stop()


@pytest.fixture
def client(key_a):
    return key_a.client()


def test_one_span_per_governed_call_with_the_documented_attributes(receiver, client, key_a, settings):
    set_policy(client, "bot", blocked_tools=["danger"])
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    try:
        assert register_tool(client, "refund", tool.base, price_usd=0.5).status_code in (200, 201)
        secret = "4242-4242-4242-4242"
        allowed = governed_call(client, "bot", "search", args={"q": "x"}, spend_usd=0.25)
        blocked = governed_call(client, "bot", "danger", args={"card": secret})
        executed = governed_call(client, "bot", "refund", args={"order": 7})
    finally:
        tool.stop()
    assert [r.status_code for r in (allowed, blocked, executed)] == [200, 200, 200]
    assert telemetry.force_flush()

    spans = {span["attributes"]["gen_ai.tool.name"]: span for span in receiver.named("execute_tool ")}
    assert sorted(spans) == ["danger", "refund", "search"] and len(receiver.named("execute_tool ")) == 3
    assert receiver.content_types == ["application/x-protobuf"]
    decisions = {d.tool: d for d in Decision.objects.all()}
    for name, span in spans.items():
        decision = decisions[name]
        attributes = span["attributes"]
        assert span["name"] == f"execute_tool {name}"
        assert span["resource"]["service.name"] == "onceonly-server" and span["scope"] == "onceonly"
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert attributes["gen_ai.agent.id"] == "bot"
        assert attributes["onceonly.decision_id"] == decision.pk
        assert attributes["onceonly.policy_version"] == decision.policy_version
        assert attributes["onceonly.outcome"] == decision.outcome
        assert attributes["onceonly.reason"] == decision.policy_reason
        assert attributes["onceonly.row_hash"] == decision.row_hash and len(decision.row_hash) == 64
        assert attributes["onceonly.args_hash"] == decision.args_hash
        assert attributes["onceonly.spend_usd"] == float(decision.spend_usd)
        assert span["end"] == int(decision.ts.timestamp() * 1e9) and span["start"] <= span["end"]
        assert span["parent_span_id"] == ""  # no run id: a trace of its own
        assert secret not in repr(span)  # never the args
    assert spans["search"]["attributes"]["onceonly.outcome"] == "allowed"
    assert spans["search"]["attributes"]["onceonly.spend_usd"] == 0.25
    assert spans["danger"]["attributes"]["onceonly.reason"] == "tool_blocked"
    refund = spans["refund"]["attributes"]
    assert refund["onceonly.outcome"] == "executed" and refund["http.response.status_code"] == 200
    assert refund["onceonly.dispatch_id"] == decisions["refund"].dispatch_id
    assert "http.response.status_code" not in spans["search"]["attributes"]
    assert all(span["status"] == 0 for span in spans.values())  # unset: none failed


def test_a_failed_dispatch_is_an_error_span(receiver, client, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    tool.status = 500
    try:
        assert register_tool(client, "refund", tool.base, max_retries=0).status_code in (200, 201)
        assert governed_call(client, "bot", "refund", args={"order": 7}).status_code == 200
    finally:
        tool.stop()
    telemetry.force_flush()
    (span,) = receiver.named("execute_tool ")
    assert span["attributes"]["onceonly.outcome"] == "failed"
    assert span["attributes"]["http.response.status_code"] == 500
    assert span["status"] == 2  # STATUS_CODE_ERROR


def test_a_one_step_run_is_a_run_span_with_its_call_as_child(receiver, client, key_a):
    response = governed_call(client, "bot", "search", args={"q": "x", "run_id": "run-7"})
    assert response.status_code == 200
    telemetry.force_flush()
    (call,) = receiver.named("execute_tool ")
    (run,) = receiver.named("invoke_agent")
    account_id = key_a.api_key.account_id
    digest = hashlib.sha256(f"{account_id}:run-7".encode()).digest()
    assert run["trace_id"] == digest[:16].hex() and run["span_id"] == digest[16:24].hex()
    assert run["parent_span_id"] == ""
    assert call["trace_id"] == run["trace_id"] and call["parent_span_id"] == run["span_id"]
    assert call["attributes"]["onceonly.run_id"] == "run-7"
    assert run["name"] == "invoke_agent bot"
    assert run["attributes"]["gen_ai.operation.name"] == "invoke_agent"
    assert run["attributes"]["onceonly.run_id"] == "run-7"
    assert run["attributes"]["onceonly.run.status"] == "completed"
    assert [name for name, _ in run["events"]] == ["tool_call", "tool_result", "run_finished"]
    result = dict(run["events"])["tool_result"]
    assert result["onceonly.decision_id"] == call["attributes"]["onceonly.decision_id"]
    assert result["gen_ai.tool.name"] == "search"


def test_a_keyed_run_is_one_span_and_its_actions_are_its_children(receiver, client, key_a):
    set_policy(client, "billing-agent", blocked_tools=["delete_user"])
    actions = [{"tool": "send_email", "args": {"to": "a@b.c"}, "spend_usd": 0.25}, {"tool": "delete_user"}]
    metadata = {"agent_id": "billing-agent", "actions": actions, "run_id": "run-acts"}
    response = client.post("/v1/ai/run", {"key": "acts", "metadata": metadata}, content_type="application/json")
    assert response.status_code == 200 and response.json()["status"] == "acquired"
    assert runs.execute(Run.objects.get().pk) == "failed"
    telemetry.force_flush()

    (run,) = receiver.named("invoke_agent")
    calls = receiver.named("execute_tool ")
    assert sorted(c["attributes"]["gen_ai.tool.name"] for c in calls) == ["delete_user", "send_email"]
    assert {(c["trace_id"], c["parent_span_id"]) for c in calls} == {(run["trace_id"], run["span_id"])}
    assert run["name"] == "invoke_agent billing-agent"
    assert run["attributes"]["onceonly.run.status"] == "failed"
    assert run["attributes"]["onceonly.run.error_code"] == "policy_blocked"
    assert run["status"] == 2
    names = [name for name, _ in run["events"]]
    assert names[0] == "run_queued" and names[-1] == "run_finished"
    assert names.count("tool_result") == 2 and names.count("run_finished") == 1
    assert run["start"] <= min(c["start"] for c in calls) and run["end"] >= max(c["end"] for c in calls)


@pytest.mark.slow
def test_gunicorn_workers_export_after_their_fork(receiver, key_a):
    """Each worker of a real gunicorn (forked from the master, as deploy/web.sh runs it) sets up its exporter and
    its thread at boot, and sends its spans on its own."""
    server = GunicornServer(workers=2, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.base, OTEL_BSP_SCHEDULE_DELAY="100")
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key_a.raw}"}) as http:
            for n in range(6):
                answer = http.post("/v1/ai/run", json={"agent_id": "bot", "tool": "search", "args": {"n": n}})
                assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 15
        while len(receiver.named("execute_tool ")) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        server.stop()
    spans = receiver.named("execute_tool ")
    assert len(spans) == 6
    assert {s["attributes"]["onceonly.decision_id"] for s in spans} == set(
        Decision.objects.values_list("pk", flat=True)
    )
    assert {s["resource"]["service.name"] for s in spans} == {"onceonly-server"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_receiver_down_costs_spans_never_a_call(settings, transactional_db, key_a, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # the exporter's time per batch, retries included
    # A queue of 2 (sent as soon as it holds 2): while the thread waits on the dead receiver the queue overflows,
    # so both ways of losing spans are taken.
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2")
    telemetry.reset()
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    before = metrics(settings)
    client = key_a.client()
    try:
        took = []
        for n in range(6):
            started = time.monotonic()
            answer = governed_call(client, "bot", "search", args={"n": n})
            took.append(time.monotonic() - started)
            assert answer.status_code == 200 and answer.json()["decision"] == "allowed"
        assert Decision.objects.count() == 6
        assert max(took) < 1  # no call waited for the receiver (a batch takes the 1 s timeout to fail)
        telemetry.force_flush()
    finally:
        telemetry.reset()
    after = metrics(settings)
    assert after["onceonly_otel_export_failures_total"] >= before["onceonly_otel_export_failures_total"] + 1
    assert after["onceonly_otel_spans_dropped_total"] >= before["onceonly_otel_spans_dropped_total"] + 6
    assert after["onceonly_otel_spans_exported_total"] == before["onceonly_otel_spans_exported_total"]


def test_an_export_that_breaks_never_reaches_the_call(receiver, client, monkeypatch, caplog):
    # The SDK shrugs off bad OTEL_* values (it logs and uses its defaults), so the failure is injected: the tracer
    # raises, for the call's span and for its one-step run's.
    def broken():
        raise RuntimeError("exporter set-up failed")

    monkeypatch.setattr(telemetry, "tracer", broken)
    response = governed_call(client, "bot", "search", args={"q": "x", "run_id": "run-broken"})
    assert response.status_code == 200 and Decision.objects.count() == 1
    assert "OpenTelemetry" in caplog.text and "exporter set-up failed" in caplog.text


def test_off_without_the_endpoint(settings, transactional_db, key_a):
    telemetry.reset()
    settings.OTEL_EXPORTER_OTLP_ENDPOINT = ""
    threads = len(export_threads())
    response = governed_call(key_a.client(), "bot", "search", args={"q": "x", "run_id": "run-off"})
    assert response.status_code == 200
    assert telemetry.tracer() is None and telemetry._state is None
    assert len(export_threads()) == threads
    assert not telemetry.force_flush()

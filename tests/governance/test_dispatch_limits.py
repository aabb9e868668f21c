"""A tool cannot hold a web process past its timeout or make it read an unbounded answer: the answer is read as it
arrives, at most 256 KB of it, and only until the attempt's timeout."""

from __future__ import annotations

import time

import pytest

from governance.models import Decision
from tests.support.tool_endpoint import ToolEndpoint

TOOL = "slow.tool"


@pytest.fixture
def endpoint(settings, key_a):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    body = {
        "name": TOOL,
        "url": tool.base + "/t",
        "timeout_ms": 1000,
        "max_retries": 0,
        "auth": {"type": "hmac_sha256", "secret": "slow-secret-123"},
    }
    assert key_a.client().post("/v1/tools", body, content_type="application/json").status_code == 200
    yield tool
    tool.stop()


def call(key_a):
    started = time.monotonic()
    body = (
        key_a.client()
        .post(
            "/v1/ai/run",
            {"agent_id": "bot", "tool": TOOL, "args": {"n": str(time.time_ns())}},
            content_type="application/json",
        )
        .json()
    )
    return body, time.monotonic() - started


def test_an_answer_trickled_a_byte_at_a_time_is_cut_off_at_the_timeout(key_a, endpoint):
    def trickle():
        yield b'{"a": "'
        for _ in range(100):  # 10 s in all, each byte well inside any read timeout
            time.sleep(0.1)
            yield b"x"
        yield b'"}'

    endpoint.answer = trickle
    body, took = call(key_a)
    assert (body["decision"], body["policy_reason"]) == ("failed", "tool_error")
    assert took < 3.0  # the 1 s timeout plus at most one read; the whole answer would take 10 s
    assert Decision.objects.get(tool=TOOL).http_status is None


def test_an_answer_over_256_kb_is_refused_without_reading_it_all(key_a, endpoint):
    sent = []

    def huge():
        yield b'{"a": "'
        for _ in range(64 * 10):  # 10 MB in 16 KB chunks
            sent.append(1)
            yield b"x" * 16384
        yield b'"}'

    endpoint.answer = huge
    body, _ = call(key_a)
    assert (body["decision"], body["policy_reason"]) == ("failed", "tool_error")
    assert Decision.objects.get(tool=TOOL).http_status == 200
    time.sleep(0.2)
    assert len(sent) < 64 * 10  # the endpoint could not write it all: the server stopped reading


def test_an_answer_just_under_256_kb_is_the_result(key_a, endpoint):
    endpoint.answer = lambda: iter([b'{"a": "', b"x" * (256 * 1024 - 10), b'"}'])
    body, _ = call(key_a)
    assert body["decision"] == "executed" and len(body["result"]["a"]) == 256 * 1024 - 10


def test_an_answer_that_does_not_decode_is_a_tool_error(key_a, endpoint):
    endpoint.headers = {"Content-Encoding": "gzip"}
    endpoint.answer = lambda: iter([b"this is not gzip"])
    body, _ = call(key_a)
    assert (body["decision"], body["policy_reason"]) == ("failed", "tool_error")

"""docs/mcp.md as a reader runs it: its Python client example and its registration curl, verbatim but for the
values a reader substitutes (the server's address, the API key, the upstream's URL), against a live server and a
real upstream MCP server."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from governance.models import Decision, McpServer
from tests.support.mcp_upstream import McpUpstream
from tests.support.servers import ROOT

pytestmark = pytest.mark.slow
DOC = (ROOT / "docs" / "mcp.md").read_text()
DOC_SERVER, DOC_KEY = "http://127.0.0.1:8000", "once_live_…"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)


@pytest.fixture
def upstream(tmp_path):
    with McpUpstream(tmp_path / "journal.jsonl") as server:
        yield server


def test_the_curl_registers_an_upstream_and_the_python_example_calls_it(live_server, key_a, upstream, settings):
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True  # the upstream is on loopback
    (curl,) = [block for block in blocks("bash") if "/v1/mcp/servers" in block]
    # The reader's server, key and upstream; the example's server name is kept, the Python example's tool renamed.
    command = curl.replace(DOC_SERVER, live_server.url).replace("https://mcp.example.com/mcp", upstream.url)
    command = command.replace("ghp_…", "ghp_the_readers_token").strip()
    done = subprocess.run(
        ["bash", "-c", command + " -s -o /dev/stderr -w '%{http_code}'"],
        env={"PATH": "/usr/bin:/bin", "ONCEONLY_API_KEY": key_a.raw},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout == "201", done.stderr
    server = McpServer.objects.get()
    assert server.auth_header_encrypted and "ghp_the_readers_token" not in done.stderr

    (example,) = [block for block in blocks("python") if "call_tool" in block]
    script = example.replace(DOC_SERVER, live_server.url).replace(DOC_KEY, key_a.raw)
    script = script.replace('"pay.charge"', f'"{server.name}.charge"')
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "False" in run.stdout and "executed within budget" in run.stdout  # is_error, the decision's explanation
    assert [line["arguments"] for line in upstream.journal_lines()] == [{"amount": 700, "customer": "cus_1"}]
    decision = Decision.objects.get()
    assert (decision.tool, decision.run_id) == (f"{server.name}.charge", "order-1234")

"""The governance API requests many tests make with a key's test client (``Key.client()`` of tests/conftest.py):
register a tool, publish a policy, make a governed call."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from django.test import Client

JSON = "application/json"
TOOL_SECRET = "tool-secret-0123456789"


def register_tool(client: Client, name: str, url: str, **fields: Any) -> HttpResponse:
    """``POST /v1/tools``: the tool ``name`` at ``url``, signed with HMAC-SHA256 (TOOL_SECRET); ``fields`` add to the
    body (``price_usd``, ``max_retries``, …). The answer is returned as it is: registrations may be refused."""
    body = {"name": name, "url": url, "auth": {"type": "hmac_sha256", "secret": TOOL_SECRET}, **fields}
    return client.post("/v1/tools", body, content_type=JSON)


def set_policy(client: Client, agent: str, **fields: Any) -> dict[str, Any]:
    """``POST /v1/policies/<agent>``: ``fields`` merged into the agent's policy (a new version). It must be accepted;
    the answer's body is returned."""
    response = client.post(f"/v1/policies/{agent}", fields, content_type=JSON)
    assert response.status_code == 200, response.content
    return response.json()


def governed_call(client: Client, agent: str, tool: str, **body: Any) -> HttpResponse:
    """``POST /v1/ai/run`` of ``tool`` as ``agent``; ``body`` holds the rest (``args``, ``spend_usd``). The answer is
    returned as it is."""
    return client.post("/v1/ai/run", {"agent_id": agent, "tool": tool, **body}, content_type=JSON)

"""governance/api.py binds each top-level name once: a second definition silently changes what the name means for
the code below it (``MetricsOutput`` was both the agent metrics' and the daily metrics' serializer)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import governance.api


def test_no_top_level_name_is_defined_twice():
    tree = ast.parse(Path(governance.api.__file__).read_text())
    names = Counter()
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef):
            names[node.name] += 1
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
    assert [name for name, count in names.items() if count > 1] == []


def test_each_metrics_endpoint_documents_its_own_answer(client):
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    def answer(path):
        return schema["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]

    assert answer("/v1/agents/{agent_id}/metrics") == "#/components/schemas/AgentMetricsOutput"
    assert answer("/v1/metrics") == "#/components/schemas/MetricsOutput"
    assert set(schema["components"]["schemas"]["AgentMetricsOutput"]["properties"]) == {
        "agent_id",
        "period",
        "total_actions",
        "blocked_actions",
        "total_spend_usd",
        "top_tools",
    }
    assert set(schema["components"]["schemas"]["MetricsOutput"]["properties"]) == {
        "from_day",
        "to_day",
        "days",
        "totals",
    }

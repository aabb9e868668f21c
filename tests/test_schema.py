"""The OpenAPI schema and the interactive docs, served without any CDN."""

import re

import yaml
from django.test import Client


def test_schema_describes_the_v1_endpoints(db):
    response = Client().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert "/v1/me" in schema["paths"]
    assert "post" in schema["paths"]["/v1/me/notifications"]
    assert schema["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_docs_pages_load_only_local_assets(db):
    for url in ("/api/docs/",):
        response = Client().get(url)
        assert response.status_code == 200
        html = response.content.decode()
        external = [src for src in re.findall(r'(?:src|href)="([^"]+)"', html) if src.startswith(("http", "//"))]
        assert external == [], external
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
            assert Client().get(asset).status_code == 200, asset


def test_request_bodies_are_closed_and_page_parameters_bounded(db):
    """What the validators refuse is in the schema: unknown fields (every body but an event's, which keeps them),
    limit below 1 or offset below 0, a blank or control-character key (docs/api.md §"Base URL and the SDK")."""
    schema = yaml.safe_load(Client().get("/api/schema/").content)
    components = schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
                body = components[ref]
                closed = (
                    all(components[b["$ref"].split("/")[-1]]["additionalProperties"] is False for b in body["oneOf"])
                    if "oneOf" in body
                    else body["additionalProperties"] is False
                )
                assert closed is (path != "/v1/events"), (method, path)
            for parameter in operation.get("parameters", []):
                if parameter["name"] in ("limit", "offset"):
                    assert parameter["schema"]["minimum"] == (1 if parameter["name"] == "limit" else 0), path
                    assert "maximum" in parameter["schema"], path
    key = components["CheckLockInputRequest"]["properties"]["key"]
    assert (key["minLength"], key["maxLength"]) == (1, 256)
    assert re.fullmatch(key["pattern"], "order:42") and not re.search(key["pattern"], " ")
    assert not re.search(key["pattern"], "a\x00b")


# Every code point of the Basic Multilingual Plane but the surrogates (the patterns leave out the characters beyond
# it that identifiers.py refuses: onceonly_site/openapi.py's _members says why).
CODE_POINTS = [chr(c) for c in [*range(0xD800), *range(0xE000, 0x10000)]]


def test_the_schemas_patterns_refuse_what_the_validators_refuse():
    """Keys and identifiers: the pattern and the validator agree on each character (placed inside a name). Tool
    names: what the pattern refuses the validator refuses too (a negative case is never accepted); the validator's
    other rules (one script, no unassigned code point) are the field's description."""
    from onceonly_site.identifiers import control_problem, identifier_problem, tool_name_problem
    from onceonly_site.openapi import IDENTIFIER_PATTERN, KEY_PATTERN, POLICY_TOOL_PATTERN, TOOL_NAME_PATTERN

    key, identifier = re.compile(KEY_PATTERN), re.compile(IDENTIFIER_PATTERN)
    tool, policy_tool = re.compile(TOOL_NAME_PATTERN), re.compile(POLICY_TOOL_PATTERN)
    for char in CODE_POINTS:
        name = f"a{char}b"
        assert (key.search(name) is None) == (control_problem(name) is not None), hex(ord(char))
        assert (identifier.search(name) is None) == (identifier_problem(name) is not None), hex(ord(char))
        if tool.search(name) is None:
            assert tool_name_problem(name) is not None, hex(ord(char))
        if policy_tool.search(name) is None:
            assert identifier_problem(name) or tool_name_problem(name.strip()), hex(ord(char))
    for blank in ("", " ", "\u3000 \xa0"):
        assert key.search(blank) is None and identifier.search(blank) is None

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

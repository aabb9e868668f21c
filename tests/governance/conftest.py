"""Fixtures of the governance tests: a local tool endpoint to dispatch to. (Each module names its own ``client``:
pytest-django's is Django's test client, which some modules use as it is.)"""

from __future__ import annotations

import pytest

from tests.support.tool_endpoint import ToolEndpoint


@pytest.fixture
def endpoint(settings):
    """A tool receiver on 127.0.0.1 (private tool URLs allowed for the test), stopped afterwards."""
    settings.ONCEONLY_ALLOW_PRIVATE_TOOL_URLS = True
    tool = ToolEndpoint()
    yield tool
    tool.stop()

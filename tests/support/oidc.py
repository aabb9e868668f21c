"""A real OpenID Connect provider process for the SSO tests: panva's oidc-provider (npm), started from
tests/support/oidc_provider/server.mjs on a free port. Its packages are installed by
`npm ci --prefix tests/support/oidc_provider` (.ci/run does it when node_modules is missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.servers import free_port, wait_http

HERE = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "onceonly-test"
CLIENT_SECRET = "onceonly-test-client-secret-0123456789abcdef"


def require_node() -> str:
    """The node binary, or a skip (a failure under CI=true) naming what is missing."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "node is not installed (apt-get install nodejs npm)"
    elif not (HERE / "node_modules" / "oidc-provider").is_dir():
        problem = "the test OIDC provider is not installed: npm ci --prefix tests/support/oidc_provider"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    assert node is not None
    return node


class OidcProvider:
    """The provider at ``url`` (its issuer), with one confidential client that may redirect to ``app_url``."""

    def __init__(self, app_url: str, users: dict[str, dict[str, object]]) -> None:
        node = require_node()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        client = {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [f"{app_url}/oidc/callback/"],
            "post_logout_redirect_uris": [f"{app_url}/login/"],
        }
        env = {
            **os.environ,
            "OIDC_PORT": str(self.port),
            "OIDC_CLIENT": json.dumps(client),
            "OIDC_USERS": json.dumps(users),
        }
        # A file, not a pipe: a chatty provider never blocks on it. Closed by stop().
        self.output = tempfile.TemporaryFile()  # noqa: SIM115
        self.process = subprocess.Popen(
            [node, "server.mjs"], cwd=HERE, env=env, stdout=self.output, stderr=subprocess.STDOUT
        )
        try:
            wait_http(f"{self.url}/.well-known/openid-configuration", process=self.process)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()

    def log(self) -> str:
        """What the provider printed (its warnings, errors), until stop(): for a failing test's message."""
        self.output.seek(0)
        return self.output.read().decode(errors="replace")

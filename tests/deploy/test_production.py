"""The production deployment, run exactly as docs/operations.md ("Deploying") tells an operator to run it.

From a copy of the checkout (what git would commit: tracked and untracked-but-not-ignored files; no `.venv`, no
`var/`), this test runs the ```bash blocks of the numbered steps of that section, line by line, with only the
documented substitutions (the environment file's path, and the values the operator is told to edit in it):
`deploy/install.sh` into a fresh virtualenv, `deploy/migrate.sh` against a PostgreSQL database and a Redis
database of its own, `deploy/web.sh`, `deploy/worker.sh` and `deploy/beat.sh` as background processes, and the
`deploy/manage.sh` commands that create the first operator and API key. nginx then runs
`deploy/nginx/onceonly.conf` in front of gunicorn (ports and certificate paths replaced), with `ONCEONLY_HTTPS=1`
as the example environment sets it. Headless Chromium signs in through nginx and loads every dashboard page the
URL resolver knows (following links from the overview, after a few API calls gave the pages something to show)
with the real collected static files: no response ≥ 500, no console error, no failed request, no asset ≥ 400,
the stylesheet applied. The worker must run a keyed run and beat must schedule the worker heartbeat.

It runs in its own CI step (`.ci/run`, after the suite; `make deploy-test` locally) because it builds a virtualenv
and a whole stack: set ONCEONLY_DEPLOY_TEST=1. It needs PostgreSQL (DEPLOY_TEST_POSTGRES, default
postgresql://postgres@127.0.0.1:5432), Redis (DEPLOY_TEST_REDIS, default redis://127.0.0.1:6379; database
DEPLOY_TEST_REDIS_DB, default 6, is flushed), nginx, openssl and /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import psycopg
import pytest
import redis

from tests.support.servers import ROOT, free_port

DOC = ROOT / "docs" / "operations.md"
ENV_FILE_IN_DOCS = "/etc/onceonly/onceonly.env"
LONG_RUNNING = {"deploy/web.sh", "deploy/worker.sh", "deploy/beat.sh"}
PG = os.environ.get("DEPLOY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
REDIS = os.environ.get("DEPLOY_TEST_REDIS", "redis://127.0.0.1:6379")
REDIS_DB = int(os.environ.get("DEPLOY_TEST_REDIS_DB", "6"))
CHROMIUM = "/usr/bin/chromium"

# Dashboard routes a signed-in owner does not open with GET, each with the reason. Every other named route outside
# /v1/, /admin/ and the API docs must be reached by the crawl: a new page is covered without anyone listing it.
NOT_CRAWLED = {
    "logout": "POST only (signs out)",
    "login": "loaded before signing in",
    "oidc-authenticate": "single sign-on, not configured here (404; tests/ui/test_browser_sso.py)",
    "oidc-callback": "the SSO provider's redirect back, not configured here (404; tests/ui/test_browser_sso.py)",
    "account-switch": "POST only",
    "api-key-revoke": "POST only",
    "member-change": "POST only",
    "agent-kill-switch": "POST only",
    "agent-release": "POST only",
    "run-resume": "POST only (a paused run's Raise & resume form)",
    "policy-rollback": "POST only",
    "policy-template": "POST only",
    "tool-toggle": "POST only",
    "tool-delete": "POST only",
    "tool-test": "POST only",
    "lock-release": "POST only",
    "lease-reset": "POST only",
    "billing-checkout": "POST only; Stripe is not configured here (404)",
    "billing-portal": "POST only; Stripe is not configured here (404)",
    "billing-done": "Stripe's return page; Stripe is not configured here (404)",
    "stripe-webhook": "Stripe's webhook (POST; 404 without Stripe)",
    "provider-events": "superusers only, with Stripe configured",
    "provider-event-retry": "POST only, superusers",
    "healthz": "checked directly, not a page",
    "favicon": "a redirect to the icon, asked for by the browser itself",
    "checkpoint-keys": "the public checkpoint-signing keys (JSON), fetched directly by auditors",
    "prometheus": "off without ONCEONLY_METRICS_TOKEN",
    "schema": "the OpenAPI document (JSON), fetched directly",
    "approval-decide": "POST only",
    "approval-confirm": "a one-click link from a notification (signed, per approval)",
    "channel-toggle": "POST only",
    "channel-test": "POST only",
    "policy-shadow": "POST only",
    "policy-impact-job": "the fragment the impact page polls while a preview runs",
    "verify-job": "the fragment the verification page polls while a check runs",
    "policy-code-export": "a download, not a page",
    "policy-code-upload": "POST only",
    "policy-code-preview": "reached only by an upload's redirect",
    "policy-code-apply": "POST only",
    "channel-edit": "needs a notification channel, made on the dashboard only (crawled by test_browser_every_page)",
    "channel-delete": "needs a notification channel, made on the dashboard only (crawled by test_browser_every_page)",
    "mcp": "the MCP gateway (JSON-RPC over POST), not a page: tests/governance/test_mcp_acceptance.py",
    "mcp-root": "the MCP gateway (JSON-RPC over POST), not a page: tests/governance/test_mcp_acceptance.py",
    "mcp-agent": "the MCP gateway (JSON-RPC over POST), not a page: tests/governance/test_mcp_acceptance.py",
    "mcp-server": "needs a registered MCP server, which needs a live upstream (tests/ui/test_mcp_servers_pages.py)",
    "mcp-server-discover": "POST only",
    "mcp-server-delete": "needs a registered MCP server (tests/ui/test_mcp_servers_pages.py)",
    "decisions-export": "a download (the Export buttons, a GET form), not a page: tests/ui/test_export_buttons.py",
    "audit-export": "a download (the Export buttons, a GET form), not a page: tests/ui/test_export_buttons.py",
    "runs-export": "a download (the Export buttons, a GET form), not a page: tests/ui/test_export_buttons.py",
    "run-timeline-export": "a download (the Export buttons, a GET form), not a page: tests/ui/test_export_buttons.py",
    "account-legal-hold": "POST only",
    "agent-legal-hold": "POST only",
}

ASKED_FOR = os.environ.get("ONCEONLY_DEPLOY_TEST") == "1"


def bash_lines(path: Path, heading: str, ends_at: str) -> list[str]:
    """The command lines (comments and blank lines left out) of the ```bash blocks between ``heading`` and the
    first ``ends_at`` after it, in order."""
    text = path.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    section = section[: section.index(ends_at, 1)]
    lines = (line.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def documented_commands() -> list[str]:
    """docs/operations.md "## Deploying", up to its first subsection: the procedure this test runs."""
    return bash_lines(DOC, "## Deploying", "\n### ")


def readme_commands() -> list[str]:
    """README.md's "## Production": a shorter copy of the same procedure."""
    return bash_lines(ROOT / "README.md", "## Production", "\n## ")


def test_the_readme_shows_the_same_commands_as_the_operations_guide():
    """README's Production block is run by the test below only through docs/operations.md: it must not drift."""
    documented = documented_commands()
    assert readme_commands(), "README.md's Production section has no ```bash block"
    assert [line for line in readme_commands() if line not in documented] == []


def checkout_copy(target: Path) -> None:
    """The files a clean clone of this working tree would have (tracked + untracked, ignored ones excluded)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = ROOT / raw.decode()
        if not source.is_file():  # deleted in the working tree
            continue
        destination = target / raw.decode()
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)


def edited_env_file(example: Path, values: dict[str, str]) -> str:
    """deploy/onceonly.env.example with the operator's edits: each listed key set (uncommented if needed)."""
    out, seen = [], set()
    for line in example.read_text().splitlines():
        key = line.lstrip("# ").split("=", 1)[0]
        if "=" in line and key in values:
            out.append(f"{key}={values[key]}")
            seen.add(key)
        else:
            out.append(line)
    out += [f"{key}={value}" for key, value in values.items() if key not in seen]
    return "\n".join(out) + "\n"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def nginx_config(source: str, folder: Path, http_port: int, https_port: int, upstream: int, cert: Path, key: Path):
    """deploy/nginx/onceonly.conf with this machine's ports and certificate, inside a minimal nginx.conf."""
    site = source
    replacements = [
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{upstream};"),
        ("listen 80;", f"listen 127.0.0.1:{http_port};"),
        ("listen 443 ssl http2;", f"listen 127.0.0.1:{https_port} ssl http2;"),
        ("/etc/letsencrypt/live/onceonly.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/onceonly.example.com/privkey.pem", str(key)),
        ("onceonly.example.com", "127.0.0.1"),
    ]
    for old, new in replacements:
        assert old in site, f"deploy/nginx/onceonly.conf no longer has {old!r}: update the test's substitutions"
        site = site.replace(old, new)
    site = "\n".join(line for line in site.splitlines() if "listen [::]" not in line)  # no IPv6 on test hosts
    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / name).mkdir(exist_ok=True)
    temp_paths = "\n".join(
        f"    {name}_temp_path {folder / name};" for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log {folder / "access.log"};
{temp_paths}
{site}
}}
"""


class Stack:
    """The processes the documented commands start, stopped in reverse order at the end."""

    def __init__(self, cwd: Path, env: dict[str, str], logs: Path) -> None:
        self.cwd, self.env, self.logs = cwd, env, logs
        self.processes: list[tuple[str, subprocess.Popen]] = []
        self.outputs: dict[str, str] = {}

    def run(self, line: str) -> None:
        first = shlex.split(line, comments=True)
        name = first[0] if first else ""
        if name == "export":
            key, value = first[1].split("=", 1)
            self.env[key] = value
            return
        if name in LONG_RUNNING:
            log = open(self.logs / f"{Path(name).stem}.log", "wb")  # noqa: SIM115 (closed with the process)
            process = subprocess.Popen(
                ["bash", "-c", line],
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.processes.append((name, process))
            return
        done = subprocess.run(
            ["bash", "-c", line], cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=600
        )
        (self.logs / "commands.log").open("a").write(f"$ {line}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"`{line}` failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        self.outputs[line] = done.stdout

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            argv, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.processes.append((name, process))
        return process

    def alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                log = (self.logs / f"{Path(name).stem}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} exited with {process.returncode}:\n{log}")

    def stop(self) -> None:
        for _, process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _, process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


DATABASE_PREFIX = "onceonly_deploy_"  # + the pid of the pytest process: databases of this test only


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_leftover_databases(admin: psycopg.Connection) -> list[str]:
    """The databases of earlier runs that never got to drop theirs (killed, crashed): every database named by this
    test whose process is gone. One of a run still going on on this machine is left alone."""
    names = [
        row[0]
        for row in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", [DATABASE_PREFIX.replace("_", r"\_") + "%"]
        )
    ]
    dropped = []
    for name in names:
        pid = name.removeprefix(DATABASE_PREFIX)
        if pid.isdigit() and int(pid) != os.getpid() and running(int(pid)):
            continue
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        dropped.append(name)
    return dropped


@pytest.fixture
def services():
    """A PostgreSQL database and a Redis database of this test's own (created/flushed, dropped/flushed after)."""
    name = f"{DATABASE_PREFIX}{os.getpid()}"
    try:
        admin = psycopg.connect(f"{PG}/postgres", autocommit=True, connect_timeout=3)
        store = redis.Redis.from_url(f"{REDIS}/{REDIS_DB}", socket_connect_timeout=3)
        store.ping()
    except (psycopg.Error, redis.RedisError) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but PostgreSQL/Redis are unreachable: {exc}")
        pytest.skip(f"needs PostgreSQL and Redis: {exc}")
    drop_leftover_databases(admin)  # this run's own name too, should a pid be reused
    admin.execute(f'CREATE DATABASE "{name}"')
    store.flushdb()
    yield f"{PG}/{name}", f"{REDIS}/{REDIS_DB}"
    store.flushdb()
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not ASKED_FOR, reason="builds a virtualenv and a whole stack: ONCEONLY_DEPLOY_TEST=1 (.ci/run)")
def test_the_documented_production_deployment_serves_every_page(tmp_path, services):
    for tool in ("nginx", "openssl"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is missing: `apt-get install -y {tool}` (.ci/run installs it)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run installs it)")
    database_url, redis_url = services
    checkout = tmp_path / "onceonly"
    checkout_copy(checkout)
    logs = tmp_path / "logs"
    logs.mkdir()

    web_port, http_port, https_port = free_port(), free_port(), free_port()
    origin = f"https://127.0.0.1:{https_port}"
    env_file = tmp_path / "onceonly.env"
    # Step 3: the example file, with the values an operator edits.
    env_file.write_text(
        edited_env_file(
            checkout / "deploy" / "onceonly.env.example",
            {
                "SECRET_KEY": secrets.token_urlsafe(50),
                "DATABASE_URL": database_url,
                "REDIS_URL": redis_url,
                "ALLOWED_HOSTS": "127.0.0.1",
                "CSRF_TRUSTED_ORIGINS": origin,
                "ONCEONLY_FIELD_ENCRYPTION_KEY": secrets.token_urlsafe(40),
                "ONCEONLY_VAR_DIR": str(tmp_path / "var"),
            },
        )
    )
    env_file.chmod(0o600)
    # A new operator's shell: nothing of this test run's configuration.
    ours = {"DATABASE_URL", "REDIS_URL", "DEBUG", "SECRET_KEY", "VIRTUAL_ENV"}
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "ONCEONLY_", "CELERY_")) and key not in ours
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["ONCEONLY_BIND"] = f"127.0.0.1:{web_port}"  # the documented default is 8000; the test picks a free port
    stack = Stack(checkout, env, logs)

    commands = documented_commands()
    assert commands[:2] == ["deploy/install.sh", f"export ONCEONLY_ENV_FILE={ENV_FILE_IN_DOCS}"], commands
    assert {"deploy/migrate.sh", *LONG_RUNNING} <= {shlex.split(c, comments=True)[0] for c in commands}
    try:
        for line in commands:
            stack.run(line.replace(ENV_FILE_IN_DOCS, str(env_file)))
            stack.alive()
        # Step 5: the TLS proxy of deploy/nginx/onceonly.conf.
        cert, key = self_signed_certificate(tmp_path)
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        (nginx_dir / "nginx.conf").write_text(
            nginx_config(
                (checkout / "deploy/nginx/onceonly.conf").read_text(),
                nginx_dir,
                http_port,
                https_port,
                web_port,
                cert,
                key,
            )
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        stack.start("nginx", [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir), "-g", "daemon off;"])

        tls = ssl.create_default_context(cafile=str(cert))
        api_key = next(
            match.group(0) for output in stack.outputs.values() if (match := re.search(r"once_live_\S+", output))
        )
        wait_until_healthy(f"http://127.0.0.1:{web_port}/healthz", stack)
        with httpx.Client(base_url=origin, verify=tls, timeout=10) as http:
            wait_for(lambda: http.get("/healthz").status_code == 200, "nginx to answer", stack)
            redirect = httpx.get(f"http://127.0.0.1:{http_port}/login/", follow_redirects=False)
            assert redirect.status_code == 301 and redirect.headers["location"].startswith("https://")
            seed_data(http, api_key, stack)
            schema = http.get("/api/schema/")
            assert schema.status_code == 200 and b"openapi" in schema.content

        visited, problems, css = crawl_dashboard(origin, "ops@acme.example", "a long passphrase")
        (logs / "crawl.log").write_text("\n".join(visited) + "\n")
        assert problems == [], "\n".join(problems)
        assert css["body_background"] == "rgb(246, 247, 249)", css  # --bg of static/css/app.css
        assert re.search(r"/static/css/app\.[0-9a-f]{12}\.css$", css["stylesheet"]), css  # the manifest's name

        routes = resolve_routes(stack, checkout, visited)
        missing = sorted(set(routes["dashboard_names"]) - set(routes["visited_names"]) - set(NOT_CRAWLED))
        assert missing == [], f"dashboard routes no link led to (add a link, seed data, or NOT_CRAWLED): {missing}"
        assert len(routes["visited_names"]) >= 15, routes["visited_names"]

        # Beat schedules the worker heartbeat every 30 s and the worker runs it: /healthz then says when.
        wait_for(
            lambda: httpx.get(f"{origin}/healthz", verify=tls).json()["worker_last_seen_seconds"] is not None,
            "beat to schedule the worker heartbeat and a worker to run it",
            stack,
            timeout=75,
        )
        stack.alive()
    finally:
        stack.stop()
        artifacts = ROOT / "test-artifacts" / "deploy"
        shutil.rmtree(artifacts, ignore_errors=True)
        shutil.copytree(logs, artifacts)


def wait_for(predicate, what: str, stack: Stack, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stack.alive()
        try:
            if predicate():
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_until_healthy(url: str, stack: Stack) -> None:
    # Straight to gunicorn, as a load balancer's check would ask (docs/operations.md, step 5).
    headers = {"Host": "127.0.0.1", "X-Forwarded-Proto": "https"}
    wait_for(lambda: httpx.get(url, headers=headers).status_code == 200, f"{url} to answer 200", stack, timeout=90)


def seed_data(http: httpx.Client, api_key: str, stack: Stack) -> None:
    """A policy, governed calls (one in a run, one waiting for an approval), a lock, a lease and a keyed run the
    worker must execute."""
    auth = {"Authorization": f"Bearer {api_key}"}
    ok = http.post(
        "/v1/policies/deploy-agent", headers=auth, json={"max_actions_per_hour": 100, "blocked_tools": ["delete_*"]}
    )
    assert ok.status_code == 200, ok.text
    gated = http.post("/v1/policies/deploy-approver", headers=auth, json={"require_approval": ["wire.*"]})
    assert gated.status_code == 200, gated.text
    waiting = http.post(
        "/v1/ai/run", headers=auth, json={"agent_id": "deploy-approver", "tool": "wire.transfer", "args": {"n": 1}}
    )
    assert waiting.json()["policy_reason"] == "approval_required", waiting.text  # the Approvals page lists it
    for tool, args in [("send_email", {"to": "a@example.com", "run_id": "deploy-run"}), ("delete_user", {"id": 1})]:
        answer = http.post("/v1/ai/run", headers=auth, json={"agent_id": "deploy-agent", "tool": tool, "args": args})
        assert answer.status_code == 200, answer.text
    tool = {
        "name": "create_invoice",
        "url": "https://93.184.215.14/hooks/invoice",
        "auth": {"type": "hmac_sha256", "secret": "whsec-deploy-test"},
    }
    registered = http.post("/v1/tools", headers=auth, json=tool)  # a public address: no DNS lookup
    assert registered.status_code in (200, 201), registered.text
    assert (
        http.post("/v1/check-lock", headers=auth, json={"key": "deploy-lock", "ttl": 60}).json()["status"] == "locked"
    )
    assert (
        http.post("/v1/ai/lease", headers=auth, json={"key": "deploy-lease", "ttl": 60}).json()["status"] == "acquired"
    )
    action = {"tool": "send_email", "args": {"to": "b@example.com"}}
    run = {"key": "deploy-keyed-run", "ttl": 300, "metadata": {"agent_id": "deploy-agent", "actions": [action]}}
    assert http.post("/v1/ai/run", headers=auth, json=run).status_code == 200
    wait_for(
        lambda: (
            http.get("/v1/ai/status", headers=auth, params={"key": "deploy-keyed-run"}).json()["status"] == "completed"
        ),
        "the Celery worker to complete the keyed run",
        stack,
    )


def crawl_dashboard(origin: str, email: str, password: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Sign in and follow every same-origin link (and htmx ``hx-get`` fragment) from the overview (one visit per
    distinct path shape)."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    visited: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on(
            "console",
            lambda m: problems.append(f"console {m.type} on {page.url}: {m.text}") if m.type == "error" else None,
        )
        page.on("pageerror", lambda e: problems.append(f"script error on {page.url}: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))

        def on_response(response) -> None:
            if response.status >= 500 or (response.status >= 400 and "/static/" in response.url):
                problems.append(f"{response.status} for {response.url}")

        page.on("response", on_response)
        page.goto(f"{origin}/login/")
        page.fill("input[name=username]", email)
        page.fill("input[name=password]", password)
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_url(f"{origin}/")
        css = page.evaluate(
            """() => ({
                body_background: getComputedStyle(document.body).backgroundColor,
                stylesheet: new URL(document.querySelector('link[rel=stylesheet]').href).pathname,
            })"""
        )
        queue, shapes = [f"{origin}/"], set()
        while queue and len(visited) < 120:
            url = queue.pop(0)
            split = urlsplit(url)
            shape = (re.sub(r"\d+", "N", split.path), tuple(sorted(k for k in re.findall(r"([^&=]+)=", split.query))))
            if shape in shapes:
                continue
            shapes.add(shape)
            response = page.goto(url)
            page.wait_for_load_state("networkidle")
            visited.append(split.path)
            if response is None or response.status != 200:
                problems.append(f"{response.status if response else 'no response'} for page {url}")
                continue
            # Links, and the fragments the page's htmx asks for (the overview's live refresh every 15 s…).
            hrefs = page.eval_on_selector_all("a[href]", "links => links.map(a => a.getAttribute('href'))")
            hrefs += page.eval_on_selector_all("[hx-get]", "nodes => nodes.map(n => n.getAttribute('hx-get'))")
            for href in hrefs:
                target = urljoin(url, href).split("#")[0]
                path = urlsplit(target).path
                if target.startswith(origin) and not path.startswith(
                    ("/admin/", "/logout/", "/v1/", "/static/", "/api/schema/")
                ):
                    queue.append(target)
        context.close()
        browser.close()
    return visited, problems, css


def resolve_routes(stack: Stack, checkout: Path, visited: list[str]) -> dict[str, list[str]]:
    """The deployed code's own answer: which named routes the dashboard has, and which the crawl reached."""
    script = """
import json, sys
import django
django.setup()
from django.urls import resolve, Resolver404
from tests.support.routes import walk_routes

names = sorted({route.pattern.name for route in walk_routes()
                if route.pattern.name and not route.text.startswith(("v1", "admin/", "api/docs/"))})
visited = []
for path in json.load(sys.stdin):
    try:
        visited.append(resolve(path).url_name)
    except Resolver404:
        pass
print(json.dumps({"dashboard_names": names, "visited_names": sorted(set(visited))}))
"""
    done = subprocess.run(
        ["deploy/manage.sh", "shell", "-c", script],
        cwd=checkout,
        env=stack.env,
        input=json.dumps(visited),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))

"""Shared fixtures: personas (healthchecks' alice/bob style), API clients, live servers, the browser."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS
from django.test import Client

from billing import auth, counters, plan_catalogue
from billing.choices import Role
from billing.models import Account, ApiKey, Plan
from billing.services import account_get_or_create, api_key_create, operator_create
from onceonly_site.redis_client import get_redis

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
PASSWORD = "correct-horse-battery-staple"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database with the plan catalogue seeded once (``plans`` below), and no leftover: before
    it is dropped, end the PostgreSQL sessions other threads of the run left open (a thread's connection lives until
    it is garbage collected), which made DROP DATABASE fail with "is being accessed by other users" and left the test
    database behind."""
    from django.db.models.signals import post_migrate

    with django_db_blocker.unblock():
        plan_catalogue.seed(Plan)
    # A transactional test ends with a flush of every table, which then emits post_migrate (as it does to recreate
    # content types): seed the catalogue again there, committed, so the tests after it find it without re-seeding.
    post_migrate.connect(_reseed_after_flush, dispatch_uid=_RESEED_UID)
    yield
    post_migrate.disconnect(dispatch_uid=_RESEED_UID)
    with django_db_blocker.unblock():
        from django.db import connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _clean_redis():
    """Tests own their Redis database (ONCEONLY_TEST_REDIS_DB): flush it, and per-process caches, per test."""
    get_redis().flushdb()
    auth.clear_local_cache()
    counters._requests.clear()  # counts of an earlier test's (rolled back) accounts
    yield
    auth.clear_local_cache()
    # …and never let the exit-time flush write them into whatever database is configured after the test DB is gone.
    counters._requests.clear()


@pytest.fixture
def celery_eager():
    """Celery tasks run inline, in the process (and thread) that sends them: a page that queues a job shows its result
    on the redirect. Jobs that need a real worker's process use one (tests/sdk)."""
    from onceonly_site.celery import app as celery_app

    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = before


@pytest.fixture(autouse=True)
def _no_counter_flush_mid_test(settings):
    """The request counters reach the database when a request arrives ONCEONLY_COUNTER_FLUSH_SECONDS after the last
    flush: on a loaded machine that happened inside pinned query counts (one UPDATE more). Tests that look at the
    flushed counts set their own interval (0: every request)."""
    settings.ONCEONLY_COUNTER_FLUSH_SECONDS = 3600


@dataclass
class Persona:
    user: object
    account: Account
    role: str
    email: str
    password: str = PASSWORD

    def login(self, client: Client) -> Client:
        assert client.login(username=self.email, password=self.password)
        return client


@dataclass
class Key:
    raw: str
    api_key: ApiKey

    def client(self) -> Client:
        return Client(headers={"Authorization": f"Bearer {self.raw}"})


_RESEED_UID = "tests.conftest.reseed_plans_after_flush"
_CATALOGUE = {row[0]: row for row in plan_catalogue.PLANS}


def _seed_catalogue() -> None:
    """``plan_catalogue.seed``, as one INSERT when the table is empty (as a flush leaves it)."""
    if Plan.objects.exists():
        plan_catalogue.seed(Plan)
    else:
        Plan.objects.bulk_create(
            Plan(**dict(zip(plan_catalogue.FIELDS, row, strict=True))) for row in plan_catalogue.PLANS
        )


def _reseed_after_flush(sender, using=DEFAULT_DB_ALIAS, **kwargs) -> None:
    if sender.label == "billing" and using == DEFAULT_DB_ALIAS:
        _seed_catalogue()


def _catalogue_intact() -> bool:
    """Are the catalogue's plans in the table with the catalogue's values? One query (an update_or_create per plan,
    ~10 ms, was most of the setup of the ~2,000 tests that use accounts)."""
    rows = Plan.objects.filter(code__in=_CATALOGUE).values_list(*plan_catalogue.FIELDS)
    return sorted(rows) == sorted(_CATALOGUE.values())


def seeded_plans() -> dict[str, Plan]:
    """The plans, the catalogue's as it lists them. Seeded once per session (django_db_setup above) and again after
    each transactional test's flush (post_migrate); anything else that emptied or changed them (a flush without
    post_migrate: serialized_rollback, available_apps) is caught here and they are seeded again, in this transaction."""
    if not _catalogue_intact():
        _seed_catalogue()
    return {plan.code: plan for plan in Plan.objects.all()}


@pytest.fixture
def plans(db) -> dict[str, Plan]:
    return seeded_plans()


@pytest.fixture
def account_a(plans) -> Account:
    return account_get_or_create(name="Acme", plan_code="agency")[0]


@pytest.fixture
def account_b(plans) -> Account:
    return account_get_or_create(name="Globex", plan_code="agency")[0]


def _persona(account: Account, role: str, email: str) -> Persona:
    user = operator_create(account=account, email=email, password=PASSWORD, role=role)
    return Persona(user=user, account=account, role=role, email=email)


@pytest.fixture
def owner_a(account_a) -> Persona:
    return _persona(account_a, Role.OWNER, "alice@acme.test")


@pytest.fixture
def admin_a(account_a) -> Persona:
    return _persona(account_a, Role.ADMIN, "adam@acme.test")


@pytest.fixture
def viewer_a(account_a) -> Persona:
    return _persona(account_a, Role.VIEWER, "victor@acme.test")


@pytest.fixture
def owner_b(account_b) -> Persona:
    return _persona(account_b, Role.OWNER, "bob@globex.test")


def make_key(account: Account, label: str = "") -> Key:
    new = api_key_create(account=account, label=label)
    return Key(raw=new.raw, api_key=new.api_key)


@pytest.fixture
def key_a(account_a) -> Key:
    return make_key(account_a, "agent A")


@pytest.fixture
def key_b(account_b) -> Key:
    return make_key(account_b, "agent B")


@pytest.fixture
def sdk(live_server, key_a):
    """The real onceonly-sdk client against a live HTTP server, as account A (agency)."""
    from onceonly import OnceOnly

    client = OnceOnly(api_key=key_a.raw, base_url=f"{live_server.url}/v1", fail_open=False)
    yield client
    client.close()


@pytest.fixture
def gunicorn_server(transactional_db):
    """A multi-process gunicorn on the test database (rows must be committed: transactional_db)."""
    from tests.support.servers import GunicornServer

    server = GunicornServer(workers=2)
    yield server
    server.stop()


# --- Browser (Playwright on Debian's Chromium; never `playwright install`) ------------------------------------
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run does this)")
    from playwright.sync_api import sync_playwright

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
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(10_000)
    # Every browser test doubles as a Content-Security-Policy check: Chromium reports each refused inline
    # script, handler or style as a console error, and any of them fails the test that loaded the page.
    refused = []
    page.on("console", lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None)
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = request.node.nodeid.replace("/", "_").replace("::", "__").replace("[", "_").replace("]", "")
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    context.close()
    assert not refused, f"the page broke its Content-Security-Policy: {refused}"


def pytest_collection_modifyitems(config, items):
    """``backend_free`` tests ignore DATABASE_URL/REDIS_URL: with ONCEONLY_SKIP_BACKEND_FREE=1 (.ci/run's PostgreSQL
    pass) they are left to the other pass, which runs them the same way."""
    if os.environ.get("ONCEONLY_SKIP_BACKEND_FREE") != "1":
        return
    skip = pytest.mark.skip(reason="backend_free: .ci/run runs it in the embedded pass")
    for item in items:
        if item.get_closest_marker("backend_free"):
            item.add_marker(skip)


def pytest_report_header(config):
    db = settings.DATABASES["default"]
    return [
        f"database: {db['ENGINE'].rsplit('.', 1)[-1]} {db.get('HOST') or db['NAME']}",
        f"redis: {settings.REDIS_URL} (embedded: {settings.EMBEDDED_REDIS})",
    ]


@pytest.fixture
def private_redis(settings, tmp_path):
    """A redis-server of the test's own, in place of the tests' Redis, so a test can kill it or fill its memory
    without touching the shared server (tests/faults/stack.py starts it)."""
    from tests.faults.stack import PrivateRedis, redis_server_bin

    if redis_server_bin() is None:
        pytest.skip("needs a redis-server binary")
    private = PrivateRedis(tmp_path)
    shared = settings.REDIS_URL
    settings.REDIS_URL = private.url
    get_redis.cache_clear()
    yield private
    private.stop()
    settings.REDIS_URL = shared
    get_redis.cache_clear()

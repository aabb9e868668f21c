"""Web hardening: security headers, cookies with production settings (the `check --deploy` run is
tests/test_settings_env.py), the failed-login lockout, and secrets kept out of logs."""

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.test import Client

from tests.conftest import PASSWORD

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_ENV = {
    "DEBUG": "0",
    "ONCEONLY_HTTPS": "1",
    "SECRET_KEY": "production-like-secret-key-" + "x" * 40 + "-0123456789",
    "ALLOWED_HOSTS": "onceonly.example.com",
    "ONCEONLY_EMBEDDED_REDIS_AUTOSTART": "0",
}


def production(*args: str) -> subprocess.CompletedProcess:
    """A fresh process with production settings (none of the test run's DJANGO_*/ONCEONLY_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "ONCEONLY_"))}
    env.update(PRODUCTION_ENV, DJANGO_SETTINGS_MODULE="onceonly_site.settings")
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", ["/", "/login/", "/v1/me", "/v1/check-lock", "/no-such-page/", "/healthz"])
def test_every_response_carries_the_security_headers(db, path):
    response = Client().get(path)
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response["Referrer-Policy"] == "same-origin"
    assert "camera=()" in response["Permissions-Policy"]


def test_no_template_carries_inline_script_handlers_or_styles():
    """What the CSP would refuse at run time, found in the source (the browser tests catch it on the page)."""
    offending = []
    for template in (ROOT / "templates").rglob("*.html"):
        text = template.read_text()
        for pattern in (r"<script(?![^>]*\bsrc=)[^>]*>", r"\son[a-z]+\s*=", r"\sstyle\s*=", r"javascript:"):
            offending += [f"{template.relative_to(ROOT)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offending == []


def test_production_cookies_are_secure_httponly_and_samesite():
    result = production(
        "-c",
        "import django; django.setup(); from django.conf import settings as s; print("
        "s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SESSION_COOKIE_HTTPONLY, s.CSRF_COOKIE_HTTPONLY, "
        "s.SESSION_COOKIE_SAMESITE, s.CSRF_COOKIE_SAMESITE, s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS > 0)",
    )
    assert result.stdout.split() == ["True", "True", "True", "True", "Lax", "Lax", "True", "True"], result.stderr


def test_cookies_as_sent(owner_a, settings):
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = True  # what ONCEONLY_HTTPS=1 sets (above)
    client = Client()
    client.get("/login/")
    csrf = client.cookies["csrftoken"]
    response = client.post(
        "/login/", {"username": owner_a.email, "password": PASSWORD, "csrfmiddlewaretoken": csrf.value}
    )
    assert response.status_code == 302
    for name in ("sessionid", "csrftoken"):
        morsel = response.cookies.get(name) or client.cookies[name]
        assert morsel["httponly"] and morsel["secure"] and morsel["samesite"] == "Lax", name


class TestLoginLockout:
    @pytest.fixture(autouse=True)
    def _small_limits(self, settings):
        settings.ONCEONLY_LOGIN_MAX_FAILURES = 3
        settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS = 2

    @staticmethod
    def attempt(email, password, address="10.0.0.1"):
        return Client(REMOTE_ADDR=address).post("/login/", {"username": email, "password": password})

    def test_locks_after_the_limit_even_for_the_right_password_then_reopens(self, owner_a):
        for _ in range(3):
            assert "correct email" in self.attempt(owner_a.email, "wrong").content.decode()
        locked = self.attempt(owner_a.email, PASSWORD)
        assert locked.status_code == 429
        assert "Too many failed sign-in attempts" in locked.content.decode()
        assert "_auth_user_id" not in locked.wsgi_request.session
        time.sleep(2.2)
        assert self.attempt(owner_a.email, PASSWORD).status_code == 302

    def test_unknown_and_known_emails_are_indistinguishable(self, owner_a):
        known = [self.attempt(owner_a.email, "wrong", "10.0.0.2") for _ in range(4)]
        unknown = [self.attempt("nobody@example.com", "wrong", "10.0.0.3") for _ in range(4)]
        assert [r.status_code for r in known] == [r.status_code for r in unknown] == [200, 200, 200, 429]

        def text(response):
            masks = r'name="csrfmiddlewaretoken" value="[^"]+"|"X-CSRFToken": "[^"]+"|value="[^"]*@[^"]*"'
            return re.sub(masks, "", response.content.decode())

        assert [text(r) for r in known] == [text(r) for r in unknown]

    def test_a_success_clears_the_count(self, owner_a):
        for _ in range(2):
            self.attempt(owner_a.email, "wrong")
        assert self.attempt(owner_a.email, PASSWORD).status_code == 302
        for _ in range(2):
            self.attempt(owner_a.email, "wrong")
        assert self.attempt(owner_a.email, PASSWORD).status_code == 302

    def test_the_admin_login_locks_too(self, django_user_model):
        django_user_model.objects.create_superuser("root@example.com", "root@example.com", PASSWORD)
        for _ in range(3):
            Client(REMOTE_ADDR="10.0.0.7").post("/admin/login/", {"username": "root@example.com", "password": "x"})
        locked = Client(REMOTE_ADDR="10.0.0.7").post(
            "/admin/login/", {"username": "root@example.com", "password": PASSWORD}
        )
        assert "Too many failed sign-in attempts" in locked.content.decode()
        assert "_auth_user_id" not in locked.wsgi_request.session

    def test_one_address_failing_across_many_emails_is_locked(self, db, settings):
        settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS = 120  # 31 sign-ins must fit in the window on a loaded machine too
        for n in range(30):  # 10 × the per-email limit, spread so no single email reaches its own limit
            self.attempt(f"user{n % 15}@example.com", "wrong", "10.9.9.9")
        assert self.attempt("fresh@example.com", "x", "10.9.9.9").status_code == 429
        assert self.attempt("fresh@example.com", "x", "10.9.9.8").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_secrets_never_reach_the_logs(caplog, key_a, owner_a):
    """API keys, tool secrets, passwords and Authorization headers stay out of every log line, on success and on
    the error paths that log the most (a refused key, a failing dispatch, a failed login)."""
    secret = "tool-secret-do-not-log-0123456789"
    caplog.set_level(logging.DEBUG)
    client = key_a.client()
    client.post(
        "/v1/tools",
        {
            "name": "charge",
            "url": "https://tools.example.invalid/charge",
            "auth": {"type": "hmac_sha256", "secret": secret},
            "max_retries": 0,
            "timeout_ms": 500,
        },
        content_type="application/json",
    )
    failed = client.post(
        "/v1/ai/run", {"agent_id": "bot", "tool": "charge", "args": {"card": "4242"}}, content_type="application/json"
    )
    assert failed.json()["decision"] == "failed"
    Client(headers={"Authorization": "Bearer once_live_not-a-real-key-abcdef"}).get("/v1/me")
    Client(headers={"Authorization": f"Bearer {key_a.raw}x"}).get("/v1/me")
    Client().post("/login/", {"username": owner_a.email, "password": "hunter2-wrong-password"})
    assert caplog.records, "nothing was logged: the test would prove nothing"
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for value in (key_a.raw, key_a.raw[8:], secret, "once_live_not-a-real-key", "hunter2-wrong-password", PASSWORD):
        assert value not in logged, value


def test_superusers_can_neither_add_nor_prune_the_audit_trail(owner_a, django_user_model):
    from billing.models import AuditEntry
    from billing.services import audit_record

    root = django_user_model.objects.create_superuser("root@example.com", "root@example.com", PASSWORD)
    client = Client()
    client.force_login(root)
    audit_record(account=owner_a.account, actor_label="test", action="test.action", object_type="x", object_id="1")
    entry = AuditEntry.objects.latest("pk")
    assert client.get("/admin/billing/auditentry/add/").status_code == 403
    assert client.post(f"/admin/billing/auditentry/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEntry.objects.filter(pk=entry.pk).exists()
    assert client.get(f"/admin/billing/auditentry/{entry.pk}/change/").status_code == 200  # still readable


@pytest.mark.django_db(transaction=True)
def test_concurrent_wrong_passwords_never_get_more_checks_than_the_limit(live_server, owner_a, settings):
    """The lockout's check and count are one Redis step: 30 guesses racing on a threaded server get at most the
    limit's worth of password checks (the others are refused unchecked), and then the right password is refused."""
    import threading

    import httpx

    settings.ONCEONLY_LOGIN_MAX_FAILURES = 5
    settings.ONCEONLY_LOGIN_LOCKOUT_SECONDS = 120
    barrier, statuses = threading.Barrier(30), []

    def guess() -> None:
        with httpx.Client(base_url=live_server.url) as browser:
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', browser.get("/login/").text).group(1)
            barrier.wait()
            answer = browser.post(
                "/login/", data={"username": owner_a.email, "password": "wrong", "csrfmiddlewaretoken": token}
            )
            statuses.append(answer.status_code)

    threads = [threading.Thread(target=guess) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(statuses) == 30
    assert statuses.count(200) <= 5, statuses  # 200: the form came back with "wrong password" (checked)
    assert statuses.count(429) >= 25
    assert (
        Client(REMOTE_ADDR="127.0.0.1").post("/login/", {"username": owner_a.email, "password": PASSWORD}).status_code
        == 429
    )

"""Test settings: the production settings with the tests' own Redis database and test-only conveniences.

Tests share the machine's PostgreSQL and Redis with whatever ran before: pytest-django creates its own test
database, and the tests use their own Redis database number (``ONCEONLY_TEST_REDIS_DB``, default 9), flushed
before every test. Without ``REDIS_URL`` the session starts an embedded Redis of its own instead of sharing
``var/redis.sock`` with `make run` or another test session (which would flush it or take it away at exit).
"""
# ruff: noqa: E402

import atexit
import os
import shutil

_OWN_EMBEDDED_REDIS = not os.environ.get("REDIS_URL")
if _OWN_EMBEDDED_REDIS:
    os.environ["ONCEONLY_EMBEDDED_REDIS_AUTOSTART"] = "0"
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("ONCEONLY_STATIC_FROM_FINDERS", "1")
# Job handlers the keyed-run tests use (they count their executions across processes).
os.environ.setdefault("ONCEONLY_JOB_HANDLER_MODULES", "tests.support.job_handlers")
# Playwright's sync API runs an event loop in the test thread; the ORM calls of the same test are still
# synchronous and safe there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from onceonly_site import embedded_redis
from onceonly_site.env import env_int, redis_url_with_db
from onceonly_site.settings import *  # noqa: F403
from onceonly_site.settings import DATABASES, REDIS_URL, VAR_DIR, redis_dependent_settings

_session_dir = VAR_DIR / f"test-{os.getpid()}"
_session_dir.mkdir(exist_ok=True)
atexit.register(shutil.rmtree, _session_dir, ignore_errors=True)  # runs after the Redis stop below (LIFO)

if _OWN_EMBEDDED_REDIS:
    embedded_redis.ensure_running(_session_dir)
    REDIS_URL = embedded_redis.default_url(_session_dir)

TEST_REDIS_DB = env_int("ONCEONLY_TEST_REDIS_DB", 9, minimum=0, maximum=15)
REDIS_URL = redis_url_with_db(REDIS_URL, TEST_REDIS_DB)
globals().update(redis_dependent_settings(REDIS_URL))

if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # The test database only: no commit waits for its WAL flush (every transactional test ends with a TRUNCATE of
    # every table, 0.4-0.9 s each with fsync). Nothing a test proves depends on surviving an OS crash; the fault
    # suite, which crashes PostgreSQL, runs its own server with the production settings.
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c synchronous_commit=off"

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that server processes started by the tests can open the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(_session_dir / "test.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests only

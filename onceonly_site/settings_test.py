"""Test settings: the production settings with the tests' own Redis database and test-only conveniences.

Tests share the machine's PostgreSQL and Redis with whatever ran before: pytest-django creates its own test
database, and the tests use their own Redis database number (``ONCEONLY_TEST_REDIS_DB``, default 9), flushed
before every test.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production-0123456789abcdef")
os.environ.setdefault("ONCEONLY_STATIC_FROM_FINDERS", "1")
# Playwright's sync API runs an event loop in the test thread; the ORM calls of the same test are still
# synchronous and safe there.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

from onceonly_site.env import env_int, redis_url_with_db
from onceonly_site.settings import *  # noqa: F403
from onceonly_site.settings import DATABASES, REDIS_URL, VAR_DIR, redis_dependent_settings

TEST_REDIS_DB = env_int("ONCEONLY_TEST_REDIS_DB", 9, minimum=0, maximum=15)
REDIS_URL = redis_url_with_db(REDIS_URL, TEST_REDIS_DB)
globals().update(redis_dependent_settings(REDIS_URL))

if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that server processes started by the tests can open the same test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / f"test-{os.getpid()}.sqlite3")}

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests only

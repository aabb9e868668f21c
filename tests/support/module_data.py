"""Data built once for a whole test module and shared by its cases, each still isolated — what Django's
``TestCase.setUpTestData`` does for a class, for a module of pytest functions.

``shared_per_module`` runs ``build`` inside a database transaction that stays open for the module's tests: every
test's own transaction (pytest-django's ``db``) is a savepoint inside it, rolled back after the test as usual, and
the module's transaction is rolled back at the end — nothing is committed, so nothing is left to delete, even when a
test or the build fails. What ``build`` left in Redis is saved as it was then (``DUMP``, with each key's expiry in
absolute time) and put back by ``Shared.for_test`` after the per-test flush (tests/conftest.py ``_clean_redis``);
each test gets its own deep copy of the built value.

Only for modules whose tests are all ``db`` tests (or use no database): a transactional test (``transactional_db``,
``live_server``) would run inside the module's open transaction and its flush would empty the shared rows;
``for_test`` refuses to run outside the module's transaction.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

from django.db import connection, transaction
from django.test.utils import override_settings

from billing import auth, counters
from onceonly_site.redis_client import get_redis

T = TypeVar("T")


@dataclass(frozen=True)
class RedisSnapshot:
    entries: list[tuple[bytes, int | None, bytes]]  # key, expiry (Unix ms; None: none), DUMP of the value

    @classmethod
    def take(cls) -> RedisSnapshot:
        client = get_redis()
        now_ms = int(time.time() * 1000)
        entries = []
        for key in client.scan_iter(count=1000):
            value, ttl = client.dump(key), client.pttl(key)
            if value is not None and ttl != -2:
                entries.append((key, None if ttl < 0 else now_ms + ttl, value))
        return cls(entries)

    def restore(self) -> None:
        pipe = get_redis().pipeline(transaction=False)
        now_ms = int(time.time() * 1000)
        for key, expires_ms, value in self.entries:
            if expires_ms is None:
                pipe.restore(key, 0, value, replace=True)
            elif expires_ms > now_ms:
                pipe.restore(key, expires_ms, value, replace=True, absttl=True)
        pipe.execute()


@dataclass(frozen=True)
class Shared(Generic[T]):
    value: T
    redis: RedisSnapshot
    depth: int  # the atomic blocks open on the connection inside the module's transaction: a test adds its own

    def for_test(self) -> T:
        """For a test that uses ``db``: Redis as ``build`` left it, and a copy of the value the test may change."""
        assert connection.in_atomic_block and len(connection.atomic_blocks) > self.depth, (
            "module-shared rows need the test's own transaction inside the module's (a `db` test, not a "
            "transactional one)"
        )
        self.redis.restore()
        return copy.deepcopy(self.value)


def _clear_process_state() -> None:
    get_redis().flushdb()
    auth.clear_local_cache()
    counters._requests.clear()


@contextmanager
def shared_per_module(django_db_blocker, build: Callable[[], T]) -> Iterator[Shared[T]]:
    """For a module-scoped fixture (which must also request ``django_db_setup``): ``yield from`` it."""
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
    try:
        with django_db_blocker.unblock():
            # As for every test (tests/conftest.py): a clean Redis, and no counter flush in the middle.
            _clear_process_state()
            with override_settings(ONCEONLY_COUNTER_FLUSH_SECONDS=3600):
                value = build()
            shared = Shared(value, RedisSnapshot.take(), len(connection.atomic_blocks))
            _clear_process_state()
        yield shared
    finally:
        with django_db_blocker.unblock():
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)
            _clear_process_state()

"""Counts Redis round trips made by this process (a wrapper around the real connection, not a fake)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from django.conf import settings
from redis.connection import AbstractConnection

from onceonly_site.redis_client import get_redis


def lose_redis_state() -> None:
    """What a Redis restart without persistence or a FLUSHALL does to our data. On the embedded server (ours
    alone) it is a real FLUSHALL; on the machine's shared server only the tests' own database is flushed."""
    if settings.EMBEDDED_REDIS:
        get_redis().flushall()
    else:
        get_redis().flushdb()


def replication_id() -> str:
    """The stamp the governance scripts give an agent's ready marker on this Redis: the server's replication id, read
    by governance/replication_id.lua itself (a test that sets a marker by hand sets the one the scripts accept)."""
    from governance.services import REPLICATION_ID_LUA

    script = REPLICATION_ID_LUA.read_text() + "\nreturn replication_id()\n"
    return get_redis().eval(script, 0).decode()


class RoundTrips:
    count = 0


@contextlib.contextmanager
def count_redis_round_trips() -> Iterator[RoundTrips]:
    counter = RoundTrips()
    original = AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):
        counter.count += 1
        return original(self, command, check_health)

    AbstractConnection.send_packed_command = counting
    try:
        yield counter
    finally:
        AbstractConnection.send_packed_command = original

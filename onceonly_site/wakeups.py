"""Wake-ups through Redis pub/sub: a request waits, for a bounded time, for something another process finishes,
and is woken the moment it does — no polling of the database.

- **Channels.** ``channel(scope, name)`` names what is waited for: the scope (e.g. ``a42``, an account) in clear,
  the name hashed (a key may be any text, 256 characters long). Redis pub/sub ignores database numbers, so the
  channel carries the Redis database of ``REDIS_URL``: two deployments (or test sessions) that share a server on
  different databases do not wake each other. A notification carries no data: it only says "look again", and the
  woken request reads the database itself, with its own tenant scoping. A stray wake-up (a hash collision, another
  deployment) therefore costs one read and never changes an answer. On a Redis Cluster (database 0 only) a
  PUBLISH reaches every node, so the listener's one subscription, on whichever node serves its pattern's slot,
  hears them all; when that node fails the listener subscribes again, on the node that took over.
- **Publishing.** ``notify_on_commit(channel)``, by whoever finishes the thing, inside the transaction that does
  it: the PUBLISH is sent after the commit, so a woken reader always sees the change. Best effort: with Redis
  unreachable it is logged and dropped, and the waiters answer at their bound, as they would without waking.
- **Listening.** One daemon thread per process (``Listener``, started lazily by the first waiter) holds one Redis
  connection with one pattern subscription to every channel of this database, and sets the ``threading.Event`` of
  each request waiting on the channel it hears. Waiters hold no connection of their own. When the subscription is
  (re)established — at start, and after redis-py or the thread reconnected — every registered waiter is woken:
  notifications sent while the connection was down are lost, and the re-read makes up for them.
- **The lost wake-up.** A waiter registers (``listen``) *before* it re-reads the database: a finish committed
  after that read publishes after it, and the published wake-up finds the waiter registered.
- **Bounding the cost.** ``Slots`` is a non-blocking counting semaphore: a request that finds every slot taken
  does not wait at all (it answers at once), so waiting requests never occupy more threads of a process than their
  slots.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import redis
from django.conf import settings
from django.db import transaction

from onceonly_site.redis_client import get_redis, redis_database

logger = logging.getLogger(__name__)
PREFIX = "oo:wake:"
# Until the first subscription is confirmed, a waiter waits for it this long at most (a started listener subscribes
# within a round trip); without one, it answers at once rather than wait for a wake-up that cannot come.
READY_TIMEOUT_SECONDS = 0.5
# The listener's reconnection back-off: from the first to the last value, doubling.
BACKOFF_SECONDS = (0.1, 2.0)


def _database() -> int:
    return redis_database(get_redis())


def channel(scope: str, name: str) -> str:
    """The channel of ``name`` within ``scope`` (no data rides on it; see the module docstring)."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{PREFIX}{_database()}:{scope}:{digest}"


def notify(name: str) -> None:
    """PUBLISH a wake-up on ``name`` now (best effort)."""
    try:
        get_redis().publish(name, b"")
    except redis.RedisError:
        logger.warning("could not publish a wake-up; its waiters answer at their bound", exc_info=True)


def notify_on_commit(name: str) -> None:
    """PUBLISH a wake-up on ``name`` once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(partial(notify, name), robust=True)


class Listener(threading.Thread):
    """The process's one subscriber: a pattern subscription to every wake-up channel of its Redis database."""

    def __init__(self, url: str) -> None:
        super().__init__(name="onceonly-wakeups", daemon=True)
        self.url = url
        self.pattern = f"{PREFIX}{_database()}:*"
        self.subscribed = threading.Event()  # the subscription stands (cleared while reconnecting)
        self.failing = False  # the last attempt to subscribe failed: Redis is unreachable
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[threading.Event]] = {}
        self._stop = threading.Event()

    # --- waiters ------------------------------------------------------------------------------------------------

    def add(self, name: str, event: threading.Event) -> None:
        with self._lock:
            self._waiters.setdefault(name.encode(), set()).add(event)

    def remove(self, name: str, event: threading.Event) -> None:
        key = name.encode()
        with self._lock:
            events = self._waiters.get(key)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._waiters[key]

    def waiting(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._waiters.values())

    def _wake(self, key: bytes) -> None:
        with self._lock:
            for event in self._waiters.get(key, ()):
                event.set()

    def _wake_all(self) -> None:
        with self._lock:
            for events in self._waiters.values():
                for event in events:
                    event.set()

    # --- the thread ---------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop listening (at exit: before an embedded Redis is stopped, so the thread does not mourn it)."""
        self._stop.set()

    def run(self) -> None:
        backoff = BACKOFF_SECONDS[0]
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = get_redis().pubsub(ignore_subscribe_messages=False)  # a cluster may be unreachable here
                pubsub.psubscribe(self.pattern)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    kind = message["type"]
                    if kind == "pmessage":
                        self._wake(message["channel"])
                    elif kind == "psubscribe":  # (re)subscribed: what was sent meanwhile is lost, look again
                        self.subscribed.set()
                        if self.failing:
                            logger.info("wake-up listener subscribed again")
                        backoff, self.failing = BACKOFF_SECONDS[0], False
                        self._wake_all()
            except Exception:  # Redis went away (or a bug): waiters answer at their bound until it is back
                if self._stop.is_set():
                    return
                # Once per outage, not at every retry.
                level = logging.DEBUG if self.failing else logging.WARNING
                logger.log(level, "wake-up listener lost Redis", exc_info=True)
                self.failing = True
            finally:
                self.subscribed.clear()
                try:
                    if pubsub is not None:
                        pubsub.close()
                except Exception:  # closing a broken connection
                    logger.debug("closing the wake-up subscription failed", exc_info=True)
            self._stop.wait(backoff)
            backoff = min(BACKOFF_SECONDS[1], backoff * 2)


_listener: Listener | None = None
_listener_pid = 0
_listener_lock = threading.Lock()


def listener() -> Listener:
    """The process's listener, started on first use — again in a forked child (threads do not survive a fork) and
    when ``REDIS_URL`` changed (tests switch servers)."""
    global _listener, _listener_pid
    current = _listener
    if current is not None and _listener_pid == os.getpid() and current.url == settings.REDIS_URL:
        return current
    with _listener_lock:
        current = _listener
        if current is None or _listener_pid != os.getpid() or current.url != settings.REDIS_URL:
            if current is not None and _listener_pid == os.getpid():
                current.stop()
            current = Listener(settings.REDIS_URL)
            current.start()
            atexit.register(current.stop)
            _listener, _listener_pid = current, os.getpid()
        return current


@contextmanager
def listen(name: str) -> Iterator[threading.Event | None]:
    """Register a waiter on channel ``name`` for the block: its event is set by every wake-up on the channel (and
    by every re-subscription). None when the listener has no subscription (Redis unreachable): nothing would wake
    the waiter, so it should not wait. A listener that is starting is given ``READY_TIMEOUT_SECONDS`` to subscribe;
    one that failed to is not waited for."""
    current = listener()
    event = threading.Event()
    current.add(name, event)
    try:
        ready = current.subscribed.is_set() or (not current.failing and current.subscribed.wait(READY_TIMEOUT_SECONDS))
        yield event if ready else None
    finally:
        current.remove(name, event)


class Slots:
    """A non-blocking counting semaphore whose size is read at each take (a setting, which tests override)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self.taken = 0

    def try_take(self) -> bool:
        with self._lock:
            if self.taken >= self._limit():
                return False
            self.taken += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.taken -= 1

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """``with slots.slot() as got:`` — ``got`` is False (and nothing is held) when every slot is taken."""
        got = self.try_take()
        try:
            yield got
        finally:
            if got:
                self.give()

"""One request runs Python at a time per web process; the ones waiting on something else step aside.

gthread workers (deploy/web.sh) give every request a thread, so that a call waiting on a slow tool or on a keyed run
holds a thread, not a process. But threads that all want the CPU contend for the interpreter lock: measured on the
2-core benchmark machine, 16 threads per process served the CPU-bound scenarios at 0.5–0.7× of sync workers (each
database or Redis reply waits for the lock behind a thread that is computing, and the switching costs CPU of its
own). So a request holds the process's **runner** slot while it runs — ``RunnerMiddleware``, first in MIDDLEWARE —
and gives it up only where it waits on something outside the process for long: the tool's answer during signed
dispatch (``governance.dispatch``) and the wake-up of a keyed run (``idempotency.waiting``), both inside
``stepped_aside()``. The CPU work of a process is then done one request after another, as with a sync worker, while
any number of waiting requests cost a thread each and nothing else.

Rules that keep it deadlock-free: a request steps aside only outside any database transaction (a lock it held
would wait for a thread that waits for the runner), and code that does not hold the runner (Celery workers, a
thread of its own) passes through ``stepped_aside()`` unchanged. ``ONCEONLY_WEB_RUNNERS_PER_PROCESS`` (default 1)
is how many requests of a process may run at once.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse

P = ParamSpec("P")
R = TypeVar("R")

_lock = threading.Lock()
_slots: threading.Semaphore | None = None
_size = 0
_held = threading.local()


def _semaphore() -> threading.Semaphore:
    global _slots, _size
    size = settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS
    with _lock:
        if _slots is None or _size != size:
            _slots, _size = threading.Semaphore(size), size
        return _slots


def holding() -> bool:
    return getattr(_held, "semaphore", None) is not None


@contextmanager
def running() -> Iterator[None]:
    """Hold a runner slot of this process for the block (a no-op when ONCEONLY_WEB_RUNNERS_PER_PROCESS is 0)."""
    if not settings.ONCEONLY_WEB_RUNNERS_PER_PROCESS or holding():
        yield
        return
    semaphore = _semaphore()
    semaphore.acquire()
    _held.semaphore = semaphore
    try:
        yield
    finally:
        _held.semaphore = None
        semaphore.release()


@contextmanager
def stepped_aside() -> Iterator[None]:
    """Give the runner slot to another request while this one waits (outside a transaction only), and take it back
    after; unchanged for a thread that does not hold it."""
    semaphore = getattr(_held, "semaphore", None)
    if semaphore is None or connection.in_atomic_block:
        yield
        return
    _held.semaphore = None
    semaphore.release()
    try:
        yield
    finally:
        semaphore.acquire()
        _held.semaphore = semaphore


def steps_aside(function: Callable[P, R]) -> Callable[P, R]:
    """``function`` run inside ``stepped_aside()``."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with stepped_aside():
            return function(*args, **kwargs)

    return wrapper


class RunnerMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with running():
            return self.get_response(request)

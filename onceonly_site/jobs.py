"""Background jobs an operator waits for on a page: a Celery task does the work while the page polls its progress.

A job's state is a Redis hash kept for ``ttl`` seconds (an hour) under ``oo:{a<account>}:<kind>:<job id>``: its
``state`` (queued, running, done, failed), ``processed`` of ``total``, the result (JSON) or the error, and the
fields its kind needs (strings). At most ``max_running`` jobs of a kind run at once per account (a sorted set of
job ids by start time; an entry older than ``stale_ms`` is a job whose worker died, and no longer counts). Nothing
is written to the database, so a job queued in a transaction waits for no commit. Used by the impact preview
(governance/replay.py) and the verification page (governance/verify_jobs.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.typing import EncodableT, FieldT

from onceonly_site.redis_client import get_redis, hash_of

logger = logging.getLogger(__name__)

# The hash fields every job has; the others are its kind's (``Job.fields``).
_OWN = ("state", "processed", "total", "created", "result", "error")


class JobBusy(Exception):
    """``max_running`` jobs of this kind are running for the account already."""


class JobUnavailable(Exception):
    """The task could not be queued (the broker is unreachable): nothing runs, the job is marked failed."""


class Progress:
    """What a page shows of a job's progress, from its ``state``, ``processed`` and ``total``."""

    __slots__ = ()
    state: str
    processed: int
    total: int

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    @property
    def percent(self) -> int:
        return 100 if self.state == "done" else int(100 * self.processed / self.total) if self.total else 0


@dataclass(frozen=True, slots=True)
class Job(Progress):
    """A job as its page shows it."""

    job_id: str
    state: str
    processed: int
    total: int
    created: float  # epoch seconds
    result: dict[str, Any] | None
    error: str
    fields: dict[str, str] = field(default_factory=dict)


class Jobs:
    """The jobs of one kind (``replay``, ``verify``): start (the service), get (the selector), and what the task
    calls as it works (``take``, ``progress``, ``done``, ``fail``)."""

    def __init__(self, kind: str, *, max_running: int, stale_ms: int = 15 * 60_000, ttl: int = 3600) -> None:
        self.kind, self.max_running, self.stale_ms, self.ttl = kind, max_running, stale_ms, ttl

    def key(self, account_id: int, job_id: str) -> str:
        return f"oo:{{a{account_id}}}:{self.kind}:{job_id}"

    def _running_key(self, account_id: int) -> str:
        return f"oo:{{a{account_id}}}:{self.kind}:running"

    def start(self, account_id: int, fields: Mapping[FieldT, EncodableT], send: Callable[[str], Any]) -> str:
        """Queue a job with its kind's ``fields``; ``send(job_id)`` queues its task. Returns the job id. Raises
        JobBusy (``max_running`` are running) and JobUnavailable (``send`` failed: the job is marked failed)."""
        job_id = uuid.uuid4().hex
        now_ms = int(time.time() * 1000)
        running = self._running_key(account_id)
        client = get_redis()
        pipe = client.pipeline(transaction=True)
        pipe.zremrangebyscore(running, "-inf", now_ms - self.stale_ms)
        pipe.zadd(running, {job_id: now_ms})
        pipe.zcard(running)
        pipe.pexpire(running, self.stale_ms)
        if pipe.execute()[2] > self.max_running:
            client.zrem(running, job_id)
            raise JobBusy(f"{self.max_running} {self.kind} job(s) of this account are running")
        state: dict[FieldT, EncodableT] = {**fields, "state": "queued", "processed": 0, "total": 0}
        state["created"] = time.time()
        client.hset(self.key(account_id, job_id), mapping=state)
        client.expire(self.key(account_id, job_id), self.ttl)
        try:
            send(job_id)
        except Exception as exc:  # the broker is down: say so rather than leave a job that never starts
            logger.exception("could not queue %s job %s", self.kind, job_id)
            self.fail(account_id, job_id, "The task queue is unreachable: try again later.")
            raise JobUnavailable(str(exc)) from exc
        return job_id

    def running(self, account_id: int) -> list[str]:
        """The account's jobs of this kind that are queued or running (not stale), oldest first."""
        now_ms = int(time.time() * 1000)
        found = get_redis().zrangebyscore(self._running_key(account_id), now_ms - self.stale_ms, "+inf")
        return [job_id.decode() for job_id in found]  # type: ignore[union-attr]

    def get(self, account_id: int, job_id: str) -> Job | None:
        """The job, or None (unknown, another account's, or past its ttl)."""
        raw = hash_of(get_redis(), self.key(account_id, job_id))
        if not raw:
            return None
        got = {key.decode(): value.decode() for key, value in raw.items()}
        return Job(
            job_id=job_id,
            state=got.get("state", "failed"),
            processed=int(got.get("processed", 0)),
            total=int(got.get("total", 0)),
            created=float(got.get("created", 0)),
            result=json.loads(got["result"]) if "result" in got else None,
            error=got.get("error", ""),
            fields={name: value for name, value in got.items() if name not in _OWN},
        )

    def take(self, account_id: int, job_id: str) -> Job | None:
        """The task's first step: the job, now running, if it is still queued (else None: expired before a worker
        took it, or taken already by an earlier delivery — two deliveries at once: one takes it, by SET NX)."""
        job = self.get(account_id, job_id)
        if job is None or job.state != "queued":
            return None
        client = get_redis()
        if not client.set(f"{self.key(account_id, job_id)}:taken", 1, nx=True, ex=self.ttl):
            return None
        client.hset(self.key(account_id, job_id), mapping={"state": "running"})
        return job

    def progress(self, account_id: int, job_id: str, processed: int, total: int | None = None) -> None:
        mapping: dict[FieldT, EncodableT] = {"processed": processed}
        if total is not None:
            mapping["total"] = total
        pipe = get_redis().pipeline(transaction=False)
        pipe.hset(self.key(account_id, job_id), mapping=mapping)
        pipe.expire(self.key(account_id, job_id), self.ttl)  # a job running longer than its ttl keeps its state
        pipe.execute()

    def done(self, account_id: int, job_id: str, result: dict[str, Any], processed: int | None = None) -> None:
        fields: dict[FieldT, EncodableT] = {"state": "done", "result": json.dumps(result)}
        if processed is not None:
            fields["processed"] = processed
        self._finish(account_id, job_id, fields)

    def fail(self, account_id: int, job_id: str, error: str) -> None:
        self._finish(account_id, job_id, {"state": "failed", "error": error})

    def _finish(self, account_id: int, job_id: str, fields: Mapping[FieldT, EncodableT]) -> None:
        client = get_redis()
        pipe = client.pipeline(transaction=False)
        pipe.hset(self.key(account_id, job_id), mapping=fields)
        pipe.expire(self.key(account_id, job_id), self.ttl)
        pipe.zrem(self._running_key(account_id), job_id)
        pipe.execute()

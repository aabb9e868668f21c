"""Signed dispatch of an approved call to its registered tool (docs/architecture.md §5, docs/tools.md).

Standard Webhooks headers (webhook-id / webhook-timestamp / webhook-signature, verifiable with the
`standardwebhooks` package using the tool secret's bytes as the key) plus the hosted product's compatibility headers
(X-OnceOnly-Signature = hex HMAC-SHA256 of the raw body), Idempotency-Key (stable for the same agent, tool and args)
and X-OnceOnly-Fence. Pooled httpx client, no redirects, never inside a database transaction. Connect errors,
timeouts and 5xx are retried with exponential backoff and jitter within a total deadline; 4xx never is.

The kill switch is re-checked right before each attempt's request is written (``KillSwitch``), retries included.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from django.conf import settings
from django.db import connection
from standardwebhooks.webhooks import Webhook

from governance import secrets, sql, ssrf
from governance.models import Tool
from onceonly_site import runner
from onceonly_site.api import storable_text

MAX_RESPONSE_BYTES = 256 * 1024
MIN_ATTEMPT_SECONDS = 0.05  # an attempt is not started with less of the deadline left (governance/slots.py too)
USER_AGENT = "OnceOnly-Server/0.1 (+signed tool dispatch)"


@lru_cache(maxsize=1)
def client() -> httpx.Client:
    # One pool per process; redirects are never followed (a tool URL that redirects is an error, not a hop).
    return httpx.Client(
        follow_redirects=False,
        limits=httpx.Limits(max_connections=100, max_keepalive_connections=20),
        headers={"User-Agent": USER_AGENT},
    )


@dataclass
class DispatchResult:
    ok: bool
    result: dict[str, Any] | None
    http_status: int | None
    latency_ms: int
    attempts: int
    error: str = ""
    request_headers: dict[str, str] | None = None  # of the last attempt (the "Send test call" page shows them)
    response_text: str = ""
    stopped: bool = False  # the kill switch was on before an attempt: that attempt, and any later one, was not sent
    deadline_hit: bool = False  # the deadline ended it: an attempt timed out on it, or none more could start


class AgentDisabled(Exception):
    """The agent was disabled when an attempt's request was about to be written: nothing of it was sent."""


# First key of the advisory lock pair on PostgreSQL (the second is the agent's id); billing/audit.py uses another.
KILL_SWITCH_LOCK = 0x0A6E75


class KillSwitch:
    """The kill switch's fence around each attempt (docs/security.md §"A runaway or dishonest agent").

    Installed as the attempt's httpcore ``trace`` hook: when the connection is up and the request's headers are about
    to be written, ``hold`` takes the fence *shared* and re-reads the agent's ``is_enabled`` from the database (the
    row the disable writes before it answers); the fence is released as soon as the request body is written (or the
    write failed), before the tool's answer is awaited. A disable takes the fence *exclusively* in its transaction
    (``wait_for_requests_being_written``), so it commits only after every request that passed the check has been
    written, and every check after that sees it: no tool request leaves after the disable has answered.

    PostgreSQL: a session advisory lock, taken in the same round trip as the read (two statements, so that the read's
    snapshot is taken after the lock is granted); one more round trip releases it. SQLite: the database's write lock
    (``BEGIN IMMEDIATE`` … ``COMMIT``), which the disable's transaction needs as well; inside a transaction that is
    already open (tests) it only reads.
    """

    def __init__(self, agent_pk: int) -> None:
        self.agent_pk = int(agent_pk)
        self.held = ""

    def trace(self, event: str, info: dict[str, Any]) -> None:
        # "http11.send_request_headers.started", …: the protocol prefix is left open (HTTP/2 names them alike).
        step = event.split(".", 1)[-1]
        if step == "send_request_headers.started":
            self.hold()
        elif step in ("send_request_headers.failed", "send_request_body.complete", "send_request_body.failed"):
            self.release()

    def hold(self) -> None:
        """Take the fence and re-read the agent; AgentDisabled (fence released) when it is disabled or gone."""
        read = sql.READ_ENABLED.format(pk=self.agent_pk)
        try:
            with connection.cursor() as cursor:
                if connection.vendor == "postgresql":
                    self.held = "postgresql"
                    # One round trip, two statements, each with its own snapshot: the read's is taken after the
                    # lock is granted.
                    cursor.execute(sql.LOCK_SHARED.format(lock=KILL_SWITCH_LOCK, key=self._key()) + read)
                    cursor.nextset()
                elif connection.vendor == "sqlite" and not connection.in_atomic_block:
                    cursor.execute(sql.SQLITE_BEGIN_IMMEDIATE)
                    self.held = "sqlite"
                    cursor.execute(read)
                else:
                    cursor.execute(read)
                row = cursor.fetchone()
        except BaseException:
            self.release()
            raise
        if row is None or not row[0]:
            self.release()
            raise AgentDisabled

    def release(self) -> None:
        held, self.held = self.held, ""
        if not held:
            return
        with connection.cursor() as cursor:
            if held == "postgresql":
                cursor.execute(sql.UNLOCK_SHARED.format(lock=KILL_SWITCH_LOCK, key=self._key()))
            else:
                cursor.execute(sql.SQLITE_COMMIT)

    def _key(self) -> int:
        return self.agent_pk & 0x7FFFFFFF  # the pair's keys are 32-bit; a shared key only means a longer wait

    @staticmethod
    def wait_for_requests_being_written(agent_pk: int) -> None:
        """The disable's side, inside its transaction before it writes: wait until no attempt of the agent is
        between its check and the end of its request's write; attempts that check later wait for the commit.
        (SQLite: the transaction's own write lock, taken when it began, does this.)"""
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(sql.LOCK_EXCLUSIVE, [KILL_SWITCH_LOCK, int(agent_pk) & 0x7FFFFFFF])


def standard_webhook_headers(key: str | bytes, *, msg_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one message: the one signing implementation, of tool dispatch and of the
    notification channels' webhooks (governance/channels.py). ``key``: the secret's bytes (a tool's secret, as
    typed) or a ``whsec_`` + base64 string (a channel's)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, now, body.decode()),
    }


def signed_request(tool: Tool, *, dispatch_id: str, body: bytes, idempotency_key: str, fence: int) -> dict[str, str]:
    secret = secrets.decrypt(tool.secret_encrypted)
    now = datetime.now(tz=UTC)
    return {
        "Content-Type": "application/json",
        **standard_webhook_headers(secret.encode(), msg_id=dispatch_id, body=body, now=now),
        "X-OnceOnly-Timestamp": str(int(now.timestamp())),
        "X-OnceOnly-Signature": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
        "X-OnceOnly-Signature-Alg": "hmac_sha256",
        "Idempotency-Key": idempotency_key,
        "X-OnceOnly-Fence": str(fence),
    }


class TooLarge(Exception):
    pass


def _read(response: httpx.Response, until: float) -> bytes:
    """The answer's body, read as it arrives: at most MAX_RESPONSE_BYTES (TooLarge past it, without reading the
    rest) and only until ``until`` (a ReadTimeout after it) — a tool that trickles its answer a byte at a time
    would otherwise hold a web process for as long as it likes, each byte resetting the read timeout."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise TooLarge
        chunks.append(chunk)
        if time.monotonic() > until:
            raise httpx.ReadTimeout("the answer did not finish in time")
    return b"".join(chunks)


def _result_of(content: bytes) -> tuple[dict[str, Any] | None, str]:
    if not content:
        return {}, ""
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        return None, "response is not JSON (or nested too deeply)"
    if not storable_text(value):
        return None, "response holds text no database can store (U+0000 or an unpaired surrogate)"
    return (value if isinstance(value, dict) else {"value": value}), ""


@runner.steps_aside  # while it waits on the tool, another request of this process runs (onceonly_site/runner.py)
def dispatch(
    tool: Tool,
    *,
    dispatch_id: str,
    agent_id: str,
    args: dict[str, Any],
    run_id: str,
    args_digest: str,
    fence: int,
    kill_switch: KillSwitch | None = None,
    deadline: float | None = None,
) -> DispatchResult:
    """Call the tool (with retries). With ``kill_switch``, an attempt is not sent once the agent is disabled: the
    result is then ``stopped`` (``attempts`` counts the attempts that were sent before). Every attempt ends by
    ``deadline`` (time.monotonic(); default: ONCEONLY_DISPATCH_DEADLINE_SECONDS from now), and none starts that
    could not: the governed call passes its request's arrival plus the deadline, so queueing counts too."""
    started = time.monotonic()
    if deadline is None:
        deadline = started + settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS
    if tool.kind == "mcp":  # a tool of an upstream MCP server: forwarded as tools/call (docs/mcp.md)
        from governance import mcp_upstream  # it builds on this module

        meta = {
            "onceonly/dispatch_id": dispatch_id,
            "onceonly/agent_id": agent_id,
            "onceonly/run_id": run_id or None,
            "onceonly/idempotency_key": f"oo_{args_digest[:40]}",  # the webhook's Idempotency-Key
        }
        return mcp_upstream.call_tool(tool, arguments=args, meta=meta, kill_switch=kill_switch, deadline=deadline)
    deadline_hit = False
    body = json.dumps(
        {"agent_id": agent_id, "tool": tool.name, "args": args, "run_id": run_id or None, "decision_id": dispatch_id},
        separators=(",", ":"),
    ).encode()
    timeout = tool.timeout_ms / 1000
    status, error, attempts = None, "", 0
    last_headers: dict[str, str] | None = None
    last_text = ""
    for attempt in range(tool.max_retries + 1):
        if attempt:
            backoff = min(2.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random())
            if time.monotonic() + backoff >= deadline:
                deadline_hit = True
                break
            time.sleep(backoff)
        remaining = deadline - time.monotonic()
        if remaining <= MIN_ATTEMPT_SECONDS:
            deadline_hit = True
            break  # an attempt that cannot finish inside the deadline is not started
        try:
            checked = ssrf.check(tool.url)  # again at dispatch: DNS may have changed since registration
        except ssrf.RefusedUrl as refused:
            return DispatchResult(False, None, None, _ms(started), attempts, str(refused))
        if checked.warning:  # does not resolve now: never let the HTTP client resolve it again unchecked
            return DispatchResult(False, None, None, _ms(started), attempts, checked.warning)
        url, pin_headers, extensions = pinned(checked)
        if kill_switch is not None:
            extensions = {**extensions, "trace": kill_switch.trace}
        attempts += 1
        headers = (
            signed_request(
                tool, dispatch_id=dispatch_id, body=body, idempotency_key=f"oo_{args_digest[:40]}", fence=fence
            )
            | pin_headers
        )
        last_headers = headers
        limit = min(timeout, remaining)
        try:
            with client().stream(
                "POST", url, content=body, headers=headers, timeout=limit, extensions=extensions
            ) as response:
                status = response.status_code
                try:
                    content = _read(response, time.monotonic() + limit)
                except TooLarge:
                    if 200 <= status < 300:
                        problem = f"response larger than {MAX_RESPONSE_BYTES // 1024} KB"
                        return DispatchResult(False, None, status, _ms(started), attempts, problem, last_headers, "")
                    content = b""  # an error page that big: its status is what matters
        except AgentDisabled:
            return DispatchResult(
                False,
                None,
                status,
                _ms(started),
                attempts - 1,
                "the agent was disabled",
                last_headers,
                last_text,
                stopped=True,
            )
        except httpx.TimeoutException:
            status, error = None, f"timed out after {limit:.2f} s"
            deadline_hit = deadline_hit or limit < timeout  # the deadline, not the tool's own timeout, cut it
            continue
        except httpx.HTTPError as exc:
            status, error = None, f"connection failed: {exc.__class__.__name__}"
            continue
        finally:
            if kill_switch is not None:
                kill_switch.release()  # normally released once the request was written; this covers any other exit
        last_text = content[:4000].decode(errors="replace")
        if 200 <= status < 300:
            result, problem = _result_of(content)
            if problem:
                return DispatchResult(False, None, status, _ms(started), attempts, problem, last_headers, last_text)
            return DispatchResult(True, result, status, _ms(started), attempts, "", last_headers, last_text)
        error = f"HTTP {status}"
        if status < 500:
            break  # the tool refused this call: retrying cannot help
    if deadline_hit and not error:
        error = "the dispatch deadline passed before an attempt could start"
    ended = DispatchResult(False, None, status, _ms(started), attempts, error, last_headers, last_text)
    ended.deadline_hit = deadline_hit
    return ended


def pinned(checked: ssrf.CheckedUrl) -> tuple[str, dict[str, str], dict[str, Any]]:
    """Connect to the address the guard just approved, not to whatever DNS answers a moment later (rebinding):
    the URL gets the IP, the Host header and the TLS server name (certificate check) keep the name."""
    parts = urlsplit(checked.url)
    if not checked.addresses or _is_ip(checked.host):
        return checked.url, {}, {}
    address = checked.addresses[0]
    netloc = f"[{address}]" if ":" in address else address
    if parts.port:
        netloc += f":{parts.port}"
    url = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = checked.host + (f":{parts.port}" if parts.port else "")
    extensions = {"sni_hostname": checked.host} if parts.scheme == "https" else {}
    return url, {"Host": host_header}, extensions


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

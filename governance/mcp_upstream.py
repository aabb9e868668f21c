"""The gateway's client to upstream MCP servers (docs/mcp.md): discovery (``tools/list``) and the forwarding of a
governed call (``tools/call``) over the Streamable HTTP transport, synchronous like signed dispatch
(governance/dispatch.py), whose pooled client, SSRF pinning, kill switch, deadline and retry rules it shares.

A session is set up once per process and server (``initialize``, then ``notifications/initialized``) and reused by
every thread of the process; an edit of the server (its ``updated_at``) or an expired session (HTTP 404 on its id,
after which the transport says to initialize again) starts a new one. Answers may be ``application/json`` or
``text/event-stream``; from a stream the response to our request is taken and everything else the server sends
meanwhile (notifications, its own requests: we declare no client capabilities, so none is owed an answer) is passed
over. Argument values and the auth header are never logged, nor put in an error message.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings

from governance import secrets, ssrf
from governance.dispatch import (
    MAX_RESPONSE_BYTES,
    MIN_ATTEMPT_SECONDS,
    AgentDisabled,
    DispatchResult,
    KillSwitch,
    client,
    pinned,
)
from governance.models import McpServer, Tool
from onceonly_site import runner
from onceonly_site.api import storable_text

logger = logging.getLogger(__name__)

# The revision we offer in ``initialize`` (the newest the initialize handshake reaches) and the ones we accept back:
# a server may answer with an older revision it prefers; tools/list and tools/call are alike in all of them.
PROTOCOL_VERSION = "2025-11-25"
ACCEPTED_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
CLIENT_INFO = {"name": "onceonly-gateway", "version": "0.1"}

MAX_LIST_PAGES = 50  # tools/list pages followed (nextCursor) in one discovery
MAX_TOOLS = 1000  # tools one server may list
MAX_LIST_PAGE_BYTES = 1024 * 1024  # a page of tool definitions with their schemas is larger than a tool's answer
SESSION_ID = re.compile(r"[\x21-\x7e]{1,256}")  # Mcp-Session-Id: visible ASCII (the specification)
ERROR_TEXT_CHARS = 300  # of an upstream's own words quoted in an error message

_ids = itertools.count(1)  # JSON-RPC request ids of this process (next() on a count is atomic)


class UpstreamError(Exception):
    """The upstream could not be used for this request; ``str()`` says why, for a person. ``retry``: a connection
    failure, a timeout or a 5xx (the request may not have reached a tool, or the upstream may answer next time);
    ``status``: the HTTP status when there was one; ``rpc_error``: the JSON-RPC error object when it answered one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry: bool = False,
        timed_out: bool = False,
        rpc_error: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.retry, self.timed_out, self.rpc_error = status, retry, timed_out, rpc_error


class SessionExpired(UpstreamError):
    """HTTP 404 on a request that carried a session id: the server forgot the session (it restarted, or the session
    idled out). The request reached no tool; the transport's rule is to initialize a new session and send it again."""


@dataclass
class RemoteTool:
    name: str
    description: str
    input_schema: dict[str, Any]
    annotations: dict[str, Any] | None


@dataclass(frozen=True)
class _Session:
    id: str  # Mcp-Session-Id ("" from a server that keeps none)
    protocol_version: str


_registry_lock = threading.Lock()
_sessions: dict[tuple, _Session] = {}
_session_locks: dict[tuple, threading.Lock] = {}


def _key(server: McpServer) -> tuple:
    return (server.pk, server.url, server.updated_at)  # an edit of the server starts a new session


def forget_sessions() -> None:
    """Drop every cached session of this process (tests; the next request initializes again)."""
    with _registry_lock:
        _sessions.clear()
        _session_locks.clear()


@runner.steps_aside  # while it waits on the upstream, another request of this process runs (onceonly_site/runner.py)
def discover(server: McpServer, *, deadline: float | None = None) -> list[RemoteTool]:
    """The server's tools (``tools/list``, every page), or UpstreamError saying why not. Each request is bounded by
    the server's timeout and the whole discovery by ``deadline`` (time.monotonic(); default: twice the timeout)."""
    timeout = server.timeout_ms / 1000
    if deadline is None:
        deadline = time.monotonic() + 2 * timeout
    tools: dict[str, RemoteTool] = {}
    cursor: str | None = None
    seen_cursors: set[str] = set()
    for _page in range(MAX_LIST_PAGES):
        params = {"cursor": cursor} if cursor is not None else {}
        result = _request_in_session(server, "tools/list", params, timeout=timeout, deadline=deadline)
        listed = result.get("tools")
        if not isinstance(listed, list):
            raise UpstreamError("not an MCP server: its tools/list answer has no list of tools")
        for position, entry in enumerate(listed):
            tool = _remote_tool(entry, position)
            if tool.name in tools:
                raise UpstreamError(f"the server lists the tool {tool.name[:128]!r} twice")
            tools[tool.name] = tool
            if len(tools) > MAX_TOOLS:
                raise UpstreamError(f"the server lists more than {MAX_TOOLS} tools; the gateway takes at most that")
        cursor = result.get("nextCursor")
        if cursor is None or cursor == "":
            return list(tools.values())
        if not isinstance(cursor, str) or cursor in seen_cursors:
            raise UpstreamError("not an MCP server: its tools/list pages do not end (nextCursor repeats)")
        seen_cursors.add(cursor)
    raise UpstreamError(f"the server's tools/list has more than {MAX_LIST_PAGES} pages; the gateway reads at most that")


def _remote_tool(entry: Any, position: int) -> RemoteTool:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
        raise UpstreamError(f"not an MCP server: tool #{position + 1} of its tools/list has no name")
    schema = entry.get("inputSchema")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise UpstreamError(f"the tool {entry['name'][:128]!r} has an inputSchema that is not a JSON object")
    description = entry.get("description")
    annotations = entry.get("annotations")
    if not storable_text([entry["name"], description, schema, annotations]):
        raise UpstreamError(f"the tool #{position + 1} of its tools/list holds text no database can store")
    return RemoteTool(
        name=entry["name"],
        description=description if isinstance(description, str) else "",
        input_schema=schema,
        annotations=annotations if isinstance(annotations, dict) else None,
    )


def _request_in_session(
    server: McpServer, method: str, params: dict[str, Any], *, timeout: float, deadline: float
) -> dict[str, Any]:
    """One request in the cached session (set up if needed), sent again once in a new session if the server forgot
    the old one. Its result, or UpstreamError (a JSON-RPC error included)."""
    for fresh_start in (False, True):
        session = _session(server, timeout=timeout, deadline=deadline)
        limit = _limit(timeout, deadline)
        try:
            message = _send(server, session, _request(method, params), timeout=limit, max_bytes=MAX_LIST_PAGE_BYTES)
        except SessionExpired:
            _forget(server, session)
            if fresh_start:
                raise
            continue
        return _result(message)
    raise AssertionError("unreachable")


@runner.steps_aside
def call_tool(
    tool: Tool,
    *,
    arguments: dict[str, Any],
    meta: dict[str, Any],
    kill_switch: KillSwitch | None = None,
    deadline: float | None = None,
) -> DispatchResult:
    """Forward a governed call as ``tools/call`` (with retries, as signed dispatch does: connection failures,
    timeouts and 5xx are retried within the deadline, 4xx never). Only the tools/call request passes the kill switch:
    setting up a session reaches no tool. A 404 on the session (the server forgot it) sets up a new session and sends
    the call again once, not counted as an attempt: the request never reached a tool. ``ok`` is the tool's own
    verdict (``isError`` false); ``result`` the CallToolResult (``content``, ``structuredContent``, ``isError``)."""
    started = time.monotonic()
    if deadline is None:
        deadline = started + settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS
    server = tool.mcp_server
    if server is None:
        return DispatchResult(False, None, None, 0, 0, "the MCP tool has no server")
    params = {"name": tool.remote_name, "arguments": arguments, "_meta": meta}
    timeout = tool.timeout_ms / 1000
    setup_timeout = server.timeout_ms / 1000
    status, error, attempts, deadline_hit = None, "", 0, False
    last_headers: dict[str, str] | None = None
    last_text = ""
    attempt, resend = 0, False  # resend: the next request replaces one a forgotten session turned away
    renewed = False
    while attempt <= tool.max_retries:
        if attempt and not resend:
            backoff = min(2.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random())
            if time.monotonic() + backoff >= deadline:
                deadline_hit = True
                break
            time.sleep(backoff)
        resend = False
        if deadline - time.monotonic() <= MIN_ATTEMPT_SECONDS:
            deadline_hit = True
            break  # an attempt that cannot finish inside the deadline is not started
        try:
            session = _session(server, timeout=setup_timeout, deadline=deadline)
        except UpstreamError as exc:
            status, error = exc.status, f"setting up the MCP session: {exc}"
            if exc.timed_out:
                deadline_hit = deadline_hit or deadline - time.monotonic() <= MIN_ATTEMPT_SECONDS
            if exc.retry:
                attempt += 1
                continue
            break
        remaining = deadline - time.monotonic()
        if remaining <= MIN_ATTEMPT_SECONDS:
            deadline_hit = True
            break
        limit = min(timeout, remaining)
        request = _request("tools/call", params)
        attempts += 1
        last_headers = _headers(server, session, reveal=False)
        answered: dict[str, str] = {}
        try:
            message = _send(
                server,
                session,
                request,
                timeout=limit,
                max_bytes=MAX_RESPONSE_BYTES,
                trace=kill_switch.trace if kill_switch is not None else None,
                into=answered,
            )
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
        except SessionExpired as exc:
            attempts -= 1  # turned away before any tool saw it
            _forget(server, session)
            status, error = exc.status, str(exc)
            if renewed:
                break
            renewed = resend = True
            logger.info("MCP server %s forgot its session; initializing a new one", server.pk)
            continue
        except UpstreamError as exc:
            status, error = exc.status, str(exc)
            if exc.timed_out:
                deadline_hit = deadline_hit or limit < timeout  # the deadline, not the tool's own timeout, cut it
            if exc.retry:
                attempt += 1
                continue
            break
        finally:
            if kill_switch is not None:
                kill_switch.release()  # normally released once the request was written; this covers any other exit
        status = int(answered[":status"])
        last_text = json.dumps(message, separators=(",", ":"))[:4000]
        if "error" in message:
            problem = _rpc_error_text(message["error"])
            return DispatchResult(False, None, status, _ms(started), attempts, problem, last_headers, last_text)
        result, problem = _call_result(message.get("result"))
        if problem:
            return DispatchResult(False, result, status, _ms(started), attempts, problem, last_headers, last_text)
        return DispatchResult(True, result, status, _ms(started), attempts, "", last_headers, last_text)
    if deadline_hit and not error:
        error = "the dispatch deadline passed before an attempt could start"
    ended = DispatchResult(False, None, status, _ms(started), attempts, error, last_headers, last_text)
    ended.deadline_hit = deadline_hit
    return ended


def _call_result(value: Any) -> tuple[dict[str, Any] | None, str]:
    """The CallToolResult's parts we pass on, and the error when the tool reported one (``isError``)."""
    if not isinstance(value, dict) or not isinstance(value.get("content", []), list):
        return None, "not an MCP server: its tools/call answer is not a CallToolResult"
    if not storable_text(value):
        return None, "the tool's answer holds text no database can store (U+0000 or an unpaired surrogate)"
    is_error = value.get("isError") is True
    result: dict[str, Any] = {"content": value.get("content", []), "isError": is_error}
    if isinstance(value.get("structuredContent"), dict):
        result["structuredContent"] = value["structuredContent"]
    if not is_error:
        return result, ""
    texts = [item.get("text") for item in result["content"] if isinstance(item, dict) and item.get("type") == "text"]
    said = " ".join(text for text in texts if isinstance(text, str)).strip()
    return result, f"the tool reported an error: {said[:ERROR_TEXT_CHARS]}" if said else "the tool reported an error"


# --- sessions ----------------------------------------------------------------------------------------------------


def _session(server: McpServer, *, timeout: float, deadline: float) -> _Session:
    """The process's session with the server, set up by the first thread that needs it (the others wait for it,
    within their deadline)."""
    key = _key(server)
    with _registry_lock:
        session = _sessions.get(key)
        if session is not None:
            return session
        lock = _session_locks.setdefault(key, threading.Lock())
    if not lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        raise UpstreamError("timed out waiting for the MCP session to be set up", retry=True, timed_out=True)
    try:
        with _registry_lock:
            session = _sessions.get(key)
        if session is None:
            session = _initialize(server, timeout=timeout, deadline=deadline)
            with _registry_lock:
                for stale in [other for other in _sessions if other[0] == server.pk and other != key]:
                    _sessions.pop(stale, None)  # the server was edited: its old session is of no more use
                    _session_locks.pop(stale, None)
                _sessions[key] = session
        return session
    finally:
        lock.release()


def _initialize(server: McpServer, *, timeout: float, deadline: float) -> _Session:
    request = _request(
        "initialize", {"protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO}
    )
    headers: dict[str, str] = {}
    message = _send(
        server, None, request, timeout=_limit(timeout, deadline), max_bytes=MAX_RESPONSE_BYTES, into=headers
    )
    result = _result(message)
    version = result.get("protocolVersion")
    if not isinstance(version, str) or version not in ACCEPTED_VERSIONS:
        raise UpstreamError(
            f"the server speaks MCP protocol version {str(version)[:40]!r}; the gateway speaks "
            + ", ".join(ACCEPTED_VERSIONS)
        )
    session_id = headers.get("mcp-session-id", "")
    if session_id and not SESSION_ID.fullmatch(session_id):  # the specification: visible ASCII only
        raise UpstreamError("not an MCP server: its Mcp-Session-Id is not visible ASCII")
    session = _Session(id=session_id, protocol_version=version)
    _send(
        server,
        session,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        timeout=_limit(timeout, deadline),
        max_bytes=MAX_RESPONSE_BYTES,
    )
    return session


def _forget(server: McpServer, session: _Session) -> None:
    """Drop the cached session if it is still the one that failed (another thread may have renewed it already)."""
    key = _key(server)
    with _registry_lock:
        if _sessions.get(key) == session:
            del _sessions[key]


# --- one HTTP exchange -------------------------------------------------------------------------------------------


def _request(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": next(_ids), "method": method, "params": params}


def _limit(timeout: float, deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= MIN_ATTEMPT_SECONDS:
        raise UpstreamError("the deadline passed before the MCP server could answer", timed_out=True)
    return min(timeout, remaining)


def _headers(server: McpServer, session: _Session | None, *, reveal: bool = True) -> dict[str, str]:
    """A request's headers; ``reveal=False``: as a result may show them (the "Send test call" page), the auth
    header's value masked."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if session is not None:
        headers["MCP-Protocol-Version"] = session.protocol_version
        if session.id:
            headers["Mcp-Session-Id"] = session.id
    if server.auth_header_encrypted and server.auth_header_name:
        if not reveal:
            headers[server.auth_header_name] = server.auth_header_mask or "***"
            return headers
        try:
            value = secrets.decrypt(server.auth_header_encrypted)
            value.encode("ascii")  # HTTP header values: a "…" pasted from an example could not be sent
            headers[server.auth_header_name] = value
        except UnicodeEncodeError:
            raise UpstreamError("the server's auth header value is not plain ASCII: set it again") from None
        except ValueError as exc:
            raise UpstreamError(f"the server's auth header cannot be used: {exc}") from None
    return headers


def _send(
    server: McpServer,
    session: _Session | None,
    message: dict[str, Any],
    *,
    timeout: float,
    max_bytes: int,
    trace: Any = None,
    into: dict[str, str] | None = None,
) -> dict[str, Any]:
    """POST one JSON-RPC message; for a request, the JSON-RPC response to it (a JSON body, or the first matching
    message of an event stream), read within ``timeout`` and ``max_bytes``. UpstreamError for anything else; the
    kill switch's AgentDisabled (``trace``) passes through. ``into`` receives the response's headers."""
    try:
        checked = ssrf.check(server.url)  # on every connection: DNS may have changed since registration
    except ssrf.RefusedUrl as refused:
        raise UpstreamError(str(refused)) from None
    if checked.warning:  # does not resolve now: never let the HTTP client resolve it again unchecked
        raise UpstreamError(checked.warning)
    url, pin_headers, extensions = pinned(checked)
    if trace is not None:
        extensions = {**extensions, "trace": trace}
    headers = _headers(server, session) | pin_headers
    body = json.dumps(message, separators=(",", ":")).encode()
    until = time.monotonic() + timeout
    try:
        with client().stream(
            "POST", url, content=body, headers=headers, timeout=timeout, extensions=extensions
        ) as response:
            status = response.status_code
            if into is not None:
                into.update({name.lower(): value for name, value in response.headers.items()})
                into[":status"] = str(status)
            if status >= 300:
                raise _refusal(response, session, until)
            if "id" not in message:  # a notification: 202 Accepted, nothing to read
                return {}
            kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if kind == "text/event-stream":
                return _from_stream(response, message["id"], until, max_bytes)
            if kind == "application/json":
                return _from_json(_body(response, until, max_bytes), message["id"])
            raise UpstreamError(
                f"not an MCP server: it answered {kind or 'no content type'}, not JSON or an event stream",
                status=status,
            )
    except httpx.TimeoutException:
        raise UpstreamError(f"timed out after {timeout:.2f} s", retry=True, timed_out=True) from None
    except httpx.HTTPError as exc:
        raise UpstreamError(f"connection failed: {exc.__class__.__name__}", retry=True) from None


def _refusal(response: httpx.Response, session: _Session | None, until: float) -> UpstreamError:
    status = response.status_code
    if status == 404 and session is not None and session.id:
        return SessionExpired("HTTP 404: the MCP server no longer knows the session", status=status)
    if status in (401, 403):
        return UpstreamError(
            f"HTTP {status}: the MCP server refused the gateway's credentials (check the server's auth header)",
            status=status,
        )
    if 300 <= status < 400:
        return UpstreamError(f"HTTP {status}: the MCP server redirects; redirects are not followed", status=status)
    said = ""
    try:
        text = _body(response, until, 4096).decode(errors="replace")
        try:
            said = _rpc_error_text(json.loads(text)["error"])
        except (ValueError, KeyError, TypeError, RecursionError):
            said = " ".join(text.split())[:ERROR_TEXT_CHARS]
    except (UpstreamError, httpx.HTTPError):
        pass  # the status is what matters
    return UpstreamError(f"HTTP {status}" + (f": {said}" if said else ""), status=status, retry=status >= 500)


def _chunks(response: httpx.Response, until: float, max_bytes: int) -> Iterator[bytes]:
    """The body as it arrives, at most ``max_bytes`` and only until ``until``: a server that trickles its answer (or
    keeps a stream open with notifications) would otherwise hold a web process as long as it likes."""
    size = 0
    for chunk in response.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise UpstreamError(f"the MCP server's answer is larger than {max_bytes // 1024} KB")
        yield chunk
        if time.monotonic() > until:
            raise httpx.ReadTimeout("the answer did not finish in time")


def _body(response: httpx.Response, until: float, max_bytes: int) -> bytes:
    return b"".join(_chunks(response, until, max_bytes))


def _from_json(content: bytes, request_id: int) -> dict[str, Any]:
    try:
        value = json.loads(content)
    except (ValueError, RecursionError):
        raise UpstreamError("not an MCP server: its answer is not JSON") from None
    for item in value if isinstance(value, list) else [value]:  # a batch (2025-03-26) holds ours among others
        if _is_response_to(item, request_id):
            return item
    raise UpstreamError("not an MCP server: its answer is not the JSON-RPC response to the request")


def _from_stream(response: httpx.Response, request_id: int, until: float, max_bytes: int) -> dict[str, Any]:
    """Server-sent events (text/event-stream) until the response to our request; the other messages are passed
    over."""
    pending = b""
    data: list[bytes] = []
    for chunk in _chunks(response, until, max_bytes):
        pending += chunk
        held = b"\r" if pending.endswith(b"\r") else b""  # maybe the first half of a \r\n: wait for the next chunk
        lines = pending[: len(pending) - len(held)].replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        pending = lines.pop() + held
        for line in lines:
            if line == b"":  # the end of an event
                found = _event(data, request_id)
                data = []
                if found is not None:
                    return found
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
            # event:, id:, retry: and comments (":") carry nothing we need
    if pending.startswith(b"data:"):
        value = pending[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    found = _event(data, request_id)
    if found is not None:
        return found
    raise UpstreamError("the MCP server's event stream ended without the response to the request", retry=True)


def _event(data: list[bytes], request_id: int) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        value = json.loads(b"\n".join(data))
    except (ValueError, RecursionError):
        raise UpstreamError("not an MCP server: an event of its stream is not JSON") from None
    return value if _is_response_to(value, request_id) else None


def _is_response_to(value: Any, request_id: int) -> bool:
    return isinstance(value, dict) and value.get("id") == request_id and ("result" in value or "error" in value)


def _result(message: dict[str, Any]) -> dict[str, Any]:
    if "error" in message:
        error = message["error"]
        raise UpstreamError(_rpc_error_text(error), rpc_error=error if isinstance(error, dict) else None)
    result = message.get("result")
    if not isinstance(result, dict):
        raise UpstreamError("not an MCP server: its JSON-RPC result is not an object")
    return result


def _rpc_error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return "JSON-RPC error"
    code, said = error.get("code"), error.get("message")
    said = " ".join(str(said).split())[:ERROR_TEXT_CHARS] if said else ""
    return f"JSON-RPC error {code}" + (f": {said}" if said else "")


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)

"""The MCP gateway (docs/mcp.md): our server speaks the Model Context Protocol's Streamable HTTP transport at
``/mcp/`` and ``/mcp/<agent id>``, so an MCP client lists the agent's tools and calls them through the governed call —
the same policy, caps, deduplication, approvals, decision log and run timeline as ``POST /v1/ai/run``.

Both eras of the protocol are spoken, with JSON answers (no server-sent stream is needed: nothing is pushed):
- the handshake era (2025-03-26 … 2025-11-25): ``initialize`` opens a session (``Mcp-Session-Id``, kept in Redis for
  a day after its last use) whose id names the run its calls are steps of;
- 2026-07-28: no handshake and no session; every request names its version and method in headers, which must agree
  with its body (``-32020`` otherwise), and results carry ``resultType``.

Authentication is the account's API key (``Authorization: Bearer``). Protocol problems are JSON-RPC errors; a call
the governed call refuses (blocked, waiting for an approval, rate limited…) is a tool result with ``isError`` whose
text is the decision's explanation — what the model reads and can act on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from billing import entitlements, ratelimit
from billing.auth import ApiPrincipal, authenticate_header_value
from governance import mcp_selectors, policies, services
from governance.api import GovernedCallInput, call_answer
from governance.choices import Outcome
from governance.models import Decision, Tool
from idempotency import events as run_events
from idempotency.services import canonical_json
from onceonly_site import clock, runner
from onceonly_site.api import ApiProblem, InvalidApiKey, MissingBearer, parse_json_body, validation_detail
from onceonly_site.api import exception_handler as api_exception_handler
from onceonly_site.identifiers import identifier_problem
from onceonly_site.redis_client import get_redis

logger = logging.getLogger(__name__)

MODERN_VERSION = "2026-07-28"
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")  # newest first: what initialize answers by default
SUPPORTED_VERSIONS = (MODERN_VERSION, *HANDSHAKE_VERSIONS)
SESSION_TTL_SECONDS = 24 * 3600
# Open sessions per API key: the oldest beyond it are ended (its client gets 404 and opens a new one), so a client
# that initializes in a loop cannot fill Redis with day-long sessions.
MAX_SESSIONS_PER_KEY = 1000
SESSIONS_DOWN = "Sessions are unavailable (Redis); retry shortly."
# The caller's fields in a tools/call (docs/mcp.md §"Exactly once"). `idempotencyKey` in params is the field the
# MCP request-idempotency proposal (SEP-3182) names; the _meta form is ours, for clients that can only set _meta.
IDEMPOTENCY_META = "onceonly/idempotency_key"
RUN_META = "onceonly/run_id"
SPEND_META = "onceonly/spend_usd"
DECISION_META = "onceonly/decision"
MAX_KEY_LENGTH = 255
LIST_PAGE = 100
TWIN_POLL_SECONDS = 0.05

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
SESSION_NOT_FOUND, HEADER_MISMATCH, UNSUPPORTED_VERSION = -32001, -32020, -32022


class RpcError(Exception):
    """A JSON-RPC error answer, with the HTTP status the transport gives it."""

    def __init__(self, code: int, message: str, *, status: int = 200, data: Any = None, headers: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.data, self.headers = code, message, status, data, headers or {}


@dataclass(frozen=True, slots=True)
class Session:
    id_hash: str
    key_id: int
    agent_id: str
    version: str
    run_id: str


# --- the transport ----------------------------------------------------------------------------------------------


@csrf_exempt
def endpoint(request: HttpRequest, agent_id: str | None = None) -> HttpResponse:
    """``/mcp/`` (the agent in the ``OnceOnly-Agent-Id`` header) and ``/mcp/<agent id>``."""
    request_id: Any = None
    caller: ApiPrincipal | None = None
    try:
        if request.method not in ("POST", "DELETE"):
            # No server-initiated stream: the specification's answer to GET is 405 (clients then do without it).
            raise RpcError(INVALID_REQUEST, "Only POST (and DELETE of a session) are served.", status=405)
        _check_origin(request)
        caller = _authenticate(request)
        agent = _agent_id(request, agent_id)
        if request.method == "DELETE":
            _take_token(request, caller)
            return _end_session(request, caller, agent)
        message = _message(request)
        request_id = message.get("id")
        if "method" not in message or "id" not in message:
            _take_token(request, caller)
            return HttpResponse(status=202)  # a notification or a response: accepted, nothing to answer
        method = message["method"]
        version = _version(request, method, message.get("params"))
        session = None if version == MODERN_VERSION else _session(request, caller, agent)
        result = _handle(request, caller, agent, method, message.get("params"), version, session)
        if version == MODERN_VERSION:
            result = {"resultType": "complete", **result}
        response = JsonResponse({"jsonrpc": "2.0", "id": request_id, "result": result})
        if method == "initialize" and version != MODERN_VERSION:
            response["Mcp-Session-Id"] = result.pop("_session_id", "")
            response.content = json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()
        return response
    except RpcError as refused:
        error = refused
        if caller is not None and error.status not in (401, 403, 429) and not getattr(request, TOKEN_TAKEN, False):
            # Ended before the governed call, which takes its own: every answered request costs a token.
            try:
                _take_token(request, caller)
            except RpcError as limited:
                error = limited
        return _error_response(error, request_id)
    except Exception as exc:  # Redis or the database down (503), or a bug: a JSON-RPC answer, never an HTML page
        problem = api_exception_handler(exc, {"view": None})
        assert problem is not None
        detail = problem.data.get("detail") if isinstance(problem.data, dict) else None
        text = detail.get("message") if isinstance(detail, dict) else None
        error = RpcError(
            INTERNAL_ERROR,
            text or "The server failed to handle this request.",
            status=problem.status_code,
            data=detail,
            headers={name: problem[name] for name in ("Retry-After",) if problem.has_header(name)},
        )
        return _error_response(error, request_id)


def _error_response(error: RpcError, request_id: Any) -> JsonResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    response = JsonResponse({"jsonrpc": "2.0", "id": request_id, "error": body}, status=error.status)
    for name, value in error.headers.items():
        response[name] = value
    if error.status == 405:
        response["Allow"] = "POST, DELETE"
    return response


def _check_origin(request: HttpRequest) -> None:
    """The specification's guard against DNS rebinding: a browser's request from a page of another origin is refused
    (403) unless ONCEONLY_MCP_ALLOWED_ORIGINS lists it. Clients outside a browser send no Origin."""
    origin = request.headers.get("Origin")
    if not origin:
        return
    own = f"{request.scheme}://{request.get_host()}"
    if origin == own or origin in settings.ONCEONLY_MCP_ALLOWED_ORIGINS:
        return
    raise RpcError(INVALID_REQUEST, f"Origin {origin!r} is not allowed (ONCEONLY_MCP_ALLOWED_ORIGINS).", status=403)


def _authenticate(request: HttpRequest) -> ApiPrincipal:
    try:
        caller = authenticate_header_value(request.headers.get("Authorization", ""))
    except (MissingBearer, InvalidApiKey) as refused:
        raise RpcError(
            INVALID_REQUEST,
            "Authenticate with the account's API key: Authorization: Bearer <key>."
            if isinstance(refused, MissingBearer)
            else "Invalid API key.",
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="mcp"'},
        ) from None
    try:
        entitlements.require(caller.plan, "governance")
    except ApiProblem as problem:
        raise RpcError(INVALID_REQUEST, _message_of(problem), status=403, data=problem.detail) from None
    return caller


def _agent_id(request: HttpRequest, from_path: str | None) -> str:
    agent = from_path or request.headers.get("OnceOnly-Agent-Id", "")
    if not agent:
        raise RpcError(
            INVALID_REQUEST,
            "Name the agent: connect to /mcp/<agent id>, or send an OnceOnly-Agent-Id header.",
            status=400,
        )
    problem = identifier_problem(agent)
    if problem is None and len(agent) > 200:
        problem = "At most 200 characters."
    if problem is None and agent == services.OPERATOR_AGENT:
        problem = "This agent id is reserved for the dashboard's tool tests."
    if problem:
        raise RpcError(INVALID_REQUEST, f"Agent id refused: {problem}", status=400)
    return agent


def _message(request: HttpRequest) -> dict[str, Any]:
    try:
        message = parse_json_body(request.body)
    except RequestDataTooBig:
        raise RpcError(INVALID_REQUEST, "The message is too large.", status=413) from None
    except exceptions.APIException as bad:
        raise RpcError(PARSE_ERROR, f"Parse error: {_message_of(bad)}", status=400) from None
    if isinstance(message, list):
        raise RpcError(INVALID_REQUEST, "JSON-RPC batches are not supported: send one message per request.", status=400)
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        raise RpcError(INVALID_REQUEST, 'Not a JSON-RPC 2.0 message (an object with "jsonrpc": "2.0").', status=400)
    if "method" in message and not isinstance(message["method"], str):
        raise RpcError(INVALID_REQUEST, "method must be a string.", status=400)
    return message


def _version(request: HttpRequest, method: str, params: Any) -> str:
    """The request's protocol version (MCP-Protocol-Version; absent: 2025-03-26, as the specification says, or
    whatever ``initialize`` asks for). 2026-07-28 requests repeat their method and tool in headers, checked here."""
    header = request.headers.get("MCP-Protocol-Version")
    if header is None:
        return HANDSHAKE_VERSIONS[-1]
    if header not in SUPPORTED_VERSIONS:
        raise RpcError(
            UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            status=400,
            data={"supported": list(SUPPORTED_VERSIONS), "requested": header},
        )
    if header == MODERN_VERSION:
        if request.headers.get("Mcp-Method") != method:
            raise RpcError(HEADER_MISMATCH, "The Mcp-Method header must name the body's method.", status=400)
        if method == "tools/call":
            name = params.get("name") if isinstance(params, dict) else None
            if _header_text(request.headers.get("Mcp-Name", "")) != name:
                raise RpcError(HEADER_MISMATCH, "The Mcp-Name header must name the tool called.", status=400)
    return header


def _header_text(value: str) -> str:
    """A header value as the specification encodes text that is not plain ASCII: ``=?base64?<base64>?=``."""
    if value.startswith("=?base64?") and value.endswith("?="):
        try:
            return base64.b64decode(value[9:-2], validate=True).decode()
        except ValueError:
            return ""
    return value


# --- sessions (the handshake era) -------------------------------------------------------------------------------


def _session_key(caller: ApiPrincipal, id_hash: str) -> str:
    return f"oo:{{a{caller.account_id}}}:mcp:s:{id_hash}"


def _opened_key(caller: ApiPrincipal) -> str:
    return f"oo:{{a{caller.account_id}}}:mcp:opened:{caller.key_id}"


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()[:40]


def _open_session(caller: ApiPrincipal, agent_id: str, version: str) -> tuple[str, Session]:
    session_id = secrets.token_urlsafe(32)
    id_hash = _hash(session_id)
    session = Session(id_hash, caller.key_id, agent_id, version, f"mcp-{id_hash[:16]}")
    fields = {"key_id": caller.key_id, "agent_id": agent_id, "version": version, "run_id": session.run_id}
    opened = _opened_key(caller)
    try:
        client = get_redis()
        pipe = client.pipeline(transaction=False)
        pipe.set(_session_key(caller, id_hash), json.dumps(fields), ex=SESSION_TTL_SECONDS)
        pipe.zadd(opened, {id_hash: time.time()})
        pipe.expire(opened, SESSION_TTL_SECONDS)
        pipe.zcard(opened)
        count = pipe.execute()[-1]
        if count > MAX_SESSIONS_PER_KEY:
            popped: list[tuple[bytes, float]] = client.zpopmin(opened, count - MAX_SESSIONS_PER_KEY)  # type: ignore[assignment]
            client.delete(*(_session_key(caller, member.decode()) for member, _ in popped))
    except redis.RedisError:
        raise RpcError(INTERNAL_ERROR, SESSIONS_DOWN, status=503, headers={"Retry-After": "2"}) from None
    return session_id, session


def _session(request: HttpRequest, caller: ApiPrincipal, agent_id: str) -> Session | None:
    """The request's session, refreshed; None without the header (a stateless client: its calls are steps of no run
    unless _meta names one). An unknown id, one of another key or another agent, is 404: the client opens a new one."""
    session_id = request.headers.get("Mcp-Session-Id")
    if not session_id:
        return None
    id_hash = _hash(session_id)
    key = _session_key(caller, id_hash)
    try:
        pipe = get_redis().pipeline(transaction=False)
        pipe.get(key)
        pipe.expire(key, SESSION_TTL_SECONDS)
        raw, _ = pipe.execute()
    except redis.RedisError:
        raise RpcError(INTERNAL_ERROR, SESSIONS_DOWN, status=503, headers={"Retry-After": "2"}) from None
    fields = json.loads(raw) if raw else None
    if not fields or fields["key_id"] != caller.key_id or fields["agent_id"] != agent_id:
        raise RpcError(SESSION_NOT_FOUND, "Session not found: initialize a new one.", status=404)
    return Session(id_hash, fields["key_id"], fields["agent_id"], fields["version"], fields["run_id"])


def _end_session(request: HttpRequest, caller: ApiPrincipal, agent_id: str) -> HttpResponse:
    """DELETE: the session ends, and with it its run (``run_finished``, when any call was a step of it)."""
    session = _session(request, caller, agent_id)
    if session is None:
        raise RpcError(INVALID_REQUEST, "DELETE ends a session: send its Mcp-Session-Id.", status=400)
    pipe = get_redis().pipeline(transaction=False)
    pipe.delete(_session_key(caller, session.id_hash))
    pipe.zrem(_opened_key(caller), session.id_hash)
    pipe.execute()
    if Decision.objects.filter(account_id=caller.account_id, run_id=session.run_id).exists():
        run_events.emit(
            caller.account_id,
            session.run_id,
            "run_finished",
            status="completed",
            agent_id=agent_id,
            message="MCP session closed",
        )
    return HttpResponse(status=204)


# --- methods ----------------------------------------------------------------------------------------------------


def _handle(
    request: HttpRequest,
    caller: ApiPrincipal,
    agent_id: str,
    method: str,
    params: Any,
    version: str,
    session: Session | None,
) -> dict[str, Any]:
    if params is not None and not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object.")
    params = params or {}
    if method == "tools/call":
        return _call(request, caller, agent_id, params, session)
    _take_token(request, caller)  # a governed call takes its token in its own script
    if method == "initialize" and version != MODERN_VERSION:
        return _initialize(caller, agent_id, params)
    if method == "server/discover":
        return _discover()
    if method == "ping" and version != MODERN_VERSION:
        return {}
    if method == "tools/list":
        return _list(caller, agent_id, params, modern=version == MODERN_VERSION)
    raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}", status=404 if version == MODERN_VERSION else 200)


TOKEN_TAKEN = "_onceonly_mcp_token"


def _take_token(request: HttpRequest, caller: ApiPrincipal) -> None:
    setattr(request, TOKEN_TAKEN, True)
    try:
        ratelimit.take(caller)
    except ratelimit.RateLimited as limited:
        raise RpcError(
            INTERNAL_ERROR,
            _message_of(limited),
            status=429,
            data={"retry_after": limited.wait_seconds},
            headers={"Retry-After": str(limited.wait_seconds)},
        ) from None


SERVER_INFO = {"name": "onceonly-server", "title": "OnceOnly Server (governed tools)", "version": "0.1.0"}
INSTRUCTIONS = (
    "Tools called here are governed by OnceOnly: each call is decided before it runs (policy, caps, approvals) and "
    "a repeated call returns the first call's result without running again. A refused call comes back as a tool "
    "error that says why."
)


def _initialize(caller: ApiPrincipal, agent_id: str, params: dict[str, Any]) -> dict[str, Any]:
    asked = params.get("protocolVersion")
    version = asked if asked in HANDSHAKE_VERSIONS else HANDSHAKE_VERSIONS[0]
    session_id, _ = _open_session(caller, agent_id, version)
    return {
        "protocolVersion": version,
        "capabilities": {"tools": {"listChanged": False}},
        "serverInfo": SERVER_INFO,
        "instructions": INSTRUCTIONS,
        "_session_id": session_id,  # taken out into the Mcp-Session-Id header by endpoint()
    }


def _discover() -> dict[str, Any]:
    return {
        "supportedVersions": list(SUPPORTED_VERSIONS),
        "capabilities": {"tools": {"listChanged": False}},
        "instructions": INSTRUCTIONS,
        "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
        "ttlMs": 0,
        "cacheScope": "private",
    }


def _list(caller: ApiPrincipal, agent_id: str, params: dict[str, Any], *, modern: bool) -> dict[str, Any]:
    cursor = params.get("cursor")
    start = 0
    if cursor is not None:
        if not isinstance(cursor, str) or not re.fullmatch(r"[0-9]{1,9}", cursor):
            raise RpcError(INVALID_PARAMS, "Invalid cursor: pass the nextCursor of the previous page.")
        start = int(cursor)
    tools = mcp_selectors.visible_tools(caller.account_id, agent_id)
    page = tools[start : start + LIST_PAGE]
    result: dict[str, Any] = {"tools": [_tool_entry(tool) for tool in page]}
    if start + LIST_PAGE < len(tools):
        result["nextCursor"] = str(start + LIST_PAGE)
    if modern:  # policies change what an agent sees: never cached by the client for long, never shared
        result.update(ttlMs=0, cacheScope="private")
    return result


def _tool_entry(tool: Tool) -> dict[str, Any]:
    schema = tool.input_schema if isinstance(tool.input_schema, dict) else {"type": "object"}
    entry: dict[str, Any] = {"name": tool.name, "inputSchema": schema}
    if tool.description:
        entry["description"] = tool.description
    annotations: dict[str, Any] = {}
    if (tool.risk_level or policies.risk_of(tool.name)) == "high":  # the risk decisions record, set or by name
        annotations["destructiveHint"] = True
    if annotations:
        entry["annotations"] = annotations
    return entry


# --- tools/call -------------------------------------------------------------------------------------------------


def _call(
    request: HttpRequest, caller: ApiPrincipal, agent_id: str, params: dict[str, Any], session: Session | None
) -> dict[str, Any]:
    name = params.get("name")
    if not isinstance(name, str) or not name:
        raise RpcError(INVALID_PARAMS, "params.name must name the tool.")
    arguments = params.get("arguments", {})
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise RpcError(INVALID_PARAMS, "params.arguments must be an object.")
    meta = params.get("_meta") or {}
    if not isinstance(meta, dict):
        raise RpcError(INVALID_PARAMS, "params._meta must be an object.")
    key = _idempotency_key(params, meta)
    run_id = _run_id(meta, session)
    data: dict[str, Any] = {"agent_id": agent_id, "tool": name, "args": arguments}
    if SPEND_META in meta:
        data["spend_usd"] = meta[SPEND_META]
    try:
        call = GovernedCallInput.parse(data)
    except exceptions.ValidationError as invalid:
        raise RpcError(INVALID_PARAMS, "Invalid arguments.", data={"detail": validation_detail(invalid)}) from None
    args = call.args or {}
    if key is not None:
        # Checked before the key is remembered (one query, on this path only): an unknown tool writes nothing.
        known = mcp_selectors.registered_tool(caller.account_id, agent_id, name)
        if known is None:
            raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}")
        _claim_key(caller, agent_id, known.name, key, args)
    setattr(request, TOKEN_TAKEN, True)  # the governed call takes the caller's token in its own script
    try:
        outcome = services.governed_call(
            account_id=caller.account_id,
            plan=caller.plan,
            agent_id=agent_id,
            tool=name,
            args=args,
            spend_usd=Decimal(str(call.spend_usd)) if call.spend_usd is not None else None,
            run_id=run_id,
            finishes_run=False,  # the run is the session (or the client's, named in _meta): it goes on
            rate_limit=ratelimit.script_args(caller),
            api_key_id=caller.key_id,
            arrived=clock.arrived(request),
            dedup_key=key,
            registered_only=True,  # a name no tool of the account has: -32602, nothing decided
        )
    except services.ToolNotFound:
        _take_token(request, caller)  # refused before the script that takes it
        raise RpcError(INVALID_PARAMS, f"Unknown tool: {name}") from None
    except ApiProblem as refused:  # rate limited, the month's quota, dispatch slots full: nothing was decided
        return _refusal(refused)
    return _result(outcome, arrived=clock.arrived(request))


def _idempotency_key(params: dict[str, Any], meta: dict[str, Any]) -> str | None:
    key = params.get("idempotencyKey")
    if key is None:  # absent or null: the _meta form, if any
        key = meta.get(IDEMPOTENCY_META)
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise RpcError(INVALID_PARAMS, f"The idempotency key must be 1–{MAX_KEY_LENGTH} printable characters.")
    return key


def _run_id(meta: dict[str, Any], session: Session | None) -> str | None:
    named = meta.get(RUN_META)
    if named is None:
        return session.run_id if session is not None else ""
    if not isinstance(named, str) or not named or len(named) > 256 or identifier_problem(named):
        raise RpcError(INVALID_PARAMS, f"_meta[{RUN_META!r}] must be a run id: 1–256 characters, no control ones.")
    return named


def _claim_key(caller: ApiPrincipal, agent_id: str, tool: str, key: str, args: dict[str, Any]) -> None:
    """The same idempotency key with other arguments is a conflict (refused, as the idempotency proposal says), not
    the first call's result: remembered for the plan's dedup window, per agent and tool."""
    digest = hashlib.sha256(canonical_json(args)).hexdigest()
    name = hashlib.sha256(canonical_json([agent_id, tool, key])).hexdigest()[:40]
    slot = f"oo:{{a{caller.account_id}}}:mcp:k:{name}"
    try:
        client = get_redis()
        if client.set(slot, digest, nx=True, ex=max(1, caller.plan.default_ttl)):
            return
        held = client.get(slot)
    except redis.RedisError:
        return  # the decision's own dedup still holds; only the conflict check is lost
    if held is not None and (held.decode() if isinstance(held, bytes) else held) != digest:
        raise RpcError(
            INVALID_PARAMS,
            "This idempotency key was used with other arguments: use a new key for a different call.",
            data={"type": "idempotency_key_conflict", "idempotencyKey": key},
        )


def _refusal(problem: ApiProblem) -> dict[str, Any]:
    detail = problem.detail if isinstance(problem.detail, dict) else {"error": str(problem.detail)}
    return {
        "content": [{"type": "text", "text": f"Not run: {_message_of(problem)}"}],
        "isError": True,
        "_meta": {DECISION_META: None, "onceonly/refused": detail},
    }


def _result(outcome: services.CallOutcome, *, arrived: float) -> dict[str, Any]:
    """The decision as an MCP tool result: what the tool answered (an upstream MCP tool's own result; a webhook
    tool's JSON as text and structuredContent), else an error result whose text is the decision's explanation.
    A twin of a call still in flight waits for that call's decision (within the dispatch deadline) and answers its
    result: one upstream call, two identical answers."""
    decision = outcome.decision
    answer = call_answer(outcome)
    shown = decision
    if decision.outcome == Outcome.DEDUP and decision.result is None:
        original = _await_original(decision, arrived)
        if original is not None:
            shown = original
            answer["original"] = {"decision_id": original.pk, "decision": original.outcome}
    answer.pop("result", None)
    meta = {DECISION_META: answer}
    result = shown.result
    ran = shown.outcome in (Outcome.EXECUTED, Outcome.FAILED, Outcome.ALLOWED) or (
        shown.outcome == Outcome.DEDUP and result is not None
    )
    failed = shown.outcome == Outcome.FAILED
    tool = outcome.registered
    mcp_tool = tool is not None and tool.kind == "mcp"
    if ran and isinstance(result, dict) and mcp_tool and isinstance(result.get("content"), list):
        body = {name: result[name] for name in ("content", "structuredContent", "isError") if name in result}
        body["isError"] = bool(result.get("isError")) or failed
        return {**body, "_meta": meta}
    if ran and result is not None and not failed:
        text = json.dumps(result, separators=(",", ":"), ensure_ascii=False)
        body = {"content": [{"type": "text", "text": text}], "isError": False}
        if isinstance(result, dict):
            body["structuredContent"] = result
        return {**body, "_meta": meta}
    if ran and not failed:  # allowed, nothing to show (a permit-only decision)
        return {"content": [{"type": "text", "text": answer["explanation"]}], "isError": False, "_meta": meta}
    text = f"OnceOnly {answer['decision']} ({answer['policy_reason']}): {answer['explanation']}"
    if answer.get("approval_url"):
        text += f" Ask an operator to approve it at {answer['approval_url']}, then call again with the same arguments."
    return {"content": [{"type": "text", "text": text}], "isError": True, "_meta": meta}


@runner.steps_aside
def _await_original(decision: Decision, arrived: float) -> Decision | None:
    """The decision of the call this one duplicates, once recorded, waiting while it is in flight — polled, on this
    rare path only (a twin arriving while the first call runs). The wait gives up the runner's slot: twins holding
    them would keep the first call from finishing (measured: 49 twins delayed it from 0.5 s to 10 s)."""
    dispatch_id = (decision.explain or {}).get("original_dispatch_id")
    if not dispatch_id:
        return None
    until = arrived + settings.ONCEONLY_DISPATCH_DEADLINE_SECONDS + 1.0
    # The first call was in flight when this twin was decided: its decision is recorded after this one's ts.
    recent = Decision.objects.filter(
        account_id=decision.account_id,
        agent_id=decision.agent_id,
        dispatch_id=dispatch_id,
        ts__gte=decision.ts - services.RECORDED_AFTER_MARGIN,
    )
    while True:
        original = recent.first()
        if original is not None or time.monotonic() >= until:
            return original
        time.sleep(TWIN_POLL_SECONDS)


def _message_of(problem: exceptions.APIException) -> str:
    if isinstance(problem, exceptions.ValidationError):
        items = validation_detail(problem)
        return str(items[0]["msg"]) if items else "Invalid."
    detail = problem.detail
    if isinstance(detail, dict):
        return str(detail.get("message") or detail.get("error") or detail)
    if isinstance(detail, list) and detail:
        return str(detail[0])
    return str(detail)

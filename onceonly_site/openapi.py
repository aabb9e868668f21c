"""The OpenAPI schema's shared parts (``/api/schema/``; docs/api.md §"The error contract").

* **Error answers, declared once.** ``ERRORS`` describes every error status of the error contract, each a named
  response component (``#/components/responses/RateLimited``…) with its body schema and headers. ``AutoSchema`` (the
  project's drf-spectacular schema class) adds to every ``/v1`` operation the ones any request can meet
  (``COMMON_ERRORS``, plus 413/415 where the operation takes a body); a view names the others it can answer with
  ``errors(...)`` in its ``@extend_schema(responses=…)``:
  ``responses={200: LeaseRecordOutput, **errors(409)}``. ``tests/test_schema_errors.py`` holds every operation to
  the statuses it can produce, and ``tests/fuzz/test_schemathesis.py`` checks every answer against them.
* **What a string may hold, in JSON Schema.** The patterns below are built from the character classes of
  ``onceonly_site/identifiers.py`` (the one definition), and the field types of ``onceonly_site/bodies.py`` state
  the pattern of the rules they check, so the schema says what the validators refuse: keys and text are non-blank
  and free of control characters, identifiers also of bidirectional formatting characters, tool names of any
  whitespace, control or invisible character. What no pattern can say (a tool name's letters from one script,
  unassigned code points) is in the field's description.
* **Bodies are closed.** A ``StrictSerializer`` (onceonly_site/api.py) refuses unknown fields, and every ``/v1``
  body serializer is one — the ones generated from a declared body (onceonly_site/bodies.py) unless the body keeps
  unknown fields — so its schema says ``additionalProperties: false``; ``openapi_extra`` on a serializer class adds
  keywords a serializer cannot express (``minProperties``, ``anyOf``).
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular import openapi
from drf_spectacular.plumbing import ResolvedComponent, get_doc
from drf_spectacular.utils import Direction, OpenApiParameter, PolymorphicProxySerializer

from onceonly_site.identifiers import CONTROL, INVISIBLE, REGISTERED_NAME_CHARS, TOOL_INVISIBLE, UNSAFE

# --- what a string may hold --------------------------------------------------------------------------------------


def _members(regex: re.Pattern[str]) -> str:
    r"""The inside of one of identifiers.py's character classes, with \xHH and \uHHHH escapes, which Python's re
    and ECMAScript (JSON Schema's dialect) read alike. Characters beyond U+FFFF (tag characters, the supplementary
    variation selectors) are left out: the two dialects share no way to write them (docs/api.md says it, and
    tests/fuzz/test_schemathesis.py skips them). tests/test_schema.py checks that the patterns refuse what the
    validators refuse."""
    assert regex.pattern.startswith("[") and regex.pattern.endswith("]"), regex.pattern
    kept = re.sub("[\U00010000-\U0010ffff](?:-[\U00010000-\U0010ffff])?", "", regex.pattern[1:-1])
    return "".join(c if c.isascii() else f"\\u{ord(c):04x}" for c in kept)


_CONTROL = _members(CONTROL)
_UNSAFE = _members(UNSAFE) + _members(INVISIBLE)  # what identifier_problem refuses (below U+10000)
# What str.strip() and str.isspace() call whitespace (tests/test_schema_errors.py checks the list against Python's).
# Spelled out rather than \s: ECMAScript's \s differs (it counts U+FEFF, and not U+001C–U+001F or U+0085).
WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Characters tool_name_problem refuses anywhere in a tool name: whitespace, controls (Cc), the formatting characters
# of the Basic Multilingual Plane (Cf: soft hyphen, zero-width and bidirectional marks, BOM…) and its private use
# area (Co). ASCII names need nothing more; the other rules are in TOOL_NAME_RULES.
_TOOL_REFUSED = (
    WHITESPACE + _CONTROL + r"\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\ue000-\uf8ff" + _members(INVISIBLE) + _members(TOOL_INVISIBLE)
)


def _non_blank(refused: str) -> str:
    """Anything but ``refused``, with at least one character that is not whitespace either."""
    return rf"^[^{refused}]*[^{refused}{WHITESPACE}][^{refused}]*$"


# An idempotency key, an event type, a lease key in a query: non-blank, no control character (bodies.Key).
KEY_PATTERN = _non_blank(_CONTROL)
# An agent id, a run id: non-blank, no control or bidirectional formatting character (bodies.Identifier).
IDENTIFIER_PATTERN = _non_blank(_UNSAFE)
# One character identifier_problem refuses.
UNSAFE_CHAR_PATTERN = f"[{_UNSAFE}]"
# Text shown as an identifier but not required (an event's tool and agent_id): no control or bidi character.
UNSAFE_FREE_PATTERN = rf"^[^{_UNSAFE}]*$"
# A tool name in a governed call or a run's actions: no whitespace, control or invisible character at all.
TOOL_NAME_PATTERN = rf"^[^{_TOOL_REFUSED}]+$"
# A tool name or glob in a policy: the same, with whitespace around it allowed (it is trimmed).
_EDGE_SPACE = r" \xa0\u1680\u2000-\u200a\u202f\u205f\u3000"  # WHITESPACE less the controls and U+2028/U+2029
POLICY_TOOL_PATTERN = rf"^[{_EDGE_SPACE}]*[^{_TOOL_REFUSED}]+[{_EDGE_SPACE}]*$"
TOOL_NAME_RULES = (
    "Letters of one script only (Latin may mix with Han and kana, Bopomofo or Hangul), no combining mark on a plain "
    "character, and no unassigned code point: "
    "`delete_usеr` with a Cyrillic `е` is refused (docs/security.md, *Identifiers and look-alike names*)."
)
# A registered tool's or job handler's name (identifiers.REGISTERED_NAME; at most 200 characters).
REGISTERED_NAME_PATTERN = rf"^[{REGISTERED_NAME_CHARS}]+$"
# A tools registry scope: "global" or "agent:<agent id>", the agent id trimmed (governance.tools.valid_scope).
SCOPE_PATTERN = rf"^(?:global|agent:[^{_UNSAFE}{WHITESPACE}](?:[^{_UNSAFE}]*[^{_UNSAFE}{WHITESPACE}])?)$"
# A day as the metrics endpoint reads it.
DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
# A tool URL (governance.ssrf.check): http(s), a host, no credentials, a port from 0 to 65535, no whitespace or
# control character. Where the host may point (no private address…) depends on DNS and the operator's settings.
_PORT = r"(?:[0-9]{0,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
URL_PATTERN = (
    rf"^[Hh][Tt][Tt][Pp][Ss]?://(?:[^{WHITESPACE}{_CONTROL}/?#@\[\]:]+|\[[0-9A-Fa-f:.]+\])(?::{_PORT})?"
    rf"(?:[/?#][^{WHITESPACE}{_CONTROL}]*)?$"
)


def page_parameters(*, default: int, maximum: int = 500, max_offset: int = 1_000_000) -> list[OpenApiParameter]:
    """``?limit=&offset=`` as onceonly_site.api.page_params reads them."""
    return [
        OpenApiParameter(
            "limit",
            {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
            description=f"1–{maximum:,}, default {default}.",
        ),
        OpenApiParameter(
            "offset",
            {"type": "integer", "minimum": 0, "maximum": max_offset, "default": 0},
            description=f"0–{max_offset:,}.",
        ),
    ]


# --- the error answers ----------------------------------------------------------------------------------------

_PROBLEM = {
    "type": "object",
    "description": "A business error: a machine-readable `error` code, a human `message`, and the fields the code "
    "names.",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error"],
}
_VALIDATION = {
    "type": "array",
    "description": "Every problem of the request, FastAPI's list form.",
    "items": {
        "type": "object",
        "properties": {
            "type": {"type": "string", "description": "A short code: `missing`, `extra_forbidden`, `json_invalid`…"},
            "loc": {
                "type": "array",
                "minItems": 1,
                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                "description": '`["body", <field>…]`, `["query", <name>]` or `["path", <name>]`.',
            },
            "msg": {"type": "string"},
        },
        "required": ["type", "loc", "msg"],
    },
}
_TEXT_OR_PROBLEM = {"anyOf": [{"type": "string"}, {"$ref": "#/components/schemas/Problem"}]}
_RETRY_AFTER = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 1},
        "required": True,
        "description": "Whole seconds to wait before retrying.",
    }
}


def _problem(*codes: str, required: tuple[str, ...] = ("error", "message"), **properties: Any) -> dict[str, Any]:
    return {
        "allOf": [{"$ref": "#/components/schemas/Problem"}],
        "type": "object",
        "properties": {"error": {"type": "string", "enum": list(codes)}, **properties},
        "required": list(required),
    }


# status: (component name, description, schema of `detail`, headers)
ERRORS: dict[int, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    400: (
        "BadRequest",
        "The request could not be read (a Host not allowed, too many query parameters).",
        _problem("bad_request"),
        {},
    ),
    401: (
        "Unauthorized",
        "No `Authorization: Bearer` key, another scheme, or an empty token.",
        {"type": "string"},
        {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}},
    ),
    402: (
        "PaymentRequired",
        "The month's quota is used up (`usage_limit`), or the plan's number of tools is reached (`plan_limit`).",
        _problem(
            "usage_limit",
            "plan_limit",
            required=("error", "message", "plan", "limit"),
            kind={"type": "string", "enum": ["make", "ai"]},
            plan={"type": "string"},
            usage={"type": "integer"},
            limit={"type": "integer"},
        ),
        {},
    ),
    403: (
        "Forbidden",
        'An unknown, revoked or malformed key (`"Invalid API key"`), a feature the plan does not '
        "include (`feature_not_available`), or a decision that needs an admin-scoped key (`admin_key_required`).",
        _TEXT_OR_PROBLEM,
        {},
    ),
    404: (
        "NotFound",
        'No route takes the path (`"Not Found"`), or the named object does not exist '
        "(`policy_not_found`, `tool_not_found`, `approval_not_found`, `agent_not_found`, `shadow_not_found`, "
        "`mcp_server_not_found`, `mcp_tool_not_found`, `run_not_found`).",
        _TEXT_OR_PROBLEM,
        {},
    ),
    406: ("NotAcceptable", "The `Accept` header excludes JSON.", {"type": "string"}, {}),
    409: (
        "Conflict",
        "The `lease_id` does not hold the key (`lease_mismatch`), the lease's state does not allow "
        "the transition (`lease_conflict`), the approval is no longer pending (`approval_not_pending`, with its "
        "`status`), the enforced policy changed since the caller read it (`policy_changed`, with its `version`), or "
        "the MCP server's name is taken (`mcp_server_exists`), or the agent is not contained by a detector "
        "(`agent_not_contained`: nothing to release), or no keyed run of the run id is paused (`run_not_paused`).",
        _problem(
            "lease_mismatch",
            "lease_conflict",
            "approval_not_pending",
            "policy_changed",
            "mcp_server_exists",
            "agent_not_contained",
            "run_not_paused",
            status={"type": "string", "description": "The lease's or the approval's status now."},
            version={"type": "integer", "nullable": True, "description": "The enforced policy version now."},
        ),
        {},
    ),
    413: ("PayloadTooLarge", "The body is larger than 2.5 MiB.", _problem("payload_too_large"), {}),
    415: (
        "UnsupportedMediaType",
        "A body sent with a `Content-Type` other than `application/json`.",
        {"type": "string"},
        {},
    ),
    422: (
        "ValidationFailed",
        "The request's fields, query parameters or path are not valid; nothing was done.",
        _VALIDATION,
        {},
    ),
    429: (
        "RateLimited",
        "The API key's rate limit is used up (`rate_limited`), or a governed call to a registered tool found its "
        "dispatch slots full or its deadline passed in a queue (`dispatch_busy`, `POST /v1/ai/run` only); nothing "
        "was done.",
        _problem(
            "rate_limited",
            "dispatch_busy",
            required=("error", "message", "retry_after"),
            retry_after={"type": "integer", "minimum": 1},
            scope={"type": "string", "enum": ["process", "account", "tool", "deadline"]},
            in_flight={"type": "integer"},
            limit={"type": "integer"},
        ),
        _RETRY_AFTER,
    ),
    503: (
        "ServiceUnavailable",
        "The database or Redis is unavailable (or out of memory); nothing was done.",
        _problem("service_unavailable"),
        _RETRY_AFTER,
    ),
}
# What any /v1 request can meet, whatever the operation: a request Django cannot read, authentication, content
# negotiation, the middleware's refusal of control characters in any query value, the rate limit, and a store down.
COMMON_ERRORS = (400, 401, 403, 406, 422, 429, 503)
# …and what only operations with a body can: too large, or not JSON.
BODY_ERRORS = (413, 415)


class SharedError:
    """A marker in ``@extend_schema(responses=…)``: this status is answered with the shared response component."""

    def __init__(self, status: int) -> None:
        self.status = status


def errors(*statuses: int) -> dict[int, SharedError]:
    """The shared error responses of ``statuses``, for an operation's ``responses`` dict."""
    return {status: SharedError(status) for status in statuses}


class AutoSchema(openapi.AutoSchema):
    """drf-spectacular's schema of a view, plus the error answers of the contract and closed request bodies."""

    def expected_errors(self) -> set[int]:
        statuses = set(COMMON_ERRORS)
        if self.method in ("POST", "PUT", "PATCH"):
            statuses.update(BODY_ERRORS)
        return statuses

    def _get_response_bodies(self, direction: Direction = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if self.path.startswith("/v1/"):
            for status in sorted(self.expected_errors()):
                responses.setdefault(str(status), self._shared_error(status))
        return responses

    def _get_response_for_code(self, serializer: Any, status_code: str, *args: Any, **kwargs: Any) -> Any:
        if isinstance(serializer, SharedError):
            return self._shared_error(serializer.status)
        return super()._get_response_for_code(serializer, status_code, *args, **kwargs)

    def _shared_error(self, status: int) -> dict[str, Any]:
        name, description, detail, headers = ERRORS[status]
        self.registry.register_on_missing(
            ResolvedComponent("Problem", ResolvedComponent.SCHEMA, schema=_PROBLEM, object="Problem")
        )
        body = ResolvedComponent(
            f"{name}Error",
            ResolvedComponent.SCHEMA,
            schema={"type": "object", "properties": {"detail": detail}, "required": ["detail"]},
            object=f"{name}Error",
        )
        self.registry.register_on_missing(body)
        response: dict[str, Any] = {
            "description": f"{status}: {description}",
            "content": {"application/json": {"schema": body.ref}},
        }
        if headers:
            response["headers"] = headers
        component = ResolvedComponent(name, ResolvedComponent.RESPONSE, schema=response, object=name)
        self.registry.register_on_missing(component)
        return component.ref

    def _get_request_for_media_type(self, serializer: Any, direction: str = "request") -> Any:
        schema, required = super()._get_request_for_media_type(serializer, direction)
        # An empty body is read as {}: it is required where {} is not enough (one of two forms; at least one field).
        if isinstance(serializer, PolymorphicProxySerializer) or getattr(serializer, "openapi_extra", {}).get(
            "minProperties"
        ):
            required = True
        return schema, required

    def _map_basic_serializer(self, serializer: Any, direction: str) -> dict[str, Any]:
        from onceonly_site.api import StrictSerializer

        schema = super()._map_basic_serializer(serializer, direction)
        if isinstance(serializer, StrictSerializer):
            schema["additionalProperties"] = False
            if schema.get("description") == get_doc(StrictSerializer):  # inherited, not the serializer's own
                schema["description"] = "Unknown fields are refused (422 `extra_forbidden`)."
        schema.update(getattr(serializer, "openapi_extra", {}))
        return schema

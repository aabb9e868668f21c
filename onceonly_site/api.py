"""The API error contract (docs/api.md §"The error contract"; docs/architecture.md §7.2).

Every ``/v1`` error body is ``{"detail": …}``. Validation problems are 422 in FastAPI's list form
(``[{"type", "loc", "msg"}]``), which both SDKs surface as ``ValidationError`` with the body in the message.
Business errors carry a machine-readable ``detail.error`` code. No stack trace ever reaches a client.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Set as AbstractSet
from typing import Any

import redis
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, parsers, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils import json as drf_json

from onceonly_site.middleware import current_request_id
from onceonly_site.params import whole_number

logger = logging.getLogger(__name__)

MISSING_BEARER = "Missing Authorization Bearer token"
INVALID_API_KEY = "Invalid API key"


class ApiProblem(exceptions.APIException):
    """A business error: ``{"detail": {"error": <code>, "message"?: …, **extra}}`` with the given status and response
    headers. The one base class of the apps' errors (``RateLimited``, ``QuotaExceeded``, …): the exception handler
    answers any of them without knowing the app that raised it."""

    def __init__(
        self,
        status_code: int,
        error: str,
        message: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status_code = status_code
        self.headers = headers or {}
        detail: dict[str, Any] = {"error": error}
        if message:
            detail["message"] = message
        detail.update(extra)
        self.problem = detail
        super().__init__(detail=error)


class MissingBearer(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = MISSING_BEARER


class InvalidApiKey(exceptions.APIException):
    status_code = status.HTTP_403_FORBIDDEN
    default_detail = INVALID_API_KEY


class QueryValidationError(exceptions.ValidationError):
    """A validation error about query parameters (``loc`` starts with ``query``)."""

    location = "query"


class PathValidationError(exceptions.ValidationError):
    """A validation error about a path parameter (``loc`` starts with ``path``)."""

    location = "path"


def _items(detail: Any, loc: list[str | int]) -> list[dict[str, Any]]:
    if isinstance(detail, dict):
        out: list[dict[str, Any]] = []
        for field, value in detail.items():
            sub = loc if field in ("non_field_errors", "__all__") else [*loc, field]
            out.extend(_items(value, sub))
        return out
    if isinstance(detail, list):
        out = []
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                out.extend(_items(value, [*loc, index]))
            else:
                out.extend(_items(value, loc))
        return out
    code = getattr(detail, "code", None) or "invalid"
    return [{"type": str(code), "loc": loc, "msg": str(detail)}]


def validation_detail(exc: exceptions.ValidationError) -> list[dict[str, Any]]:
    location = getattr(exc, "location", "body")
    return _items(exc.detail, [location])


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    if isinstance(exc, ApiProblem):
        return Response({"detail": exc.problem}, status=exc.status_code, headers=exc.headers)
    if isinstance(exc, exceptions.Throttled):  # DRF's throttle: the same body as the script's RateLimited
        wait = max(1, math.ceil(getattr(exc, "wait", None) or 1))  # DRF sets .wait; its stubs leave it out
        return Response(
            {
                "detail": {
                    "error": "rate_limited",
                    "message": f"Too many requests for this API key; retry in {wait} s.",
                    "retry_after": wait,
                }
            },
            status=429,
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": {"error": "payload_too_large", "message": str(exc)}}, status=413)
    if isinstance(exc, SuspiciousOperation):
        return Response({"detail": {"error": "bad_request", "message": "The request could not be read."}}, 400)
    if isinstance(exc, exceptions.ValidationError):
        return Response({"detail": validation_detail(exc)}, status=422)
    if isinstance(exc, exceptions.ParseError):
        # DRF says 400 for a body that is not JSON; the SDK contract (FastAPI) says 422.
        msg = str(exc.detail)
        return Response({"detail": [{"type": "json_invalid", "loc": ["body"], "msg": msg}]}, status=422)
    if isinstance(exc, exceptions.NotAuthenticated | MissingBearer):
        return Response({"detail": MISSING_BEARER}, status=401, headers={"WWW-Authenticate": 'Bearer realm="api"'})
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        # maxmemory reached with the noeviction policy (docs/operations.md, "Redis: persistence and memory").
        logger.error("Redis is out of memory", exc_info=exc)
        message = "Redis is out of memory (maxmemory reached); an operator must free memory or raise maxmemory."
        return Response(
            {"detail": {"error": "service_unavailable", "message": message}}, status=503, headers={"Retry-After": "2"}
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        logger.error("Redis unavailable", exc_info=exc)
        return Response(
            {"detail": {"error": "service_unavailable", "message": "Redis is unavailable; retry shortly."}},
            status=503,
            headers={"Retry-After": "2"},
        )
    if isinstance(exc, OperationalError | InterfaceError):
        # PostgreSQL down or unreachable: a clear 503 the caller can retry (the SDK fails open on check-lock).
        logger.error("database unavailable", exc_info=exc)
        return Response(
            {"detail": {"error": "service_unavailable", "message": "The database is unavailable; retry shortly."}},
            status=503,
            headers={"Retry-After": "2"},
        )
    if isinstance(exc, exceptions.APIException):
        headers = {}
        wait = getattr(exc, "wait", None)
        if wait is not None:
            headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        return Response({"detail": exc.detail}, status=exc.status_code, headers=headers)
    # Unexpected: log it with the request id and answer the JSON 500 — also with DEBUG on (make run), where Django
    # would otherwise send its debug page with the traceback and settings to the client.
    logger.error("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
    return Response(_internal_error_body(), status=500)


def _wants_json(request: HttpRequest) -> bool:
    return request.path.startswith("/v1/") or request.path == "/v1"


@csrf_exempt  # API clients send no CSRF token: a POST to an unknown route is this 404, not the HTML CSRF page
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    return JsonResponse({"detail": "Not Found"}, status=404)


def _internal_error_body() -> dict[str, Any]:
    return {
        "detail": {
            "error": "internal_error",
            "message": "The server failed to handle this request; it has been logged.",
            "request_id": current_request_id(),
        }
    }


def server_error(request: HttpRequest) -> Any:
    if _wants_json(request):
        return JsonResponse(_internal_error_body(), status=500)
    from django.views.defaults import server_error as html_server_error

    return html_server_error(request)


def bad_request(request: HttpRequest, exception: Exception) -> Any:
    if _wants_json(request):
        if isinstance(exception, RequestDataTooBig):
            return JsonResponse({"detail": {"error": "payload_too_large", "message": str(exception)}}, status=413)
        return JsonResponse(
            {"detail": {"error": "bad_request", "message": "The request could not be read."}}, status=400
        )
    from django.views.defaults import bad_request as html_bad_request

    return html_bad_request(request, exception)


def page_not_found(request: HttpRequest, exception: Exception) -> Any:
    if _wants_json(request):
        return api_not_found(request)
    from django.views.defaults import page_not_found as html_page_not_found

    return html_page_not_found(request, exception)


def validate(serializer_class: type[serializers.Serializer], data: Any, *, query: bool = False) -> dict[str, Any]:
    """Run a serializer and return its validated data; errors become a 422 (``loc`` body or query)."""
    if not query and not isinstance(data, dict):
        raise exceptions.ValidationError({"non_field_errors": ["The request body must be a JSON object."]})
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        if query:
            raise QueryValidationError(serializer.errors)
        raise exceptions.ValidationError(serializer.errors)
    return dict(serializer.validated_data)


def body(request: Request) -> Any:
    """The parsed JSON body; an empty body is ``{}`` (clients send Content-Type: application/json everywhere)."""
    data = request.data
    return {} if data is None else data


MAX_JSON_DEPTH = 64  # nesting of a request body: deeper documents are refused (docs/api.md, "Limits")
UNSTORABLE_TEXT = "JSON parse error - strings may not contain U+0000 or unpaired surrogates (\\ud800–\\udfff)."


def storable_text(value: Any) -> bool:
    """No string (key or value) anywhere in ``value`` holds U+0000 or an unpaired surrogate: PostgreSQL's text and
    jsonb cannot store them, and UTF-8 cannot encode a lone surrogate — accepting one would be a 500 later."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return False
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def _depth_exceeds(data: Any, limit: int) -> bool:
    stack = [(data, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON, or a 422 (ParseError → json_invalid; a field's ValidationError when one field holds
    it): malformed, nested too deeply, NaN/Infinity, or holding text no database column can store. Both escapes can
    only arrive as ``\\u…`` in valid JSON, so bodies without one skip the walk."""
    try:
        data = json.loads(raw, parse_constant=drf_json.strict_constant) if raw else None
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply." if isinstance(exc, RecursionError) else str(exc)
        raise exceptions.ParseError(f"JSON parse error - {reason}") from None
    # Fewer brackets than the limit cannot nest deeper than it: the walk runs only for bodies that might.
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and _depth_exceeds(data, MAX_JSON_DEPTH):
        # Python parses ~900 levels, but storing them (JSON columns encode them again, deeper in the stack) would
        # overflow the stack: a 500 (found by tests/test_request_limits.py).
        raise exceptions.ParseError(f"JSON parse error - nested more than {MAX_JSON_DEPTH} levels deep.")
    if data is None and raw:  # a literal null: only an empty body stands for {}
        problem = serializers.ErrorDetail("The request body must be a JSON object.", code="type_error")
        raise exceptions.ValidationError({"non_field_errors": [problem]})
    if b"\\u" in raw and not storable_text(data):
        # Point at the field when one holds it (a 422 with loc ["body", field]); else at the body.
        if isinstance(data, dict):
            for name, value in data.items():
                if storable_text(name) and not storable_text(value):
                    message = "Text may not contain U+0000 or unpaired surrogates (no database can store them)."
                    raise exceptions.ValidationError({name: [serializers.ErrorDetail(message, code="string_type")]})
        raise exceptions.ParseError(UNSTORABLE_TEXT)
    return data


class JSONParser(parsers.JSONParser):
    """DRF's parser, plus: JSON nested deeper than Python's recursion limit, and strings PostgreSQL cannot store
    (U+0000, unpaired surrogates), are a 422, not a 500 (``parse_json_body``, shared with check-lock's lean path)."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        return parse_json_body(raw)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is a 422 instead of a silently ignored setting."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise exceptions.ValidationError(
                    {name: [serializers.ErrorDetail("Unknown field.", code="extra_forbidden")] for name in unknown}
                )
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean, nothing else ("yes", 1 and "true" are refused)."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class BodyCheck:
    """Collects every problem of a JSON body, then raises one 422 listing them all (nothing is written). The
    fields' checks are declared with the body (onceonly_site/bodies.py); this is where they report."""

    __slots__ = ("data", "errors", "query")  # one per request on check-lock's hot path

    def __init__(self, data: Any, allowed: AbstractSet[str], *, query: bool = False) -> None:
        self.errors: dict[str, list[Any]] = {}
        self.query = query
        if not isinstance(data, dict):
            self.fail("non_field_errors", "The request body must be a JSON object.", "type_error")
            self.data: dict[str, Any] = {}
            self.done()
        self.data = data
        unknown = data.keys() - allowed  # check-lock's hot path: one set operation when there is none
        if unknown:
            for name in sorted(unknown):
                self.fail(name, "Unknown field.", "extra_forbidden")

    def fail(self, name: str, message: str, code: str) -> None:
        self.errors.setdefault(name, []).append(serializers.ErrorDetail(message, code=code))

    def page(self, *, default: int, maximum: int, max_offset: int) -> tuple[int, int]:
        """``limit`` (1…maximum) and ``offset`` (0…max_offset) query parameters."""
        limit = whole_number(self.data.get("limit", default), maximum)
        offset = whole_number(self.data.get("offset", 0), max_offset)
        if limit is None or limit < 1:
            self.fail("limit", f"A whole number from 1 to {maximum}.", "int_type")
        if offset is None:
            self.fail("offset", f"A whole number from 0 to {max_offset:,}.", "int_type")
        if limit is None or offset is None or self.errors:  # a missing number is among the errors
            return 0, 0
        return limit, offset

    def done(self) -> None:
        if self.errors:
            raise (QueryValidationError if self.query else exceptions.ValidationError)(self.errors)


def page_params(request: Request, *, default: int, maximum: int = 500, max_offset: int = 1_000_000) -> tuple[int, int]:
    """``?limit=&offset=`` of a list endpoint (other query parameters are the endpoint's own business)."""
    check = BodyCheck(dict(request.query_params.items()), set(request.query_params), query=True)
    limit, offset = check.page(default=default, maximum=maximum, max_offset=max_offset)
    check.done()
    return limit, offset

"""The lean path of the hottest API calls (check-lock, the lease calls, the governed call): their usual form skips
DRF's request wrapping, content negotiation and rendering — about a fifth of check-lock's server time, measured in
docs/benchmarks.md §"What was changed to get here".

The usual form is POST, a JSON body and a bearer key. Anything else takes DRF's full path before any work is done,
and an error raised on the lean path goes through DRF's exception handling, so every answer keeps the error contract
(``test_the_lean_path_keeps_the_error_contract``). Both paths authenticate the same way, take the caller's rate-limit
token the same way (unless the view's own Lua script takes it: ``rate_limit_in_script``) and parse the body with the
same parser; the key is checked before the body is read.
"""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder
from rest_framework.views import APIView

from billing import ratelimit
from billing.auth import ApiPrincipal, authenticate_header_value, principal
from onceonly_site.api import body, parse_json_body


class LeanPostApi(APIView):
    """A POST endpoint whose work is ``answer(caller, data)``: (JSON object, extra headers). Subclasses declare
    ``post`` (for its OpenAPI schema) as ``return self.answer_drf(request)``. ``self.request`` is the request on
    both paths (Django's on the lean one, DRF's wrapper of it on the other)."""

    rate_limit_in_script = False  # True: the view's script takes the token (ApiKeyRateThrottle then skips it too)

    def answer(self, caller: ApiPrincipal, data: Any) -> tuple[dict[str, Any], dict[str, str]]:
        raise NotImplementedError

    def lean_form(self, data: Any) -> bool:
        """Whether this parsed body takes the lean path (a view with a second form sends that one to DRF's)."""
        return True

    def answer_drf(self, request: Request) -> Response:
        """DRF's path (authenticated, throttled and parsed by DRF)."""
        data, headers = self.answer(principal(request), body(request))
        return Response(data, headers=headers)

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        if (
            request.method != "POST"
            or request.content_type != "application/json"
            or "HTTP_AUTHORIZATION" not in request.META
        ):
            return super().dispatch(request, *args, **kwargs)
        self.args, self.kwargs, self.headers = args, kwargs, self.default_response_headers
        self.request = request  # type: ignore[assignment]  # Django's request: what answer() reads of it is on both
        try:
            caller = authenticate_header_value(request.META["HTTP_AUTHORIZATION"])  # before reading the body
            try:
                data, malformed = parse_json_body(request.body), None
            except Exception as exc:  # answered after the rate-limit token, as DRF's path answers it
                data, malformed = None, exc
            if malformed is None and not self.lean_form(data):
                # The other form: DRF's path, with the caller already authenticated (not counted twice)
                request._force_auth_user = request._force_auth_token = caller  # type: ignore[attr-defined]
                return super().dispatch(request, *args, **kwargs)
            if not self.rate_limit_in_script:
                ratelimit.take(caller)
            if malformed is not None:
                raise malformed
            answer, headers = self.answer(caller, {} if data is None else data)
        except Exception as exc:
            self.request = self.initialize_request(request, *args, **kwargs)
            return self.finalize_response(self.request, self.handle_exception(exc), *args, **kwargs)
        # DRF's encoder (decimals, datetimes), its renderer's settings and escapes, and its default headers (Allow):
        # the answer DRF's path would send
        text = json.dumps(answer, cls=JSONEncoder, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        if "\u2028" in text or "\u2029" in text:
            text = text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
        response = HttpResponse(text.encode(), content_type="application/json")
        for name, value in {**self.headers, **headers}.items():
            response[name] = value
        return response

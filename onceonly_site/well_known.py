"""Public, unauthenticated documents under ``/.well-known/``."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from onceonly_site.checkpoint_signing import public_jwks


@require_safe
def checkpoint_keys(request: HttpRequest) -> JsonResponse:
    """``/.well-known/onceonly-checkpoint-keys.json``: the public keys (a JWK set), current first. No login: they
    hold no account data, and an auditor fetches them without an account. Cached for an hour: keys change rarely,
    and a retired key stays listed."""
    response = JsonResponse(public_jwks())
    response["Cache-Control"] = "public, max-age=3600"
    response["Access-Control-Allow-Origin"] = "*"
    return response

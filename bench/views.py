"""The physical floor of this stack: a plain Django view doing one Redis SET NX — no auth, no validation, no
database. Every API scenario is reported as a ratio of it."""

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from onceonly_site.redis_client import get_redis


@csrf_exempt
def floor(request: HttpRequest) -> JsonResponse:
    key = request.GET.get("k", "")
    locked = get_redis().set(f"bench:floor:{key}", 1, nx=True, ex=300)
    return JsonResponse({"ok": bool(locked)})
